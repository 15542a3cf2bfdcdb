"""Score a submission against the ground truth: macro F1 over the 18 classes, accuracy, per task.

    SM_GROUND_TRUTH_DIR=demo_data/eval SM_OUTPUT_DATA_DIR=output python evaluation.py
    python evaluation.py --gt_dir demo_data/eval --output_dir output --output_name output

Reads <gt_dir>/gt.csv and <output_dir>/<output_name>.csv (both ImageID, ans). Prints JSON (f1,
accuracy, per-task F1, per-class precision/recall/F1/support) and writes
<output_dir>/<output_name>_confusion.png and <output_name>_scores.json.

    python evaluation.py --boxes ../shared/realdata/kaggle_facemask --pred_dir predictions [--min_face 32]

Mask status on real photos with annotated face boxes (PASCAL-VOC: annotations/*.xml, images/): each
annotated face of at least --min_face px is matched to predict.py's faces (<pred_dir>/*.json) at
IoU >= 0.5; prints mask accuracy, macro F1 and the 3x3 confusion over the matched faces, by face size,
with the faces missed by the detector counted apart, and writes <pred_dir>/boxes_scores.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix, f1_score, precision_recall_fscore_support

from labels import MASK_NAMES, class_names, decode
from outputs import check_outputs, record_written
from utils import (UserError, add_bool, atomic_path, check_ids, cli, demo_note, env_default, load_dotenv_once,
                   make_parser, positive, write_json_atomic)
from voc import match_boxes, read_voc

CLASSES = list(range(18))


def macro_f1(y_true, y_pred, labels=CLASSES):
    return float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0))


def score(y_true, y_pred):
    """Pure: 18-class labels in, metrics dict out (macro F1 over all 18 classes, as scored)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = {"f1": macro_f1(y_true, y_pred), "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0}
    for name, t, p, n in zip(("mask", "gender", "age"), decode(y_true), decode(y_pred), (3, 2, 3)):
        out[f"f1_{name}"] = macro_f1(t, p, list(range(n)))
    return out


def per_class(y_true, y_pred):
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=CLASSES, zero_division=0)
    return [dict(cls=c, name=n, precision=float(a), recall=float(b), f1=float(x), support=int(y))
            for c, n, a, b, x, y in zip(CLASSES, class_names(), p, r, f, s)]


def confusion_figure(y_true, y_pred, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay
    fig, ax = plt.subplots(figsize=(9, 8))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=CLASSES, display_labels=class_names(), ax=ax,
                                            cmap="Blues", colorbar=False, xticks_rotation=90,
                                            text_kw={"fontsize": 6})
    ax.tick_params(labelsize=6)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def read_answers(path, what):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found ({what})")
    try:
        df = pd.read_csv(path, dtype={"ImageID": str})
    except Exception as e:
        raise UserError(f"{path}: cannot be read as CSV ({e})")
    for c in ("ImageID", "ans"):
        if c not in df.columns:
            raise UserError(f"{path}: missing column {c!r}; expected ImageID,ans")
    ans = pd.to_numeric(df["ans"], errors="coerce")
    bad = ans.isna() | (ans != ans.round()) | (ans < 0) | (ans > 17)
    if bad.any():
        raise UserError(f"{path}: ans must be an integer in 0-17; row {int(bad.idxmax()) + 2} has "
                        f"'{df['ans'][bad].iloc[0]}'")
    check_ids(df["ImageID"], path)
    return df.assign(ans=ans.astype(int))


def evaluate_files(gt_path, sub_path):
    gt, sub = read_answers(gt_path, "ground truth"), read_answers(sub_path, "submission")
    missing, extra = set(gt["ImageID"]) - set(sub["ImageID"]), set(sub["ImageID"]) - set(gt["ImageID"])
    if missing or extra:
        raise UserError(f"{sub_path}: {len(missing)} ImageIDs missing and {len(extra)} extra compared with "
                        f"{gt_path} (e.g. {sorted(missing or extra)[0]!r}); the submission must cover exactly "
                        "the ground truth's images")
    merged = gt.merge(sub, on="ImageID", suffixes=("_true", "_pred"))
    return merged["ans_true"].to_numpy(), merged["ans_pred"].to_numpy()


SIZE_BINS = ((32, 64), (64, 128), (128, 1_000_000))


def read_predictions(pred_dir):
    """predict.py's per-photo JSON files -> {photo stem: [(box, mask id)]}."""
    pred_dir = Path(pred_dir)
    files = sorted(pred_dir.glob("*.json")) if pred_dir.is_dir() else []
    out, odd = {}, []
    for f in files:
        try:
            d = json.loads(f.read_text())
            out[Path(d["photo"]).stem] = [(face["box"], int(face["mask"])) for face in d["faces"]]
        except (ValueError, KeyError, TypeError):
            odd += [] if f.name == "boxes_scores.json" else [f.name]  # our own scores file is expected there
    if odd:  # a damaged file would otherwise count its photo's faces as missed, silently
        print(f"warning: {pred_dir}: {len(odd)} .json file(s) are not predict.py output, their photos count as not "
              f"predicted: {', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''}", file=sys.stderr)
    if not out:
        raise UserError(f"{pred_dir}: no predict.py output (<photo>.json); run python predict.py PHOTOS --output_dir {pred_dir}")
    return out


