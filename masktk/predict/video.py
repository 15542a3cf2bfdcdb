"""Videos, webcams and network streams through a Predictor, one path for all: every sampled frame's faces found,
classified and tracked (a track id per person, labels smoothed over time), every frame written with the latest
boxes drawn on it, one CSV row per face per sampled frame, one row per person seen (<name>_tracks.csv), counts per
interval (<name>_counts.csv) and alerts for people who stay unmasked.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import pandas as pd
from tqdm import tqdm

from masktk.errors import UserError
from masktk.files import atomic_path, write_csv_atomic
from masktk.labels import MASK_NAMES, face_text
from masktk.predict.alerts import AlertRule, create_alerts
from masktk.predict.predictor import COLOURS
from masktk.predict.streams import BACKOFF, StopFlag, frames_of
from masktk.predict.tracking import SMOOTH_S, FaceTracks, interval_counts

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".webm", ".mkv")


COLOURS_BGR = {m: c[::-1] for m, c in COLOURS.items()}  # the photos' colours, for OpenCV's BGR frames


CSV_COLUMNS = ["frame", "time", "track", "x1", "y1", "x2", "y2", "score", "label", "mask_name", "gender_name",
               "age_name", "probability", "track_mask_name", "track_gender_name", "track_age_name"]


TRACK_COLUMNS = ["track", "first", "last", "frames", "mask_name", "gender_name", "age_name", "probability"]


COUNT_COLUMNS = ["start", "end", "people", "without_mask", "incorrect_mask"]


@dataclass(frozen=True)
class StreamOptions:
    """How a video or live source is read and what is made of it (predict.py's flags)."""
    every: int = 1  # predict every Nth frame taken; the others show the latest labels
    max_frames: int | None = None  # stop after this many frames
    duration: float | None = None  # stop after this many seconds (the video's time, or the wall clock when live)
    interval: float = 60.0  # seconds per row of the counts file
    smooth_s: float = SMOOTH_S
    reconnect: int = len(BACKOFF)
    alert: str | None = None
    alert_url: str | None = None
    alert_after: float = 5.0


def outputs_of(name):
    return [f"{name}_pred.mp4", f"{name}.csv", f"{name}_tracks.csv", f"{name}_counts.csv"]


def draw(frame, rows):
    """Boxes coloured by mask state (the track's smoothed one), each with its track id and labels above it, on a
    BGR frame (in place)."""
    thick = max(2, round(max(frame.shape[:2]) / 300))
    scale = max(0.4, frame.shape[1] / 1600)
    for r in rows:
        x1, y1, x2, y2 = (int(round(v)) for v in r["box"])
        tracked = r.get("track", -1) >= 0
        shown = {k: r[f"track_{k}"] for k in ("mask_name", "gender_name", "age_name")} if tracked else r
        colour = COLOURS_BGR[MASK_NAMES.index(shown["mask_name"])]
        cv2.rectangle(frame, (x1, y1), (x2, y2), colour, thick)
        text = (f"#{r['track']} " if tracked else "") + face_text(shown)
        cv2.putText(frame, text, (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, max(1, thick // 2),
                    cv2.LINE_AA)
    return frame


def csv_rows(frame, time_s, rows):
    return [dict(frame=frame, time=round(time_s, 3), track=r.get("track", -1), x1=r["box"][0], y1=r["box"][1],
                 x2=r["box"][2], y2=r["box"][3], score=r["score"], label=r["label"], mask_name=r["mask_name"],
                 gender_name=r["gender_name"], age_name=r["age_name"], probability=round(max(r["probs"]), 5),
                 **{f"track_{n}": r.get(f"track_{n}") for n in ("mask_name", "gender_name", "age_name")})
            for r in rows]


@dataclass
class StreamResult:
    frames: int = 0  # frames taken (read from a file; for a live source, not dropped)
    faces: int = 0  # face rows of the sampled frames
    dropped: int = 0  # a live source's frames replaced before prediction took them
    people: int = 0  # tracks
    alerts: int = 0
    end: float = 0.0  # seconds of video (or of watching) covered


def predict_stream(pred, source, out, opts=StreamOptions()):
    """-> StreamResult. Writes outputs_of(source.name) into `out`, each whole or not at all, also when the run is
    stopped (Ctrl-C, SIGTERM, --max_frames, --duration) or a live source ends."""
    out = Path(out)
    frames = frames_of(source, opts.reconnect)
    tracks = FaceTracks(frames.fps, pred.answer, pred.offsets, opts.smooth_s)
    alerts = create_alerts(AlertRule(opts.alert, opts.alert_url, opts.alert_after, out / f"{source.name}_alerts",
                                     source.name))
    res, table = StreamResult(), []
    try:
        with atomic_path(out / f"{source.name}_pred.mp4") as tmp, StopFlag() as stop:
            writer = _watch(pred, frames, tracks, alerts, tmp, table, res, opts, stop)
            if writer is None:
                raise UserError(f"{source.describe()}: no frame could be read (damaged or empty video, or a stream "
                                "that sent nothing): convert it, or leave it out")
    finally:
        frames.close()
        alerts.close()
    res.dropped, res.people = frames.dropped, len(tracks.tracks)
    write_csv_atomic(pd.DataFrame(table, columns=CSV_COLUMNS), out / f"{source.name}.csv")
    write_csv_atomic(pd.DataFrame(tracks.rows(), columns=TRACK_COLUMNS), out / f"{source.name}_tracks.csv")
    write_csv_atomic(pd.DataFrame(interval_counts(tracks, opts.interval, res.end), columns=COUNT_COLUMNS),
                     out / f"{source.name}_counts.csv")
    return res


def _watch(pred, frames, tracks, alerts, tmp, table, res, opts, stop):
    """The frame loop -> the video writer (None when no frame came)."""
    writer, rows = None, []
    bar = tqdm(total=frames.count or None, desc=str(tmp.name), unit="frame", disable=None, file=sys.stderr)
    try:
        for k, t, frame in frames:
            if stop.is_set() or (opts.duration is not None and t >= opts.duration):
                break
            if writer is None:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), frames.fps, frame.shape[1::-1])
            if res.frames % opts.every == 0:
                rows = tracks.update(pred.predict(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)), t, frame)
                table += csv_rows(k, t, rows)
                res.faces += len(rows)
                res.alerts += alerts.check(tracks, t)
            writer.write(draw(frame, rows))
            res.frames, res.end = res.frames + 1, t
            bar.update()
            if opts.max_frames is not None and res.frames >= opts.max_frames:
                break
    finally:
        bar.close()
        if writer is not None:
            writer.release()
    return writer
