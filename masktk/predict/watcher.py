"""One camera or stream watched for the live page (serve.py --watch): read once by one thread however many browsers
watch it, every frame it has time for predicted, tracked and drawn; the newest drawn frame (JPEG) and the running
counts are what the page's viewers get.
"""
from __future__ import annotations

import sys
import threading

import cv2

from masktk.errors import UserError
from masktk.predict.streams import frames_of
from masktk.predict.tracking import FaceTracks
from masktk.predict.video import StreamOptions, draw


class Watcher:
    """Starts watching at once. `lock`: the one the page's uploads hold, so that the models predict one photo at a
    time. Viewers take `latest()` or iterate `frames()`; `counts` is a dict of plain numbers."""

    def __init__(self, pred, source, lock, opts=StreamOptions()):
        self.pred, self.source, self.lock, self.opts = pred, source, lock, opts
        self.cond, self.seq, self.jpeg, self.ended, self.closing = threading.Condition(), 0, None, False, False
        self.counts = {"source": source.describe(), "frames": 0, "dropped": 0, "people": 0, "now": 0,
                       "without_mask": 0, "incorrect_mask": 0, "ended": False}
        self.reader = frames_of(source, opts.reconnect)  # a source that never opens is the caller's UserError
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        tracks = FaceTracks(self.reader.fps, self.pred.answer, self.pred.offsets, self.opts.smooth_s)
        try:
            for k, t, frame in self.reader:
                if self.closing:
                    break
                with self.lock:
                    rows = self.pred.predict(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                rows = tracks.update(rows, t, frame)
                jpeg = cv2.imencode(".jpg", draw(frame, rows), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
                masks = tracks.mask_states()
                counts = {**self.counts, "frames": self.counts["frames"] + 1, "dropped": self.reader.dropped,
                          "people": len(masks), "now": len(rows), "without_mask": masks.count(2),
                          "incorrect_mask": masks.count(1), "time": round(t, 1)}
                with self.cond:
                    self.jpeg, self.counts, self.seq = jpeg, counts, self.seq + 1
                    self.cond.notify_all()
        except UserError as e:  # the page keeps serving; the counts say the watching stopped
            print(f"error: {e}", file=sys.stderr, flush=True)
        finally:
            with self.cond:
                self.ended, self.counts = True, {**self.counts, "ended": True}
                self.cond.notify_all()

    def frames(self):
        """Each new drawn frame (JPEG bytes) as it comes, until the watching ends."""
        seen = -1
        while True:
            with self.cond:
                while self.seq == seen and not self.ended and not self.closing:
                    self.cond.wait(1.0)
                if self.seq == seen or self.jpeg is None:
                    if self.ended or self.closing:
                        return
                    continue
                seen, jpeg = self.seq, self.jpeg
            yield jpeg

    def close(self):
        self.closing = True
        self.thread.join(timeout=10)
        self.reader.close()
