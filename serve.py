"""A local web page to try a trained run: pick a photo, see it annotated with its faces listed.

    python serve.py                                   # the newest run in model/, http://127.0.0.1:8000
    python serve.py --run_dir model/exp --host 127.0.0.1 --port 8000 [--max_mb 20] [--max_megapixels 50]
    MASKTK_TOKEN=secret python serve.py --host 0.0.0.0     # others on the network: open /?token=secret

GET / is the page; POST /predict (multipart field `image`) answers {"faces": [...]} with the rows of
predict.py's JSON, plus "annotated", the photo drawn as predict.py draws it (a JPEG data URL); every error is
JSON {"error": ...} with its status. Uploads are read in memory and never stored. Served by waitress: idle or
half-sent connections are closed after --timeout seconds, at most --connections are open, and photos are
decoded and predicted one at a time. Binds 127.0.0.1 unless told otherwise: it is a page for one person; bound
beyond this machine it warns, and a token (--token or MASKTK_TOKEN) keeps out whoever does not have it.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
import threading

from masktk.cli import cli, load_dotenv_once, make_parser, port, positive
from masktk.errors import UserError
from masktk.faces.detectors import detector_arg
from masktk.predict.backends import BACKENDS
from masktk.predict.predictor import Predictor
from masktk.predict.streams import camera_source, is_stream, stream_source
from masktk.predict.watcher import Watcher
from masktk.runs import add_run_flags, chosen_run
from masktk.web import PageLimits, create_app


def build_parser():
    ap = make_parser(__doc__)
    add_run_flags(ap)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network; use a token)")
    ap.add_argument("--port", type=port, default=8000, help="port to listen on (1-65535)")
    ap.add_argument("--max_mb", type=positive(float), default=20, help="largest upload accepted (MB)")
    ap.add_argument("--max_megapixels", type=positive(float), default=50,
                    help="largest photo accepted, by the width x height its header declares (read before decoding)")
    ap.add_argument("--token", default=None, help="access token every request must carry (unset: MASKTK_TOKEN, "
                    "else none)")
    ap.add_argument("--timeout", type=positive(float), default=30, help="seconds a connection may stay idle or "
                    "half-sent before it is closed")
    ap.add_argument("--connections", type=positive(int, 1, inclusive=True), default=100,
                    help="connections open at once; more wait in the system's queue")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to predict")
    ap.add_argument("--backend", choices=sorted(BACKENDS), default="torch", help="as predict.py's")
    ap.add_argument("--watch", default=None, metavar="SOURCE", help="a camera shown live at /live: a stream address "
                    "(rtsp://, http://, https://) or a webcam's number (0: the first)")
    ap.add_argument("--viewers", type=positive(int, 1, inclusive=True), default=20,
                    help="browsers watching /live at once (more are answered 503)")
    ap.add_argument("--detector", type=detector_arg, metavar="NAME_OR_FILE", default=None,
                    help="face detector, as predict.py's (unset: the one the run's training crops were cut with)")
    return ap


def loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_address(host, port):
    """Fail before the run is loaded when the address cannot be listened on (in use, not this machine's)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress binds
            s.bind((host, port))
    except OSError as e:
        raise cannot_listen(host, port, e) from None


def watch_source(text):
    """--watch: a stream address, or a webcam's number."""
    if text.isdigit():
        return camera_source(int(text))
    if is_stream(text):
        return stream_source(text)
    raise UserError(f"--watch {text}: give a stream address (rtsp://, http://, https://) or a webcam's number")


def cannot_listen(host, port, e):
    return UserError(f"cannot listen on {host}:{port} ({e.strerror}): choose another --port or --host")


@cli
def main(argv):
    load_dotenv_once()
    args = build_parser().parse_args(argv)
    token = args.token or os.environ.get("MASKTK_TOKEN") or None
    check_address(args.host, args.port)
    if not loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use the page"
              + ("" if token else "; pass --token (or set MASKTK_TOKEN) so that only those given it can"),
              file=sys.stderr, flush=True)
    predictor = Predictor.from_run(chosen_run(args.model_dir, args.run_dir), args.device, detector=args.detector,
                                   backend=args.backend)
    lock = threading.Lock()
    watcher = Watcher(predictor, watch_source(args.watch), lock) if args.watch else None
    app = create_app(predictor, PageLimits(args.max_mb, args.max_megapixels, token=token, max_viewers=args.viewers),
                     watcher, lock)
    from waitress import create_server
    try:  # each live viewer holds a thread for as long as it watches: the uploads keep 4 of their own
        server = create_server(app, host=args.host, port=args.port, threads=4 + (args.viewers if watcher else 0),
                               channel_timeout=args.timeout,
                               cleanup_interval=max(1, min(args.timeout / 2, 30)),
                               connection_limit=args.connections, max_request_header_size=64 << 10, ident="masktk",
                               # the page answers uploads over --max_mb in JSON; far beyond it waitress cuts them off
                               max_request_body_size=int(args.max_mb * 2**21) + (1 << 20))
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):  # taken since check_address
            raise cannot_listen(args.host, args.port, e) from None
        raise
    print(f"serving on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    server.run()


if __name__ == "__main__":
    main()
