"""The local web page (serve.py): pick a photo, see it annotated with its faces listed. A Flask app over one
Predictor, served by waitress (a production WSGI server): uploads refused by size, form fields and the photo's
pixel count (read from its header, before any decoding), one photo decoded and predicted at a time, an optional
access token, and every answer JSON, errors included.
"""
from __future__ import annotations

import base64
import hmac
import io
import sys
import threading
from dataclasses import dataclass

import numpy as np

from masktk.errors import UserError
from masktk.images import decode_bytes, header_size
from masktk.predict.predictor import annotate

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Face-mask status</title>
<style>body{font-family:sans-serif;margin:2em;max-width:60em} #annotated{max-width:100%;display:none}
.err{color:#b00}</style></head>
<body><h1>Face-mask status</h1>
<p>Pick a photo: every face found is boxed and listed with its mask status, gender and age group.</p>
<input type="file" id="photo" accept="image/*">
<p id="status"></p>
<img id="annotated" alt="the photo with its faces boxed">
<ol id="faces"></ol>
<script>
document.getElementById("photo").addEventListener("change", async (ev) => {
  const file = ev.target.files[0], status = document.getElementById("status");
  const list = document.getElementById("faces"), img = document.getElementById("annotated");
  if (!file) return;
  list.innerHTML = ""; img.style.display = "none"; status.className = ""; status.textContent = "predicting...";
  const form = new FormData(); form.append("image", file);
  const r = await fetch("predict", {method: "POST", body: form});
  const answer = await r.json();
  if (!r.ok) { status.className = "err"; status.textContent = answer.error; return; }
  status.textContent = answer.faces.length + " face(s) found";
  img.src = answer.annotated; img.style.display = "block";
  for (const f of answer.faces) {
    const li = document.createElement("li");
    // a run trained on a mask set answers the mask state alone: its gender and age are null
    li.textContent = [f.mask_name, f.gender_name, f.age_name].filter(v => v !== null).join(" | ") + " (" +
                     Math.max(...f.probs).toFixed(2) + ")";
    list.appendChild(li);
  }
});
</script></body></html>
"""


@dataclass(frozen=True)
class PageLimits:
    """What one request may cost, and who may ask (serve.py's flags)."""
    max_mb: float = 20  # the largest upload
    max_megapixels: float = 50  # the largest photo, by its header's width x height
    max_fields: int = 16  # form fields in one upload (the page sends one)
    max_viewers: int = 20  # browsers watching the live stream at once; more are answered 503
    token: str | None = None  # when set, every request must carry it


TOKEN_COOKIE = "masktk_token"


def token_of(request):
    """The token a request carries: `Authorization: Bearer T`, `?token=T`, or the cookie the page was given."""
    auth = request.headers.get("Authorization", "")
    return (auth[7:] if auth.startswith("Bearer ") else None) or request.args.get("token") or \
        request.cookies.get(TOKEN_COOKIE)


def photo_or_refusal(raw, name, limits):
    """-> (RGB image, None) or (None, (message, status)): the header read first, so a decompression bomb is
    refused by its pixel count before any decoder allocates it."""
    not_photo = (f"{name} is not a photo this page can read (JPEG, PNG, WebP, BMP, TIFF)", 400)
    try:
        w, h = header_size(io.BytesIO(raw))
    except Exception:
        return None, not_photo
    if w * h > limits.max_megapixels * 1e6:
        return None, (f"{name} is {w}x{h} ({w * h / 1e6:.0f} megapixels), over this page's {limits.max_megapixels:g}: "
                      "send a smaller photo", 413)
    img = decode_bytes(np.frombuffer(raw, np.uint8), io.BytesIO(raw))
    return (None, not_photo) if img is None else (img, None)


def create_app(predictor, limits=PageLimits(), watcher=None, lock=None):
    """The Flask app over one Predictor. Photos are decoded and predicted one at a time (the models are not
    shared by threads): memory holds one decoded photo, plus the raw uploads of the requests waiting. With a
    watcher (serve.py --watch), /live shows its camera (`lock`: the one it predicts under)."""
    from flask import Flask, jsonify, request

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=int(limits.max_mb * 2**20), MAX_FORM_PARTS=limits.max_fields)
    lock = lock or threading.Lock()
    add_live_routes(app, watcher, limits)

    @app.before_request
    def check_token():
        if limits.token and not hmac.compare_digest(token_of(request) or "", limits.token):
            return jsonify(error="this page needs its access token: open it as /?token=TOKEN, or send "
                           "'Authorization: Bearer TOKEN'"), 401

    @app.get("/")
    def page():
        answer = app.make_response(PAGE)
        if limits.token and request.args.get("token"):  # the page's own requests carry it from here on
            answer.set_cookie(TOKEN_COOKIE, limits.token, httponly=True, samesite="Strict")
        return answer

    @app.post("/predict")
    def predict():
        upload = request.files.get("image")
        if upload is None:
            return jsonify(error="no file in the multipart field 'image'"), 400
        name = upload.filename or "the upload"
        with lock:  # decoding inside: one decoded photo in memory, whatever the number of requests
            img, refusal = photo_or_refusal(upload.read(), name, limits)
            if refusal:
                return jsonify(error=refusal[0]), refusal[1]
            faces = predictor.predict(img)
            buf = io.BytesIO()
            annotate(img, faces).save(buf, "JPEG", quality=90)
        return jsonify(tasks=list(predictor.answer.tasks), faces=faces,
                       annotated="data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())

    add_error_handlers(app, limits)
    return app


def add_error_handlers(app, limits):
    """Every error answered in JSON with its status; the page keeps serving after any of them."""
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_):
        if (request.content_length or 0) > app.config["MAX_CONTENT_LENGTH"]:
            return jsonify(error=f"the upload is over {limits.max_mb:g} MB: send a smaller photo"), 413
        return jsonify(error=f"the form has over {limits.max_fields} fields: send one photo in the field "
                       "'image'"), 413

    @app.errorhandler(UserError)
    def bad_input(e):
        return jsonify(error=str(e)), 400

    @app.errorhandler(HTTPException)
    def http_error(e):
        return jsonify(error=f"{e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def failed(e):
        print(f"error: {request.method} {request.path}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        return jsonify(error=f"the page failed on this request ({type(e).__name__}); it keeps serving"), 500


LIVE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Face-mask status, live</title>
<style>body{font-family:sans-serif;margin:2em} #live{max-width:100%} dl{display:grid;grid-template-columns:auto auto;
gap:.2em 1em;max-width:24em}</style></head>
<body><h1>Live: <span id="source"></span></h1>
<img id="live" src="live.mjpg" alt="the camera, every face boxed with its person's number and labels">
<dl><dt>people seen</dt><dd id="people">0</dd><dt>without a mask</dt><dd id="without_mask">0</dd>
<dt>mask worn incorrectly</dt><dd id="incorrect_mask">0</dd><dt>faces now</dt><dd id="now">0</dd>
<dt>frames</dt><dd id="frames">0</dd><dt>frames dropped</dt><dd id="dropped">0</dd></dl>
<p id="state"></p>
<script>
async function poll() {
  const c = await (await fetch("live/counts")).json();
  for (const k of ["source", "people", "without_mask", "incorrect_mask", "now", "frames", "dropped"])
    document.getElementById(k).textContent = c[k];
  document.getElementById("state").textContent = c.ended ? "the stream has ended" : "";
  if (!c.ended) setTimeout(poll, 1000);
}
poll();
</script></body></html>
"""


def add_live_routes(app, watcher, limits):
    """/live (the page), /live.mjpg (the annotated stream, MJPEG: at most max_viewers at once, each given the
    newest frame, none queued) and /live/counts (JSON); 404 without a watcher."""
    from flask import Response, jsonify

    viewers = threading.BoundedSemaphore(limits.max_viewers)
    none = ("no camera is watched here: start serve.py with --watch SOURCE (a stream address, or a webcam's "
            "number)", 404)

    @app.get("/live")
    def live_page():
        return LIVE_PAGE if watcher else (jsonify(error=none[0]), none[1])

    @app.get("/live/counts")
    def live_counts():
        return jsonify(watcher.counts) if watcher else (jsonify(error=none[0]), none[1])

    @app.get("/live.mjpg")
    def live_stream():
        if not watcher:
            return jsonify(error=none[0]), none[1]
        if not viewers.acquire(blocking=False):
            return jsonify(error=f"{limits.max_viewers} viewers already watch this stream: try again later"), 503

        def parts():
            try:
                for jpeg in watcher.frames():
                    yield b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode() \
                        + b"\r\n\r\n" + jpeg + b"\r\n"
            finally:
                viewers.release()
        return Response(parts(), mimetype="multipart/x-mixed-replace; boundary=frame")

