"""evaluation.py: metrics equal sklearn's; bad submissions get one clear line and exit 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, assert_clean_error, run
from sklearn.metrics import f1_score

from masktk.metrics.classification import score


def test_macro_f1_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    for n in (10, 100, 1000):
        y, p = rng.integers(0, 18, n), rng.integers(0, 18, n)
        y[y == 5] = 4  # a class absent from the truth still counts, as in the competition
        s = score(y, p)
        assert s["f1"] == pytest.approx(f1_score(y, p, average="macro", labels=range(18), zero_division=0))
        assert s["accuracy"] == pytest.approx((y == p).mean())
        assert s["f1_mask"] == pytest.approx(f1_score(y // 6, p // 6, average="macro", labels=range(3), zero_division=0))


def test_macro_f1_against_a_count_by_hand():
    """Three classes present of the 18; every other class has F1 0 and still counts in the mean."""
    y = np.array([0, 0, 0, 1, 1, 17])
    p = np.array([0, 0, 1, 1, 1, 0])
    # class 0: tp 2, fp 1, fn 1 -> F1 2/3; class 1: tp 2, fp 1, fn 0 -> 0.8; class 17: tp 0 -> 0
    assert score(y, p)["f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 18)
    assert score(y, p)["accuracy"] == pytest.approx(4 / 6)


def _write(tmp_path, gt, sub):
    (tmp_path / "gt").mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    gt.to_csv(tmp_path / "gt" / "gt.csv", index=False)
    sub.to_csv(tmp_path / "out" / "output.csv", index=False)
    return {"SM_GROUND_TRUTH_DIR": str(tmp_path / "gt"), "SM_OUTPUT_DATA_DIR": str(tmp_path / "out")}


@pytest.mark.e2e
def test_cli_scores_and_writes_confusion_png(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"{i:04d}.jpg" for i in range(60)]
    gt = pd.DataFrame({"ImageID": ids, "ans": rng.integers(0, 18, 60)})
    sub = pd.DataFrame({"ImageID": ids[::-1], "ans": rng.integers(0, 18, 60)})  # any order
    env = _write(tmp_path, gt, sub)
    p = run("evaluation.py", env=env)
    out = json.loads(p.stdout.splitlines()[0])
    m = gt.merge(sub, on="ImageID")
    assert out["f1"] == pytest.approx(f1_score(m.ans_x, m.ans_y, average="macro", labels=range(18), zero_division=0))
    assert (tmp_path / "out" / "output_confusion.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "output_scores.json").read_text())["n"] == 60


@pytest.mark.e2e
@pytest.mark.parametrize("case,needle", [
    ("missing", "missing"), ("extra", "extra"), ("range", "0-17"), ("column", "'ans'"), ("text", "0-17"),
    ("dupe", "twice")])
def test_bad_submissions_exit_2(tmp_path, case, needle):
    ids = [f"{i}.jpg" for i in range(20)]
    gt = pd.DataFrame({"ImageID": ids, "ans": np.arange(20) % 18})
    sub = gt.copy()
    if case == "missing":
        sub = sub.iloc[1:]
    elif case == "extra":
        sub = pd.concat([sub, pd.DataFrame({"ImageID": ["x.jpg"], "ans": [1]})])
    elif case == "range":
        sub.loc[3, "ans"] = 18
    elif case == "column":
        sub = sub.rename(columns={"ans": "answer"})
    elif case == "text":
        sub["ans"] = sub["ans"].astype(str)
        sub.loc[2, "ans"] = "cat"
    elif case == "dupe":
        sub.loc[1, "ImageID"] = sub.loc[0, "ImageID"]
    env = _write(tmp_path, gt, sub)
    assert_clean_error(run("evaluation.py", env=env, check=False), needle, "output.csv")
    assert not (tmp_path / "out" / "output_scores.json").exists()


def _voc(path, objects):
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{objs}</annotation>")


@pytest.mark.e2e
def test_boxes_benchmark_matches_faces_by_iou_on_a_hand_made_case(tmp_path):
    from masktk.faces.boxes import match_boxes

    # two predictions overlap one face: the better one takes it, the other stays unmatched
    assert match_boxes([[0, 0, 10, 10]], [[1, 1, 10, 10], [0, 0, 10, 10]]) == [(0, 1)]
    assert match_boxes([[0, 0, 10, 10]], [[6, 6, 16, 16]]) == []  # IoU 0.09
    d = tmp_path / "kaggle"
    (d / "images").mkdir(parents=True)
    (d / "annotations").mkdir()
    for stem in ("a", "b"):
        (d / "images" / f"{stem}.png").write_bytes(b"")  # only the files' presence is read
    _voc(d / "annotations" / "a.xml", [("with_mask", (0, 0, 40, 40)), ("without_mask", (100, 0, 140, 40)),
                                      ("mask_weared_incorrect", (200, 0, 240, 40)), ("with_mask", (300, 0, 310, 10))])
    _voc(d / "annotations" / "b.xml", [("con_mascarilla", (0, 0, 100, 100))])  # the MaskON repository's Spanish name
    pred = tmp_path / "pred"
    pred.mkdir()
    def face(box, mask):  # as predict.py writes it: 18 probabilities, the decided mask among them
        return dict(box=box, mask=mask, score=0.9, probs=[0.9 / 6 if k // 6 == mask else 0.05 / 6 for k in range(18)])
    faces_a = [face([2, 2, 40, 40], 0), face([100, 0, 140, 40], 0),  # not wear called wear
               face([500, 0, 540, 40], 2)]  # a face nobody annotated; the incorrect one is missed
    (pred / "a.json").write_text(json.dumps({"photo": str(d / "images" / "a.png"), "faces": faces_a}))
    (pred / "b.json").write_text(json.dumps({"photo": "elsewhere/b.png", "faces": [face([0, 0, 100, 95], 0)]}))
    p = run("evaluation.py", "--boxes", d, "--pred_dir", pred)
    res = json.loads(p.stdout.splitlines()[0])
    assert res["annotated"] == 4 and res["missed"] == 1 and res["n"] == 3  # the 10 px face is below --min_face
    assert res["mask_accuracy"] == pytest.approx(2 / 3) and res["always_wear_accuracy"] == pytest.approx(2 / 3)
    full = json.loads((pred / "boxes_scores.json").read_text())
    assert full["confusion"] == [[2, 0, 0], [0, 0, 0], [1, 0, 0]]
    # `... | head -1` (docs/results.md, make realmask-bench): a reader that leaves early is no error
    r, w = os.pipe()
    os.close(r)
    p = subprocess.run([sys.executable, "evaluation.py", "--boxes", str(d), "--pred_dir", str(pred)], cwd=REPO,
                       stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(w)
    assert p.returncode == 0 and p.stderr == "", p.stderr[-2000:]
    assert full["by_size"]["32-63"]["n"] == 2 and full["by_size"]["64-127"]["n"] == 1
    (pred / "b.json").write_text("{damaged")  # its photo's face now counts as missed: said, not silent
    p = run("evaluation.py", "--boxes", d, "--pred_dir", pred)
    assert json.loads(p.stdout.splitlines()[0])["missed"] == 2 and "b.json" in p.stderr and "warning" in p.stderr
    # odd annotations are one warning each, named and counted, never a crash: an unknown class, no box, a box
    # outside its photo, an annotation without its photo
    (d / "images" / "c.png").write_bytes(b"")
    (d / "annotations" / "c.xml").write_text("<annotation><size><width>50</width><height>50</height></size>"
                                             "<object><name>shoe</name></object><object><name>with_mask</name>"
                                             "</object><object><name>with_mask</name><bndbox><xmin>60</xmin><ymin>0"
                                             "</ymin><xmax>90</xmax><ymax>30</ymax></bndbox></object></annotation>")
    _voc(d / "annotations" / "lost.xml", [("with_mask", (0, 0, 40, 40))])
    p = run("evaluation.py", "--boxes", d, "--pred_dir", pred)
    assert json.loads(p.stdout.splitlines()[0])["annotated"] == 4
    for needle in ("c.xml: object 0 is labelled 'shoe'", "c.xml: object 1 has no numeric box",
                   "c.xml: object 2: box [60.0, 0.0, 90.0, 30.0] lies outside its 50x50 photo", "lost.xml: no photo"):
        assert needle in p.stderr, p.stderr
    assert "skipped data (" in p.stderr and "Traceback" not in p.stderr


def _hand_case():
    """Two photos, three annotated faces (a: wear A, not wear B; b: wear C) and five predicted faces."""
    gt = {"a": [((0, 0, 10, 10), 0, 10), ((20, 0, 30, 10), 2, 10)], "b": [((0, 0, 10, 10), 0, 10)]}
    preds = {"a": [((0, 0, 10, 10), 0.95, [1.0, 0.0, 0.0], 0),  # det5: A
                   ((0, 0, 10, 10), 0.9, [0.8, 0.0, 0.2], 0),  # det1: A again, a duplicate
                   ((20, 0, 30, 10), 0.8, [0.5, 0.0, 0.5], 2)],  # det2: B
             "b": [((50, 50, 60, 60), 0.6, [1.0, 0.0, 0.0], 0),  # det3: nobody there
                   ((2, 0, 12, 10), 0.5, [0.6, 0.0, 0.4], 0)]}  # det4: C at IoU 2/3
    return gt, preds


def test_average_precision_matches_a_hand_computation():
    """wear (mode all) ranks det5 .95 TP, det1 .72 FP (A is taken), det3 .6 FP, det2 .4 FP (B is not wear's),
    det4 .3 TP at IoU <= 0.65 (4 thresholds), FP above: precision envelope 1 up to recall 0.5, then 0.4 ->
    COCO's 101 points give (51 x 1 + 50 x 0.4) / 101 = 71/101 at IoU 0.5, and 51/101 where det4 misses.
    not wear: det2 .4 ranks first and is B -> 1.0. incorrect has no face: left out of the mean."""
    from masktk.metrics.average_precision import ap_table, at_labels
    gt, preds = _hand_case()
    t = ap_table(gt, preds)
    assert t["wear"]["ap50"] == pytest.approx(71 / 101) and t["not wear"]["ap50"] == pytest.approx(1.0)
    assert t["wear"]["ap50_95"] == pytest.approx((4 * 71 + 6 * 51) / 1010) and t["incorrect"]["ap50"] is None
    assert t["map50"] == pytest.approx((71 / 101 + 1) / 2) and t["wear"]["faces"] == 2
    # detection alone: .95 TP (A), .9 FP (dup), .8 TP (B), .6 FP, .5 TP (C): recall 1/3 at 1, 2/3 at 2/3, 1 at 3/5
    assert t["face"]["ap50"] == pytest.approx((34 * 1 + 33 * (2 / 3) + 34 * 0.6) / 101)
    top = ap_table(gt, preds, mode="top")  # det2's tie goes to the first state (wear): not wear has no detection
    assert top["not wear"]["ap50"] == 0.0 and top["wear"]["ap50"] == pytest.approx(71 / 101)
    lab = at_labels(gt, preds, min_score=0.5)  # det1 and det3 are no face; det2 (decided not wear) is B
    assert lab["confusion"] == [[2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [2, 0, 0, 0]]
    assert lab["precision"]["wear"] == 0.5 and lab["recall"]["wear"] == 1.0 and lab["precision"]["not wear"] == 1.0
    small = ap_table(gt, preds, min_face=20)  # every face under 20 px: nothing counts, nothing is false
    assert small["wear"]["ap50"] is None and small["map50"] is None


def test_average_precision_fails_when_the_matching_rule_is_broken(monkeypatch):
    """One annotated face taken twice, or taken by a detection of another state, changes the figure."""
    import masktk.metrics.average_precision as ap
    gt, preds = _hand_case()
    right = ap.ap_table(gt, preds)["wear"]["ap50"]
    real = ap.match_greedy

    def twice(gt_boxes, ignore, det, iou_t):  # every detection over IoU 0.5 a true one, taken or not
        flags, took = real(gt_boxes, ignore, det, iou_t)
        iou = ap.box_iou(np.asarray(gt_boxes, float).reshape(-1, 4), np.asarray(det, float).reshape(-1, 4))
        return np.where((iou >= iou_t).any(0) if len(gt_boxes) else flags > 0, 1, flags), took
    monkeypatch.setattr(ap, "match_greedy", twice)
    assert ap.ap_table(gt, preds)["wear"]["ap50"] != pytest.approx(right)


def test_a_yolo_folder_reads_as_the_same_faces_in_pixels(tmp_path):
    from PIL import Image

    from masktk.data.face_boxes import read_face_boxes
    from masktk.errors import Log
    d = tmp_path / "yolo"
    (d / "images" / "train").mkdir(parents=True)
    (d / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(d / "images" / "train" / "a.jpg")
    (d / "data.yaml").write_text("names: [without_mask, with_mask, mask_weared_incorrect]\n")
    (d / "labels" / "train" / "a.txt").write_text("1 0.25 0.5 0.1 0.4\n0 0.75 0.5 0.2 0.2\n2 0.5 0.5\n7 0.5 0.5 0.1 0.1\n")
    (d / "labels" / "train" / "lost.txt").write_text("1 0.5 0.5 0.1 0.1\n")
    log = Log(quiet=True)
    faces = read_face_boxes(d, log)
    assert faces[["mask", "xmin", "ymin", "xmax", "ymax"]].values.tolist() == [[0, 40, 30, 60, 70], [2, 130, 40, 170, 60]]
    assert faces["stem"].tolist() == ["a", "a"] and faces["size"].tolist() == [20, 20]
    assert log.counts == {"bad box": 1, "unknown class": 1, "missing photo": 1}
    (d / "data.yaml").unlink()
    (d / "classes.txt").write_text("with_mask\nwithout_mask\n")
    assert read_face_boxes(d, Log(quiet=True))["mask"].tolist() == [2, 0]


@pytest.mark.e2e
def test_predictions_scored_as_detections_with_the_new_spelling(tmp_path):
    """evaluation.py --boxes PRED_DIR --eval_dir DATASET: AP lines, the precision-recall figure, the JSON."""
    gt, preds = _hand_case()
    d = tmp_path / "voc"
    (d / "images").mkdir(parents=True)
    (d / "annotations").mkdir()
    names = {0: "with_mask", 2: "without_mask"}
    for stem, faces in gt.items():
        (d / "images" / f"{stem}.png").write_bytes(b"")
        _voc(d / "annotations" / f"{stem}.xml", [(names[m], b) for b, m, _ in faces])
    pred = tmp_path / "pred"
    pred.mkdir()
    for stem, faces in preds.items():
        rows = [dict(box=list(b), score=s, mask=m, probs=[p[k // 6] / 6 for k in range(18)]) for b, s, p, m in faces]
        (pred / f"{stem}.json").write_text(json.dumps({"photo": f"x/{stem}.png", "faces": rows}))
    p = run("evaluation.py", "--boxes", pred, "--eval_dir", d, "--min_face", "1")
    line = next(x for x in p.stdout.splitlines() if x.startswith("AP@0.5 all sizes"))
    assert f"wear {71 / 101:.3f} (2)" in line and "not wear 1.000 (1)" in line and f"mAP@0.5 {(71 / 101 + 1) / 2:.3f}" in line
    full = json.loads((pred / "boxes_scores.json").read_text())["detector"]
    assert full["all_sizes"]["map50"] == pytest.approx((71 / 101 + 1) / 2) and (pred / "boxes_pr.png").stat().st_size
