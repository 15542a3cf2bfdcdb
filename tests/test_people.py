"""Grouping a person's photos by their surroundings, and deciding gender and age over the group."""
import cv2
import numpy as np
import skimage.data

from masktk.data.composed import compose, create_mask_renderer, draw_scene
from masktk.faces.crop import best_boxes
from masktk.faces.detectors import FaceDetector
from masktk.predict.person_pooling import pool_people, scene_groups, scene_vector


def _photos(scenes_shared, people=3, seed=0):
    """Seven builder photos (synthetic.py --faces's compose) per person of the astronaut's real face:
    a background and shirt per person (as the competition's) or per photo."""
    face = skimage.data.astronaut()[40:240, 130:330]  # her face, framed as a UTKFace photo is
    (box, _, _, marks), = best_boxes(FaceDetector(detect_size=None), [face])
    draw, photos, who = create_mask_renderer("flat"), [], []
    for i in range(people):
        rng = np.random.default_rng([seed, i])
        look = draw_scene(np.random.default_rng([seed, i, 13])) if scenes_shared else None
        for state in ("wear",) * 5 + ("nose", "none"):
            jpeg, _ = compose(face, np.asarray(box), marks, rng, state, draw, look)
            photos.append(cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
            who.append(i)
    return photos, np.array(who)


def test_photos_sharing_background_and_clothes_group_as_their_person():
    photos, who = _photos(scenes_shared=True)
    groups = scene_groups([scene_vector(p) for p in photos])
    for g in set(groups):  # no group mixes people
        assert len(set(who[groups == g])) == 1
    assert len(set(groups)) <= 5  # and most of each person's photos are found together (21 photos alone: 21)


def test_photos_of_other_scenes_stay_alone_even_with_the_same_face():
    photos, _ = _photos(scenes_shared=False)
    groups = scene_groups([scene_vector(p) for p in photos])
    assert len(set(groups)) >= 19  # 21 photos; two random backgrounds may happen to look alike


def test_pooling_keeps_each_photos_mask_and_shares_gender_and_age_over_the_group():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(18), 5)
    groups = np.array([0, 0, 1, 0, 2])
    pooled = pool_people(probs, groups).reshape(5, 3, 6)
    assert np.allclose(pooled.sum((1, 2)), 1, atol=1e-6)
    assert np.allclose(pooled.sum(2), probs.reshape(5, 3, 6).sum(2), atol=1e-6)  # mask: each photo's own
    person = pooled.sum(1)
    assert np.allclose(person[0], person[1]) and np.allclose(person[0], person[3])
    assert np.allclose(person[0], probs.reshape(5, 3, 6).sum(1)[[0, 1, 3]].mean(0), atol=1e-6)
    assert np.allclose(pooled[2], probs[2].reshape(3, 6).sum(1)[:, None] * probs[2].reshape(3, 6).sum(0)[None])
