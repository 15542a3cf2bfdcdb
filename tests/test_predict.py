"""predict.py: photos in, faces and labels out."""
import numpy as np


def test_predict_gives_photos_that_share_a_stem_their_own_outputs(tmp_path):
    from pathlib import Path

    from predict import output_names
    files = [Path("a/x.jpg"), Path("b/x.jpg"), Path("c/y.jpg"), Path("a/x.png")]
    names = output_names(files)
    assert len(set(names.values())) == 4 and names[Path("c/y.jpg")] == "y"


def test_annotation_numbers_faces_inside_the_photo_and_lists_them_below():
    from predict import annotate
    img = np.zeros((300, 400, 3), np.uint8)
    faces = [dict(box=[b, 10, b + 30, 40], mask=k % 3, mask_name="wear", gender_name="male", age_name="<30",
                  probs=[0.9] + [0.1 / 17] * 17) for k, b in enumerate((0, 20, 40, 380))]  # crowded, one at the edge
    out = annotate(img, faces)
    assert out.size[0] == 400 and out.size[1] > 300 + 4 * 12  # a legend line per face below the photo
    legend = np.asarray(out)[300:].min(axis=2)
    line = (out.size[1] - 300 - 8) // 4
    assert all((legend[4 + k * line:4 + (k + 1) * line] < 200).any() for k in range(4))  # text on every line
    assert np.asarray(out)[10:40, 380:400].any()  # the edge face's box and tag are drawn inside the photo
