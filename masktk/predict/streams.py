"""Where frames come from: video files, webcams (--camera N) and network streams (rtsp://, http://, https://: IP
cameras' MJPEG or H.264), read through OpenCV. A file gives every frame; a live source is read by a thread that
keeps only the newest frame, so prediction slower than the camera drops frames (counted) instead of falling
behind; a live source that drops is reopened with a growing wait.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass

import cv2

from masktk.errors import UserError

LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds waited before each reopening of a dropped stream


@dataclass(frozen=True)
class Source:
    """One input of frames: what OpenCV opens (a path, a URL or a camera index), the stem its outputs take, and
    whether it is live (a camera or a stream: frames are dropped rather than queued)."""
    target: object
    name: str
    live: bool

    def describe(self):
        return f"camera {self.target}" if isinstance(self.target, int) else redact(str(self.target))


def redact(url):
    """A URL without its password (rtsp://user:secret@host -> rtsp://user:***@host), for lines people read."""
    return re.sub(r"(://[^:/@]+:)[^@/]+@", r"\1***@", url)


def is_stream(text):
    return str(text).lower().startswith(LIVE_SCHEMES)


def camera_source(index):
    return Source(int(index), f"camera{int(index)}", True)


def stream_source(url):
    """A stream's outputs are named after its host and path (rtsp://cam1/live -> cam1_live)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", redact(url).split("://", 1)[1].split("@")[-1]).strip("_")[:60] or "stream"
    return Source(url, stem, True)


def file_source(path, name):
    return Source(str(path), name, False)


# a network stream that stops answering fails a read or an opening after this long instead of hanging on it
STREAM_TIMEOUT_MS = 5000


def open_capture(source):
    """-> an opened cv2.VideoCapture, or None."""
    if source.live and not isinstance(source.target, int):
        cap = cv2.VideoCapture(source.target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                                               cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])
    else:
        cap = cv2.VideoCapture(source.target)
    if not cap.isOpened():
        cap.release()
        return None
    return cap


def fps_of(cap):
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if fps and 0 < fps <= 240 else 25.0


def never_opened(source):
    if source.live:
        return UserError(f"{source.describe()}: cannot be opened (no camera at that index, or the stream is not "
                         "reachable: check the address, the port and the password)")
    return UserError(f"{source.target}: cannot be read as a video (damaged, or a codec OpenCV lacks): convert it, "
                     "for example with ffmpeg -i IN -c:v libx264 OUT.mp4")


class StopFlag:
    """Set by Ctrl-C or SIGTERM while a stream is read: the loop ends after its frame, every file complete."""

    def __init__(self):
        self.event = threading.Event()

    def __enter__(self):
        import signal
        self.saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self.saved:
            signal.signal(s, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc):
        import signal
        for s, h in self.saved.items():
            signal.signal(s, h)

    def is_set(self):
        return self.event.is_set()


class FileFrames:
    """Every frame of a video file, in order. -> (frame index, time in s, BGR frame) per frame."""

    def __init__(self, source):
        self.cap = open_capture(source)
        if self.cap is None:
            raise never_opened(source)
        self.fps, self.count, self.dropped = fps_of(self.cap), max(0, int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))), 0

    def __iter__(self):
        k = 0
        while True:
            ok, frame = self.cap.read()
            if not ok:
                return
            yield k, k / self.fps, frame
            k += 1

    def close(self):
        self.cap.release()


class LiveFrames:
    """The newest frame of a camera or stream, read by a thread: a frame the loop had no time for is replaced (and
    counted in `dropped`), so latency stays one frame however slow prediction is. A stream that stops answering is
    reopened after BACKOFF's waits (one line each, at most `reconnect` times), then ends.
    -> (frame number, seconds since the start, BGR frame) per frame taken."""

    def __init__(self, source, reconnect=len(BACKOFF), say=None):
        self.source, self.reconnect = source, reconnect
        self.say = say or (lambda s: print(s, file=sys.stderr, flush=True))
        self.cap = open_capture(source)
        if self.cap is None:
            raise never_opened(source)
        self.fps, self.count, self.dropped, self.read = fps_of(self.cap), 0, 0, 0
        self.cond, self.latest, self.ended, self.closing = threading.Condition(), None, False, False
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.closing:
            ok, frame = self.cap.read()
            if not ok:
                if self.closing or not self._reopen():
                    break
                continue
            with self.cond:
                self.dropped += self.latest is not None  # the loop never took the previous one
                self.read += 1
                self.latest = (self.read - 1, time.monotonic() - self.t0, frame)
                self.cond.notify()
        with self.cond:
            self.ended = True
            self.cond.notify()

    def _reopen(self):
        self.cap.release()
        for attempt, wait in enumerate(BACKOFF[:self.reconnect], 1):
            self.say(f"{self.source.describe()}: the stream dropped; reopening in {wait:g} s (attempt {attempt} of "
                     f"{self.reconnect})")
            time.sleep(wait)
            if self.closing:
                return False
            cap = open_capture(self.source)
            if cap is not None:
                self.cap = cap
                return True
        self.say(f"{self.source.describe()}: not reachable after {self.reconnect} attempt(s); ending")
        return False

    def __iter__(self):
        while True:
            with self.cond:
                while self.latest is None and not self.ended:
                    self.cond.wait(0.5)
                if self.latest is None:
                    return
                item, self.latest = self.latest, None
            yield item

    def close(self):
        self.closing = True
        self.thread.join(timeout=10)
        self.cap.release()


def frames_of(source, reconnect=len(BACKOFF)):
    """A FileFrames or LiveFrames for the source (opened: a source that cannot be is one UserError)."""
    return LiveFrames(source, reconnect) if source.live else FileFrames(source)
