"""Skull / head phantom and its population of deformed subjects (biomip.data.skull)."""

import math

import numpy as np
import pytest
import torch

from biomip.core import Image, InputError
from biomip.data.deformation import jacobian_min
from biomip.data.skull import (
    LANDMARKS,
    SKULL_LABELS,
    SkullSubject,
    skull_population,
    skull_subject,
    skull_template,
)
from biomip.ops.spatial import warp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def template():
    return skull_template((48, 48, 48))


@pytest.fixture(scope="module")
def subject(template):
    return skull_subject(template, seed=4)


def _value_at(img: Image, point) -> float:
    idx = np.round(img.world_to_index(np.asarray(point, float)[None])[0]).astype(int)
    return float(img.array[idx[2], idx[1], idx[0]])


def _field_at(fld: Image, points) -> np.ndarray:
    """Trilinear u at world points (k, 3) -> (k, 3), independent of the module's sampler."""
    from scipy.ndimage import map_coordinates

    idx = fld.world_to_index(np.asarray(points, float))          # (k, 3) x, y, z
    coords = idx[:, ::-1].T                                       # z, y, x
    return np.stack([map_coordinates(fld.array[c].astype(np.float64), coords, order=1, mode="nearest")
                     for c in range(3)], axis=1)


def test_template_geometry_and_dtypes(template):
    vol, lab = template.volume, template.labels
    assert isinstance(template, SkullSubject)
    assert vol.shape == (48, 48, 48) and vol.axes == "zyx" and vol.array.dtype == np.float32
    assert lab.shape == vol.shape and lab.array.dtype == np.uint8 and lab.meta["kind"] == "labels"
    assert np.allclose(vol.spacing, 220.0 / 48) and lab.same_geometry(vol)
    centre = vol.index_to_world(np.array([[47 / 2, 47 / 2, 47 / 2]]))[0]
    assert np.allclose(centre, 0.0, atol=1e-9)                     # the grid centre is the world origin
    assert template.field is None and template.opening_deg == 0.0 and template.seed is None
    # explicit spacing and non-cubic shape
    t2 = skull_template((40, 48, 36), spacing=(5.0, 5.0, 5.5))
    assert t2.volume.shape == (40, 48, 36) and t2.volume.spacing == (5.0, 5.0, 5.5)


def test_template_hu_labels_landmarks(template):
    vol, lab = template.volume.array, template.labels.array
    assert vol.min() == -1000.0 and vol.max() >= 1900.0            # air and teeth
    assert _value_at(template.volume, (-100, -100, 100)) == -1000.0  # a corner: air
    assert set(np.unique(lab).tolist()) == {0, *SKULL_LABELS}
    for k in SKULL_LABELS:
        assert (vol[lab == k] > 700).all(), SKULL_LABELS[k]         # every labelled voxel is bone
    assert abs(_value_at(template.volume, (0, 10, 50)) - 35.0) < 1e-3    # brain
    assert _value_at(template.volume, (0, -8, -66)) == -1000.0     # pharynx
    assert len(LANDMARKS) >= 10 and set(template.landmarks) == set(LANDMARKS)
    lo, hi = template.volume.bounds()
    for name, p in template.landmarks.items():
        assert p.shape == (3,) and np.all(p > lo) and np.all(p < hi), name
    # landmarks on the bone they belong to (within one voxel)
    fine = skull_template((96, 96, 96))
    own = {"menton": 3, "pogonion": 3, "gonion_l": 3, "condylion_r": 3, "incisor_lower": 3,
           "incisor_upper": 2, "anterior_nasal_spine": 2, "nasion": 1, "vertex": 1, "basion": 1}
    s = fine.volume.spacing[0]
    for name, k in own.items():
        p = fine.landmarks[name]
        near = [_value_at(fine.labels, p + s * (np.array(d) - 1)) for d in np.ndindex(3, 3, 3)]
        assert k in near, name
    assert _value_at(fine.volume, fine.landmarks["sella"]) < 100    # the pituitary fossa is soft tissue


