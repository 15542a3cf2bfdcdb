"""Drawn people for the demo data: a person's identity, gender and age cues, masks of several shapes worn
right, wrong or not at all, pose, light and JPEG quality varied per photo.
"""
from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

W, H = 384, 512


SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 135], [198, 134, 96], [141, 85, 54], [95, 60, 40]])


HAIR = np.array([[20, 16, 14], [60, 40, 25], [110, 75, 40], [170, 130, 80], [40, 30, 30]])


MASK_COLOURS = np.array([[240, 240, 240], [160, 200, 230], [30, 30, 35], [230, 170, 190], [130, 130, 135],
                         [70, 90, 150], [200, 220, 200], [230, 210, 160]])


SHAPES = ("surgical", "kf94", "cloth")


def sample_person(rng, i):
    gender = int(rng.random() < 0.55)
    r = rng.random()  # roughly the competition's mix: few people at 60
    age = int(rng.integers(18, 30)) if r < 0.42 else int(rng.integers(30, 60)) if r < 0.85 else 60
    true_age = age if age < 60 else int(rng.integers(60, 78))
    return dict(id=f"{i + 1:06d}", gender=gender, age=age, true_age=true_age,
                skin=SKIN[rng.integers(len(SKIN))] + rng.integers(-12, 12, 3),
                hair=HAIR[rng.integers(len(HAIR))] + rng.integers(-10, 10, 3),
                # noisy cues: each overlaps between the groups
                face_w=rng.normal(1.0 - 0.07 * gender, 0.05), face_h=rng.normal(1.0, 0.05),
                long_hair=rng.random() < (0.8 if gender else 0.15),
                brow=rng.normal(2.6 - 0.9 * gender, 0.5),
                lips=rng.random() < (0.6 if gender else 0.1),
                beard=(not gender) and rng.random() < 0.35,
                grey=float(np.clip((true_age - 38) / 30 + rng.normal(0, 0.15), 0, 1)),
                wrinkles=float(np.clip((true_age - 25) / 40 + rng.normal(0, 0.12), 0, 1.2)),
                bg=rng.integers(60, 235, (2, 3)), shirt=rng.integers(20, 230, 3))


def _ellipse(cx, cy, rx, ry, a0=0, a1=2 * math.pi, n=48):
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def render(p, mask_state, rng, mask_style=None):
    """One 384x512 photo. mask_state: 'wear' | 'nose' (nose exposed) | 'chin' (only chin) | 'none'."""
    return render_with_box(p, mask_state, rng, mask_style)[0]


def render_with_box(p, mask_state, rng, mask_style=None):
    """-> (the photo as render draws it, its face's box (x1, y1, x2, y2) in pixels: chin to hairline, ear to ear)."""
    bg = np.linspace(p["bg"][0], p["bg"][1], H, dtype=np.float32)[:, None, :]
    img = Image.fromarray((bg + 6 * rng.standard_normal((H, W, 3), dtype=np.float32)).clip(0, 255).astype(np.uint8))
    scale = 72 * rng.uniform(0.88, 1.12)
    cx, cy = W / 2 + rng.normal(0, 10), 215 + rng.normal(0, 10)
    ang = math.radians(rng.normal(0, 6))
    ca, sa = math.cos(ang), math.sin(ang)
    fw, fh = p["face_w"], p["face_h"]

    def T(pts):  # face frame (half-width ~1) -> pixels, with the photo's rotation and scale
        pts = np.asarray(pts, float)
        x, y = pts[:, 0] * fw, pts[:, 1] * fh
        return [(cx + scale * (ca * a - sa * b), cy + scale * (sa * a + ca * b)) for a, b in zip(x, y)]

    d = ImageDraw.Draw(img)
    d.polygon([(cx - 170, H), (cx - 150, 430), (cx - 60, 380), (cx + 60, 380), (cx + 150, 430), (cx + 170, H)],
              fill=_col(p["shirt"]))  # body
    _draw_head(d, T, p, scale)
    if mask_state != "none":
        _draw_mask(d, T, mask_state, mask_style)
    face = np.asarray(T(_ellipse(0, 0.0, 1.0, 1.35)))  # the face oval with its forehead up to the hairline
    return _light_and_encode(img, rng), tuple(float(v) for v in (*face.min(0), *face.max(0)))


def _col(c, jitter=0):
    return tuple(int(v) for v in np.clip(np.asarray(c) + jitter, 0, 255))


