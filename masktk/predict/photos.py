"""predict.py's photos: collecting them from files and folders, a distinct output name each, and each
chunk found, classified and written (<name>.json and the annotated <name>_pred.jpg).
"""
from __future__ import annotations

import functools
from pathlib import Path

from masktk.errors import UserError
from masktk.files import atomic_path, write_json_atomic
from masktk.images import IMG_EXTS
from masktk.labels import face_text
from masktk.outputs import written_here
from masktk.predict.predictor import annotate, face_rows
from masktk.predict.video import VIDEO_EXTS

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


def write_photo(out, name, f, img, rows, detector, tasks):
    write_json_atomic(out / f"{name}.json", {"photo": str(f), "detector": detector, "tasks": list(tasks),
                                             "faces": rows})
    with atomic_path(out / f"{name}_pred.jpg") as tmp:
        annotate(img, rows).save(tmp, "JPEG", quality=92)
    print(f"{f}: {len(rows)} face(s)" + "".join(f"\n  {r['box']} {face_text(r, ', ')} ({max(r['probs']):.2f})"
                                                for r in rows))


def predict_chunk(pred, files, out, names):
    """Find, classify and write a chunk of photos -> (photos read, faces, unreadable files). Its photos
    are let go on return, before the next chunk is read (a loop variable would keep two chunks)."""
    found, bad = pred.find(files)
    probs, labels = pred.classify(found)
    k = 0
    for f, img, faces in found:
        rows = face_rows(faces, probs[k:k + len(faces)], labels[k:k + len(faces)], pred.answer)
        k += len(faces)
        write_photo(out, names[f], f, img, rows, pred.recipe.detector, pred.answer.tasks)
    return len(found), k, bad