def test_template_is_in_lps(template):
    """World y is posterior (LPS, as every reader of biomip): the face at y < 0, the back of
    the skull at y > 0, the vertex on top, the patient's right at x < 0; with the identity
    direction a viewer shows the head the right way round (it was mirrored front to back)."""
    lm = template.landmarks
    assert lm["nasion"][1] < -50 and lm["pogonion"][1] < -50 and lm["basion"][1] > 0
    assert lm["vertex"][2] > lm["menton"][2] + 150 and lm["orbitale_r"][0] < 0 < lm["orbitale_l"][0]
    assert np.allclose(template.volume.direction, np.eye(3))
    lab = template.labels.array
    mand_y = template.volume.index_to_world(np.argwhere(lab == 3)[:, ::-1].astype(float))[:, 1].mean()
    skull_y = template.volume.index_to_world(np.argwhere(lab == 1)[:, ::-1].astype(float))[:, 1].mean()
    assert mand_y < skull_y - 20                                   # the jaw is in front of the cranium


def test_template_is_symmetric(template):
    vol, lab = template.volume.array, template.labels.array
    assert np.array_equal(vol, vol[:, :, ::-1]) and np.array_equal(lab, lab[:, :, ::-1])
    for side in ("gonion", "condylion", "orbitale"):
        r, lft = template.landmarks[side + "_r"], template.landmarks[side + "_l"]
        assert r[0] < 0 < lft[0] and np.allclose(r * [-1, 1, 1], lft)


def test_subject_deterministic(template, subject):
    again = skull_subject(template, seed=4)
    assert np.array_equal(again.volume.array, subject.volume.array)
    assert np.array_equal(again.field.array, subject.field.array)
    other = skull_subject(template, seed=5)
    assert not np.allclose(other.field.array, subject.field.array)
    assert other.opening_deg != subject.opening_deg
    pop = skull_population(2, template=template, seed=4)
    assert np.array_equal(pop[0].volume.array, subject.volume.array)
    assert np.array_equal(pop[1].field.array, other.field.array) and [p.seed for p in pop] == [4, 5]


def test_subject_field_definition(template, subject):
    fld = subject.field
    assert fld.shape == (3, 48, 48, 48) and fld.axes == "czyx" and fld.array.dtype == np.float32
    assert fld.meta["kind"] == "displacement" and fld.same_geometry(template.volume)
    assert subject.volume.array.dtype == np.float32 and subject.labels.array.dtype == np.uint8
    assert subject.labels.meta["kind"] == "labels"
    assert 0.0 <= subject.opening_deg <= 12.0
    norm = np.sqrt((fld.array.astype(np.float64) ** 2).sum(0))
    assert 3.0 < norm.max() < 6.0 + 22.0                           # smooth part + jaw rotation (r <= ~110 mm)
    # subject.volume(p) = template.volume(p + u(p)): compare with scipy's trilinear interpolation
    from scipy.ndimage import map_coordinates

    grid = np.stack(np.meshgrid(*[np.arange(48.0)] * 3, indexing="ij"))          # z, y, x indices
    shift = fld.array[::-1].astype(np.float64) / np.array(fld.spacing[::-1])[:, None, None, None]
    expect = map_coordinates(template.volume.array.astype(np.float64), grid + shift, order=1, mode="nearest")
    assert np.abs(subject.volume.array - expect).max() < 0.05
    assert np.array_equal(warp(template.labels, fld).array, subject.labels.array)
    assert set(np.unique(subject.labels.array).tolist()) == {0, 1, 2, 3}
    assert jacobian_min(fld.array, fld.spacing) > 0


def test_subject_landmarks_map_to_template(template, subject):
    names = list(LANDMARKS)
    q = np.stack([subject.landmarks[k] for k in names])
    mapped = q + _field_at(subject.field, q)
    L = np.stack([template.landmarks[k] for k in names])
    err = np.linalg.norm(mapped - L, axis=1)
    assert err.max() < 0.5 * template.volume.spacing[0], dict(zip(names, err.round(3)))
    assert subject.info["landmark_residual_mm"] < 0.1