def _draw_head(d, T, p, scale):
    """Neck, hair, ears, face, wrinkles, eyes, brows, nose, beard and mouth; T maps the face frame to pixels."""
    hair = p["hair"] * (1 - p["grey"]) + np.array([200, 200, 205]) * p["grey"]
    skin = p["skin"]
    d.polygon(T([(-0.45, 0.9), (0.45, 0.9), (0.5, 2.3), (-0.5, 2.3)]), fill=_col(skin, -20))
    if p["long_hair"]:
        d.polygon(T(np.concatenate([_ellipse(0, -0.2, 1.3, 1.3, math.pi, 2 * math.pi),
                                    [(1.35, 1.0), (1.2, 2.2), (-1.2, 2.2), (-1.35, 1.0)]])), fill=_col(hair))
    for sx in (-1, 1):  # ears
        d.polygon(T(_ellipse(sx * 1.0, 0.0, 0.18, 0.3)), fill=_col(skin, -10))
    d.polygon(T(_ellipse(0, 0.1, 1.0, 1.25)), fill=_col(skin))
    d.polygon(T(np.concatenate([_ellipse(0, -0.35, 1.08, 0.95, math.pi, 2 * math.pi),
                                [(1.05, -0.25), (-1.05, -0.25)]])), fill=_col(hair))  # hair cap
    # wrinkles: forehead lines and nasolabial folds, more with age
    for k in range(int(p["wrinkles"] * 4)):
        y = -0.55 + 0.09 * k
        d.line(T([(-0.5, y), (0, y - 0.03), (0.5, y)]), fill=_col(skin, -45), width=2)
    for sx in (-1, 1):  # eyes, brows
        d.polygon(T(_ellipse(sx * 0.38, -0.15, 0.16, 0.07)), fill=(245, 245, 245))
        d.polygon(T(_ellipse(sx * 0.38, -0.15, 0.06, 0.06)), fill=(40, 30, 25))
        d.line(T([(sx * 0.2, -0.33), (sx * 0.4, -0.38), (sx * 0.58, -0.33)]), fill=_col(hair, -30),
               width=max(1, int(p["brow"] * scale / 72)))
        if p["wrinkles"] > 0.55:
            d.line(T([(sx * 0.58, -0.12), (sx * 0.68, -0.08)]), fill=_col(skin, -50), width=2)
    d.line(T([(0, -0.1), (-0.08, 0.3), (0.08, 0.32)]), fill=_col(skin, -55), width=3)  # nose
    if p["beard"]:
        d.polygon(T(np.concatenate([_ellipse(0, 0.55, 0.75, 0.75, 0, math.pi)])), fill=_col(hair, 20))
    lips = (190, 60, 80) if p["lips"] else _col(skin, -60)
    d.polygon(T(_ellipse(0, 0.62, 0.28, 0.08)), fill=lips)
    if p["wrinkles"] > 0.35:
        for sx in (-1, 1):
            d.line(T([(sx * 0.25, 0.32), (sx * 0.38, 0.62)]), fill=_col(skin, -40), width=2)


def _draw_mask(d, T, mask_state, mask_style):
    """A mask of mask_style (shape, colour) whose top edge sits by mask_state: over the nose, under it, on the chin."""
    shape, colour = mask_style
    top = {"wear": 0.08, "nose": 0.4, "chin": 0.8}[mask_state]
    if shape == "kf94":
        pts = [(-1.02, top + 0.15), (0, top - 0.1), (1.02, top + 0.15), (0.9, 1.0), (0, 1.42), (-0.9, 1.0)]
    elif shape == "cloth":
        pts = np.concatenate([[(-1.0, top + 0.1)], _ellipse(0, top + 0.1, 1.0, 1.25 - top, 0, math.pi),
                              [(1.0, top + 0.1), (0, top - 0.05)]])
    else:
        pts = [(-1.04, top), (1.04, top), (0.95, 1.1), (0.5, 1.35), (-0.5, 1.35), (-0.95, 1.1)]
    d.polygon(T(pts), fill=_col(colour))
    for sx in (-1, 1):  # ear loops
        d.line(T([(sx * 1.0, top + 0.05), (sx * 1.08, -0.05)]), fill=_col(colour, -30), width=2)
    if shape == "surgical":  # pleats and a shaded lower half
        for k in range(3):
            y = top + 0.2 + k * (1.1 - top) / 3.5
            d.line(T([(-0.95, y), (0.95, y)]), fill=_col(colour, -35), width=2)
    d.line(T([(-0.9, 1.05), (0, 1.3), (0.9, 1.05)]), fill=_col(colour, -25), width=3)


def _light_and_encode(img, rng):
    """A random light gradient, blur and noise, then JPEG at a random quality -> bytes."""
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))), np.float32)
    g = rng.uniform(0.75, 1.2) + rng.uniform(-0.2, 0.2) * np.linspace(-1, 1, W)[None, :, None]
    arr = (arr * g.astype(np.float32) + 4 * rng.standard_normal(arr.shape, dtype=np.float32)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=int(rng.integers(60, 96)))
    return buf.getvalue()


def draw_person(seed_i):
    """(seed, i) -> (person dict, {stem: jpeg bytes}): the person's identity and its 7 photos."""
    seed, i = seed_i
    rng = np.random.default_rng([seed, i])
    p = sample_person(rng, i)
    styles = [(SHAPES[rng.integers(3)], MASK_COLOURS[rng.integers(len(MASK_COLOURS))]) for _ in range(6)]
    photos = {f"mask{k + 1}": render(p, "wear", rng, styles[k]) for k in range(5)}
    photos["incorrect_mask"] = render(p, "nose" if rng.random() < 0.7 else "chin", rng, styles[5])
    photos["normal"] = render(p, "none", rng)
    return p, photos


# a mask set's three states, drawn as the competition's photos are: worn, worn wrong (nose or chin), none
MASK_SET_STATES = (("wear", 0), ("nose", 1), ("chin", 1), ("none", 2))


def draw_mask_set_person(seed_i):
    """(seed, i) -> [(jpeg bytes, face box, mask id)]: a drawn person's photos for a mask set, one per mask id, the
    incorrect one with its nose or its chin exposed."""
    seed, i = seed_i
    rng = np.random.default_rng([seed, i, 3])
    p = sample_person(rng, i)
    style = (SHAPES[rng.integers(3)], MASK_COLOURS[rng.integers(len(MASK_COLOURS))])
    wrong = "nose" if rng.random() < 0.7 else "chin"
    return [(*render_with_box(p, state, rng, style), m) for state, m in MASK_SET_STATES
            if state in ("wear", wrong, "none")]


def drawn_people(n, seed, draw=draw_person):
    """Yields draw((seed, i)) for n drawn people ((person, photos) by default), rendered in parallel (each person has
    its own random stream, so the output is the same for any number of processes)."""
    import multiprocessing as mp
    with mp.get_context("fork").Pool(min(os.cpu_count() or 1, 8)) as pool:
        yield from pool.imap(draw, [(seed, i) for i in range(n)], chunksize=4)
