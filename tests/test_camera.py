"""Watching a camera: a local MJPEG server stands for an IP camera; predict.py reads it, tracks the faces, writes the
per-frame, per-person and per-interval files and stops where told; a stream that drops is reopened and then ends
cleanly; alerts run once per qualifying person; a source that never opens is one line."""
import http.server
import socketserver
import sys
import threading
import time

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import assert_clean_error, run


class MjpegServer:
    """Serves `frames` (BGR) as an MJPEG stream at `fps`, looping; after `stop_after` frames it closes the
    connection and stops listening (a camera that went away)."""

    def __init__(self, frames, fps=25, stop_after=None):
        jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                k = 0
                try:
                    while stop_after is None or outer.sent < stop_after:
                        data = jpegs[k % len(jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                        k, outer.sent = k + 1, outer.sent + 1
                        time.sleep(1 / fps)
                except (BrokenPipeError, ConnectionResetError):
                    return
                threading.Thread(target=outer.go_away, daemon=True).start()

            def log_message(self, *a):
                pass

        self.sent = 0
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def go_away(self):
        """Stop serving and stop listening: a reconnection is refused at once, as by a camera that is off."""
        self.server.shutdown()
        self.server.server_close()

    def close(self):
        self.go_away()


def _frames(tiny_root, n=10):
    """A 640 x 480 scene of two drawn people (one unmasked), panning slowly: a test video's frames."""
    people = sorted((tiny_root / "train" / "images").iterdir())[:2]
    a, b = (cv2.resize(cv2.imread(str(p / stem)), (240, 320)) for p, stem in zip(people, ("normal.jpg", "mask1.jpg")))
    out = []
    for k in range(n):
        f = np.full((480, 640, 3), 90, np.uint8)
        f[60:380, 40 + 4 * k:280 + 4 * k] = a
        f[80:400, 360 - 4 * k:600 - 4 * k] = b
        out.append(f)
    return out


@pytest.fixture
def camera(tiny_root):
    server = MjpegServer(_frames(tiny_root))
    yield server
    server.close()


def test_a_stream_is_read_tracked_and_written_until_max_frames(camera, tiny_runs, tmp_path):
    alerts = tmp_path / "alerts.txt"
    cmd = f"{sys.executable} -c \"import os, sys, json; a = json.load(sys.stdin); " \
          f"open(r'{alerts}', 'a').write(os.environ['MASKTK_TRACK'] + ' ' + str(a['track']) + chr(10))\""
    p = run("predict.py", camera.url, "--run_dir", tiny_runs["single"], "--out", tmp_path / "out", "--max_frames",
            "12", "--interval", "0.2", "--alert", cmd, "--alert_after", "0", "--tta", "none")
    name = "127_0_0_1_" + camera.url.split(":")[2].split("/")[0] + "_stream_mjpg"
    frames = pd.read_csv(tmp_path / "out" / f"{name}.csv")
    assert frames["frame"].nunique() == 12
    # ByteTrack confirms a track on a face's second frame: only first sightings go without an id
    assert (frames["track"] >= 0).mean() >= 0.8 and frames.groupby("frame")["track"].min().iloc[1:].min() >= 0
    tracks = pd.read_csv(tmp_path / "out" / f"{name}_tracks.csv")
    tracked = frames[frames["track"] >= 0]
    assert set(tracks["track"]) == set(tracked["track"]) and tracks["frames"].sum() == len(tracked)
    assert 1 <= len(tracks) <= 3  # two people, followed as they move (a lost face may come back once)
    counts = pd.read_csv(tmp_path / "out" / f"{name}_counts.csv")
    assert len(counts) >= 2 and counts["people"].max() <= len(tracks)
    assert (tmp_path / "out" / f"{name}_pred.mp4").stat().st_size > 0
    # once per track whose smoothed mask state was incorrect or none in some frame (--alert_after 0)
    bad = set(frames.loc[frames["track_mask_name"].isin(["incorrect", "not wear"]), "track"])
    fired = alerts.read_text().split() if alerts.exists() else []
    assert sorted(map(int, fired[::2])) == sorted(bad) and fired[::2] == fired[1::2], (fired, bad)
    assert f"{len(bad)} alert(s)" in p.stderr


def test_a_stream_that_drops_is_reopened_then_ends_with_every_file_complete(tiny_root, tiny_runs, tmp_path):
    server = MjpegServer(_frames(tiny_root), stop_after=15)
    try:
        p = run("predict.py", server.url, "--run_dir", tiny_runs["single"], "--out", tmp_path, "--reconnect", "1",
                "--tta", "none")
    finally:
        server.close()
    assert "the stream dropped; reopening in 0.5 s (attempt 1 of 1)" in p.stderr
    assert "not reachable after 1 attempt(s); ending" in p.stderr
    name = next(tmp_path.glob("*_tracks.csv")).name[:-len("_tracks.csv")]
    assert len(pd.read_csv(tmp_path / f"{name}.csv")) > 0 and (tmp_path / f"{name}_pred.mp4").is_file()
    assert not list(tmp_path.glob(".tmp-*"))  # nothing half-written


def test_a_source_that_never_opens_is_one_line(tiny_runs, tmp_path):
    with socketserver.TCPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as s:
        port = s.server_address[1]  # a port nobody listens on once closed
    p = run("predict.py", f"http://user:secret@127.0.0.1:{port}/cam", "--run_dir", tiny_runs["single"], "--out",
            tmp_path, check=False)
    assert_clean_error(p, "cannot be opened", "user:***@")
    assert "secret" not in p.stderr


def test_a_tracks_label_flickers_less_than_its_frames():
    from masktk.labels import MASK_ONLY
    from masktk.predict.tracking import FaceTracks
    tracks = FaceTracks(25, MASK_ONLY, smooth_s=0.5)
    per_frame, per_track = [], []
    for k in range(50):  # one masked face, its frames' answer swinging between wear and not wear (wear on average)
        p = [0.6, 0.0, 0.4] if k % 2 else [0.45, 0.0, 0.55]
        row = {"box": [100 + k, 100, 160 + k, 170], "score": 0.9, "probs": p, **MASK_ONLY.fields(int(np.argmax(p)))}
        (r,) = tracks.update([row], k / 25)
        if r["track"] >= 0:  # from the face's second frame on
            per_frame.append(r["mask_name"])
            per_track.append(r["track_mask_name"])
    flips = [sum(a != b for a, b in zip(x, x[1:])) for x in (per_frame, per_track)]
    assert len(tracks.tracks) == 1 and len(per_frame) == 49 and flips[0] == 48 and flips[1] == 0, flips
    assert set(per_track) == {"wear"}


def test_the_live_page_shows_the_stream_and_its_counts_move_in_chromium(camera, tiny_runs):
    """serve.py --watch: one reader for every viewer; the page's image is the annotated stream, its counts move;
    viewers beyond --viewers are answered 503 while the page keeps serving."""
    import os
    import shutil
    import subprocess
    import urllib.error
    import urllib.request

    from conftest import REPO
    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("no chromium and chromedriver here (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    with socketserver.TCPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as s:
        port = s.server_address[1]
    proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--run_dir", str(tiny_runs["single"]), "--port",
                             str(port), "--watch", camera.url, "--viewers", "1"], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    driver = None
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "live/counts", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()[-2000:]
                time.sleep(0.5)
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
        driver.get(url + "live")
        img = driver.find_element(By.ID, "live")
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return arguments[0].naturalWidth", img) == 640)
        first = int(driver.find_element(By.ID, "frames").text)
        WebDriverWait(driver, 60).until(lambda d: int(d.find_element(By.ID, "frames").text) > first)
        assert int(driver.find_element(By.ID, "people").text) >= 1
        with pytest.raises(urllib.error.HTTPError) as refused:  # the page's own viewer holds the one place
            urllib.request.urlopen(url + "live.mjpg", timeout=10)
        assert refused.value.code == 503 and b"viewers" in refused.value.read()
    finally:
        if driver:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
