"""biomip.nn.transforms: invertibility, label preservation, seeded replay, exact flips, 2-D / 3-D."""

import json

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.nn.transforms import (
    Compose,
    CropOrPad,
    OneOf,
    RandomAffine,
    RandomBiasField,
    RandomBlur,
    RandomCrop,
    RandomElastic,
    RandomFlip,
    RandomIntensity,
    RandomLabelCrop,
    RandomNoise,
    RandomOcclusion,
    RandomRot90,
    RandomStreaks,
    Subject,
    bspline_matrix,
    invert,
    replay,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smooth(shape):
    """A smooth image (1, *shape) and a 3-class label map of blobs."""
    ax = [torch.linspace(-1, 1, n) for n in shape]
    g = torch.meshgrid(*ax, indexing="ij")
    img = torch.sin(2.5 * g[-1]) * torch.cos(2.0 * g[-2]) + 0.5 * g[0]
    r2 = sum(c ** 2 for c in g)
    lab = (r2 < 0.35).long() + 2 * ((g[-1] > 0.35) & (g[-2] > 0.0)).long()
    return img[None].float(), lab


def _grid(shape, spacing):
    d = len(shape)
    axes = [(torch.arange(shape[d - 1 - k], dtype=torch.float64) - (shape[d - 1 - k] - 1) / 2) * spacing[k]
            for k in range(d)]
    return torch.stack(torch.meshgrid(*axes[::-1], indexing="ij")[::-1], dim=-1)


@pytest.mark.parametrize("shape", [(48, 40), (24, 28, 20)])
def test_affine_points_invert_exactly_and_image_round_trip(shape):
    d = len(shape)
    spacing = (1.0, 0.8, 1.5)[:d]
    img, lab = _smooth(shape)
    out = RandomAffine(scales=(0.9, 1.1), degrees=12, translation=2.0, shear=3.0, seed=4)(
        Subject(img, lab, spacing=spacing))
    prm = out.history[-1]["params"]
    ctx = {"shape": shape, "spacing": spacing, "on_grid": True}
    p = _grid(shape, spacing)
    q = RandomAffine.points(prm, RandomAffine.points(prm, p, ctx), ctx, inverse=True)
    assert float((q - p).abs().max()) < 1e-9
    back = invert(out)
    inner = (slice(None),) + tuple(slice(n // 4, n - n // 4) for n in shape)
    err = (back.image - img)[inner].abs()
    assert float(err.max()) < 0.05 * float(img.max() - img.min())       # two linear interpolations only
    assert back.history[-1]["params"]["undone"] == ["RandomAffine"]


def test_affine_matches_scipy_affine_transform():
    from scipy import ndimage

    img, _ = _smooth((40, 50))
    prm = {"scale": [1.1, 0.9], "rotation_deg": [20.0], "shear_deg": [0.0, 0.0], "translation_mm": [2.0, -1.0],
           "padding": "border"}
    M = np.array([[np.cos(np.radians(20)), -np.sin(np.radians(20))],
                  [np.sin(np.radians(20)), np.cos(np.radians(20))]]) @ np.diag([1.1, 0.9])
    prm["matrix"], prm["offset_mm"] = M.tolist(), [2.0, -1.0]
    ours = RandomAffine.apply(Subject(img), prm).image[0].numpy()
    # scipy: out[o] = in[A o + b] in array (row, col) order, about the centre
    Minv = np.linalg.inv(M)
    P = np.array([[0, 1], [1, 0]])                                      # (x, y) <-> (row, col)
    A = P @ Minv @ P
    c = (np.array(img.shape[1:]) - 1) / 2.0
    b = c - A @ c - A @ (P @ np.array([2.0, -1.0]))
    ref = ndimage.affine_transform(img[0].numpy().astype(np.float64), A, offset=b, order=1, mode="nearest")
    assert np.abs(ours - ref)[8:-8, 8:-8].max() < 1e-4


@pytest.mark.parametrize("shape", [(64, 64), (32, 32, 32)])
def test_elastic_round_trip_error_bounded(shape):
    d = len(shape)
    spacing = (1.0,) * d
    img, lab = _smooth(shape)
    t = RandomElastic(control_points=6, max_displacement=3.0, iterations=20, seed=2)
    out = t(Subject(img, lab, spacing=spacing))
    prm = out.history[-1]["params"]
    assert 0.5 < prm["max_voxel_displacement_mm"] <= 3.0 * d ** 0.5
    ctx = {"shape": shape, "spacing": spacing, "on_grid": True}
    p = _grid(shape, spacing).float()
    q = RandomElastic.points(prm, p, ctx, inverse=True)
    ctx["on_grid"] = False
    residual = (RandomElastic.points(prm, q, ctx) - p).norm(dim=-1)
    assert float(residual.max()) < 0.02                                # mm: the fixed point converged
    back = invert(out)
    inner = (slice(None),) + tuple(slice(n // 4, n - n // 4) for n in shape)
    assert float((back.image - img)[inner].abs().max()) < 0.05 * float(img.max() - img.min())


def test_elastic_bspline_matrix_is_a_partition_of_unity_inside():
    W = bspline_matrix(41, 6, dtype=torch.float64)
    s = W.sum(1)
    assert torch.allclose(s[9:-9], torch.ones_like(s[9:-9]), atol=1e-12)
    assert float(s.max()) <= 1 + 1e-12
    # a constant control field in the interior gives that constant in the interior
    c = torch.full((6,), 2.5, dtype=torch.float64)
    assert torch.allclose((W @ c)[9:-9], torch.full((23,), 2.5, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(64, 64), (32, 32, 32)])
def test_labels_keep_their_values_and_volume(shape):
    img, lab = _smooth(shape)
    aug = Compose([RandomAffine(scales=0.03, degrees=4), RandomElastic(control_points=6, max_displacement=1.5)],
                  seed=7)
    out = aug(Subject(img, lab))
    got = out.labels["label"]
    assert got.dtype == lab.dtype
    assert set(torch.unique(got).tolist()) <= set(torch.unique(lab).tolist())
    for v in (1, 2):
        ratio = float((got == v).sum()) / float((lab == v).sum())
        assert 0.85 < ratio < 1.15, (v, ratio)


def test_same_seed_same_output_and_json_history_replays_exactly():
    img, lab = _smooth((48, 48))
    aug = lambda seed: Compose([RandomFlip(), RandomAffine(degrees=10, translation=2), RandomElastic(max_displacement=2),  # noqa: E731
                                RandomIntensity(), RandomBiasField(0.2), RandomNoise(0.05, kind="rician"),
                                RandomBlur(1.0), RandomOcclusion(fill="noise"),
                                OneOf([RandomStreaks(n_views=60, backend="torch"), RandomNoise(0.1)], probabilities=[0.7, 0.3])],
                               seed=seed)
    s = Subject(img, lab, spacing=(0.8, 0.8))
    a, b, c = aug(11)(s), aug(11)(s), aug(12)(s)
    assert torch.equal(a.image, b.image) and torch.equal(a.labels["label"], b.labels["label"])
    assert not torch.equal(a.image, c.image)
    hist = json.loads(json.dumps(a.history))
    r = replay(s, hist)
    assert torch.equal(r.image, a.image) and torch.equal(r.labels["label"], a.labels["label"])
    spatial = [h for h in a.history if h["name"] in ("RandomAffine", "RandomElastic")]
    assert len({h["group"] for h in spatial}) == 1                      # fused: one resampling


def test_flip_and_rot90_are_exact_and_invert_exactly():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    lab = torch.arange(3 * 4 * 5).reshape(3, 4, 5) % 7
    s = Subject(x, lab, spacing=(1.0, 2.0, 3.0))
    f = RandomFlip(axes="xz", p_axis=1.0, seed=0)(s)
    assert np.array_equal(f.image.numpy(), np.flip(x.numpy(), axis=(1, 3)))
    assert np.array_equal(f.labels["label"].numpy(), np.flip(lab.numpy(), axis=(0, 2)))
    r = RandomRot90(plane="xy", seed=1)(s)
    k = r.history[-1]["params"]["k"]
    assert np.array_equal(r.image.numpy(), np.rot90(x.numpy(), k, axes=(3, 2)))
    if k % 2:
        assert r.spacing == (2.0, 1.0, 3.0)
    both = Compose([RandomFlip(p_axis=0.5), RandomRot90(plane="xy")], seed=5)(s)
    back = invert(both)
    assert torch.equal(back.image, x) and torch.equal(back.labels["label"], lab) and back.spacing == s.spacing


def test_crops_pad_and_invert():
    img, lab = _smooth((30, 40))
    s = Subject(img, lab)
    c = RandomCrop((16, 50), seed=3)(s)
    assert c.shape == (16, 50)
    back = invert(c)
    m = c.history[-1]["params"]["margins"]
    r0 = -m[0][0]
    assert back.shape == (30, 40) and torch.equal(back.image[:, r0:r0 + 16], img[:, r0:r0 + 16])
    assert float(back.image[:, :r0].abs().sum()) == 0.0
    lc = RandomLabelCrop((9, 9), values=[2], seed=0)(s)
    assert int(lc.labels["label"][4, 4]) == 2
    assert CropOrPad((31, 39))(s).shape == (31, 39)


@pytest.mark.parametrize("t", [RandomIntensity(), RandomNoise(0.2), RandomBiasField(), RandomBlur(2.0),
                               RandomOcclusion(), RandomStreaks(n_views=60, backend="torch")])
def test_intensity_transforms_do_not_touch_labels(t):
    img, lab = _smooth((40, 40))
    out = t(Subject(img, lab), torch.Generator().manual_seed(0))
    assert torch.equal(out.labels["label"], lab)
    assert not torch.equal(out.image, img)


def test_intensity_values_follow_recorded_parameters():
    img, _ = _smooth((16, 16))
    img = img - img.min()
    out = RandomIntensity(scale=(1.5, 1.5), shift=0.0, gamma=(2.0, 2.0), seed=0)(img)
    lo, hi = float(img.min()), float(img.max())
    ref = ((img - lo) / (hi - lo)) ** 2 * (hi - lo) + lo
    assert torch.allclose(out.image, ref * 1.5, atol=1e-5)
    bf = RandomBiasField(coefficients=0.4, order=1, seed=1)(torch.ones(1, 5, 7))
    c = bf.history[-1]["params"]
    cx = c["coefficients"][c["exponents"].index([1, 0])]
    assert abs(float(torch.log(bf.image[0, 2, -1])) - cx) < 1e-5           # x = +1 at the last column, y = 0


def test_streaks_metal_sinogram_matches_projector_and_vanish_without_physics():
    from biomip.core.image import Image
    from biomip.ops.ct import ParallelBeam, ParallelProjector

    img = torch.zeros(1, 64, 64)
    t = RandomStreaks(objects=2, radius=(3.0, 3.0), hardening=(0.0, 0.0), photons=(1e16, 1e16), n_views=90,
                      metal_value=1000.0, backend="torch", seed=0)
    out = t(Subject(img, spacing=(0.5, 0.5)))
    prm = out.history[-1]["params"]
    op = ParallelProjector(ParallelBeam.for_image(Image(np.zeros((64, 64)), spacing=(0.5, 0.5)), n_views=90),
                           Image(np.zeros((64, 64)), spacing=(0.5, 0.5)), backend="torch")
    mask = RandomStreaks.metal_mask(prm, (64, 64), (0.5, 0.5), dtype=torch.float64)
    exact = RandomStreaks.metal_sinogram(prm, op)
    assert float((op(mask) - exact).abs().mean()) < 0.02 * float(exact.max())
    outside = mask == 0
    assert float(out.image[0][outside].abs().max()) < 1e-2      # no hardening, ~no starvation: no streaks (metal 1000)
    prm2 = dict(prm, hardening=0.3, photons=1e4)
    streaky = RandomStreaks.apply(Subject(img, spacing=(0.5, 0.5)), prm2).image[0]
    assert float(streaky[outside].abs().max()) > 50.0


def test_subject_inputs_and_errors():
    from biomip.core.image import Image

    s = Subject(np.zeros((4, 5), np.uint16), labels=np.ones((4, 5), bool))
    assert s.image.dtype == torch.float32 and s.labels["label"].dtype == torch.uint8
    im = Image(np.zeros((3, 6, 7), np.float32), spacing=(0.5, 0.5, 2.0))
    assert Subject(im).sdim == 3 and Subject(im).spacing == (0.5, 0.5, 2.0)
    assert RandomFlip(seed=0)({"image": torch.zeros(2, 4, 4), "labels": {"a": torch.zeros(4, 4, dtype=torch.long)}}
                              ).shape == (4, 4)
    with pytest.raises(InputError, match="labels"):
        Subject(torch.zeros(1, 4, 4), labels=torch.zeros(4, 4))
    with pytest.raises(ShapeError, match="labels"):
        Subject(torch.zeros(1, 4, 4), labels=torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(InputError, match="p:"):
        RandomNoise(p=1.5)
    with pytest.raises(InputError, match="scales"):
        RandomAffine(scales=(0.0, 1.0))
    with pytest.raises(InputError, match="history"):
        replay(torch.zeros(1, 4, 4), [{"name": "Nope", "params": {}}])


@pytest.mark.gpu
def test_cuda_matches_cpu():
    img, lab = _smooth((24, 24, 24))
    aug = Compose([RandomAffine(degrees=10), RandomElastic(max_displacement=2.0)], seed=1)
    cpu = aug(Subject(img, lab))
    gpu = replay(Subject(img, lab).to("cuda"), cpu.history)
    assert float((gpu.image.cpu() - cpu.image).abs().max()) < 1e-3
    assert float((gpu.labels["label"].cpu() != cpu.labels["label"]).float().mean()) < 1e-3


@pytest.mark.slow
def test_augment_study_tiny(tmp_path):
    from biomip.pipelines.vision import run

    r = run("augment", out=tmp_path, mode="tiny", progress=False)
    assert (tmp_path / "preview.png").exists() and r["study"] == "augment"
    assert r["targets"]["labels_no_new_values"]["met"]


# ------------------------------------------------------------------ review regressions
def test_subject_refuses_empty_axis_nan_and_channels_last_rgb():
    with pytest.raises(ShapeError, match="image:.*every size >= 1"):
        RandomAffine(seed=0)(Subject(np.zeros((1, 0, 8), np.float32)))
    with pytest.raises(InputError, match="image:.*NaN"):
        Subject(np.full((1, 8, 8), np.nan, np.float32))
    with pytest.raises(ShapeError, match="channels go first"):
        RandomAffine(seed=0)(np.zeros((16, 16, 3), np.float32))
    assert Subject(np.zeros((3, 16, 16), np.float32)).shape == (16, 16)     # channels-first RGB is fine
    with pytest.raises(InputError, match="image: got the path 'file.nii'"):
        Subject("file.nii", spacing=(1, 1, 1))
    with pytest.raises(ShapeError, match=r"spacing \(1, 1\) has 2 values"):
        Subject(np.zeros((1, 16, 16, 16), np.float32), spacing=(1, 1))
    for axes in (7, (7,), "q", ()):
        with pytest.raises(InputError, match="axes: got"):
            RandomFlip(axes=axes)
    with pytest.raises(InputError, match="control_points: a 100000x100000x100000 control grid would need"):
        RandomElastic(control_points=10 ** 5, seed=0)(Subject(np.zeros((1, 8, 8, 8), np.float32), spacing=(1, 1, 1)))


def test_replay_refuses_a_history_that_is_not_records():
    s = Subject(np.zeros((1, 8, 8), np.float32))
    for bad in ("abc", [1], [{"params": {}}]):
        with pytest.raises(InputError, match="history:"):
            replay(s, bad)


def test_subject_keeps_image_origin_and_direction():
    from biomip import Image

    direction = np.array([[0.0, 1.0], [1.0, 0.0]])
    img = Image(np.random.default_rng(0).random((6, 8)).astype(np.float32), spacing=(0.5, 2.0),
                origin=(10.0, -3.0), direction=direction)
    out = Compose([RandomFlip(p_axis=1.0), RandomNoise(0.1)], seed=0)(img)
    assert out.origin == (10.0, -3.0)
    back = out.to_image()
    assert back.shape == (6, 8) and back.spacing == (0.5, 2.0) and back.origin == (10.0, -3.0)
    np.testing.assert_array_equal(back.direction, direction)
