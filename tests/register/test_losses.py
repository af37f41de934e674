"""Tests of biomip.register.losses: similarity measures and regularisers."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from biomip.core.errors import BiomipError, InputError, ShapeError
from biomip.register.losses import (
    bending_energy,
    diffusion_energy,
    elastic_energy,
    folding_penalty,
    inverse_consistency,
    lncc,
    mse,
    mutual_information,
    ncc,
    volume_penalty,
)


# ----------------------------------------------------------------------------- helpers
def smooth_image(rng, shape=(48, 48), sigma=2.0):
    x = gaussian_filter(rng.random(shape), sigma)
    return (x - x.min()) / (x.max() - x.min())


def world_coords(shape, spacing):
    """World coordinates (x, y[, z]) of every voxel, each of ``shape`` (array order)."""
    idx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")  # (z, y, x)
    d = len(shape)
    return [idx[d - 1 - k] * spacing[k] for k in range(d)]


def linear_field(A, shape, spacing):
    p = world_coords(shape, spacing)
    d = len(shape)
    return np.stack([sum(A[c][k] * p[k] for k in range(d)) for c in range(d)])


def interior(shape, r=2):
    m = np.zeros(shape)
    m[tuple(slice(r, n - r) for n in shape)] = 1.0
    return m


def numpy_mi(a, b, bins):
    h, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins,
                             range=[[a.min(), a.max()], [b.min(), b.max()]])
    p = h / h.sum()
    pf, pm = p.sum(1), p.sum(0)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / np.outer(pf, pm)[nz])).sum())


# --------------------------------------------------------------------------------- mse
def test_mse_matches_numpy(rng):
    a, b = rng.random((3, 10, 12)), rng.random((3, 10, 12))
    out = mse(a, b)
    assert isinstance(out, float)
    assert out == pytest.approx(np.mean((a - b) ** 2), rel=1e-12)


def test_mse_mask_weights(rng):
    a, b = rng.random((10, 12)), rng.random((10, 12))
    w = rng.random((10, 12))
    assert mse(a, b, mask=w) == pytest.approx(np.sum(w * (a - b) ** 2) / w.sum(), rel=1e-12)
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert mse(a, b, mask=m) == pytest.approx(np.mean((a - b)[m] ** 2), rel=1e-12)
    # a spatial mask broadcasts over a leading batch axis
    ab, bb = np.stack([a, b]), np.stack([b, b])
    assert mse(ab, bb, mask=m, sdim=2) == pytest.approx(np.mean((a - b)[m] ** 2) / 2, rel=1e-12)


# --------------------------------------------------------------------------------- ncc
def test_ncc_affine_and_negation(rng):
    x = rng.random((16, 20))
    assert ncc(x, 2 * x + 3) == pytest.approx(1.0, abs=1e-12)
    assert ncc(x, -x) == pytest.approx(-1.0, abs=1e-12)
    assert ncc(x, np.corrcoef(x.ravel(), x.ravel())[0, 0] * x) == pytest.approx(1.0, abs=1e-12)
    y = rng.random((16, 20))
    assert ncc(x, y) == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1], abs=1e-12)


def test_ncc_float32_torch_large_offset(rng):
    x = torch.tensor(rng.random((32, 32)), dtype=torch.float32) * 100 + 1000
    assert float(ncc(x, 2 * x + 3)) == pytest.approx(1.0, abs=1e-4)


def test_ncc_mask_and_batch(rng):
    x = rng.random((16, 16))
    y = 2 * x + 1
    m = interior((16, 16), 4)
    y[m == 0] = rng.random(int((m == 0).sum()))   # garbage outside the mask
    assert ncc(x, y, mask=m) == pytest.approx(1.0, abs=1e-12)
    assert ncc(x, y) < 0.99
    batch_f = np.stack([x, x])
    batch_m = np.stack([x, -x])
    assert ncc(batch_f, batch_m, sdim=2) == pytest.approx(0.0, abs=1e-12)   # mean of +1 and -1


def test_ncc_constant_image_is_zero():
    x = np.arange(16.0).reshape(4, 4)
    assert ncc(x, np.ones((4, 4))) == 0.0


# -------------------------------------------------------------------------------- lncc
def test_lncc_identity_and_affine(rng):
    x = rng.random((24, 24))
    assert lncc(x, x) == pytest.approx(1.0, abs=1e-3)
    assert lncc(x, 5 * x - 2, window=5) == pytest.approx(1.0, abs=1e-3)
    assert lncc(x, -x, window=(5, 3)) == pytest.approx(1.0, abs=1e-3)    # squared correlation


def test_lncc_3d_and_noise(rng):
    x = rng.random((10, 12, 14))
    assert lncc(x, x, window=5) == pytest.approx(1.0, abs=1e-3)
    noise = lncc(x, rng.random((10, 12, 14)), window=5)
    assert 0.0 <= noise < 0.05            # ~ 1 / window voxels for independent noise


def test_lncc_local_beats_global(rng):
    # a spatially varying contrast: globally weakly correlated, locally perfectly
    x = rng.random((32, 32))
    gain = np.where(np.arange(32)[None, :] < 16, 1.0, -1.0) * np.ones((32, 1))
    y = gain * x
    assert abs(ncc(x, y)) < 0.2
    inner = np.ones((32, 32))
    inner[:, 12:20] = 0                     # exclude windows that straddle the contrast flip
    assert lncc(x, y, window=7, mask=inner) == pytest.approx(1.0, abs=1e-3)


def test_lncc_matches_bruteforce(rng):
    x, y = rng.random((9, 11)), rng.random((9, 11))
    r = 1
    cc = np.zeros_like(x)
    for i in range(9):
        for j in range(11):
            a = x[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1]
            b = y[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1]
            a = (a - x.mean()) / x.std()
            b = (b - y.mean()) / y.std()
            cov = np.mean(a * b) - a.mean() * b.mean()
            cc[i, j] = cov ** 2 / (a.var() * b.var() + 1e-5)
    assert lncc(x, y, window=3) == pytest.approx(cc.mean(), rel=1e-10)


# ---------------------------------------------------------------------------------- MI
def test_mi_self_greater_than_noise(rng):
    x = smooth_image(rng)
    mi_self = mutual_information(x, x)
    mi_noise = mutual_information(x, rng.random(x.shape))
    assert mi_self > 1.0
    assert 0.0 <= mi_noise < 0.1
    nmi_self = mutual_information(x, x, normalized=True)
    nmi_noise = mutual_information(x, rng.random(x.shape), normalized=True)
    assert 1.0 <= nmi_noise < nmi_self <= 2.0


def test_mi_invariant_to_nonmonotonic_remap(rng):
    levels = rng.integers(0, 8, size=(40, 40))
    x = levels + 0.02 * rng.standard_normal(levels.shape)
    perm = np.array([3, 7, 0, 5, 1, 6, 2, 4])           # non-monotonic bijection of the levels
    y = perm[levels] + 0.02 * rng.standard_normal(levels.shape)
    y_id = levels + 0.02 * rng.standard_normal(levels.shape)
    kw = {"bins": 32, "value_range": (-0.5, 7.5)}       # level k sits at bin 4k + 2 (centre)
    mi_perm = mutual_information(x, y, **kw)
    mi_id = mutual_information(x, y_id, **kw)
    assert mi_perm == pytest.approx(mi_id, rel=0.02)
    nmi_perm = mutual_information(x, y, normalized=True, **kw)
    nmi_id = mutual_information(x, y_id, normalized=True, **kw)
    assert nmi_perm == pytest.approx(nmi_id, rel=0.02)


def test_mi_close_to_numpy_histogram(rng):
    x = smooth_image(rng)
    y = x + 0.05 * rng.standard_normal(x.shape)
    ref = numpy_mi(x, y, 32)
    assert mutual_information(x, y, bins=32, sigma=0.1) == pytest.approx(ref, rel=0.02)
    soft = mutual_information(x, y, bins=32)                    # default Parzen width 0.5 bin
    assert 0.8 * ref < soft < ref                              # smoothing lowers MI a little
    ref16 = numpy_mi(x, y, 16)
    assert mutual_information(x, y, bins=16, sigma=0.1) == pytest.approx(ref16, rel=0.02)


def test_mi_mask_batch_3d(rng):
    x = smooth_image(rng, (12, 14, 16), 1.5)
    noise = rng.random(x.shape)
    y = noise.copy()
    m = interior(x.shape, 3)
    y[m > 0] = x[m > 0]
    assert mutual_information(x, y, mask=m) > 2 * mutual_information(x, y)
    a = mutual_information(x, x)
    b = mutual_information(x, noise)
    both = mutual_information(np.stack([x, x]), np.stack([x, noise]), sdim=3)
    assert both == pytest.approx((a + b) / 2, rel=1e-10)


def test_mi_gradient_finite(rng):
    f = torch.tensor(smooth_image(rng, (24, 24)))
    m = torch.tensor(smooth_image(rng, (24, 24)), requires_grad=True)
    for normalized in (False, True):
        m.grad = None
        val = mutual_information(f, m, bins=16, normalized=normalized)
        assert isinstance(val, torch.Tensor) and val.ndim == 0
        val.backward()
        assert m.grad is not None and torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0


def test_mi_value_range_pairs(rng):
    x = rng.random((16, 16))
    a = mutual_information(x, 10 * x, value_range=((0, 1), (0, 10)))
    b = mutual_information(x, x, value_range=(0, 1))
    assert a == pytest.approx(b, rel=1e-10)


# ------------------------------------------------------------------------ regularisers
REGULARISERS = [diffusion_energy, bending_energy, elastic_energy, folding_penalty, volume_penalty]


@pytest.mark.parametrize("shape", [(9, 10), (6, 7, 8)])
def test_zero_field_gives_zero(shape):
    u = np.zeros((len(shape),) + shape)
    for fn in REGULARISERS:
        assert fn(u, spacing=0.7) == pytest.approx(0.0, abs=1e-15), fn.__name__
    assert inverse_consistency(u, u) == 0.0


@pytest.mark.parametrize("shape,spacing", [((9, 10), (0.5, 2.0)), ((6, 7, 8), (0.5, 1.0, 1.5))])
def test_linear_field_energies(rng, shape, spacing):
    d = len(shape)
    A = 0.1 * rng.standard_normal((d, d))
    u = linear_field(A, shape, spacing)
    assert diffusion_energy(u, spacing) == pytest.approx(np.sum(A ** 2), rel=1e-10)   # border included
    assert bending_energy(u, spacing) == pytest.approx(0.0, abs=1e-20)
    eps = 0.5 * (A + A.T)
    mu, lam = 0.7, 1.9
    want = mu * np.sum(eps ** 2) + 0.5 * lam * np.trace(A) ** 2
    assert elastic_energy(u, spacing, mu=mu, lam=lam) == pytest.approx(want, rel=1e-10)
    det = np.linalg.det(np.eye(d) + A)
    assert volume_penalty(u, spacing) == pytest.approx((det - 1) ** 2, rel=1e-8)
    assert folding_penalty(u, spacing) == pytest.approx(max(-det, 0.0), abs=1e-12)


def test_elastic_known_values():
    shape, sp = (8, 9), (1.0, 1.0)
    x, y = world_coords(shape, sp)
    s = 0.2
    pure_shear = np.stack([s * y, s * x])
    assert elastic_energy(pure_shear, mu=1.5, lam=3.0) == pytest.approx(2 * 1.5 * s ** 2, rel=1e-10)
    simple_shear = np.stack([s * y, 0 * x])
    assert elastic_energy(simple_shear, mu=1.0, lam=5.0) == pytest.approx(s ** 2 / 2, rel=1e-10)
    rotation = np.stack([-s * y, s * x])            # antisymmetric gradient: no strain
    assert elastic_energy(rotation) == pytest.approx(0.0, abs=1e-20)
    assert diffusion_energy(rotation) == pytest.approx(2 * s ** 2, rel=1e-10)
    dilation = np.stack([s * x, s * y])
    assert elastic_energy(dilation, mu=1.0, lam=2.0) == pytest.approx((1 + 2 * 2 / 2) * 2 * s ** 2, rel=1e-10)


def test_quadratic_field_bending():
    shape, sp = (10, 11, 12), (0.5, 1.0, 2.0)
    x, y, z = world_coords(shape, sp)
    u = np.stack([0.5 * 3.0 * x ** 2, 2.0 * x * y, 0.25 * z ** 2])
    # u_x,xx = 3; u_y,xy = u_y,yx = 2; u_z,zz = 0.5  ->  9 + 2 * 4 + 0.25
    m = interior(shape, 2)
    assert bending_energy(u, sp, mask=m) == pytest.approx(9 + 8 + 0.25, rel=1e-10)
    x2, y2 = world_coords((10, 11), (0.5, 2.0))
    u2 = np.stack([x2 * y2, 0.5 * y2 ** 2])
    assert bending_energy(u2, (0.5, 2.0), mask=interior((10, 11))) == pytest.approx(2 + 1, rel=1e-10)


def test_folding_and_volume_known():
    x, _ = world_coords((8, 8), (1.0, 1.0))
    flip = np.stack([-3.0 * x, 0 * x])          # det = -2 everywhere
    assert folding_penalty(flip) == pytest.approx(2.0, rel=1e-12)
    assert volume_penalty(flip) == pytest.approx(9.0, rel=1e-12)
    m = np.zeros((8, 8))
    m[:, :4] = 1
    assert folding_penalty(flip, mask=m) == pytest.approx(2.0, rel=1e-12)


def test_inverse_consistency_values(rng):
    uf = np.zeros((2, 10, 12))
    uf[0], uf[1] = 1.25, -0.5
    assert inverse_consistency(uf, -uf, spacing=(0.5, 1.0)) == pytest.approx(0.0, abs=1e-20)
    assert inverse_consistency(uf, np.zeros_like(uf)) == pytest.approx(1.25 ** 2 + 0.25, rel=1e-12)
    u3 = np.zeros((3, 5, 6, 7))
    u3[2] = 0.5
    assert inverse_consistency(u3, -u3) == pytest.approx(0.0, abs=1e-20)
    # linear pair: phi_f(p) = 1.1 p, phi_b(p) = p / 1.1 is exact inside the grid
    x, y = world_coords((12, 12), (1.0, 1.0))
    fwd = np.stack([0.1 * x, 0.1 * y])
    bwd = np.stack([x / 1.1 - x, y / 1.1 - y])
    assert inverse_consistency(fwd, bwd, mask=interior((12, 12), 2)) == pytest.approx(0.0, abs=1e-20)
    assert inverse_consistency(fwd, np.zeros_like(fwd)) > 0.1


# ----------------------------------------------------------------- autograd and kinds
def _similarities():
    return [
        ("mse", lambda f, m: mse(f, m)),
        ("ncc", lambda f, m: ncc(f, m)),
        ("lncc", lambda f, m: lncc(f, m, window=5)),
        ("mi", lambda f, m: mutual_information(f, m, bins=16)),
        ("nmi", lambda f, m: mutual_information(f, m, bins=16, normalized=True)),
        ("masked", lambda f, m: lncc(f, m, window=3, mask=interior(tuple(f.shape[-min(f.ndim, 3):]), 2))),
    ]


@pytest.mark.parametrize("name,fn", _similarities())
@pytest.mark.parametrize("shape", [(20, 22), (2, 8, 9, 10)])
def test_similarity_gradients_and_kinds(rng, name, fn, shape):
    fnp, mnp = rng.random(shape), rng.random(shape)
    assert isinstance(fn(fnp, mnp), float)
    f = torch.tensor(fnp, dtype=torch.float32)
    m = torch.tensor(mnp, dtype=torch.float32, requires_grad=True)
    val = fn(f, m)
    assert isinstance(val, torch.Tensor) and val.ndim == 0 and val.dtype == torch.float32
    val.backward()
    assert m.grad is not None and torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0
    assert float(val.detach()) == pytest.approx(fn(fnp, mnp), rel=1e-3, abs=1e-5)


def test_mixed_numpy_torch_gives_tensor(rng):
    f = rng.random((8, 8))
    m = torch.tensor(rng.random((8, 8)))
    assert isinstance(ncc(f, m), torch.Tensor)
    assert isinstance(mse(torch.tensor(f), rng.random((8, 8))), torch.Tensor)


@pytest.mark.parametrize("fn", REGULARISERS)
def test_regulariser_gradients_and_kinds(rng, fn):
    unp = 1.5 * rng.standard_normal((2, 9, 10))      # large enough to fold somewhere
    assert isinstance(fn(unp, spacing=(1.0, 2.0)), float)
    u = torch.tensor(unp, requires_grad=True)
    val = fn(u, spacing=(1.0, 2.0))
    assert isinstance(val, torch.Tensor) and val.ndim == 0
    val.backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
    assert float(val.detach()) == pytest.approx(fn(unp, spacing=(1.0, 2.0)), rel=1e-12)


def test_inverse_consistency_gradient(rng):
    uf = torch.tensor(0.5 * rng.standard_normal((3, 5, 6, 7)), requires_grad=True)
    ub = torch.tensor(0.5 * rng.standard_normal((3, 5, 6, 7)), requires_grad=True)
    val = inverse_consistency(uf, ub, spacing=(1.0, 1.0, 2.0))
    assert isinstance(val, torch.Tensor) and val.ndim == 0
    val.backward()
    assert torch.isfinite(uf.grad).all() and torch.isfinite(ub.grad).all() and ub.grad.abs().sum() > 0


@pytest.mark.gpu
def test_cuda(rng):
    f = torch.tensor(rng.random((16, 16)), device="cuda")
    m = torch.tensor(rng.random((16, 16)), device="cuda", requires_grad=True)
    for fn in (mse, ncc, lncc, mutual_information):
        val = fn(f, m)
        assert val.device.type == "cuda"
        val.backward()
    u = torch.zeros((2, 8, 8), device="cuda", requires_grad=True)
    for fn in REGULARISERS:
        fn(u).backward()
    inverse_consistency(u, u).backward()


# ------------------------------------------------------------------------------ errors
def test_similarity_errors(rng):
    a = rng.random((8, 8))
    with pytest.raises(ShapeError, match="fixed and moving"):
        mse(a, rng.random((8, 9)))
    bad = a.copy()
    bad[2, 2] = np.nan
    with pytest.raises(InputError, match="moving"):
        ncc(a, bad)
    with pytest.raises(InputError, match="fixed"):
        lncc(bad, a)
    with pytest.raises(ShapeError, match="mask"):
        mse(a, a, mask=np.ones((4, 4)))
    with pytest.raises(InputError, match="mask"):
        ncc(a, a, mask=2 * np.ones((8, 8)))
    with pytest.raises(InputError, match="mask"):
        ncc(a, a, mask=np.zeros((8, 8)))
    with pytest.raises(InputError, match="window"):
        lncc(a, a, window=4)
    with pytest.raises(InputError, match="window"):
        lncc(a, a, window=(3, 3, 3))
    with pytest.raises(InputError, match="bins"):
        mutual_information(a, a, bins=1)
    with pytest.raises(InputError, match="sigma"):
        mutual_information(a, a, sigma=0)
    with pytest.raises(InputError, match="value_range"):
        mutual_information(a, a, value_range=(1, 0))
    with pytest.raises(InputError, match="fixed"):
        mse(np.array(["a", "b"]), np.array(["a", "b"]))


def test_regulariser_errors(rng):
    with pytest.raises(ShapeError, match="u"):
        diffusion_energy(np.zeros((3, 8, 8)))
    with pytest.raises(ShapeError, match="u"):
        bending_energy(np.zeros((8, 8)))
    u = np.zeros((2, 8, 8))
    bad = u.copy()
    bad[0, 1, 1] = np.inf
    with pytest.raises(InputError, match="u"):
        elastic_energy(bad)
    with pytest.raises(ShapeError, match="mask"):
        folding_penalty(u, mask=np.ones((7, 8)))
    with pytest.raises(BiomipError, match="spacing"):
        volume_penalty(u, spacing=(1.0, -1.0))
    with pytest.raises(ShapeError, match="u_forward and u_backward"):
        inverse_consistency(u, np.zeros((2, 8, 9)))
    with pytest.raises(ShapeError, match="u_backward"):
        inverse_consistency(u, np.zeros((3, 8, 8)))
    with pytest.raises(InputError, match="mu"):
        elastic_energy(u, mu=-1.0)


def test_numba_box_mean_matches_avg_pool_and_its_adjoint():
    from biomip.register import losses as L

    torch.manual_seed(0)
    x = torch.rand(2, 9, 12, 15, requires_grad=True)
    fast = L.box_mean(x, (5, 3, 7))                                  # float32 CPU: numba path
    g = torch.rand_like(fast)
    (gx,) = torch.autograd.grad((fast * g).sum(), x)
    x64 = x.detach().double().requires_grad_(True)
    ref = L.box_mean(x64, (5, 3, 7))                                  # float64: avg_pool path
    (gr,) = torch.autograd.grad((ref * g.double()).sum(), x64)
    assert torch.allclose(fast.double(), ref, atol=1e-6) and torch.allclose(gx.double(), gr, atol=1e-6)
