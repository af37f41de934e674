"""RepairNet: biharmonic fill + learned correction with mirrored context (defect repair)."""

import numpy as np
import pytest

from biomip.core.errors import InputError, ShapeError
from biomip.generate import RepairNet, biharmonic_fill, inpaint, load


def _symmetric_images(n, size=32, seed=0):
    """Left-right symmetric images with random bright dots, and the dots' masks: a dot cut
    out by a defect is invisible to biharmonic inpainting but visible in the mirrored half."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out, dots = [], []
    for _ in range(n):
        img = 0.2 + 0.1 * np.sin(yy / 5.0)
        dot = np.zeros((size, size), bool)
        for _ in range(4):
            cy, cx, r = rng.uniform(6, size - 6), rng.uniform(5, size / 2 - 4), rng.uniform(2.0, 3.0)
            for x0 in (cx, size - 1 - cx):
                img = img + 0.8 * np.exp(-((yy - cy) ** 2 + (xx - x0) ** 2) / (2 * r ** 2))
            dot |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 4          # defects are centred on one side's dots
        out.append(img.astype(np.float32))
        dots.append(dot)
    return np.stack(out), np.stack(dots)


def _psnr(a, b, m):
    return 10 * np.log10(1.0 / np.mean((a[m] - b[m]) ** 2))


@pytest.fixture(scope="module")
def trained():
    import torch

    torch.set_num_threads(1)
    imgs, dots = _symmetric_images(24)
    net = RepairNet(features=(8, 16, 32), mirror_axis=-1, seed=0)
    net.fit(imgs, dots, steps=300, batch_size=8, size=(7.0, 9.0), lr=3e-3, seed=0, progress=False)
    return net


def test_repair_beats_biharmonic_with_the_mirrored_context(trained):
    from biomip.data import synthetic_defects

    test, dots = _symmetric_images(8, seed=1)
    gains = []
    for k, x in enumerate(test):
        d, m = synthetic_defects(x, n=1, size=(7.0, 9.0), mask=dots[k], seed=100 + k)
        gains.append(_psnr(trained(d, m), x, m) - _psnr(biharmonic_fill(d, m), x, m))
    assert np.mean(gains) > 1.0, gains
    assert trained.history[-1]["loss"] < trained.history[0]["loss"]


def test_outside_the_defect_is_the_input_and_kinds_round_trip(trained, tmp_path):
    x = _symmetric_images(1, seed=2)[0][0]
    m = np.zeros_like(x, bool)
    m[10:15, 5:10] = True
    y = trained(np.where(m, 0, x), m)
    np.testing.assert_array_equal(y[~m], x[~m])
    np.testing.assert_allclose(inpaint(np.where(m, 0, x), m, method="repair", model=trained), y, atol=1e-6)
    trained.save(tmp_path / "rep")
    again = load(tmp_path / "rep")
    assert type(again).__name__ == "RepairNet" and again.mirror_axis == -1
    np.testing.assert_allclose(again(np.where(m, 0, x), m), y, atol=1e-5)


def test_bad_input(trained):
    x = np.zeros((32, 32), np.float32)
    with pytest.raises(ShapeError, match="mask"):
        trained(x, np.zeros((30, 32), bool))
    with pytest.raises(InputError, match="mirror_axis"):
        RepairNet(mirror_axis=2)
    with pytest.raises(InputError, match="steps"):
        RepairNet(features=(4, 8)).fit(np.zeros((2, 16, 16)), steps=0)
    with pytest.raises(InputError, match="model"):
        inpaint(x, np.ones((32, 32), bool), method="repair", model=None)
