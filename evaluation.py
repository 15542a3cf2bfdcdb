"""Score a submission against the ground truth: macro F1 over the 18 classes, accuracy, per task.

    SM_GROUND_TRUTH_DIR=demo_data/eval SM_OUTPUT_DATA_DIR=output python evaluation.py
    python evaluation.py --gt_dir demo_data/eval --output_dir output --output_name output

Reads <gt_dir>/gt.csv and <output_dir>/<output_name>.csv (both ImageID, ans; a mask-only run's submission has
ImageID, mask and is scored on the mask state alone). Prints JSON (f1, accuracy, per-task F1, per-class
precision/recall/F1/support) and writes
<output_dir>/<output_name>_confusion.png and <output_name>_scores.json.

    python evaluation.py --boxes predictions --eval_dir ../shared/realdata/kaggle_facemask [--min_face 32]

Mask checking on real photos with annotated face boxes (PASCAL-VOC: annotations/*.xml + images/, or YOLO:
images/ + labels/*.txt + data.yaml or classes.txt), from predict.py's output (<pred_dir>/*.json), measured two ways:
- as mask detectors are (YOLO's validation): AP@0.5 per mask state, mAP@0.5 and mAP@0.5:0.95 (COCO's 101-point
  AP), and the detection's own AP, at all face sizes and for faces of --min_face px or more. Each predicted face
  is a detection of every state with confidence = detection score x that state's probability (--score_mode all),
  or of its decided state only (top). Predict with a low --min_score (predict.py --min_score 0.02) so that the
  curves reach low confidences; precision, recall and the confusion at the decided labels count the faces
  scored >= --min_score (0.5: what predict.py keeps by default with RetinaFace). Writes boxes_pr.png.
- as before: each annotated face of at least --min_face px matched to a predicted face at IoU >= 0.5; mask
  accuracy, macro F1 and the 3x3 confusion over the matched faces, by face size, the missed faces counted apart.
Both go to <pred_dir>/boxes_scores.json. The older spelling --boxes DATA --pred_dir PRED works too.
"""
from __future__ import annotations

import json
from pathlib import Path

from sklearn.metrics import classification_report

from masktk.cli import add_bool, cli, demo_note, env_default, fraction, load_dotenv_once, make_parser, positive
from masktk.data.face_boxes import box_layout
from masktk.files import atomic_path, write_json_atomic
from masktk.metrics.classification import confusion_figure, evaluate_files, per_class, score
from masktk.metrics.detection import pr_figure, print_boxes, print_detector_scores, score_as_detector, score_boxes
from masktk.outputs import check_outputs, record_written


def build_parser():
    ap = make_parser(__doc__)
    ap.add_argument("--eval_dir", "--gt_dir", dest="eval_dir", default=env_default("SM_GROUND_TRUTH_DIR", "demo_data/eval"),
                    help="eval dir with gt.csv (env SM_GROUND_TRUTH_DIR)")
    ap.add_argument("--output_dir", "--pred_dir", dest="output_dir", default=None,
                    help="folder with the predictions: inference.py's --output_dir, or with --boxes predict.py's (unset: "
                    "env SM_OUTPUT_DATA_DIR, else output; with --boxes: predictions)")
    ap.add_argument("--output_name", default="output", help="submission is <output_dir>/<output_name>.csv")
    ap.add_argument("--gt_name", default="gt.csv", help="answers file in --eval_dir (ImageID, ans)")
    add_bool(ap, "--per_class", True, "print the per-class table after the JSON line")
    ap.add_argument("--boxes", default=None, metavar="PRED_DIR", help="score predict.py's output in PRED_DIR against "
                    "the annotated boxes of --eval_dir (VOC or YOLO); a dataset folder here means the older spelling, "
                    "with the predictions in --output_dir")
    ap.add_argument("--min_face", type=positive(int, 1, inclusive=True), default=32,
                    help="with --boxes: smallest annotated face counted (shorter side, px); AP is given at all sizes too")
    ap.add_argument("--score_mode", choices=("all", "top"), default="all", help="with --boxes: each face a detection "
                    "of every mask state (score x probability), or of its decided state only")
    ap.add_argument("--min_score", type=fraction, default=0.5, help="with --boxes: detection score of the faces whose "
                    "labels are counted for precision, recall and the confusion")
    return ap


@cli
def main(argv):
    load_dotenv_once()
    args = build_parser().parse_args(argv)
    if args.boxes:
        return score_boxes_cli(args)
    demo_note(args.eval_dir, "demo_data/eval", "SM_GROUND_TRUTH_DIR", ("--eval_dir", "--gt_dir"), argv)
    out_dir = Path(args.output_dir or env_default("SM_OUTPUT_DATA_DIR", "output"))
    y_true, y_pred, answer = evaluate_files(Path(args.eval_dir) / args.gt_name, out_dir / f"{args.output_name}.csv")
    result = {**score(y_true, y_pred, answer), "n": int(len(y_true)), "tasks": list(answer.tasks)}
    y_true, classes = answer.of_labels(y_true), answer.names()  # a mask-only run's submission is scored on mask states
    result["per_class"] = per_class(y_true, y_pred, classes)
    names = [f"{args.output_name}_scores.json", f"{args.output_name}_confusion.png"]
    check_outputs(out_dir, names, "--output_dir or --output_name", [Path(args.eval_dir) / args.gt_name], False)
    record_written(out_dir, names, "evaluation.py")
    write_json_atomic(out_dir / f"{args.output_name}_scores.json", result)
    fig = confusion_figure(y_true, y_pred, f"macro F1 {result['f1']:.4f}, accuracy {result['accuracy']:.4f}", classes)
    with atomic_path(out_dir / f"{args.output_name}_confusion.png") as tmp:
        fig.savefig(tmp, dpi=110)
    print(json.dumps({k: v for k, v in result.items() if k != "per_class"}))
    if not args.per_class:
        return
    print(classification_report(y_true, y_pred, labels=list(range(len(classes))),
                                target_names=[f"{c:>2} {n}" for c, n in enumerate(classes)], digits=3, zero_division=0))


def score_boxes_cli(args):
    data, pred_dir = (args.boxes, args.output_dir or "predictions") if box_layout(args.boxes) else (args.eval_dir,
                                                                                                    args.boxes)
    res = score_boxes(data, pred_dir, args.min_face)
    res["detector"] = score_as_detector(data, pred_dir, args.min_face, args.score_mode, args.min_score)
    names = ["boxes_scores.json", "boxes_pr.png"]
    check_outputs(pred_dir, names, "--boxes", say_replaced=False)  # scored again: no news
    record_written(pred_dir, names, "evaluation.py")
    curves = res["detector"].pop("curves")
    write_json_atomic(Path(pred_dir) / "boxes_scores.json", res)
    all_sizes = res["detector"]["all_sizes"]
    fig = pr_figure(curves, f"IoU 0.5, all sizes: mAP@0.5 {all_sizes['map50'] or 0:.3f}")
    with atomic_path(Path(pred_dir) / "boxes_pr.png") as tmp:
        fig.savefig(tmp, dpi=110)
    print_boxes(res)
    print_detector_scores(res["detector"])


if __name__ == "__main__":
    main()
