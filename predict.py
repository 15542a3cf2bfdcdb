"""Find every face in photos and say: mask worn / incorrect / none, gender, age group.

    python predict.py photo.jpg                            # the newest run in model/
    python predict.py photos/ more.jpg --run_dir model/demo_cv --output_dir predictions --tta flip

For each photo writes <output_dir>/<stem>_pred.jpg (a box and the label per face) and <output_dir>/<stem>.json: a
list of faces with box, detection score, the 18-class label, the mask/gender/age labels and the
probabilities. The run may be single, CV (folds averaged) or multi-task: it is detected.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import distributed
from decision import decide, read_offsets
from faces import DETECTORS, CropRecipe, crop_for_model
from images import IMG_EXTS, prepare, read_rgb, why_unreadable
from inference import eval_crop_recipe, find_groups, load_models, run_groups, run_tta
from labels import AGE_NAMES, GENDER_NAMES, MASK_NAMES, decode
from model import TTA_VIEWS
from outputs import check_outputs, record_written, written_here
from runs import chosen_run
from utils import (UserError, atomic_path, cli, env_default, fraction, make_parser, positive, writable_dir,
                   write_json_atomic)

# detection scores kept by default, on each detector's own scale (recall and precision: docs/detectors.md)
MIN_SCORE = {"mtcnn": 0.9, "mtcnn_ssd": 0.9, "ssd": 0.2, "ssd_mtcnn": 0.2, "union": 0.2}
# whole-photo models see a window framed around the face, whichever detector found it, so they get the one
# that finds the most street faces (docs/results.md, Real masks); face-crop models keep their crops' own
WHOLE_PHOTO_DETECTOR = "union"
COLOURS = {0: (40, 200, 80), 1: (250, 170, 30), 2: (230, 50, 50)}  # by mask state
# any photo: the competition's formats and the others OpenCV decodes (HEIC it does not)
PHOTO_EXTS = IMG_EXTS + (".webp", ".bmp", ".tif", ".tiff", ".avif")


def collect(inputs):
    files = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():  # not the annotations the toolkit wrote there (a folder predicted into itself)
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in PHOTO_EXTS and not f.name.startswith(".")
                            and f.name not in written_here(f.parent))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    if not files:
        raise UserError(f"no photos ({'/'.join(PHOTO_EXTS)}) in {' '.join(inputs)}")
    return files


def output_names(files):
    """A distinct output name per photo: its stem, or parent_stem where two photos share a stem (then
    a counter), so a.jpg in two folders never overwrite each other."""
    stems = [f.stem for f in files]
    names, used = {}, set()
    for f in files:
        name = f.stem if stems.count(f.stem) == 1 else f"{f.parent.name}_{f.stem}"
        base, k = name, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        names[f] = name
    return names


def annotate(img, faces):
    """The photo with a numbered box per face, and below it a legend: one line per number. Tags and
    lines are sized to the photo, tags sit inside their boxes, so crowded photos stay readable."""
    from PIL import ImageFont
    h, w = img.shape[:2]
    size = max(12, round(w / 60))
    font = ImageFont.load_default(size=size)
    lines = [f"{k + 1}: {f['mask_name']} | {f['gender_name']} | {f['age_name']} ({max(f['probs']):.2f})"
             for k, f in enumerate(faces)]
    canvas = Image.new("RGB", (w, h + (len(lines) * (size + 6) + 8 if lines else 0)), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (0, 0))
    d = ImageDraw.Draw(canvas)
    lw = max(2, round(max(w, h) / 300))
    for k, f in enumerate(faces):
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        c = COLOURS[f["mask"]]
        d.rectangle((x1, y1, x2, y2), outline=c, width=lw)
        tag_font = ImageFont.load_default(size=max(8, min(size, round((y2 - y1) / 3))))
        tw, th = d.textbbox((0, 0), str(k + 1), font=tag_font)[2:]
        tx, ty = min(max(0, x1 + lw), w - tw - 2), min(max(0, y1 + lw), h - th - 2)
        d.rectangle((tx, ty, tx + tw + 2, ty + th + 2), fill=c)
        d.text((tx + 1, ty), str(k + 1), fill=(0, 0, 0), font=tag_font)
    for k, (line, f) in enumerate(zip(lines, faces)):
        d.text((6, h + 4 + k * (size + 6)), line, fill=COLOURS[f["mask"]] if f["mask"] != 1 else (200, 120, 0),
               font=font)
    return canvas


# photos held in memory at once: a folder of 12 MP phone photos is 36 MB a photo decoded, so a whole
# folder would not fit; a chunk still gives the models batches of faces
CHUNK = 16


@dataclass
class Predictor:
    """What every chunk of photos goes through: the detector, the models and how they decide."""
    det: object
    min_score: float
    recipe: CropRecipe
    groups: list
    models: dict
    tta: str
    offsets: object
    device: object

    def find(self, files):
        """-> [(file, image, [(box, score)])] for the readable photos, and the unreadable files."""
        found, unreadable = [], []
        for f in files:
            img = read_rgb(f)
            if img is None:
                print(f"error: {f}: {why_unreadable(f)}, skipped", file=sys.stderr)
                unreadable.append(f)
                continue
            boxes, scores, _ = self.det.detect([img])[0]
            keep = [(boxes[i], scores[i]) for i in range(len(boxes)) if scores[i] >= self.min_score]
            if not keep:
                print(f"{f}: no face found", file=sys.stderr)
            found.append((f, img, keep))
        return found, unreadable

    def classify(self, found):
        """Every face of the photos in one pass per model; each face cut as its model was trained (face
        crop or centre-like window) and prepared once per input size -> (probabilities, labels)."""
        crops = [(img, box) for _, img, faces in found for box, _ in faces]
        if not crops:
            return np.zeros((0, 18)), np.zeros(0, int)
        keys = {m.input_key for _, m in self.models.values()}
        arrays = {k: np.stack([prepare(crop_for_model(im, box, k[1], self.recipe.margin), k[0], "none")
                               for im, box in crops]) for k in keys}
        probs = run_groups(self.groups, arrays, self.models, tta=self.tta, batch_size=32, device=self.device)
        return probs, decide(probs, self.offsets)


def face_rows(faces, probs, labels):
    rows = []
    for (box, score), p, label in zip(faces, probs, labels):
        m, g, a = (int(v) for v in decode(int(label)))
        rows.append(dict(box=[round(float(v), 1) for v in box], score=round(float(score), 4), label=int(label),
                         mask=m, gender=g, age=a, mask_name=MASK_NAMES[m], gender_name=GENDER_NAMES[g],
                         age_name=AGE_NAMES[a], probs=[round(float(v), 5) for v in p]))
    return rows


def write_photo(out, name, f, img, rows, detector):
    write_json_atomic(out / f"{name}.json", {"photo": str(f), "detector": detector, "faces": rows})
    with atomic_path(out / f"{name}_pred.jpg") as tmp:
        annotate(img, rows).save(tmp, "JPEG", quality=92)
    print(f"{f}: {len(rows)} face(s)" + "".join(f"\n  {r['box']} {r['mask_name']}, {r['gender_name']}, "
                                                f"{r['age_name']} ({max(r['probs']):.2f})" for r in rows))


def predict_chunk(pred, files, out, names):
    """Find, classify and write a chunk of photos -> (photos read, faces, unreadable files). Its photos
    are let go on return, before the next chunk is read (a loop variable would keep two chunks)."""
    found, bad = pred.find(files)
    probs, labels = pred.classify(found)
    k = 0
    for f, img, faces in found:
        rows = face_rows(faces, probs[k:k + len(faces)], labels[k:k + len(faces)])
        k += len(faces)
        write_photo(out, names[f], f, img, rows, pred.recipe.detector)
    return len(found), k, bad


def build_parser():
    ap = make_parser(__doc__)
    ap.add_argument("photos", nargs="+", help="photos or folders of photos")
    ap.add_argument("--model_dir", default=env_default("SM_CHANNEL_MODEL", "model"),
                    help="folder of runs: its newest run is used; a run folder itself also works (env SM_CHANNEL_MODEL)")
    ap.add_argument("--run_dir", default=None, help="this run instead of the newest in --model_dir")
    ap.add_argument("--pth_name", default="best.pth", help="checkpoint file in each run/fold/task folder")
    ap.add_argument("--output_dir", "--out", dest="output_dir", default="predictions", help="output folder")
    ap.add_argument("--tta", choices=sorted(TTA_VIEWS), default=None,
                    help="views averaged per photo (unset: the run's own, as inference.py)")
    ap.add_argument("--detector", choices=sorted(DETECTORS), default=None,
                    help="face detector, as face_image.py's (unset: the one the run's training crops were cut "
                    f"with, recorded in its checkpoints, else mtcnn; {WHOLE_PHOTO_DETECTOR} for models trained on whole "
                    "photos); union and ssd_mtcnn find more faces in street photos (docs/detectors.md)")
    ap.add_argument("--min_score", type=fraction, default=None, help="minimum face detection score (unset: "
                    + ", ".join(f"{k} {v}" for k, v in MIN_SCORE.items()) + ")")
    ap.add_argument("--detect_size", type=positive(int, 0, inclusive=True), default=1024,
                    help="longest side MTCNN sees (0: full)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to predict")
    ap.add_argument("--decision", choices=("fitted", "none"), default="fitted",
                    help="as inference.py: the run's macro-F1 offsets (decision.json) or plain argmax")
    return ap


def make_predictor(args, device):
    run = chosen_run(args.model_dir, args.run_dir)
    groups = find_groups(run, args.pth_name)
    models = load_models(groups, device)
    metas = [meta for _, meta in models.values()]
    # found as the training crops were found and cut with their margins, at predict.py's own detection size
    default = None if any(m.crop == "none" for m in metas) else WHOLE_PHOTO_DETECTOR
    recipe = replace(eval_crop_recipe(metas, args.detector or default), detect_size=args.detect_size or None)
    return Predictor(det=recipe.create_detector(device),
                     min_score=MIN_SCORE[recipe.detector] if args.min_score is None else args.min_score,
                     recipe=recipe, groups=groups, models=models, tta=args.tta or run_tta(groups, models),
                     offsets=read_offsets(run) if args.decision == "fitted" else None, device=device)


@cli
def main(argv):
    args = build_parser().parse_args(argv)
    device = distributed.setup(args.device).device
    out = writable_dir(args.output_dir, "--output_dir")
    files = collect(args.photos)
    names = output_names(files)
    outputs = [n for f in files for n in (f"{names[f]}_pred.jpg", f"{names[f]}.json")]
    check_outputs(out, outputs, "--output_dir", inputs=files)
    pred = make_predictor(args, device)
    record_written(out, outputs, "predict.py")
    n_photos, n_faces, unreadable = 0, 0, []
    for s in range(0, len(files), CHUNK):
        photos, faces, bad = predict_chunk(pred, files[s:s + CHUNK], out, names)
        n_photos, n_faces, unreadable = n_photos + photos, n_faces + faces, unreadable + bad
    print(f"{n_photos} photo(s), {n_faces} face(s) -> {out}", file=sys.stderr)
    if unreadable:
        sys.exit(2)


if __name__ == "__main__":
    main()
