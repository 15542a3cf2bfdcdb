"""A person's photos found without names, and their gender and age decided together.

Where each person's photos share a background and clothes (the competition's: seven photos per
person, one place, one shirt), the photos' surroundings group them; gender and age belong to the
person, so each photo's mask state is kept and its gender x age distribution is replaced by the mean
over its group. Where backgrounds and clothes differ from photo to photo (street photos, one photo per
person), photos stay alone and nothing changes; docs/results.md measures both.
"""
from __future__ import annotations

import cv2
import numpy as np

# Distance (mean absolute difference of the Lab colour channels a, b per thumbnail cell, 0-255 scale) under
# which two photos' surroundings count as one scene; chosen on photos with known people (docs/results.md)
SCENE_DISTANCE = 6.0


THUMB = (12, 16)  # width, height of the thumbnail the surroundings are compared at


def scene_vector(rgb):
    """The photo's surroundings as a vector: the colour (Lab's a and b; lightness changes with the light)
    of a small thumbnail without its centre, where the face is (face crops have no surroundings: callers
    pass the whole photos). None (unreadable): zeros."""
    if rgb is None:
        rgb = np.zeros((THUMB[1], THUMB[0], 3), np.uint8)
    small = cv2.resize(rgb, THUMB, interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    w, h = THUMB
    keep = np.ones((h, w), bool)
    keep[h // 10: h * 7 // 10, w // 4: w * 3 // 4] = False  # the face and hair of a centred portrait
    return lab[..., 1:][keep].reshape(-1)


def scene_groups(vectors, distance=SCENE_DISTANCE):
    """(N, D) scene vectors -> (N,) group ids: photos whose surroundings differ by less than `distance`
    on average, joined by average linkage (a photo alone is its own group). N x N distances: about 1.3 GB
    for the competition's 12,600 eval photos."""
    vectors = np.asarray(vectors, np.float32)
    if len(vectors) < 2:
        return np.zeros(len(vectors), int)
    from sklearn.cluster import AgglomerativeClustering
    cl = AgglomerativeClustering(n_clusters=None, distance_threshold=distance * vectors.shape[1],
                                 metric="manhattan", linkage="average")
    return cl.fit_predict(vectors)


def pool_people(probs, groups):
    """(N, 18) probabilities and (N,) group ids -> each photo's mask distribution times its group's mean
    gender x age distribution (label = mask * 6 + gender * 3 + age)."""
    p = np.asarray(probs, np.float64).reshape(-1, 3, 6)
    mask, person = p.sum(2), p.sum(1)
    ids, inverse = np.unique(groups, return_inverse=True)
    mean = np.zeros((len(ids), 6))
    np.add.at(mean, inverse, person)
    mean /= np.bincount(inverse)[:, None]
    return (mask[:, :, None] * mean[inverse][:, None, :]).reshape(-1, 18).astype(np.float32)


class NoPooling:
    """--group_people False: every photo decided alone."""

    def __call__(self, probs):
        return probs

    def describe(self):
        return "off"


def read_scene(path):
    """A photo's scene vector, decoded at a quarter of its size (the thumbnail needs no more)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4)
    if bgr is None:
        from masktk.images import read_rgb
        rgb = read_rgb(path)
    else:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return scene_vector(rgb)


class ScenePooling:
    """--group_people True: photos grouped by their surroundings (scene_groups), gender and age pooled."""

    def __init__(self, paths, distance=SCENE_DISTANCE):
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor() as ex:
            self.groups = scene_groups(list(ex.map(read_scene, paths)), distance)

    def __call__(self, probs):
        return pool_people(probs, self.groups)

    def describe(self):
        sizes = np.bincount(np.unique(self.groups, return_inverse=True)[1])
        return f"{len(self.groups)} photos in {len(sizes)} groups (largest {sizes.max()})"
