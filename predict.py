"""Find every face in photos and say: mask worn / incorrect / none, gender, age group.

    python predict.py photo.jpg                            # the newest run in model/
    python predict.py photos/ more.jpg --run_dir model/demo_cv --output_dir predictions --tta flip

For each photo writes <output_dir>/<stem>_pred.jpg (a box and the label per face) and <output_dir>/<stem>.json: a
list of faces with box, detection score, the 18-class label, the mask/gender/age labels and the
probabilities. The run may be single, CV (folds averaged) or multi-task: it is detected.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from faces import DEFAULT_DETECTOR, DETECTORS
from images import IMG_EXTS
from model import TTA_VIEWS
from onnx_backend import BACKENDS
from outputs import check_outputs, record_written, written_here
from predictor import MIN_SCORE, Predictor, annotate, face_rows
from runs import add_run_flags, chosen_run
from utils import UserError, atomic_path, cli, fraction, make_parser, positive, writable_dir, write_json_atomic
from video import VIDEO_EXTS, predict_video

# any photo: the competition's formats and the others OpenCV decodes (HEIC it does not)
PHOTO_EXTS = IMG_EXTS + (".webp", ".bmp", ".tif", ".tiff", ".avif")
# photos held in memory at once: a folder of 12 MP phone photos is 36 MB a photo decoded, so a whole
# folder would not fit; a chunk still gives the models batches of faces
CHUNK = 16


def collect(inputs):
    files = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():  # not the annotations the toolkit wrote there (a folder predicted into itself)
            ours = functools.lru_cache(maxsize=None)(written_here)  # each folder's list read once
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in PHOTO_EXTS + VIDEO_EXTS
                            and not f.name.startswith(".") and f.name not in ours(f.parent))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    if not files:
        raise UserError(f"no photos or videos ({'/'.join(PHOTO_EXTS + VIDEO_EXTS)}) in {' '.join(inputs)}")
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
    ap.add_argument("photos", nargs="+", help="photos, videos, or folders of them")
    add_run_flags(ap)
    ap.add_argument("--pth_name", default="best.pth", help="checkpoint file in each run/fold/task folder")
    ap.add_argument("--output_dir", "--out", dest="output_dir", default="predictions", help="output folder")
    ap.add_argument("--tta", choices=sorted(TTA_VIEWS), default=None,
                    help="views averaged per photo (unset: the run's own, as inference.py)")
    ap.add_argument("--detector", choices=sorted(DETECTORS), default=None,
                    help="face detector, as face_image.py's (unset: the one the run's training crops were cut "
                    f"with, recorded in its checkpoints, else mtcnn; {DEFAULT_DETECTOR} for models trained on whole "
                    "photos; docs/detectors.md)")
    ap.add_argument("--min_score", type=fraction, default=None, help="minimum face detection score (unset: "
                    + ", ".join(f"{k} {v}" for k, v in MIN_SCORE.items()) + ")")
    ap.add_argument("--detect_size", type=positive(int, 0, inclusive=True), default=1024,
                    help="longest side MTCNN sees (0: full; RetinaFace and the SSD keep their own sizes)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to predict")
    ap.add_argument("--decision", choices=("fitted", "none"), default="fitted",
                    help="as inference.py: the run's macro-F1 offsets (decision.json) or plain argmax")
    ap.add_argument("--every", type=positive(int, 1, inclusive=True), default=1,
                    help="videos: predict every Nth frame (the others show the latest labels)")
    ap.add_argument("--backend", choices=sorted(BACKENDS), default="torch",
                    help="torch: the checkpoints; onnx: the model.onnx files export.py wrote, run with onnxruntime")
    return ap


@cli
def main(argv):
    args = build_parser().parse_args(argv)
    out = writable_dir(args.output_dir, "--output_dir")
    files = collect(args.photos)
    names = output_names(files)
    videos = [f for f in files if f.suffix.lower() in VIDEO_EXTS]
    photos = [f for f in files if f not in set(videos)]
    outputs = [n for f in photos for n in (f"{names[f]}_pred.jpg", f"{names[f]}.json")]
    outputs += [n for f in videos for n in (f"{names[f]}_pred.mp4", f"{names[f]}.csv")]
    check_outputs(out, outputs, "--output_dir", inputs=files)
    pred = Predictor.from_run(chosen_run(args.model_dir, args.run_dir), args.device, args.detector, args.backend,
                              tta=args.tta, decision=args.decision, min_score=args.min_score,
                              detect_size=args.detect_size, pth_name=args.pth_name)
    record_written(out, outputs, "predict.py")
    n_photos, n_faces, unreadable = 0, 0, []
    for s in range(0, len(photos), CHUNK):
        done, faces, bad = predict_chunk(pred, photos[s:s + CHUNK], out, names)
        n_photos, n_faces, unreadable = n_photos + done, n_faces + faces, unreadable + bad
    for f in videos:
        frames, faces = predict_video(pred, f, out, names[f], args.every)
        print(f"{f}: {frames} frame(s), {faces} face(s) in the sampled frames", file=sys.stderr)
    print(f"{n_photos} photo(s), {len(videos)} video(s), {n_faces} face(s) in photos -> {out}", file=sys.stderr)
    if unreadable:
        sys.exit(2)


if __name__ == "__main__":
    main()
