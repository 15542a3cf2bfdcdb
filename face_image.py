"""Crop faces with RetinaFace (or MTCNN, OpenCV's SSD, their unions: --detector): batched, resumable.

    python face_image.py                           # demo_data/{train,eval}/images -> .../faces
    python face_image.py --data_root /data         # /data/train and /data/eval
    SM_CHANNEL_TRAIN=/data/train SM_CHANNEL_EVAL=/data/eval python face_image.py

For each split dir holding images/, writes faces/ with the same relative paths and names, plus
faces/boxes.csv (path, x1, y1, x2, y2, score, detected: the face box in full-resolution pixels, or
the centre region when no face was found). Originals are never modified. An interrupted run, started
again, skips finished work and ends with the same files as an uninterrupted one.
"""
from __future__ import annotations

import json
from pathlib import Path

from masktk.cli import add_bool, cli, demo_note, env_default, fraction, load_dotenv_once, make_parser, positive
from masktk.errors import UserError
from masktk.faces.crop import DEFAULT_MARGIN, DETECT_SIZE_RULE, MARGIN, MARGINS, CropRecipe
from masktk.faces.detectors import DEFAULT_DETECTOR, DETECT_SIZE, MTCNN_THRESHOLDS, RETRY_THRESHOLDS, detector_arg
from masktk.faces.folders import crop_split
from masktk.metrics.detection import score_detection

MARGIN_HELP = "crop margins as fractions of the face box width, each detector boxing a face its own way (unset: " + \
    ", ".join(f"{' '.join(map(str, m))} for {d}" for d, m in {**MARGINS, "the others": DEFAULT_MARGIN}.items()) + ")"


@cli
def main(argv):
    load_dotenv_once()
    ap = make_parser(__doc__)
    ap.add_argument("--data_root", "--data_dir", dest="data_root", default=None, help="root holding train/ and "
                    "eval/ (unset: the SM_CHANNEL_TRAIN / SM_CHANNEL_EVAL dirs when set, else demo_data)")
    ap.add_argument("--batch_size", type=positive(int, 1, inclusive=True), default=32, help="images per MTCNN call")
    ap.add_argument("--detect_size", type=DETECT_SIZE_RULE, default=DETECT_SIZE,
                    help="longest side seen by MTCNN (0: full; RetinaFace and the SSD keep their own sizes)")
    ap.add_argument("--margin", type=MARGIN, nargs=3, default=None,
                    metavar=("TOP", "SIDES", "BOTTOM"),
                    help=MARGIN_HELP)
    ap.add_argument("--detector", type=detector_arg, metavar="NAME_OR_FILE", default=DEFAULT_DETECTOR,
                    help="retinaface: RetinaFace MobileNet-0.25 (ONNX) at up to 1024 px (finds the most street faces "
                    "of the fast detectors); mtcnn: MTCNN (the earlier default); ssd_mtcnn: OpenCV's SSD, "
                    "then MTCNN where it finds no face (finds the most masked faces); mtcnn_ssd: MTCNN's first pass, "
                    "then the SSD, then MTCNN's second pass; ssd: the SSD alone; union: the SSD and MTCNN's first pass on "
                    "every photo, their faces merged, then MTCNN's second pass (finds many street faces); "
                    "docs/detectors.md")
    ap.add_argument("--thresholds", type=fraction, nargs=3, default=list(MTCNN_THRESHOLDS), metavar=("P", "R", "O"),
                    help="MTCNN stage thresholds; lower finds more masked faces and more false ones")
    add_bool(ap, "--second_pass", True, f"look again with thresholds {' '.join(map(str, RETRY_THRESHOLDS))} in "
             "the photos where no face was found (most are masked faces)")
    add_bool(ap, "--align", False, "turn each crop so the eyes sit level (from the detector's landmarks; the SSD "
             "gives none); recorded in crop.json, so inference and predict.py cut faces the same way")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where MTCNN runs")
    ap.add_argument("--workers", type=positive(int, 1, inclusive=True), default=None, help="decoding threads")
    ap.add_argument("--score", nargs="+", default=None, metavar="ROOT", help="score detection against known face "
                    "boxes (faces_gt.csv of synthetic.py --faces, or PASCAL-VOC annotations/) instead of cropping")
    ap.add_argument("--min_face", type=positive(int, 1, inclusive=True), default=32,
                    help="with --score: smallest face counted (px)")
    ap.add_argument("--min_score", type=fraction, default=0.9, help="with --score: smallest detection score kept "
                    "(predict.py's)")
    ap.add_argument("--upscale_to", type=positive(int, 0, inclusive=True, maximum=4096), default=0,
                    help="with --score: photos smaller than this are seen upscaled to it, as predict.py sees them "
                    "(its default is 512; 0: as they are)")
    args = ap.parse_args(argv)
    recipe = CropRecipe(args.detector, args.detect_size or None, tuple(args.thresholds), args.second_pass,
                        tuple(args.margin) if args.margin else None, args.align)
    det = recipe.create_detector(args.device)
    if args.score:
        return print_scores(args, det)
    if args.data_root:
        splits = [Path(args.data_root) / s for s in ("train", "eval") if (Path(args.data_root) / s / "images").is_dir()]
    else:
        envs = [env_default("SM_CHANNEL_TRAIN"), env_default("SM_CHANNEL_EVAL")]
        splits = [Path(p) for p in envs if p]
        if not splits:
            demo_note("demo_data", "demo_data", "SM_CHANNEL_TRAIN", ("--data_root", "--data_dir"), argv)
            splits = [Path("demo_data") / s for s in ("train", "eval")]
    splits = [s for s in splits if (s / "images").is_dir()]
    if not splits:
        raise UserError(f"no images/ folder found under {args.data_root or 'demo_data'}: pass --data_root ROOT "
                        "holding train/images and eval/images (python synthetic.py makes a demo one)")
    tot = [0, 0, 0, 0]
    for s in splits:
        r = crop_split(s, recipe, det, args.batch_size, args.workers)
        tot = [a + b for a, b in zip(tot, r)]
        print(f"{s}: {r[0]} images, {r[1]} faces found, {r[2]} fallbacks -> {s / 'faces'}")
    print(f"{tot[0]} images, {tot[1]} faces found, {tot[2]} fallbacks" + (f", {tot[3]} unreadable" if tot[3] else ""))


def print_scores(args, det):
    """--score: one JSON line per root, the detector's recall and precision against its known boxes."""
    for root in args.score:
        print(json.dumps({"data": str(root), "detector": args.detector, "detect_size": args.detect_size,
                          "second_pass": args.second_pass, "upscale_to": args.upscale_to,
                          **score_detection(root, det, args.min_face, args.min_score, args.upscale_to)}))


if __name__ == "__main__":
    main()