def mask_scores(y, pred):
    return {"mask_accuracy": float((y == pred).mean()) if len(y) else 0.0,
            "mask_f1": macro_f1(y, pred, [0, 1, 2]) if len(y) else 0.0, "n": int(len(y))}


def score_boxes(data_dir, pred_dir, min_face=32, min_iou=0.5):
    """Mask status of annotated faces matched to predicted ones. -> dict of figures."""
    faces = read_voc(data_dir)
    faces = faces[faces["size"] >= min_face]
    preds = read_predictions(pred_dir)
    y, pred, size = [], [], []
    missed = 0
    for stem, gt in faces.groupby("stem", sort=True):
        found = preds.get(stem, [])
        pairs = match_boxes(gt[["xmin", "ymin", "xmax", "ymax"]].to_numpy(), [b for b, _ in found], min_iou)
        missed += len(gt) - len(pairs)
        for g, p in pairs:
            y.append(gt["mask"].iloc[g]), pred.append(found[p][1]), size.append(gt["size"].iloc[g])
    y, pred, size = np.asarray(y, int), np.asarray(pred, int), np.asarray(size)
    res = {**mask_scores(y, pred), "annotated": int(len(faces)), "missed": int(missed),
           "photos": int(faces["stem"].nunique()), "photos_predicted": int(sum(s in preds for s in faces["stem"].unique())),
           "always_wear_accuracy": float((y == 0).mean()) if len(y) else 0.0, "min_face": min_face,
           "confusion": confusion_matrix(y, pred, labels=[0, 1, 2]).tolist() if len(y) else [[0] * 3] * 3}
    res["by_size"] = {f"{lo}-{hi - 1}" if hi < 1_000_000 else f"{lo}+": mask_scores(y[(size >= lo) & (size < hi)],
                                                                                    pred[(size >= lo) & (size < hi)])
                      for lo, hi in SIZE_BINS if hi > min_face}
    return res


def print_boxes(res):
    print(json.dumps({k: v for k, v in res.items() if k not in ("confusion", "by_size")}))
    print("confusion (rows: annotated, columns: predicted)\n" + f"{'':>10}" + "".join(f"{n:>10}" for n in MASK_NAMES))
    for n, row in zip(MASK_NAMES, res["confusion"]):
        print(f"{n:>10}" + "".join(f"{v:>10}" for v in row))
    for k, v in res["by_size"].items():
        print(f"faces {k:>8} px: n {v['n']:4d}  accuracy {v['mask_accuracy']:.3f}  macro F1 {v['mask_f1']:.3f}")


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
    ap.add_argument("--boxes", default=None, metavar="DIR", help="score mask status on real photos with annotated "
                    "boxes (annotations/*.xml, images/) against predict.py's output in --output_dir")
    ap.add_argument("--min_face", type=positive(int, 1, inclusive=True), default=32,
                    help="with --boxes: smallest annotated face counted (shorter side, px)")
    return ap


@cli
def main(argv):
    load_dotenv_once()
    args = build_parser().parse_args(argv)
    if args.boxes:
        pred_dir = args.output_dir or "predictions"
        res = score_boxes(args.boxes, pred_dir, args.min_face)
        check_outputs(pred_dir, ["boxes_scores.json"], "--output_dir", say_replaced=False)  # scored again: no news
        record_written(pred_dir, ["boxes_scores.json"], "evaluation.py")
        write_json_atomic(Path(pred_dir) / "boxes_scores.json", res)
        print_boxes(res)
        return
    demo_note(args.eval_dir, "demo_data/eval", "SM_GROUND_TRUTH_DIR", ("--eval_dir", "--gt_dir"), argv)
    out_dir = Path(args.output_dir or env_default("SM_OUTPUT_DATA_DIR", "output"))
    y_true, y_pred = evaluate_files(Path(args.eval_dir) / args.gt_name, out_dir / f"{args.output_name}.csv")
    result = {**score(y_true, y_pred), "n": int(len(y_true)), "per_class": per_class(y_true, y_pred)}
    names = [f"{args.output_name}_scores.json", f"{args.output_name}_confusion.png"]
    check_outputs(out_dir, names, "--output_dir or --output_name", [Path(args.eval_dir) / args.gt_name], False)
    record_written(out_dir, names, "evaluation.py")
    write_json_atomic(out_dir / f"{args.output_name}_scores.json", result)
    fig = confusion_figure(y_true, y_pred, f"macro F1 {result['f1']:.4f}, accuracy {result['accuracy']:.4f}")
    with atomic_path(out_dir / f"{args.output_name}_confusion.png") as tmp:
        fig.savefig(tmp, dpi=110)
    print(json.dumps({k: v for k, v in result.items() if k != "per_class"}))
    if not args.per_class:
        return
    print(classification_report(y_true, y_pred, labels=CLASSES, target_names=[f"{c:>2} {n}" for c, n in
                                zip(CLASSES, class_names())], digits=3, zero_division=0))


if __name__ == "__main__":
    main()
