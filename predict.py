"""Find every face in photos and say: mask worn / incorrect / none, gender, age group.

    python predict.py photo.jpg                            # the newest run in model/
    python predict.py photos/ more.jpg --run_dir model/demo_cv --output_dir predictions --tta flip

For each photo writes <output_dir>/<stem>_pred.jpg (a box and the label per face) and <output_dir>/<stem>.json: a
list of faces with box, detection score, the 18-class label, the mask/gender/age labels and the
probabilities. The run may be single, CV (folds averaged) or multi-task: it is detected.
"""
from __future__ import annotations

import sys

from masktk.cli import cli, fraction, load_dotenv_once, make_parser, positive
from masktk.errors import UserError
from masktk.faces.detectors import DEFAULT_DETECTOR, UPSCALE_TO, detector_arg
from masktk.files import writable_dir
from masktk.outputs import check_outputs, record_written
from masktk.predict.backends import BACKENDS
from masktk.predict.photos import CHUNK, collect, output_names, predict_chunk
from masktk.predict.predictor import MIN_SCORE, Predictor
from masktk.predict.streams import BACKOFF, camera_source, file_source, is_stream, stream_source
from masktk.predict.tracking import SMOOTH_S
from masktk.predict.video import VIDEO_EXTS, StreamOptions, outputs_of, predict_stream
from masktk.runs import add_run_flags, chosen_run
from masktk.tta import TTA_VIEWS


def build_parser():
    ap = make_parser(__doc__)
    ap.add_argument("photos", nargs="*", help="photos, videos, folders of them, or streams (rtsp://, http://, "
                    "https://: IP cameras)")
    ap.add_argument("--camera", type=positive(int, 0, inclusive=True), action="append", default=[], metavar="N",
                    help="watch webcam N (0: the first); repeatable")
    add_run_flags(ap)
    ap.add_argument("--pth_name", default="best.pth", help="checkpoint file in each run/fold/task folder")
    ap.add_argument("--output_dir", "--out", dest="output_dir", default="predictions", help="output folder")
    ap.add_argument("--tta", choices=sorted(TTA_VIEWS), default=None,
                    help="views averaged per photo (unset: the run's own, as inference.py)")
    ap.add_argument("--detector", type=detector_arg, metavar="NAME_OR_FILE", default=None,
                    help="face detector, as face_image.py's (unset: the one the run's training crops were cut "
                    f"with, recorded in its checkpoints, else mtcnn; {DEFAULT_DETECTOR} for models trained on whole "
                    "photos; docs/detectors.md)")
    ap.add_argument("--min_score", type=fraction, default=None, help="minimum face detection score (unset: "
                    + ", ".join(f"{k} {v}" for k, v in MIN_SCORE.items()) + ")")
    ap.add_argument("--detect_size", type=positive(int, 0, inclusive=True), default=1024,
                    help="longest side MTCNN sees (0: full; RetinaFace and the SSD keep their own sizes)")
    ap.add_argument("--upscale_to", type=positive(int, 0, inclusive=True, maximum=4096), default=UPSCALE_TO,
                    help="a photo whose longest side is under this is seen upscaled to it by the detector, so that "
                    "small faces are found (0: never; docs/detectors.md)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to predict")
    ap.add_argument("--decision", choices=("fitted", "none"), default="fitted",
                    help="as inference.py: the run's macro-F1 offsets (decision.json) or plain argmax")
    ap.add_argument("--every", type=positive(int, 1, inclusive=True), default=1,
                    help="videos: predict every Nth frame (the others show the latest labels)")
    g = ap.add_argument_group("videos, cameras and streams")
    g.add_argument("--max_frames", type=positive(int, 1, inclusive=True), default=None,
                   help="stop each video or stream after N frames")
    g.add_argument("--duration", type=positive(float), default=None,
                   help="stop each after S seconds (of video; of watching for a camera or stream)")
    g.add_argument("--interval", type=positive(float), default=60.0, help="seconds per row of <name>_counts.csv")
    g.add_argument("--smooth", type=positive(float), default=SMOOTH_S,
                   help="seconds over which a person's labels are averaged (their track's probabilities)")
    g.add_argument("--reconnect", type=positive(int, 0, inclusive=True, maximum=len(BACKOFF)), default=len(BACKOFF),
                   help="times a dropped stream is reopened (waits " + ", ".join(f"{w:g}" for w in BACKOFF) + " s)")
    g.add_argument("--alert", default=None, metavar="CMD", help="command run once per person who stays unmasked or "
                   "wears the mask wrong for --alert_after seconds (the alert as JSON on its input, MASKTK_* "
                   "variables)")
    g.add_argument("--alert_url", default=None, metavar="URL", help="post each such alert as JSON to this URL")
    g.add_argument("--alert_after", type=positive(float, 0, inclusive=True), default=5.0,
                   help="seconds a person stays unmasked or wrongly masked before the alert")
    ap.add_argument("--backend", choices=sorted(BACKENDS), default="torch",
                    help="torch: the checkpoints; onnx: the model.onnx files export.py wrote, run with onnxruntime")
    return ap


