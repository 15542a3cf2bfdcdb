"""Real faces -> the competition layout, with masks drawn to fit each face's landmarks.

Called by `python synthetic.py --faces DIR --out ROOT` (see synthetic.py); not a script itself.

Input: a folder of face photos named like UTKFace (<age>_<gender>_<race>_<date>.jpg, gender 0 male,
1 female), searched recursively, or any photos with a CSV (path, age, gender). Ages under 18 are
skipped (the competition has none) and ages over 60 are recorded as 60, as in the competition.
For each person: MTCNN finds the face and its 5 landmarks; the photo is placed on a 384x512 canvas
(head-and-shoulders framing) 7 times, each with its own small change of pose, light and crop, and
masks are drawn from the landmarks: mask1..5 worn (surgical, KF94 or cloth), incorrect_mask (nose
exposed, or only the chin covered), normal. Two renderers (MASK_RENDERERS): fitted (the default: models
trained on it read real masks better) and flat (the first builder's).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from masktk.errors import UserError
from masktk.images import IMG_EXTS, read_rgb

W, H = 384, 512


RACES = ("White", "Black", "Asian", "Indian", "Others")


COLOURS = [(236, 236, 236), (150, 190, 225), (28, 28, 32), (225, 160, 185), (120, 122, 128), (60, 80, 140),
           (190, 215, 190), (225, 205, 150), (170, 40, 45)]


def list_faces(faces_dir, faces_csv=None):
    """-> DataFrame(path, age, gender, race) of usable photos."""
    faces_dir = Path(faces_dir)
    if not faces_dir.is_dir():
        raise UserError(f"{faces_dir} is not a directory of face photos")
    if faces_csv:
        df = pd.read_csv(faces_csv)
        if {"path", "age", "gender"} - set(df.columns):
            raise UserError(f"{faces_csv}: expected columns path, age, gender (0 male, 1 female)")
        df["path"] = [str(faces_dir / p) for p in df["path"]]
        df["race"] = df.get("race", "Others")
    else:
        rows = []
        for p in sorted(faces_dir.rglob("*")):
            if p.suffix.lower() not in IMG_EXTS or p.name.startswith("."):
                continue
            parts = p.name.split("_")
            try:
                age, gender = int(parts[0]), int(parts[1])
                race = RACES[int(parts[2])] if len(parts) > 3 and parts[2].isdigit() and int(parts[2]) < 5 else "Others"
            except (ValueError, IndexError):
                continue
            rows.append(dict(path=str(p), age=age, gender=gender, race=race))
        df = pd.DataFrame(rows, columns=["path", "age", "gender", "race"])
    df = df[df["age"] >= 18].copy()
    df["age"] = df["age"].clip(upper=60)
    if df.empty:
        raise UserError(f"{faces_dir}: no photos with an age of 18 or more (UTKFace names or --faces_csv)")
    return df.reset_index(drop=True)


def _affine(rng, box):
    """Source face box -> canvas: face about 165 px wide near (192, 215), with this photo's jitter."""
    x1, y1, x2, y2 = box
    s = 165 / max(x2 - x1, 1) * rng.uniform(0.9, 1.1)
    ang = rng.normal(0, 5)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    tx, ty = 192 + rng.normal(0, 8), 215 + rng.normal(0, 8)
    m = cv2.getRotationMatrix2D((cx, cy), ang, s)
    m[:, 2] += (tx - cx, ty - cy)
    return m


def _apply(m, pts):
    pts = np.asarray(pts, float).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]


def _mask_polygon(lm, box, state, shape):
    """Mask outline from the 5 landmarks (eyes, nose, mouth corners) and the face box, canvas pixels."""
    le, re, nose, ml, mr = lm
    eye_y = (le[1] + re[1]) / 2
    mouth_y = (ml[1] + mr[1]) / 2
    chin = box[3] + 0.05 * (box[3] - box[1])
    half = (box[2] - box[0]) / 2 * 1.02
    cx = (le[0] + re[0] + nose[0]) / 3
    top = {"wear": eye_y + 0.55 * (nose[1] - eye_y), "nose": nose[1] + 0.3 * (mouth_y - nose[1]),
           "chin": mouth_y + 0.45 * (chin - mouth_y)}[state]
    if shape == "kf94":
        pts = [(cx - half, top + 0.1 * half), (cx, top - 0.12 * half), (cx + half, top + 0.1 * half),
               (cx + 0.85 * half, chin - 0.2 * half), (cx, chin + 0.05 * half), (cx - 0.85 * half, chin - 0.2 * half)]
    elif shape == "cloth":
        t = np.linspace(0, math.pi, 20)
        ry = max(chin - top, 10)
        pts = [(cx - half, top)] + [(cx + half * math.cos(a), top + ry * math.sin(a)) for a in t][::-1] + [(cx + half, top)]
    else:
        pts = [(cx - half, top), (cx + half, top), (cx + 0.92 * half, chin - 0.15 * half), (cx + 0.5 * half, chin),
               (cx - 0.5 * half, chin), (cx - 0.92 * half, chin - 0.15 * half)]
    return pts, top, chin, half, cx


