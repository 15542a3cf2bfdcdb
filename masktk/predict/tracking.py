"""People followed across frames: each face gets a track id from ByteTrack (Roboflow's `trackers` package), and a
track's labels come from its frames' probabilities smoothed over time, so a person's label does not flicker from
frame to frame; counts per interval and alerts for tracks that stay unmasked come from the tracks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from masktk.labels import FULL, face_text

SMOOTH_S = 2.0  # seconds: a track's probabilities are an exponential mean with this time constant


@dataclass
class Track:
    """One person seen: first and last time, frames, smoothed probabilities, when its mask state went bad."""
    id: int
    first: float
    last: float
    frames: int = 0
    probs: np.ndarray | None = None
    bad_since: float | None = None  # the smoothed mask state is incorrect or none since then
    alerted: bool = False
    best_face: tuple = field(default=(0.0, None))  # (detection score, face crop) of its clearest frame


class FaceTracks:
    """ByteTrack over the faces of each frame, and a time-smoothed answer per track."""

    def __init__(self, fps, answer=FULL, offsets=None, smooth_s=SMOOTH_S):
        from trackers import ByteTrackTracker
        # a face's track is confirmed on its second frame, and kept one second after it is lost
        self.tracker = ByteTrackTracker(frame_rate=fps, minimum_consecutive_frames=1, track_activation_threshold=0.2,
                                        lost_track_buffer=max(1, int(round(fps))), high_conf_det_threshold=0.3)
        self.answer, self.offsets, self.smooth_s, self.tracks = answer, offsets, smooth_s, {}

    def update(self, rows, t, frame=None):
        """rows: the frame's face rows (Predictor.predict) -> the same rows with `track` and the track's smoothed
        answer (track_mask_name, ...; track_probs). A face seen for the first time keeps track -1: ByteTrack
        confirms a track on its second frame."""
        import supervision as sv
        if not rows:
            self.tracker.update(sv.Detections.empty())
            return rows
        dets = sv.Detections(xyxy=np.array([r["box"] for r in rows], float),
                             confidence=np.array([r["score"] for r in rows], float),
                             data={"row": np.arange(len(rows))})
        found = self.tracker.update(dets)
        ids = {int(k): int(tid) for k, tid in zip(found.data["row"], found.tracker_id) if tid >= 0}
        return [self._smooth(r, ids.get(k, -1), t, frame) for k, r in enumerate(rows)]

    def _smooth(self, row, tid, t, frame):
        if tid < 0:
            return {**row, "track": -1}
        tr = self.tracks.setdefault(tid, Track(tid, t, t))
        p = np.asarray(row["probs"], float)
        a = 1.0 if tr.probs is None else 1.0 - math.exp(-max(t - tr.last, 1e-3) / self.smooth_s)
        tr.probs = p if tr.probs is None else (1 - a) * tr.probs + a * p
        tr.last, tr.frames = t, tr.frames + 1
        fields = self.decided(tr.probs)
        bad = fields["mask"] in (1, 2)
        tr.bad_since = (tr.bad_since if tr.bad_since is not None else t) if bad else None
        if frame is not None and row["score"] > tr.best_face[0]:
            x1, y1, x2, y2 = (int(round(v)) for v in row["box"])
            tr.best_face = (row["score"], frame[max(0, y1):max(0, y2), max(0, x1):max(0, x2)].copy())
        return {**row, "track": tid, **{f"track_{k}": v for k, v in fields.items() if k.endswith("_name")},
                "track_probs": [round(float(v), 5) for v in tr.probs]}

    def decided(self, probs):
        from masktk.train.decisions import decide
        return self.answer.fields(int(decide(probs[None], self.offsets)[0]))

    def mask_states(self, tracks=None):
        """The smoothed mask state (0 wear, 1 incorrect, 2 none) of each track given (unset: every track)."""
        return [self.decided(tr.probs)["mask"] for tr in (self.tracks.values() if tracks is None else tracks)]

    def rows(self):
        """One row per track: id, first and last time, frames, smoothed labels and their probability."""
        out = []
        for tr in sorted(self.tracks.values(), key=lambda x: x.id):
            f = self.decided(tr.probs)
            out.append(dict(track=tr.id, first=round(tr.first, 3), last=round(tr.last, 3), frames=tr.frames,
                            mask_name=f["mask_name"], gender_name=f["gender_name"], age_name=f["age_name"],
                            probability=round(float(tr.probs.max()), 5), label_text=face_text(f)))
        return out


def interval_counts(tracks, interval, end):
    """Per interval of `interval` s from 0 to `end`: people seen in it, and of them those whose smoothed mask
    state was none / incorrect (at the end of the run: a track's final answer)."""
    rows = []
    for start in np.arange(0, max(end, 1e-9), interval):
        seen = [tr for tr in tracks.tracks.values() if tr.first < start + interval and tr.last >= start]
        masks = tracks.mask_states(seen)
        rows.append(dict(start=round(float(start), 3), end=round(float(min(start + interval, end)), 3),
                         people=len(seen), without_mask=masks.count(2), incorrect_mask=masks.count(1)))
    return rows