@cli
def main(argv):
    load_dotenv_once()  # before the parser: SM_CHANNEL_MODEL from a .env file is --model_dir's default
    args = build_parser().parse_args(argv)
    out = writable_dir(args.output_dir, "--output_dir")
    paths = [x for x in args.photos if not is_stream(x)]
    if not paths and not args.camera and not any(map(is_stream, args.photos)):
        raise UserError("nothing to watch: give photos, videos, folders, stream addresses or --camera N")
    files = collect(paths) if paths else []
    names = output_names(files)
    videos = [f for f in files if f.suffix.lower() in VIDEO_EXTS]
    photos = [f for f in files if f not in set(videos)]
    sources = ([file_source(f, names[f]) for f in videos] + [stream_source(x) for x in args.photos if is_stream(x)]
               + [camera_source(n) for n in args.camera])
    outputs = [n for f in photos for n in (f"{names[f]}_pred.jpg", f"{names[f]}.json")]
    outputs += [n for s in sources for n in outputs_of(s.name)]
    check_outputs(out, outputs, "--output_dir", inputs=files)
    pred = Predictor.from_run(chosen_run(args.model_dir, args.run_dir), args.device, args.detector, args.backend,
                              tta=args.tta, decision=args.decision, min_score=args.min_score,
                              detect_size=args.detect_size, pth_name=args.pth_name, upscale_to=args.upscale_to)
    record_written(out, outputs, "predict.py")
    n_photos, n_faces, failed = 0, 0, []
    for s in range(0, len(photos), CHUNK):
        done, faces, bad = predict_chunk(pred, photos[s:s + CHUNK], out, names)
        n_photos, n_faces, failed = n_photos + done, n_faces + faces, failed + bad
    bad_sources = predict_sources(pred, sources, out, stream_options(args))
    print(f"{n_photos} photo(s), {len(sources) - len(bad_sources)} video(s) or stream(s), {n_faces} face(s) in "
          f"photos -> {out}", file=sys.stderr)
    failed += bad_sources
    if failed:  # each was named as it failed; the others are done
        print(f"failed: {len(failed)} of {len(photos) + len(sources)} input(s): "
              f"{', '.join(map(str, failed[:5]))}{', ...' if len(failed) > 5 else ''}", file=sys.stderr)
        sys.exit(2)


def stream_options(args):
    return StreamOptions(every=args.every, max_frames=args.max_frames, duration=args.duration, interval=args.interval,
                         smooth_s=args.smooth, reconnect=args.reconnect, alert=args.alert, alert_url=args.alert_url,
                         alert_after=args.alert_after)


def predict_sources(pred, sources, out, opts):
    """Each video, camera or stream in turn; one that cannot be read is named and skipped, the rest go on -> the
    failed ones."""
    failed = []
    for src in sources:
        try:
            r = predict_stream(pred, src, out, opts)
        except UserError as e:
            print(f"error: {e}; skipped", file=sys.stderr)
            failed.append(src.describe())
            continue
        dropped = f" ({r.dropped} dropped: prediction slower than the source)" if r.dropped else ""
        print(f"{src.describe()}: {r.frames} frame(s){dropped}, {r.faces} face(s) in the sampled frames, {r.people} "
              f"people, {r.alerts} alert(s)", file=sys.stderr)
    return failed


if __name__ == "__main__":
    main()
