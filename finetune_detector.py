"""Fine-tune the face detector (RetinaFace MobileNet-0.25) on your own face boxes, and use it everywhere.

    python finetune_detector.py --data /data/kaggle_facemask --out detectors/street
    python finetune_detector.py --data my_voc my_yolo boxes.csv --epochs 30 --out detectors/door
    python predict.py photos/ --detector detectors/street/detector.onnx    # also face_image.py, serve.py, inference.py

--data takes PASCAL-VOC folders (annotations/*.xml + images/), YOLO folders (images/ + labels/ with data.yaml or
classes.txt) and boxes CSVs (path,x1,y1,x2,y2 per face; paths relative to the CSV's folder, or to <split>/images
with a split column as synthetic.py's faces_gt.csv; face_image.py's faces/boxes.csv rows with detected 0 are
skipped). The photos are split by photo (--val_ratio); it starts from the shipped weights (or --weights FILE),
validates that starting point, trains on street-photo views (scale, crop, flip, light, blur) and keeps the epoch
of the highest validation AP. Interrupted, it resumes from <out>/last.pth when run again with the same --out.

Writes <out>/detector.onnx (the detector, for onnxruntime), detector.json (its epoch and validation figures),
last.pth (resume), config.json, metrics.json and tb/ (TensorBoard).
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from masktk.cli import add_bool, cli, fraction, load_dotenv_once, make_parser, positive
from masktk.errors import Log, UserError
from masktk.faces.detectors import detector_arg, is_detector_file
from masktk.files import writable_dir
from masktk.train.detector import CHECKPOINT, FinetuneSettings, finetune


def build_parser():
    ap = make_parser(__doc__)
    ap.add_argument("--data", nargs="+", required=True, help="box sets: VOC or YOLO folders, boxes CSVs")
    ap.add_argument("--out", required=True, help="output folder (an unfinished run in it resumes)")
    ap.add_argument("--weights", type=detector_arg, default=None, metavar="FILE",
                    help="detector file to start from (unset: the shipped RetinaFace-0.25)")
    ap.add_argument("--epochs", type=positive(int, 1, inclusive=True), default=10, help="training epochs")
    ap.add_argument("--batch_size", type=positive(int, 1, inclusive=True), default=8, help="photos per step")
    ap.add_argument("--lr", type=positive(float), default=2e-4, help="peak learning rate (one-cycle schedule)")
    ap.add_argument("--size", type=positive(int, 64, inclusive=True, maximum=2048), default=512,
                    help="training views are SIZE x SIZE")
    ap.add_argument("--val_ratio", type=fraction, default=0.2, help="share of photos validated on (by photo)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, the views and the initialisation")
    ap.add_argument("--min_face", type=positive(int, 1, inclusive=True), default=6,
                    help="annotated faces smaller than this (px, after scaling) are not learned")
    ap.add_argument("--landmark_weight", type=positive(float, 0, inclusive=True), default=1.0,
                    help="weight keeping the starting detector's landmarks (the boxes carry none)")
    add_bool(ap, "--progress", True, "print a line per epoch")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train (auto: CUDA "
                    "where there is one)")
    return ap


@cli
def main(argv):
    load_dotenv_once()
    args = build_parser().parse_args(argv)
    if args.weights is not None and not is_detector_file(args.weights):
        raise UserError(f"--weights {args.weights}: give a detector file (.onnx); named detectors other than the "
                        "shipped RetinaFace cannot be fine-tuned")
    writable_dir(args.out, "--out")
    if (Path(args.out) / CHECKPOINT).is_file():
        print(f"resuming the run in {args.out}", flush=True)
    cfg = FinetuneSettings(**{f.name: getattr(args, f.name) if f.name != "data" else tuple(args.data)
                              for f in fields(FinetuneSettings)})
    log = Log()
    history = finetune(cfg, log, say=lambda s: print(s, flush=True) if cfg.progress else None)
    log.summary()
    best = max(history, key=lambda r: r["ap50"])
    print(f"best: epoch {best['epoch']} (validation AP@0.5 {best['ap50']:.3f}) -> {Path(args.out) / 'detector.onnx'}")


if __name__ == "__main__":
    main()
