"""The local web page (serve.py): pick a photo, see it annotated with its faces listed; a Flask app over one
Predictor.
"""
from __future__ import annotations

import base64
import io
import threading

import numpy as np

from masktk.images import decode_bytes
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
    li.textContent = f.mask_name + " | " + f.gender_name + " | " + f.age_name + " (" +
                     Math.max(...f.probs).toFixed(2) + ")";
    list.appendChild(li);
  }
});
</script></body></html>
"""


def create_app(predictor, max_mb=20):
    """The Flask app over one Predictor (predictions one at a time: the models are not shared by threads)."""
    from flask import Flask, jsonify, request
    from werkzeug.exceptions import RequestEntityTooLarge

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(max_mb * 2**20)
    lock = threading.Lock()

    @app.get("/")
    def page():
        return PAGE

    @app.post("/predict")
    def predict():
        upload = request.files.get("image")
        if upload is None:
            return jsonify(error="no file in the multipart field 'image'"), 400
        raw = upload.read()  # in memory: nothing of the upload is stored
        img = decode_bytes(np.frombuffer(raw, np.uint8), io.BytesIO(raw))
        if img is None:
            return jsonify(error=f"{upload.filename or 'the upload'} is not a photo this page can read "
                           "(JPEG, PNG, WebP, BMP, TIFF)"), 400
        with lock:
            faces = predictor.predict(img)
        buf = io.BytesIO()
        annotate(img, faces).save(buf, "JPEG", quality=90)
        return jsonify(faces=faces, annotated="data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_):
        return jsonify(error=f"the upload is over {max_mb:g} MB: send a smaller photo"), 413

    return app
