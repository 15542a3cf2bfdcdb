"""A local web page to try a trained run: pick a photo, see it annotated with its faces listed.

    python serve.py                                   # the newest run in model/, http://127.0.0.1:8000
    python serve.py --run_dir model/exp --host 127.0.0.1 --port 8000 [--max_mb 20]

GET / is the page; POST /predict (multipart field `image`) answers {"faces": [...]} with the rows of
predict.py's JSON, plus "annotated", the photo drawn as predict.py draws it (a JPEG data URL). Uploads are
decoded in memory (werkzeug spools large ones to the system's temporary folder) and never stored.
Binds 127.0.0.1 unless told otherwise: it is a page for one person, not a public service.
"""
from __future__ import annotations

from masktk.cli import cli, load_dotenv_once, make_parser, positive
from masktk.predict.backends import BACKENDS
from masktk.predict.predictor import Predictor
from masktk.runs import add_run_flags, chosen_run
from masktk.web import create_app


@cli
def main(argv):
    load_dotenv_once()
    ap = make_parser(__doc__)
    add_run_flags(ap)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network, with care)")
    ap.add_argument("--port", type=positive(int, 1, inclusive=True), default=8000, help="port to listen on")
    ap.add_argument("--max_mb", type=positive(float), default=20, help="largest upload accepted (MB)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to predict")
    ap.add_argument("--backend", choices=sorted(BACKENDS), default="torch", help="as predict.py's")
    args = ap.parse_args(argv)
    predictor = Predictor.from_run(chosen_run(args.model_dir, args.run_dir), args.device, backend=args.backend)
    print(f"serving on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    create_app(predictor, args.max_mb).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
