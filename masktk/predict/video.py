"""Videos through a Predictor: every sampled frame's faces found and classified, every frame written with
the latest boxes and labels drawn on it, and one CSV row per face per sampled frame.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import cv2
import pandas as pd
from tqdm import tqdm

from masktk.errors import UserError
from masktk.files import atomic_path, write_csv_atomic
from masktk.labels import face_text
from masktk.predict.predictor import COLOURS

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".webm", ".mkv")


COLOURS_BGR = {m: c[::-1] for m, c in COLOURS.items()}  # the photos' colours, for OpenCV's BGR frames


CSV_COLUMNS = ["frame", "time", "x1", "y1", "x2", "y2", "score", "label", "mask_name", "gender_name", "age_name",
               "probability"]


def open_video(path):
    """-> (capture, frames per second, frame count or 0 when unknown); a file OpenCV cannot read is an error."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserError(f"{path}: cannot be read as a video (damaged, or a codec OpenCV lacks): convert it, "
                        "for example with ffmpeg -i IN -c:v libx264 OUT.mp4")
    fps = cap.get(cv2.CAP_PROP_FPS)
    return cap, fps if fps and fps > 0 else 25.0, max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))


def draw(frame, rows):
    """Boxes coloured by mask state, each with its labels above it, on a BGR frame (in place)."""
    thick = max(2, round(max(frame.shape[:2]) / 300))
    scale = max(0.4, frame.shape[1] / 1600)
    for r in rows:
        x1, y1, x2, y2 = (int(round(v)) for v in r["box"])
        colour = COLOURS_BGR[r["mask"]]
        cv2.rectangle(frame, (x1, y1), (x2, y2), colour, thick)
        text = face_text(r)
        cv2.putText(frame, text, (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, thick // 2),
                    cv2.LINE_AA)
    return frame


def csv_rows(k, time_s, rows):
    return [dict(frame=k, time=round(time_s, 3), x1=r["box"][0], y1=r["box"][1], x2=r["box"][2], y2=r["box"][3],
                 score=r["score"], label=r["label"], mask_name=r["mask_name"], gender_name=r["gender_name"],
                 age_name=r["age_name"], probability=round(max(r["probs"]), 5)) for r in rows]


def predict_video(pred, path, out, name, every=1):
    """-> (frames read, faces found). Writes <name>_pred.mp4 and <name>.csv into `out`, both whole or not at all."""
    cap, fps, count = open_video(path)
    table, rows, n = [], [], 0
    with atomic_path(Path(out) / f"{name}_pred.mp4") as tmp:
        writer = None
        try:
            for k in tqdm(itertools.count(), total=count or None, desc=Path(path).name, unit="frame", disable=None,
                          file=sys.stderr):
                ok, frame = cap.read()
                if not ok:
                    break
                n += 1
                if writer is None:
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1])
                if k % every == 0:
                    rows = pred.predict(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                    table += csv_rows(k, k / fps, rows)
                writer.write(draw(frame, rows))
        finally:
            cap.release()
            if writer is not None:
                writer.release()
        if writer is None:
            raise UserError(f"{path}: no frame could be read (damaged or empty video): convert it, or leave it out")
    write_csv_atomic(pd.DataFrame(table, columns=CSV_COLUMNS), Path(out) / f"{name}.csv")
    return n, len(table)
