"""The losses train.py offers (--loss NAME), one line each; the default is marked.

    python loss.py

The losses themselves live in masktk/train/losses.py.
"""
from __future__ import annotations

from dataclasses import fields

from masktk.cli import cli, make_parser, name_table


@cli
def main(argv):
    make_parser(__doc__).parse_args(argv)
    from masktk.train.losses import ABOUT
    from masktk.train.settings import RunSettings
    default = next(f.default for f in fields(RunSettings) if f.name == "loss")
    print("\n".join(name_table(ABOUT, default)))


if __name__ == "__main__":
    main()
