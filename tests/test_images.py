"""masktk/images.py: reading, decoding and cutting photos."""
import numpy as np
import torch


def test_jpeg_end_is_found_past_thumbnails_and_before_trailing_video(tmp_path):
    from PIL import Image

    from masktk.images import read_rgb, truncated_jpeg
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8))
    img.save(tmp_path / "plain.jpg")
    data = (tmp_path / "plain.jpg").read_bytes()
    (tmp_path / "motion.jpg").write_bytes(data + b"\x00\x00\x00\x18ftypmp42" + bytes(200_000))  # phone motion photo
    assert not truncated_jpeg(np.frombuffer(data + bytes(200_000), np.uint8))
    assert read_rgb(tmp_path / "motion.jpg") is not None
    # a main image cut short still holds the end marker of the thumbnail inside its APP1: truncated
    import io
    buf = io.BytesIO()
    img.resize((16, 12)).save(buf, "JPEG")
    payload = b"Exif\x00\x00" + buf.getvalue()
    full = data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]
    cut = full[:len(full) - 300]
    assert b"\xff\xd9" in cut  # the thumbnail's end marker: a search of the file's tail would be fooled
    assert not truncated_jpeg(np.frombuffer(full, np.uint8)) and truncated_jpeg(np.frombuffer(cut, np.uint8))


def test_read_bytes_gives_every_byte_writable(tiny_root, tmp_path):
    """read_bytes returns a file's exact bytes in a writable array (torch.from_numpy takes it without the
    non-writable warning), an empty array for an empty file, and raises for a missing one."""
    import warnings

    from masktk.images import read_bytes
    files = sorted((tiny_root / "train" / "images").rglob("*.*"))[:5] + [tmp_path / "empty.jpg"]
    (tmp_path / "empty.jpg").touch()
    for f in files:
        got = read_bytes(f)
        assert got.dtype == np.uint8 and got.tobytes() == f.read_bytes(), f
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.from_numpy(got)
    assert read_bytes(files[-1]).size == 0
    try:
        read_bytes(tmp_path / "missing.jpg")
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("a missing file must raise")


def test_one_size_rule_for_training_and_prediction_and_too_large_says_so(tmp_path, monkeypatch):
    """A valid 225-megapixel photo was dropped in training as 'unreadable or empty' (Pillow's decompression
    -bomb error swallowed) while inference decoded it."""
    from PIL import Image

    from masktk import images
    from masktk.data.table import image_ok
    big = tmp_path / "big.jpg"
    Image.new("RGB", (15000, 15000), (120, 90, 60)).save(big, quality=50)
    assert image_ok(big) and images.read_rgb(big).shape == (15000, 15000, 3)
    monkeypatch.setattr(images, "MAX_MEGAPIXELS", 200)  # the same photo over a lower limit: refused by both paths
    assert not image_ok(big) and images.read_rgb(big) is None
    assert "too large" in images.why_unreadable(big) and "225 megapixels" in images.why_unreadable(big)
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "too large" not in images.why_unreadable(tmp_path / "empty.jpg")