def draw_mask(canvas, lm, box, state, rng):
    shape = ("surgical", "kf94", "cloth")[rng.integers(3)]
    colour = np.array(COLOURS[rng.integers(len(COLOURS))])
    pts, top, chin, half, cx = _mask_polygon(lm, box, state, shape)
    layer = Image.new("L", (W, H), 0)
    ImageDraw.Draw(layer).polygon(pts, fill=255)
    alpha = np.asarray(layer, np.float32)[..., None] / 255
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    # shading: darker towards the sides and the bottom, a soft highlight near the top
    shade = 1 - 0.25 * ((xx - cx) / max(half, 1)) ** 2 - 0.12 * np.clip((yy - top) / max(chin - top, 1), 0, 1)
    tex = colour[None, None, :] * shade[..., None]
    if rng.random() < 0.5:  # fabric noise
        tex = tex + rng.normal(0, 6, (H, W, 1)).astype(np.float32)
    if shape == "surgical":  # pleats
        for k in range(3):
            y = top + (k + 1) * (chin - top) / 4.2
            tex[(np.abs(yy - y) < 1.5) & (alpha[..., 0] > 0)] *= 0.78
    elif rng.random() < 0.3:  # a printed pattern of dots
        dots = ((xx.astype(int) // 9 + yy.astype(int) // 9) % 2 == 0) & ((xx.astype(int) % 9 < 3) & (yy.astype(int) % 9 < 3))
        tex[dots] = tex[dots] * 0.6 + 80
    out = canvas.astype(np.float32) * (1 - alpha) + np.clip(tex, 0, 255) * alpha
    img = Image.fromarray(out.astype(np.uint8))
    d = ImageDraw.Draw(img)
    ear_y = lm[0][1] + 0.2 * (lm[2][1] - lm[0][1])
    for sx in (-1, 1):  # ear loops
        d.line([(cx + sx * half, top + 0.1 * (chin - top)), (cx + sx * 1.12 * half, ear_y)],
               fill=tuple(int(v) for v in colour * 0.8), width=2)
    return np.asarray(img)


# Real masks, by how often they appear in street photos: light-blue and white surgical masks most,
# then black, grey, pink, navy; KF94 white or black; cloth in any colour.
FITTED_STYLES = (("surgical", (150, 195, 225), 5), ("surgical", (238, 240, 242), 3), ("surgical", (35, 36, 40), 2),
                 ("surgical", (200, 205, 212), 1), ("surgical", (232, 180, 196), 1), ("kf94", (240, 240, 240), 2),
                 ("kf94", (30, 30, 34), 2), ("cloth", None, 3))


def _fitted_outline(lm, box, state):
    """Mask outline that follows the face: the top edge rises over the nose bridge, the bottom edge
    follows the jaw, the sides sit on the cheeks. -> (polygon points, top centre y, bottom centre y,
    half width, centre x), canvas pixels."""
    le, re, nose, ml, mr = lm
    eye_y, mouth_y = (le[1] + re[1]) / 2, (ml[1] + mr[1]) / 2
    fh = box[3] - box[1]
    chin = box[3] + 0.02 * fh
    half = (box[2] - box[0]) / 2 * 0.88
    cx = (le[0] + re[0]) / 4 + nose[0] / 2
    peak, side, bottom = {  # top centre, top at the cheeks, bottom centre
        "wear": (eye_y + 0.45 * (nose[1] - eye_y), eye_y + 0.8 * (nose[1] - eye_y), chin),
        "nose": (nose[1] + 0.25 * (mouth_y - nose[1]), nose[1] + 0.35 * (mouth_y - nose[1]), chin + 0.05 * fh),
        "chin": (mouth_y + 0.45 * (chin - mouth_y), mouth_y + 0.3 * (chin - mouth_y), chin + 0.16 * fh)}[state]
    u = np.linspace(-1, 1, 25)
    top = side - (side - peak) * np.cos(u * math.pi / 2) ** 1.5
    low_side = side + 0.55 * (bottom - side)
    low = low_side + (bottom - low_side) * np.sqrt(np.clip(1 - u ** 2, 0, 1))
    xs_top, xs_low = cx + half * u, cx + half * 0.86 * u
    pts = list(zip(xs_top, top)) + list(zip(xs_low[::-1], low[::-1]))
    return pts, peak, bottom, half, cx


def draw_mask_fitted(canvas, lm, box, state, rng):
    """A mask fitted to the face and lit like the photo: the outline of _fitted_outline, soft edges,
    the face's own light and shadow carried onto the mask, pleats or a seam, a nose wire, ear loops."""
    weights = np.array([w for *_, w in FITTED_STYLES], float)
    shape, colour, _ = FITTED_STYLES[rng.choice(len(FITTED_STYLES), p=weights / weights.sum())]
    colour = np.array(colour if colour is not None else rng.integers(30, 235, 3), np.float32)
    colour = np.clip(colour + rng.normal(0, 8, 3), 0, 255)
    pts, top, chin, half, cx = _fitted_outline(lm, box, state)
    layer = Image.new("L", (W, H), 0)
    ImageDraw.Draw(layer).polygon([tuple(map(float, p)) for p in pts], fill=255)
    alpha = cv2.GaussianBlur(np.asarray(layer, np.float32) / 255, (0, 0), 0.8 + half / 120)[..., None]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    u = np.clip((xx - cx) / max(half, 1), -1, 1)
    v = np.clip((yy - top) / max(chin - top, 1), 0, 1)
    # the photo's light: the face's blurred brightness under the mask, relative to its mean there
    lum = cv2.GaussianBlur(canvas.astype(np.float32).mean(2), (0, 0), max(half / 6, 2))
    inside = alpha[..., 0] > 0.5
    light = lum / max(float(lum[inside].mean()) if inside.any() else 128.0, 1)
    shade = (0.55 + 0.45 * np.clip(light, 0.5, 1.4)) * (1 - 0.2 * u ** 2 - 0.1 * v)
    if shape == "surgical":  # three folds: a shadow under each, a highlight above
        for k in range(3):
            y = top + (0.3 + 0.2 * k) * (chin - top) + rng.normal(0, 1.5)
            d = (yy - y) / max((chin - top) / 25, 1)
            shade = shade * (1 - 0.16 * np.exp(-((d - 1) ** 2)) + 0.07 * np.exp(-((d + 1) ** 2)))
    elif shape == "kf94":  # the centre seam and the folded-out chin panel
        shade = shade * (1 - 0.18 * np.exp(-(((xx - cx) / 2.0) ** 2)) * (v > 0.05))
        shade = shade * (1 - 0.1 * (v > 0.55))
    tex = colour[None, None, :] * shade[..., None] + rng.normal(0, rng.uniform(2, 7), (H, W, 1)).astype(np.float32)
    out = canvas.astype(np.float32) * (1 - alpha) + np.clip(tex, 0, 255) * alpha
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if shape == "surgical" and state == "wear":  # the nose wire
        d.line([(cx - 0.3 * half, top + 0.06 * (chin - top)), (cx + 0.3 * half, top + 0.06 * (chin - top))],
               fill=tuple(int(c) for c in colour * 0.85), width=max(1, int(half / 40)))
    ear_y = lm[0][1] + 0.25 * (lm[2][1] - lm[0][1])
    loop = tuple(int(c) for c in (colour * 0.9 if rng.random() < 0.5 else (235, 235, 235)))
    for sx in (-1, 1):  # ear loops from the upper and lower corners
        for y0 in (pts[0][1] if sx < 0 else pts[24][1], top + 0.75 * (chin - top)):
            d.line([(cx + sx * 0.95 * half, y0), (cx + sx * 1.08 * half, ear_y)], fill=loop, width=1)
    return np.asarray(img)


MASK_RENDERERS = {"flat": draw_mask, "fitted": draw_mask_fitted}


def create_mask_renderer(name):
    if name not in MASK_RENDERERS:
        raise UserError(f"unknown mask renderer {name!r}; choose one of {', '.join(MASK_RENDERERS)}")
    return MASK_RENDERERS[name]


def _background(rng):
    return rng.integers(50, 230, (2, 3)).astype(np.float32)  # the gradient's top and bottom colours


def _shirt(rng):
    return tuple(int(v) for v in rng.integers(20, 230, 3))


def draw_scene(rng):
    """A background's two gradient colours and a shirt colour."""
    return _background(rng), _shirt(rng)


def compose(face, box, lm, rng, state, draw, scene=None):
    """One 384x512 photo of the person: background, shoulders, the face (feathered), maybe a mask
    drawn by `draw` (a MASK_RENDERERS function, the builder's choice; unused for state "none").
    scene: draw_scene's colours, shared by a person's photos (None: drawn for this photo).
    -> (JPEG bytes, the face box on the photo: the source photo's MTCNN box, its centre carried by
    the same warp and its size by the warp's scale; the small rotation is left out, as a detector's
    upright box leaves it out)."""
    m = _affine(rng, box)
    bgc = scene[0] if scene else _background(rng)
    canvas = np.linspace(bgc[0], bgc[1], H, dtype=np.float32)[:, None, :].repeat(W, 1)
    canvas += rng.normal(0, 5, canvas.shape).astype(np.float32)
    img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    b = _apply(m, [(box[0], box[1]), (box[2], box[3])])
    cx, bottom = (b[0, 0] + b[1, 0]) / 2, b[1, 1]
    shirt = scene[1] if scene else _shirt(rng)
    ImageDraw.Draw(img).polygon([(cx - 180, H), (cx - 160, bottom + 70), (cx - 50, bottom + 30), (cx + 50, bottom + 30),
                                 (cx + 160, bottom + 70), (cx + 180, H)], fill=shirt)
    canvas = np.asarray(img, np.float32)
    h, w = face.shape[:2]
    feather = np.zeros((h, w), np.float32)
    cv2.ellipse(feather, (w // 2, int(h * 0.5)), (int(w * 0.49), int(h * 0.53)), 0, 0, 360, 1.0, -1)
    feather = cv2.GaussianBlur(feather, (0, 0), max(2, w / 30))
    warped = cv2.warpAffine(face, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    a = cv2.warpAffine(feather, m, (W, H))[..., None]
    canvas = canvas * (1 - a) + warped.astype(np.float32) * a
    lm_c, box_c = _apply(m, lm), _apply(m, [(box[0], box[1]), (box[2], box[3])]).reshape(-1)
    out = canvas.clip(0, 255).astype(np.uint8)
    if state != "none":
        out = draw(out, lm_c, box_c, state, rng)
    # light: brightness and a side gradient; then JPEG at a random quality
    g = rng.uniform(0.8, 1.15) + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, W, dtype=np.float32)[None, :, None]
    out = (out.astype(np.float32) * g).clip(0, 255).astype(np.uint8)
    buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])[1]
    (cx, cy), scale = _apply(m, [((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)])[0], math.sqrt(abs(np.linalg.det(m[:, :2])))
    hw, hh = scale * (box[2] - box[0]) / 2, scale * (box[3] - box[1]) / 2
    face_box = np.clip([cx - hw, cy - hh, cx + hw, cy + hh], 0, [W, H, W, H])
    return buf.tobytes(), tuple(round(float(v), 1) for v in face_box)


def real_people(faces_dir, faces_csv=None, seed=0, limit=None, masks="fitted", scene="photo"):
    """Yields (person, {stem: jpeg bytes}) for each photo whose face MTCNN finds; counts the rest.
    masks: the mask renderer (MASK_RENDERERS); scene: "photo" (background and shirt drawn per photo) or
    "person" (one per person, as in the competition's photos: what grouping a person's photos needs)."""
    draw = create_mask_renderer(masks)
    from masktk.faces.crop import select_face
    from masktk.faces.detectors import FaceDetector
    df = list_faces(faces_dir, faces_csv)
    if limit:
        df = df.sample(n=min(limit, len(df)), random_state=seed).sort_index()
    det = FaceDetector(detect_size=None, retry_thresholds=None)  # the source faces are bare: MTCNN's own pass
    skipped = 0
    for start in range(0, len(df), 32):
        part = df.iloc[start:start + 32]
        imgs = [read_rgb(p) for p in part["path"]]
        good = [(r, im) for r, im in zip(part.itertuples(), imgs) if im is not None]
        skipped += len(part) - len(good)
        for (r, im), (boxes, scores, lms) in zip(good, det.detect([im for _, im in good])):
            k = select_face(boxes, scores, im.shape[1], im.shape[0])
            if k is None:
                skipped += 1
                continue
            i = int(r.Index)
            rng = np.random.default_rng([seed, i, 11])
            look = draw_scene(np.random.default_rng([seed, i, 13])) if scene == "person" else None
            person = dict(id=f"{i + 1:06d}", gender=int(r.gender), age=int(r.age), race=r.race)
            made = {f"mask{j}": compose(im, boxes[k], lms[k], rng, "wear", draw, look) for j in range(1, 6)}
            made["incorrect_mask"] = compose(im, boxes[k], lms[k], rng, "nose" if rng.random() < 0.7 else "chin", draw,
                                             look)
            made["normal"] = compose(im, boxes[k], lms[k], rng, "none", draw, look)
            person["boxes"] = {stem: b for stem, (_, b) in made.items()}  # the true face box of each photo
            yield person, {stem: data for stem, (data, _) in made.items()}
    print(f"{len(df)} real faces: {len(df) - skipped} people written, {skipped} skipped (no face found or "
          "unreadable)", file=sys.stderr)
