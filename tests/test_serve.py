"""serve.py: the local page driven by a real headless Chromium, the /predict endpoint's refusals, its token, and
the page under load with decompression bombs among the uploads (waitress, a real server on 127.0.0.1)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_runs):  # one server for the module's tests: it loads the run and the detector once
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--run_dir", str(tiny_runs["single"]),
                             "--port", str(port), "--max_mb", "1", "--timeout", "3"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"serve.py ended: {proc.stdout.read()[-2000:]}")
            time.sleep(0.5)
    proc.url = url
    yield proc
    proc.terminate()
    proc.wait(timeout=30)


def _post(url, data, filename="photo.jpg"):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.e2e
def test_predict_endpoint_answers_faces_and_refuses_non_images_and_big_uploads(server, tiny_root):
    import json
    server = server.url
    photo = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[0]
    status, body = _post(server, photo.read_bytes())
    assert status == 200 and isinstance(json.loads(body)["faces"], list)
    status, body = _post(server, b"not a photo at all", "notes.txt")
    assert status == 400 and "notes.txt" in json.loads(body)["error"]
    status, body = _post(server, b"x" * (2 << 20))
    assert status == 413 and "1 MB" in json.loads(body)["error"]


@pytest.mark.e2e
def test_a_person_picks_a_photo_in_chromium_and_sees_it_annotated_with_its_faces(server, tiny_root, tiny_runs,
                                                                                tmp_path):
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium and chromedriver here (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from masktk.predict.predictor import Predictor
    photos = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[:6]
    pred = Predictor.from_run(tiny_runs["single"], device="cpu")
    photo = next(f for f in photos if pred.predict(f))  # one with a face
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1100"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(server.url)
        driver.find_element(By.ID, "photo").send_keys(str(photo))
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#faces li"))
        img = driver.find_element(By.ID, "annotated")
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return arguments[0].naturalWidth", img) > 0)
        items = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#faces li")]
        assert len(items) == len(pred.predict(photo)) and all(" | " in t for t in items)
        assert "face(s) found" in driver.find_element(By.ID, "status").text
        shot = os.environ.get("MASKTK_SCREENSHOT") or str(tmp_path / "page.png")
        driver.save_screenshot(shot)  # docs/serve.png is one of these (MASKTK_SCREENSHOT=docs/serve.png)
    finally:
        driver.quit()


def bomb_png(w, h):
    """A valid PNG of w x h black pixels (1-bit grey): tens of KB that decode to w * h * 3 bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    z, row = zlib.compressobj(9), b"\x00" * (1 + (w + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


@pytest.mark.e2e
def test_twenty_clients_with_two_bombs_keep_memory_bounded_and_every_answer_json(server, tiny_root):
    """18 clients send photos and 2 send a 20000x20000 PNG (400 megapixels: 1.2 GB decoded) at once: the bombs
    are refused from their headers (413), the photos answered (200), and the server's memory never grows by
    more than MEMORY_BOUND over its size before the load. Bounded: 20 requests, 120 s."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import psutil
    memory_bound = 300 << 20  # one decoded 20000x20000 photo alone is 1.2 GB
    photo = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[0].read_bytes()
    bomb = bomb_png(20000, 20000)
    assert _post(server.url, photo)[0] == 200  # warm: the models and the detector have run once
    proc = psutil.Process(server.pid)
    before, peak, done = proc.memory_info().rss, 0, []

    def watch():
        nonlocal peak
        while not done:
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.02)
    with ThreadPoolExecutor(21) as ex:
        watcher = ex.submit(watch)
        answers = list(ex.map(lambda i: _post(server.url, bomb if i in (3, 11) else photo, f"p{i}.png"), range(20)))
        done.append(True)
        watcher.result(timeout=10)
    for i, (status, body) in enumerate(answers):
        assert status == (413 if i in (3, 11) else 200), (i, status, body)
        if status == 413:
            assert "20000x20000" in json.loads(body)["error"]
    print(f"serve.py under load: {(peak - before) >> 20} MiB over {before >> 20} MiB")  # docs/reliability.md (-s)
    assert peak - before < memory_bound, f"grew by {(peak - before) >> 20} MiB under load"
    assert server.poll() is None


@pytest.mark.e2e
def test_a_half_sent_request_is_closed_and_the_page_keeps_answering(server):
    """A client that sends part of its request and stops is cut off after --timeout (3 s here), while others
    are answered meanwhile; the page's unknown paths and methods answer JSON too."""
    import json
    host, port = server.url.split("//")[1].rstrip("/").split(":")
    stalled = [socket.create_connection((host, int(port))) for _ in range(30)]
    for s in stalled:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial")
    try:
        with urllib.request.urlopen(server.url, timeout=10) as r:  # answered while 30 requests hang
            assert r.status == 200
        t0 = time.time()
        for s in stalled:
            s.settimeout(20)
            assert s.recv(1024) == b""  # closed by the server: nothing answered, nothing held
        assert time.time() - t0 < 20
    finally:
        for s in stalled:
            s.close()
    for method, path, code in (("GET", "nope", 404), ("DELETE", "predict", 405)):
        try:
            urllib.request.urlopen(urllib.request.Request(server.url + path, method=method), timeout=10)
        except urllib.error.HTTPError as e:
            assert e.code == code and "error" in json.loads(e.read().decode())


@pytest.mark.e2e
def test_too_many_form_fields_and_a_thin_photo_get_their_own_answers(server):
    import json
    boundary = uuid.uuid4().hex
    body = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nx\r\n" for i in range(2000))
    req = urllib.request.Request(server.url + "predict", (body + f"--{boundary}--\r\n").encode(),
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 413 and "fields" in json.loads(e.value.read().decode())["error"]
    status, body = _post(server.url, bomb_png(200000, 1), "thin.png")  # a 1 x 200000 photo: answered, no face
    assert status == 200 and json.loads(body)["faces"] == [], body


def test_the_token_keeps_out_whoever_lacks_it(tiny_runs):
    """With a token, every request needs it (header, query or the page's cookie); without, a 401 in JSON."""
    from masktk.predict.predictor import Predictor
    from masktk.web import PageLimits, create_app
    client = create_app(Predictor.from_run(tiny_runs["single"], "cpu"), PageLimits(token="s3cret")).test_client()
    assert client.get("/").status_code == 401 and "token" in client.get("/").get_json()["error"]
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/?token=s3cret").status_code == 200  # sets the cookie the page's own requests carry
    assert client.post("/predict").status_code == 400  # past the token: no file in the form


@pytest.mark.e2e
def test_bad_ports_and_a_public_host_are_said(tiny_runs):
    from conftest import assert_clean_error, run
    for bad in ("70000", "0", "-1"):
        assert_clean_error(run("serve.py", "--run_dir", tiny_runs["single"], "--port", bad, check=False), "--port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        p = run("serve.py", "--run_dir", tiny_runs["single"], "--port", str(taken.getsockname()[1]), check=False)
    assert_clean_error(p, "cannot listen", "--port")
    proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--run_dir", str(tiny_runs["single"]), "--host",
                             "0.0.0.0", "--port", str(_free_port())], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        while line and not line.startswith("warning:"):
            line = proc.stderr.readline()
        assert "anyone who can reach this machine" in line and "--token" in line
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_without_a_watched_camera_the_live_routes_say_how_to_start_one(server):
    for path in ("live", "live.mjpg", "live/counts"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + path, timeout=10)
        assert e.value.code == 404 and b"--watch" in e.value.read()
