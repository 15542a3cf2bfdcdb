"""What every script shares on the command line: one-line errors and exit codes (cli), SIGTERM unwound like
Ctrl-C, the argument parser's manners, number and boolean flag types, SM_* and .env defaults.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import math
import os
import signal
import sys
import threading
from pathlib import Path

from masktk.errors import UserError

OS_FIXES = {
    errno.EACCES: "give this user access to it (read for inputs, write for outputs and their folder)",
    errno.EPERM: "give this user access to it (read for inputs, write for outputs and their folder)",
    errno.ENOENT: "check the path: a file listed or found at the start is gone",
    errno.ENOSPC: "free disk space (or write elsewhere) and run again",
    errno.EDQUOT: "free disk space (or write elsewhere) and run again",
    errno.EROFS: "write to a writable place",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, `timeout`, `kill`), unwound like Ctrl-C: temp files are removed
    and train.py says how to resume, where the default action would end the process on the spot."""


def _raise_terminated(signum, frame):
    raise Terminated


def _default_sigterm_in_child():
    # A forked worker (a multiprocessing pool, DataLoader workers) must die on SIGTERM as it always did:
    # Pool.terminate() sends it, and a worker unwinding instead of dying left the pool waiting forever.
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_child)


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM raises Terminated while the script runs. Not under torchrun: a rank waiting in a collective
    would only see it when the collective returns, and the agent's SIGTERM must end it at once."""
    if "TORCHELASTIC_RUN_ID" in os.environ or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cli(main):
    """Run `main(argv)`; turn UserError, CUDA OOM and the file errors a user can fix (OS_FIXES) into one
    line on stderr and exit 2; Ctrl-C and SIGTERM into one line and exit 130 / 143 (128 + the signal).

    `--debug` anywhere on the command line shows the traceback instead.
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        argv = sys.argv[1:] if argv is None else list(argv)
        debug = "--debug" in argv
        argv = [a for a in argv if a != "--debug"]
        try:
            with sigterm_unwinds():
                return main(argv)
        except UserError as e:
            if debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as e:
            terminated = isinstance(e, Terminated)
            print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
            sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
        except BrokenPipeError:  # the reader left early (`| head`): what it took is all it wanted
            _stdout_to_devnull()
            sys.exit(0)
        except OSError as e:  # a file the user can fix: unreadable, gone, or no room to write it
            if debug or e.errno not in OS_FIXES:
                raise
            where = f"{e.filename}: " if e.filename else ""
            print(f"error: {where}{e.strerror}; {OS_FIXES[e.errno]}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:  # OOM is a user-fixable condition, everything else is a bug
            if debug or not _is_oom(e):
                raise
            print(f"error: out of memory ({str(e).splitlines()[0][:120]}); "
                  "try a smaller --batch_size or --img_size", file=sys.stderr)
            sys.exit(2)
        finally:  # flush while a closed pipe can still be handled (else Python reports it at exit)
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                _stdout_to_devnull()

    return wrapper


def _stdout_to_devnull():
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere


def _is_oom(e: BaseException) -> bool:
    import torch
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower()


def str2bool(v) -> bool:
    """argparse type for booleans: '--cv True', '--cv=false', '--cv 1' all mean what they say."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "t", "yes", "y", "on"):
        return True
    if s in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {v!r}")


def add_bool(parser, name, default, help=""):
    """`--name` alone means True; `--name False` / `--name=True` are also accepted."""
    parser.add_argument(name, type=str2bool, nargs="?", const=True, default=default, help=help)


class DefaultsOnce(argparse.HelpFormatter):
    """Each flag's default in --help once: appended unless the help already says what an unset flag does
    ("unset: ...", "default ...") or there is no value to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        says = "unset" in text or "default" in text or "%(default)" in text
        if says or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with the toolkit's manners: no abbreviations (argparse would otherwise read
    `inference.py --model X` as --model_dir X), defaults in --help, and a bad flag reported as one
    `error:` line with exit status 2, like every other bad input."""

    def __init__(self, doc):
        super().__init__(description=doc.split("\n")[0], allow_abbrev=False,
                         formatter_class=DefaultsOnce)

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def make_parser(doc):
    return Parser(doc)


class _Refused(argparse.Action):
    instead = ""

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(f"{option_string} (from the original scripts) is not supported: {self.instead}")


def refuse(parser, flag, instead):
    """An original flag this toolkit does not take: one error line saying what to use instead."""
    action = type("Refused", (_Refused,), {"instead": instead})  # hidden from --help, still one clear error
    parser.add_argument(flag, nargs="*", action=action, help=argparse.SUPPRESS, default=argparse.SUPPRESS)


def positive(kind=float, minimum=0, inclusive=False, maximum=None):
    """argparse type: a number above `minimum` (or at least it, when inclusive), and at most `maximum`."""
    def parse(v):
        if isinstance(v, bool) or (kind is int and isinstance(v, float)):  # a file's true or 2.5 is no count
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {v!r}")
        try:
            x = kind(v)
        except (ValueError, TypeError):
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {v!r}")
        if not math.isfinite(x):  # nan passes every comparison, inf every lower bound
            raise argparse.ArgumentTypeError(f"expected a finite number, got {v}")
        if x < minimum or (x == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'above'} {minimum}, got {v}")
        if maximum is not None and x > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {v}")
        return x
    parse.__name__ = kind.__name__
    return parse


port = positive(int, 1, inclusive=True, maximum=65535)  # argparse type: a TCP port


def fraction(v):
    """argparse type: a number in [0, 1]."""
    x = positive(float, 0, inclusive=True)(v)
    if x > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {v}")
    return x


class Rising(argparse.Action):
    """nargs=2 action for a LOW HIGH pair (age bounds): LOW must be below HIGH."""

    def __call__(self, parser, namespace, values, option_string=None):
        if not values[0] < values[1]:
            parser.error(f"argument {option_string}: LOW must be below HIGH, got {values[0]} {values[1]}")
        setattr(namespace, self.dest, values)


def demo_note(value, default, env, flag, argv):
    """One line on stderr when a script falls back to the demo data (neither env nor flag given), saying
    how to point at real data."""
    flags = (flag,) if isinstance(flag, str) else tuple(flag)  # a flag and its aliases
    named = any(a == f or a.startswith(f + "=") for a in argv for f in flags)
    if str(value) == str(default) and not os.environ.get(env) and not named:
        print(f"note: using the demo data ({default}); set {env} or {flags[0]} for real data", file=sys.stderr)


def env_default(name, fallback=None):
    """Value of a SageMaker-style env var (from the environment or a .env file), else fallback."""
    return os.environ.get(name) or fallback


def dotenv_files():
    """The .env files read, first wins: the current folder's (the user's), then the one beside the scripts (the
    repository root, above this package)."""
    seen = []
    for path in (Path.cwd() / ".env", Path(__file__).resolve().parents[1] / ".env"):
        if path.is_file() and path.resolve() not in seen:
            seen.append(path.resolve())
    return seen


def load_dotenv_once():
    try:
        from dotenv import load_dotenv
    except ImportError:  # optional at import time; requirements install it
        return
    for path in dotenv_files():  # the environment wins over both, then the earlier file over the later
        try:
            load_dotenv(path, override=False, encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8, or move it away") from None


def name_table(about, default, indent=""):
    """Lines of `name  what it does` for a name -> description map, the default marked (loss.py, optimizer.py)."""
    width = max(map(len, about))
    return [f"{indent}{name:<{width}}  {text}{'  (default)' if name == default else ''}"
            for name, text in about.items()]
