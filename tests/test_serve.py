"""serve.py: the local page driven by a real headless Chromium, and the /predict endpoint's refusals."""
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
                             "--port", str(port), "--max_mb", "1"], cwd=REPO, env=env,
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
    yield url
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
        driver.get(server)
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
