"""2-D/3-D registration from one X-ray (SC-DREG): the X-ray encoder, the back-projection
sampler, the field refiner and the field losses -- shapes, exact initial behaviour, save /
load, hand-computed sample values, analytic Laplacians, explicit mirror symmetry, and a
small overfit of coefficient regression."""

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.nn import (
    FieldRefiner,
    XrayEncoder,
    coefficient_prior,
    consistency_loss,
    laplacian_loss,
    sample_projected,
    symmetry_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ XrayEncoder
def test_encoder_shapes_small_start_and_channels():
    enc = XrayEncoder(k=5, widths=(4, 8, 16), blocks=(1, 2, 1))
    x = torch.rand(3, 1, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        c, feats = enc(x)
    assert tuple(c.shape) == (3, 5)
    assert [tuple(f.shape) for f in feats] == [(3, 4, 16, 24), (3, 8, 8, 12), (3, 16, 4, 6)]
    assert enc.feature_channels == 28
    assert float(c.abs().max()) < 0.05                       # ~0: the SRM mean field
    with pytest.raises(InputError, match="multiples of 8"):
        enc(torch.rand(1, 1, 36, 32))
    with pytest.raises(InputError, match="channel"):
        enc(torch.rand(1, 2, 32, 32))
    with pytest.raises(InputError, match="blocks"):
        XrayEncoder(k=2, widths=(4, 8), blocks=(1,))


def test_encoder_save_load_round_trip(tmp_path):
    enc = XrayEncoder(k=3, in_channels=2, widths=(4, 8), blocks=(1, 1), seed=3, pool=1)
    with torch.no_grad():
        enc.fc.weight.normal_(0, 0.5)                         # non-trivial outputs to compare
    enc.eval()
    x = torch.rand(2, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        c0, f0 = enc(x)
    loaded = XrayEncoder.load(enc.save(tmp_path / "enc"), device="cpu")
    assert loaded.config() == enc.config()
    with torch.no_grad():
        c1, f1 = loaded(x)
    assert torch.equal(c0, c1) and all(torch.equal(a, b) for a, b in zip(f0, f1))
    assert float(c0.abs().max()) > 1e-3


# ------------------------------------------------------------------ sample_projected
def _centre(j: int, n: int) -> float:
    """Normalised (align_corners=False) coordinate of pixel centre j of n."""
    return (2 * j + 1) / n - 1


def test_sample_projected_hot_pixel_outside_and_order():
    h, w, r, c = 6, 10, 2, 7
    a = torch.zeros(1, 1, h, w)
    a[0, 0, r, c] = 3.0
    b = torch.zeros(1, 2, 3, 5)
    b[0, 0] = 1.0                                              # constant channel 0
    b[0, 1, 1, 3] = 4.0                                        # hot pixel of the coarse map
    grid = torch.zeros(1, 1, 1, 3, 2)
    grid[0, 0, 0, 0] = torch.tensor([_centre(c, w), _centre(r, h)])     # (column, row)
    grid[0, 0, 0, 1] = torch.tensor([1.5, 0.0])                          # off the detector
    grid[0, 0, 0, 2] = torch.tensor([_centre(3, 5), _centre(1, 3)])     # centre of b's hot pixel
    out = sample_projected([a, b], grid)
    assert tuple(out.shape) == (1, 3, 1, 1, 3)                  # channels: a's, then b's
    assert float(out[0, 0, 0, 0, 0]) == pytest.approx(3.0, abs=1e-6)
    assert torch.all(out[0, :, 0, 0, 1] == 0)                   # zeros outside
    # b's hot-pixel centre is a's pixel (column 6.5, row 2.5): a quarter of the hot pixel
    assert float(out[0, 0, 0, 0, 2]) == pytest.approx(0.75, abs=1e-6)
    assert float(out[0, 1, 0, 0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert float(out[0, 2, 0, 0, 2]) == pytest.approx(4.0, abs=1e-6)
    # a's hot-pixel centre is b's pixel (column 3.25, row 0.75): 0.75 * 0.75 of b's hot pixel
    assert float(out[0, 2, 0, 0, 0]) == pytest.approx(0.5625 * 4.0, abs=1e-6)
    # halfway between two pixel centres along the columns: the mean (bilinear)
    mid = torch.tensor([(_centre(c, w) + _centre(c - 1, w)) / 2, _centre(r, h)]).reshape(1, 1, 1, 1, 2)
    assert float(sample_projected([a], mid)[0, 0, 0, 0, 0]) == pytest.approx(1.5, abs=1e-6)


def test_sample_projected_errors():
    with pytest.raises(ShapeError, match="grid"):
        sample_projected([torch.zeros(1, 1, 4, 4)], torch.zeros(1, 4, 4, 2))
    with pytest.raises(InputError, match="features"):
        sample_projected([], torch.zeros(1, 2, 2, 2, 2))
    with pytest.raises(ShapeError, match=r"features\[0\]"):
        sample_projected([torch.zeros(2, 1, 4, 4)], torch.zeros(1, 2, 2, 2, 2))


# ------------------------------------------------------------------ FieldRefiner
def test_refiner_starts_as_identity_and_shapes():
    g = torch.Generator().manual_seed(0)
    ref = FieldRefiner(6, hidden=8, levels=2, residual_blocks=2)
    coarse = torch.randn(2, 3, 8, 12, 16, generator=g) * 5
    for res in ((8, 12, 16), (4, 6, 8)):                       # full- and half-resolution features
        out = ref(coarse, torch.randn(2, 6, *res, generator=g))
        assert out.shape == coarse.shape
        assert torch.equal(out, coarse)
    with pytest.raises(InputError, match="multiples of 4"):
        ref(torch.zeros(1, 3, 8, 8, 6), torch.zeros(1, 6, 8, 8, 6))
    with pytest.raises(InputError, match="channel"):
        ref(coarse, torch.zeros(2, 5, 8, 12, 16))
    with pytest.raises(InputError, match="channel"):
        ref(torch.zeros(2, 2, 8, 12, 16), torch.zeros(2, 6, 8, 12, 16))
    with pytest.raises(ShapeError, match="features"):
        ref(coarse, torch.zeros(2, 6, 8, 12, 8))


def test_refiner_gradients_reach_parameters_and_inputs(tmp_path):
    g = torch.Generator().manual_seed(1)
    ref = FieldRefiner(4, hidden=4, levels=3, residual_blocks=1, field_scale=2.0)
    with torch.no_grad():
        ref.head.weight.normal_(0, 0.1, generator=g)           # leave the exact-identity start
    coarse = torch.randn(1, 3, 16, 16, 16, generator=g, requires_grad=True)
    feats = torch.randn(1, 4, 16, 16, 16, generator=g, requires_grad=True)
    out = ref(coarse, feats)
    assert not torch.equal(out.detach(), coarse.detach())
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    for name, p in ref.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert float(feats.grad.abs().sum()) > 0 and float(coarse.grad.abs().sum()) > 0
    with torch.no_grad():                                      # full-res features = their 2x2x2 means
        torch.testing.assert_close(ref(coarse, feats), ref(coarse, torch.nn.functional.avg_pool3d(feats, 2)))
    ref.eval()
    loaded = FieldRefiner.load(ref.save(tmp_path / "ref"), device="cpu")
    with torch.no_grad():
        assert torch.equal(loaded(coarse, feats), ref(coarse, feats))
    assert loaded.config() == ref.config()


# ------------------------------------------------------------------ losses
def _mesh(shape=(7, 8, 9)):
    return torch.meshgrid(*[torch.arange(float(n)) for n in shape], indexing="ij")   # z, y, x (voxels)


def test_laplacian_linear_zero_and_quadratic_analytic():
    z, y, x = _mesh()
    sx, sy, sz = 0.5, 2.0, 1.5
    X, Y, Z = x * sx, y * sy, z * sz                            # mm
    lin = torch.stack([2 * X - Y + 3, 0.5 * Z + X, Y - Z])[None]
    assert float(laplacian_loss(lin, spacing=(sx, sy, sz))) == pytest.approx(0.0, abs=1e-9)
    # u_x = X^2 + 3 Y^2 (lap 2 + 6 = 8), u_y = Z^2 / 2 (lap 1), u_z = X Y (lap 0); exact for quadratics
    quad = torch.stack([X ** 2 + 3 * Y ** 2, Z ** 2 / 2, X * Y])[None].double()
    expected = (8.0 ** 2 + 1.0 ** 2 + 0.0) / 3
    assert float(laplacian_loss(quad, spacing=(sx, sy, sz))) == pytest.approx(expected, rel=1e-9)
    # interior only: a border-only change does not count
    bumped = quad.clone()
    bumped[..., 0, :, :] += 100.0
    assert float(laplacian_loss(bumped[..., 1:, :, :], spacing=(sx, sy, sz))) == pytest.approx(expected, rel=1e-9)
    # compare with scipy's Laplace stencil on the interior (unit spacing)
    from scipy import ndimage as ndi

    u = torch.randn(2, 3, 6, 7, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = np.stack([[ndi.laplace(u[n, c].numpy())[1:-1, 1:-1, 1:-1] for c in range(3)] for n in range(2)])
    assert float(laplacian_loss(u)) == pytest.approx(float((ref ** 2).mean()), rel=1e-10)
    with pytest.raises(ShapeError, match="u"):
        laplacian_loss(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ShapeError, match="3 voxels"):
        laplacian_loss(torch.zeros(1, 3, 2, 4, 4))


def test_symmetry_loss_explicit_mirror_field_and_bump():
    z, y, x = _mesh((5, 6, 8))
    xc = x - 3.5                                                # x = 0 on the mid-sagittal plane
    # mirror-symmetric: u_x odd in x, u_y and u_z even in x (any dependence on y, z)
    u = torch.stack([xc * (1 + 0.1 * y), xc ** 2 + z, torch.cos(xc) * y])[None]
    assert float(symmetry_loss(u)) == pytest.approx(0.0, abs=1e-6)
    # explicit mirror by indexing: mirror(u)(i) = M u(n - 1 - i)
    mirrored = u[..., torch.arange(7, -1, -1)].clone()
    mirrored[:, 0] *= -1
    torch.testing.assert_close(mirrored, u)
    bumped = u.clone()
    bumped[0, 1, 2, 3, 1] += 2.0                                # one voxel left of centre, u_y
    assert float(symmetry_loss(bumped)) == pytest.approx(2 * 2.0 / u.numel(), rel=1e-5)   # |d| at p and M p
    # along y (axis -2): flip y and negate component 1
    v = torch.zeros(1, 3, 2, 4, 3)
    v[:, 1] = (torch.arange(4.0) - 1.5).reshape(1, 4, 1)
    v[:, 0] = 1.0                                               # a uniform x shift: symmetric in y, not in x
    assert float(symmetry_loss(v, axis=-2)) == 0.0 and float(symmetry_loss(v, axis=3)) == 0.0
    assert float(symmetry_loss(v, axis=-1)) > 0
    with pytest.raises(InputError, match="axis"):
        symmetry_loss(v, axis=1)


def test_consistency_and_prior_by_hand():
    u = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape(1, 3, 1, 1, 2)
    v = torch.tensor([1.0, 0.0, 3.0, 1.0, 5.0, 6.0]).reshape(1, 3, 1, 1, 2)
    assert float(consistency_loss(u, v)) == pytest.approx((4 + 9) / 6)
    assert float(coefficient_prior(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))) == pytest.approx(5.25 / 4)
    with pytest.raises(ShapeError, match="v"):
        consistency_loss(u, v[..., :1])
    with pytest.raises(InputError, match="c"):
        coefficient_prior([1.0])


# ------------------------------------------------------------------ overfit
def test_encoder_learns_to_regress_blob_positions():
    g = torch.Generator().manual_seed(0)
    coeffs = torch.rand(8, 2, generator=g) * 2 - 1             # targets in [-1, 1]
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    cx, cy = 32 + 18 * coeffs[:, 0], 32 + 18 * coeffs[:, 1]
    images = torch.exp(-((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) / (2 * 4.0 ** 2))
    images = images[:, None]
    enc = XrayEncoder(k=2, widths=(8, 16, 32, 32), seed=0)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    enc.train()
    losses = []
    for _ in range(150):
        c, _ = enc(images)
        loss = ((c - coeffs) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0.2                                      # starts at the mean (~ E[c^2] = 1/3)
    assert np.mean(losses[-10:]) < 0.01 * losses[0], (losses[0], losses[-10:])


def test_project_maps_equals_sampling_then_the_first_feature_layer():
    """The fast route (project each 2-D map to ``hidden`` channels, then sample) is exactly
    the first 1x1x1 feature layer applied to the sampled features, and forward(projected=True)
    gives the same refined field."""
    import torch

    from biomip.nn import FieldRefiner, sample_projected

    torch.manual_seed(0)
    ref = FieldRefiner(feature_channels=12, hidden=8, levels=2, residual_blocks=1, seed=1)
    torch.nn.init.normal_(ref.head.weight, std=0.1)
    maps = [torch.rand(2, 4, 16, 16), torch.rand(2, 8, 8, 8)]
    grid = torch.rand(2, 8, 8, 8, 2) * 2.2 - 1.1                  # some points off the detector
    coarse = torch.randn(2, 3, 16, 16, 16)
    a = ref.project_maps(maps, grid)
    torch.testing.assert_close(a, ref.stem_features(sample_projected(maps, grid)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref(coarse, a, projected=True), ref(coarse, sample_projected(maps, grid)),
                               atol=1e-5, rtol=1e-5)
    import pytest

    from biomip.core.errors import InputError

    with pytest.raises(InputError, match="maps"):
        ref.project_maps(maps[:1], grid)


def test_refiner_half_resolution_path_equals_the_full_one():
    """half=True: the stem as a 3x3x3 convolution of the half-grid field and one upsampling at the end
    give the full path's result on the trilinearly upsampled field."""
    ref = FieldRefiner(5, hidden=8, levels=2, residual_blocks=1, seed=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():                                   # a trained-like refiner (head not zero)
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    half = 5.0 * torch.randn(2, 3, 8, 4, 8, generator=gen)
    feats = torch.randn(2, 5, 8, 4, 8, generator=gen)
    full = torch.nn.functional.interpolate(half, scale_factor=2, mode="trilinear", align_corners=False)
    with torch.no_grad():
        a = ref(full, feats)
        b = ref(half, feats, half=True)
    assert b.shape == a.shape == (2, 3, 16, 8, 16)
    assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max()))
    assert float((a - full).abs().max()) > 0.1                     # the refiner does change the field
    with pytest.raises(ShapeError, match="features"):
        ref(half, torch.randn(2, 5, 4, 4, 4), half=True)


def _stock_refiner_forward(ref, coarse, feats):
    """The refiner's full-resolution forward built from the stock layers (transposed convolution,
    concatenation, 3x3x3 / 1x1x1 convolutions, F.interpolate): what the fused fast paths must equal."""
    import torch.nn.functional as F

    h = ref.stem_act(ref.stem_field(coarse / ref.field_scale) + ref.stem_features(F.avg_pool3d(feats, 2)))
    skips = []
    for down in ref.down:
        skips.append(h)
        h = down(h)
    h = ref.bottom(h)
    for up, fuse in zip(ref.up, ref.fuse):
        h = fuse(torch.cat([up(h), skips.pop()], dim=1))
    delta = ref.head(h)
    for _ in range(ref.levels - ref.decoder_levels):
        delta = F.interpolate(delta, scale_factor=2, mode="trilinear", align_corners=False)
    return coarse + ref.field_scale * delta


@pytest.mark.parametrize("fuse_kernel,head_kernel,decoder_levels", [(3, 3, 2), (1, 1, 2), (1, 3, 2), (3, 1, 2),
                                                                    (1, 1, 1), (3, 3, 0)])
def test_refiner_fast_paths_equal_the_stock_layers(fuse_kernel, head_kernel, decoder_levels):
    """The transposed convolution as a matrix product + shuffle, the light decoder's fold of
    up-sampling and 1x1x1 fusion, the 1x1x1 head as a matrix product and the separable resize:
    the same field as the stock layers, on a trained-like (perturbed) refiner with 3 levels."""
    ref = FieldRefiner(6, hidden=8, levels=3, residual_blocks=1, seed=2, fuse_kernel=fuse_kernel,
                       head_kernel=head_kernel, decoder_levels=decoder_levels)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    coarse = 5.0 * torch.randn(2, 3, 16, 8, 16, generator=gen)
    feats = torch.randn(2, 6, 16, 8, 16, generator=gen)
    with torch.no_grad():
        a = ref(coarse, feats)
        b = _stock_refiner_forward(ref, coarse, feats)
    assert float((a - coarse).abs().max()) > 0.1
    torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=0)
    # half=True (coarse given on the half grid) gives the same field
    half = torch.nn.functional.avg_pool3d(coarse, 2)
    full = torch.nn.functional.interpolate(half, scale_factor=2, mode="trilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(ref(half, feats, half=True), ref(full, feats), atol=1e-4 * float(b.abs().max()),
                                   rtol=0)
    # the fused path is differentiable: gradients reach the decoder's and the head's weights
    ref(coarse, feats).square().mean().backward()
    assert float(ref.head.weight.grad.abs().sum()) > 0
    if decoder_levels:
        assert float(ref.up[0].weight.grad.abs().sum()) > 0
    assert len(ref.up) == decoder_levels


def test_refiner_merge_maps_samples_one_resized_sum():
    """merge_maps=True: the projected maps are resized (bilinear) to the finest and summed, then
    sampled once -- equal to that construction by hand, exact at the finest map's pixel centres for a
    single map, and saved / loaded with the flag."""
    import torch.nn.functional as F

    ref = FieldRefiner(feature_channels=12, hidden=8, seed=1, merge_maps=True)
    maps = [torch.rand(1, 4, 16, 16), torch.rand(1, 8, 4, 4)]
    grid = torch.rand(1, 4, 4, 4, 2) * 2 - 1
    w = ref.stem_features.weight.flatten(1)
    p0 = torch.einsum("hc,ncyx->nhyx", w[:, :4], maps[0])
    p1 = torch.einsum("hc,ncyx->nhyx", w[:, 4:], maps[1])
    merged = p0 + F.interpolate(p1, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ref.project_maps(maps, grid), sample_projected([merged], grid), atol=1e-5, rtol=1e-5)
    assert ref.config()["merge_maps"] is True
    with pytest.raises(InputError, match="merge_maps"):
        FieldRefiner(4, merge_maps="yes")
    with pytest.raises(InputError, match="fuse_kernel"):
        FieldRefiner(4, fuse_kernel=2)
    with pytest.raises(InputError, match="decoder_levels"):
        FieldRefiner(4, levels=2, decoder_levels=2)


# ------------------------------------------------------------------ gradient_ncc
def _sobel_np(img):
    """Sobel derivatives (rows, cols) of a 2-D array with replicated edges, by explicit loops."""
    p = np.pad(img, 1, mode="edge")
    h, w = img.shape
    gr, gc = np.zeros((h, w)), np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            win = p[i:i + 3, j:j + 3]
            gr[i, j] = ((win[2] - win[0]) * [1, 2, 1]).sum() / 8
            gc[i, j] = ((win[:, 2] - win[:, 0]) * [1, 2, 1]).sum() / 8
    return gr, gc


def test_gradient_ncc_matches_a_numpy_reference_and_its_invariances():
    from biomip.nn.xray import gradient_ncc

    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 10))
    b = a + 0.7 * rng.normal(size=(12, 10))
    ref = []
    for ga, gb in zip(_sobel_np(a), _sobel_np(b)):
        ga, gb = ga - ga.mean(), gb - gb.mean()
        ref.append((ga * gb).mean() / np.sqrt((ga ** 2).mean() * (gb ** 2).mean()))
    ta, tb = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    assert float(gradient_ncc(ta[None], tb[None], eps=1e-9)) == pytest.approx(np.mean(ref), abs=1e-5)
    # a gain and a linear ramp (a smooth additive term) leave the global value unchanged inside the image
    y, x = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    assert float(gradient_ncc(ta[None], (3 * ta + 0.2 * x + 0.1 * y + 5)[None], eps=1e-9)) > 0.99
    # the sign of an inversion is seen (a signed correlation)
    assert float(gradient_ncc(ta[None], -ta[None])) < -0.99
    loc = gradient_ncc(ta[None], tb[None], window=3)
    assert -1.0 <= float(loc) <= 1.0
    # batches average; gradients flow
    tb2 = tb.clone().requires_grad_(True)
    val = gradient_ncc(torch.stack([ta, ta]), torch.stack([tb2, ta]), eps=1e-9)
    assert float(val.detach()) == pytest.approx((np.mean(ref) + 1.0) / 2, abs=1e-4)
    val.backward()
    assert tb2.grad is not None and torch.isfinite(tb2.grad).all() and tb2.grad.abs().sum() > 0


def test_gradient_ncc_local_by_hand_and_errors():
    from biomip.nn.xray import gradient_ncc

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(7, 7)), rng.normal(size=(7, 7))
    # window 3 at an interior pixel: the local correlation of the 3 x 3 gradient patches, by hand
    (ar, ac), (br, bc) = _sobel_np(a), _sobel_np(b)
    sa = [np.sqrt((g ** 2).mean()) for g in (ar, ac)]
    sb = [np.sqrt((g ** 2).mean()) for g in (br, bc)]
    total = 0.0
    for ga, gb in ((ar / sa[0], br / sb[0]), (ac / sa[1], bc / sb[1])):
        for i in range(7):
            for j in range(7):
                pa = ga[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
                pb = gb[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
                cov = (pa * pb).mean() - pa.mean() * pb.mean()
                total += cov / np.sqrt(pa.var() * pb.var() + 1e-3)
    got = gradient_ncc(torch.tensor(a, dtype=torch.float32)[None], torch.tensor(b, dtype=torch.float32)[None], window=3)
    assert float(got) == pytest.approx(total / (2 * 49), abs=1e-4)
    with pytest.raises(ShapeError, match="a, b"):
        gradient_ncc(torch.zeros(4, 4), torch.zeros(4, 5))
    with pytest.raises(InputError, match="window"):
        gradient_ncc(torch.zeros(4, 4), torch.zeros(4, 4), window=4)
    with pytest.raises(InputError, match="a, b"):
        gradient_ncc(np.zeros((4, 4)), torch.zeros(4, 4))