def test_mandible_opening_is_a_rotation(template):
    s = skull_subject(template, seed=0, max_displacement=0.0, opening=(10, 10))
    assert s.opening_deg == 10.0
    voxel = template.volume.spacing[0]
    hinge = s.hinge                                            # on the axis through the condyles, along x
    c_r, c_l = template.landmarks["condylion_r"], template.landmarks["condylion_l"]
    assert abs(c_r[1] - hinge[1]) < 1e-9 and abs(c_l[1] - hinge[1]) < 1e-9
    for name in ("menton", "pogonion", "incisor_lower", "gonion_r"):
        t, p = template.landmarks[name], s.landmarks[name]
        r = math.hypot(t[1] - hinge[1], t[2] - hinge[2])
        expect = 2.0 * r * math.sin(math.radians(10.0) / 2.0)        # chord of the arc
        assert abs(np.linalg.norm(p - t) - expect) < 0.5 * voxel, name
        assert abs(np.linalg.norm(p - t) - r * math.radians(10.0)) < 0.5 * voxel + 0.01 * r
        # chin down and back (+y in LPS), the angle of the mandible back
        assert p[1] > t[1] and abs(p[0] - t[0]) < 1e-3
        assert name == "gonion_r" or p[2] < t[2]
        assert abs(math.hypot(p[1] - hinge[1], p[2] - hinge[2]) - r) < 0.3 * voxel   # stays at radius r
    assert s.landmarks["menton"][1] > template.landmarks["menton"][1]
    for name in ("sella", "nasion", "vertex", "basion", "anterior_nasal_spine", "orbitale_r"):
        assert np.linalg.norm(s.landmarks[name] - template.landmarks[name]) < 0.5 * voxel, name
    # the upper incisors border the (stretched) gap between the tooth rows
    assert np.linalg.norm(s.landmarks["incisor_upper"] - template.landmarks["incisor_upper"]) < voxel
    # the mandible moves rigidly: its voxels in the subject are the template's rotated ones
    lab_t, lab_s = template.labels.array, s.labels.array
    assert (lab_s == 3).sum() == pytest.approx((lab_t == 3).sum(), rel=0.08)
    assert np.array_equal(lab_s == 1, lab_t == 1)                  # the cranium stays
    assert jacobian_min(s.field.array, s.field.spacing) > 0


def test_population_default_no_folding():
    subs = skull_population(3, (40, 40, 40), seed=11, opening=(12.0, 12.0))
    for s in subs:
        assert jacobian_min(s.field.array, s.field.spacing) > 0
        assert s.to_dict()["opening_deg"] == 12.0
    import json

    json.dumps(subs[0].to_dict())
    calls = []
    skull_population(1, (32, 32, 32), progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 1)]


def test_symmetric_smooth_part(template):
    s = skull_subject(template, seed=2, opening=(0.0, 0.0), asymmetry=0.0)
    u = s.field.array.astype(np.float64)
    m = u[..., ::-1].copy()
    m[0] *= -1
    assert np.abs(u - m).max() < 1e-4 * np.abs(u).max() + 1e-5
    assert abs(np.sqrt((u ** 2).sum(0)).max() - 6.0) < 1e-3
    a = skull_subject(template, seed=2, opening=(0.0, 0.0), asymmetry=0.5).field.array
    assert np.abs(a - a[..., ::-1] * np.array([-1, 1, 1])[:, None, None, None]).max() > 0.1


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 0}, "n"), ({"n": 1.5}, "n"),
    ({"shape": (16, 64, 64)}, "shape"), ({"shape": (64, 64)}, "shape"), ({"shape": (64, 64, 64.5)}, "shape"),
    ({"shape": "abc"}, "shape"),
    ({"max_displacement": -1.0}, "max_displacement"),
    ({"opening": (5.0,)}, "opening"), ({"opening": (10.0, 5.0)}, "opening"), ({"opening": (-1.0, 5.0)}, "opening"),
    ({"opening": (0.0, 45.0)}, "opening"), ({"opening": 5.0}, "opening"),
    ({"seed": -1}, "seed"), ({"smoothness": 0.0}, "smoothness"),
])
def test_bad_input(kwargs, name):
    args = {"n": 1, "shape": (32, 32, 32), **kwargs}
    with pytest.raises(InputError, match=name):
        skull_population(**args)


def test_bad_input_subject(template):
    with pytest.raises(InputError, match="template"):
        skull_subject(np.zeros((4, 4, 4)), seed=0)
    with pytest.raises(InputError, match="seed"):
        skull_subject(template, seed=None)
    with pytest.raises(InputError, match="opening"):
        skull_subject(template, seed=0, opening=(0, 50))
    assert torch.get_num_threads() >= 1
