"""3-D Gaussian splatting for CT: the splatting renderer against the cone-beam projector
on a voxelised Gaussian, the analytic line integral against numerical quadrature,
gradients (gradcheck), voxelisation against direct evaluation, densification, the
reconstruction loop and its input checks; the study's tiny run is slow-marked."""

import math

import numpy as np
import pytest
import torch

from biomip.core.errors import InputError, ShapeError
from biomip.reconstruct import DivergentProjector, cone_beam, fan_beam
from biomip.reconstruct.gaussians import GaussianVolume, gaussian_reconstruction


def _tilted(dtype=torch.float32, cutoff=3.5):
    q = torch.tensor([[0.9, 0.2, -0.3, 0.1], [0.5, -0.5, 0.5, 0.5]], dtype=dtype)
    return GaussianVolume([[2.0, -3.0, 1.5], [-6.0, 4.0, -2.0]], scales=[[4.0, 2.5, 3.0], [2.0, 3.0, 1.6]],
                          densities=[1.0, 0.5], quats=q, cutoff=cutoff, dtype=dtype)


def test_splatting_matches_the_projector_on_a_voxelised_gaussian():
    n = 48
    geo = cone_beam(4, sod=80.0, sdd=120.0, det_shape=(32, 40), det_spacing=1.5)
    op = DivergentProjector(geo, (n, n, n))
    g = _tilted(cutoff=6.0)
    with torch.no_grad():
        p_ref = op(g.voxelize((n, n, n)))
        p = g.project(op)
    rel = float(torch.linalg.vector_norm(p - p_ref) / torch.linalg.vector_norm(p_ref))
    assert rel < 0.02
    # the splat is not a trivially small image: the peaks agree to 2 %
    assert abs(float(p.max()) / float(p_ref.max()) - 1) < 0.02


def test_line_integral_matches_quadrature():
    g = _tilted(torch.float64)
    geo = cone_beam(3, sod=60.0, sdd=100.0, det_shape=(7, 9), det_spacing=2.0, det_offset=(1.0, -2.0))
    with torch.no_grad():
        p = g.project(geo)
    pix = geo.pixel_positions()
    t = np.linspace(0.0, 1.0, 40001)
    for a, m, k in [(0, 3, 4), (1, 2, 6), (2, 5, 1), (0, 1, 2)]:
        s, e = geo.source[a], pix[a, m, k]
        pts = torch.as_tensor(s[None] + t[:, None] * (e - s)[None])
        with torch.no_grad():
            f = g.evaluate(pts).numpy()
        ref = np.trapezoid(f, t) * np.linalg.norm(e - s)
        assert abs(float(p[a, m, k]) - ref) <= 1e-6 * max(ref, 1e-3)
    assert float(p.max()) > 1.0


def test_central_ray_of_an_isotropic_gaussian_is_analytic():
    g = GaussianVolume([[0.0, 0.0, 0.0]], scales=2.0, densities=3.0, dtype=torch.float64)
    geo = cone_beam(5, sod=50.0, sdd=90.0, det_shape=(5, 5))
    with torch.no_grad():
        p = g.project(geo)
    assert torch.allclose(p[:, 2, 2], torch.full((5,), 3.0 * 2.0 * math.sqrt(2 * math.pi), dtype=torch.float64))


def test_gradients_pass_gradcheck():
    g = _tilted(torch.float64, cutoff=3.0)
    geo = cone_beam(2, sod=40.0, sdd=60.0, det_shape=(5, 6), det_spacing=3.5)
    names = ("means", "log_scales", "quats", "raw_density")
    params = tuple(getattr(g, k).detach().clone().requires_grad_(True) for k in names)

    def render(*ps):
        return torch.func.functional_call(g, dict(zip(names, ps)), (geo,))

    assert torch.autograd.gradcheck(render, params, eps=1e-6, atol=1e-5)
    # every parameter gets a non-zero gradient through a rendering
    out = render(*params).square().sum()
    grads = torch.autograd.grad(out, params)
    assert all(float(gr.abs().sum()) > 0 for gr in grads)


def test_voxelize_equals_direct_evaluation():
    shape, sp, org = (10, 12, 14), (1.5, 1.0, 2.0), (-9.0, -6.0, -8.0)
    g = _tilted(torch.float64, cutoff=9.0)
    zyx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    pts = torch.as_tensor(zyx[:, ::-1] * np.asarray(sp) + np.asarray(org))
    with torch.no_grad():
        direct = g.evaluate(pts).reshape(shape)
        vox = g.voxelize(shape, spacing=sp, origin=org)
        assert torch.allclose(vox, direct, atol=1e-12)
        cut = _tilted(torch.float64, cutoff=3.0).voxelize(shape, spacing=sp, origin=org, chunk_points=500)
    # the 3-sigma cut drops only values below exp(-4.5) of the peaks
    assert float((cut - direct).abs().max()) <= math.exp(-4.5) * 1.5 + 1e-12
    assert float((cut - direct).abs().max()) > 0


@pytest.mark.parametrize("average", [False, True])
def test_voxelize_gradients_pass_gradcheck(average):
    g = _tilted(torch.float64, cutoff=3.0)
    names = ("means", "log_scales", "quats", "raw_density")
    params = tuple(getattr(g, k).detach().clone().requires_grad_(True) for k in names)

    class Vox(torch.nn.Module):                     # a tilted grid, chunks of a few Gaussians
        def __init__(self):
            super().__init__()
            self.g = g

        def forward(self):
            return self.g.voxelize((7, 8, 9), spacing=(1.5, 1.0, 2.0), origin=(-7.0, -5.0, -4.0), average=average,
                                   direction=[[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]],
                                   chunk_points=700)

    wrap = Vox()

    def vox(*ps):
        return torch.func.functional_call(wrap, {f"g.{k}": p for k, p in zip(names, ps)}, ())

    assert torch.autograd.gradcheck(vox, params, eps=1e-6, atol=1e-6)


def test_voxelize_float32_keeps_thin_tilted_gaussians():
    # thin (0.2 voxel) and long Gaussians make the quadratic form's terms large: float32
    # must still agree with float64
    q = [[0.9, 0.2, -0.3, 0.1], [0.5, -0.5, 0.5, 0.5]]
    kw = dict(scales=[[6.0, 0.2, 0.3], [0.25, 5.0, 0.4]], densities=[1.0, 0.5], quats=q)
    ref = GaussianVolume([[0.3, -0.2, 0.1], [-2.0, 1.0, 0.5]], dtype=torch.float64, **kw)
    f32 = GaussianVolume([[0.3, -0.2, 0.1], [-2.0, 1.0, 0.5]], dtype=torch.float32, **kw)
    for average in (False, True):
        with torch.no_grad():
            a = ref.voxelize((24, 24, 24), average=average)
            b = f32.voxelize((24, 24, 24), average=average).double()
        assert float((a - b).abs().max() / a.abs().max()) < 1e-4


def test_voxel_averages_match_supersampling_and_keep_the_mass():
    shape, sp, org = (8, 9, 10), (1.5, 1.0, 2.0), (-7.0, -4.0, -9.0)
    k = 12                                                   # 12^3 samples per voxel
    sub = (np.arange(k) + 0.5) / k - 0.5
    zyx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 1, 3)
    off = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(1, -1, 3)
    pts = torch.as_tensor(((zyx + off)[..., ::-1] * np.asarray(sp) + np.asarray(org)).reshape(-1, 3))
    q = [[0.9, 0.2, -0.3, 0.1]]
    cut = math.erf(3.5 / math.sqrt(2)) - math.sqrt(2 / math.pi) * 3.5 * math.exp(-3.5 ** 2 / 2)
    # about a voxel wide (error bound 1 %), and far narrower than a voxel (point samples miss it)
    for scales, bound in [([1.2, 0.9, 1.5], 0.01), ([0.25, 0.2, 0.3], 0.15)]:
        g = GaussianVolume([[0.9, -0.7, 0.4]], scales=[scales], densities=2.0, quats=q, dtype=torch.float64)
        with torch.no_grad():
            ref = g.evaluate(pts).reshape(-1, k ** 3).mean(1).reshape(shape)
            avg = g.voxelize(shape, spacing=sp, origin=org, average=True)
            centre = g.voxelize(shape, spacing=sp, origin=org)
            mass = (2 * math.pi) ** 1.5 * 2.0 * float(np.prod(scales)) / float(np.prod(sp))
        err_avg = float((avg - ref).abs().max() / ref.max())
        err_centre = float((centre - ref).abs().max() / ref.max())
        assert err_avg < bound and err_centre > 0.19
        # the voxels hold the Gaussian's mass inside the 3.5-sigma cut-off exactly
        assert abs(float(avg.sum()) / (mass * cut) - 1) < 1e-9
        assert abs(float(centre.sum()) / mass - 1) > (0.5 if bound > 0.01 else 0.0)
    # differentiable like the centre samples
    avg = g.voxelize(shape, spacing=sp, origin=org, average=True)
    avg.square().sum().backward()
    assert all(float(getattr(g, n).grad.abs().sum()) > 0 for n in ("means", "log_scales", "quats", "raw_density"))


def test_clone_keeps_the_volume_and_prune_removes_faint():
    g = GaussianVolume([[0.0, 0.0, 0.0], [4.0, 1.0, 0.0], [9.0, 9.0, 9.0]], scales=[1.0, 1.2, 1.0],
                       densities=[1.0, 0.7, 1e-7], dtype=torch.float64)
    with torch.no_grad():
        before = g.voxelize((16, 16, 16))
    info = g.densify_and_prune(torch.tensor([2.0, 1.0, 0.0]), n_new=2, split_scale=5.0, min_density=1e-4)
    assert info == {"split": 0, "cloned": 2, "pruned": 1, "n": 4}
    with torch.no_grad():
        after = g.voxelize((16, 16, 16))
    assert torch.allclose(before, after, atol=1e-6)
    # a split shares the parent's mass (the integral of the volume) between two children
    big = GaussianVolume([[0.0, 0.0, 0.0]], scales=3.0, densities=1.0, dtype=torch.float64)
    with torch.no_grad():
        m0 = float(big.voxelize((32, 32, 32)).sum())
        assert big.densify_and_prune(torch.ones(1), 1, 2.0, 0.0)["split"] == 1
        m1 = float(big.voxelize((32, 32, 32)).sum())
    assert abs(m1 / m0 - 1) < 1e-3 and len(big) == 2
    with pytest.raises(ShapeError, match="grad_score"):
        g.densify_and_prune(torch.ones(3), 1, 1.0, 0.0)


def test_reconstruction_fits_the_projections():
    op = DivergentProjector(cone_beam(8, sod=60.0, sdd=90.0, det_shape=(18, 18), det_spacing=1.5), (12, 12, 12))
    vol = np.zeros((12, 12, 12), np.float32)
    vol[3:9, 2:10, 3:9] = 1.0
    y = op(vol)
    rec = gaussian_reconstruction(y, op, n_gaussians=200, iterations=40, views_per_step=2, seed=0)
    assert rec.image.shape == (12, 12, 12) and isinstance(rec.image, np.ndarray)
    assert len(rec.history) == 40 and rec.method == "3DGS"
    assert np.mean(rec.history[-10:]) < 0.6 * np.mean(rec.history[:5])
    err = float(np.abs(rec.image - vol).mean())
    assert err < 0.15
    model = rec.params["model"]
    assert len(model) == rec.params["n_gaussians_final"]
    # the returned volume is the voxelised model: voxel averages, or centre samples on request
    with torch.no_grad():
        assert np.allclose(model.voxelize(op.image_shape, average=True).numpy(), rec.image, atol=1e-6)
    centre = gaussian_reconstruction(y, op, n_gaussians=200, iterations=40, views_per_step=2, seed=0,
                                     voxels="centre")
    with torch.no_grad():
        assert np.allclose(centre.params["model"].voxelize(op.image_shape).numpy(), centre.image, atol=1e-6)
    assert centre.params["voxels"] == "centre" and rec.params["voxels"] == "average"
    # a tensor in gives a tensor out
    rec_t = gaussian_reconstruction(torch.as_tensor(y), op, n_gaussians=50, iterations=2, densify=False, tv=0.1,
                                    tv_patch=6, l1=0.1)
    assert isinstance(rec_t.image, torch.Tensor)


def test_projector_render_uses_the_scans_model():
    """render="projector": the loss sees projector(voxelise(g)), so on data the projector made the
    fit reaches a lower residual than the analytic splats (which carry a 1-2 % model error)."""
    op = DivergentProjector(cone_beam(8, sod=60.0, sdd=90.0, det_shape=(18, 18), det_spacing=1.5), (12, 12, 12),
                            samples_per_voxel=1.0)
    vol = np.zeros((12, 12, 12), np.float32)
    vol[3:9, 2:10, 3:9] = 1.0
    y = op(vol)
    # a voxel phantom's values are centre samples of a cube with sharp faces: fit them as such
    kw = dict(n_gaussians=300, iterations=60, views_per_step=8, densify=False, seed=0, voxels="centre")
    splat = gaussian_reconstruction(y, op, **kw)
    proj = gaussian_reconstruction(y, op, render="projector", tv=0.01, **kw)
    assert proj.params["render"] == "projector" and len(proj.history) == 60
    # the history is the data residual of the forward model in use: check it against the projector directly
    with torch.no_grad():
        r = float(torch.linalg.vector_norm(op(torch.as_tensor(proj.image)) - torch.as_tensor(y)))
    assert abs(r - proj.history[-1]) < 0.1 * r + 1e-3
    assert np.mean(proj.history[-5:]) < np.mean(splat.history[-5:])
    assert float(np.abs(proj.image - vol).mean()) < float(np.abs(splat.image - vol).mean())
    # a subset of views per step goes through projector.subset
    sub = gaussian_reconstruction(y, op, render="projector", n_gaussians=50, iterations=3, views_per_step=2,
                                  densify=False)
    assert len(sub.history) == 3 and np.all(np.isfinite(sub.history))
    with pytest.raises(InputError, match="render: got 'rays'"):
        gaussian_reconstruction(y, op, render="rays")
    with pytest.raises(InputError, match="voxels: got 'corner'"):
        gaussian_reconstruction(y, op, voxels="corner")


def test_bad_inputs_raise():
    with pytest.raises(InputError, match="means: got a non-finite centre"):
        GaussianVolume([[float("nan"), 0.0, 0.0]], scales=2.0, densities=1.0)
    with pytest.raises(InputError, match="quats"):
        GaussianVolume([[0.0, 0.0, 0.0]], scales=2.0, densities=1.0, quats=[[0.0, 0.0, 0.0, 0.0]])
    with pytest.raises(InputError, match="grid_shape: a 6000x6000x6000 volume would need"):
        GaussianVolume([[0.0, 0.0, 0.0]], scales=2.0, densities=1.0).voxelize((6000, 6000, 6000))
    op2 = DivergentProjector(fan_beam(4, sod=50.0, sdd=80.0, n_det=12), (8, 8))
    with pytest.raises(InputError, match="projector"):
        gaussian_reconstruction(np.zeros((4, 12), np.float32), op2)
    op = DivergentProjector(cone_beam(4, sod=50.0, sdd=80.0, det_shape=(8, 8)), (6, 6, 6))
    with pytest.raises(ShapeError, match="sinogram"):
        gaussian_reconstruction(np.zeros((3, 8, 8), np.float32), op)
    with pytest.raises(InputError, match="init"):
        gaussian_reconstruction(np.zeros((4, 8, 8), np.float32), op, init="nope")
    with pytest.raises(InputError, match="geometry"):
        GaussianVolume([[0.0, 0.0, 0.0]], 1.0, 1.0).project(fan_beam(4, sod=50.0, sdd=80.0, n_det=12))
    with pytest.raises(ShapeError, match="means"):
        GaussianVolume([0.0, 0.0, 0.0], 1.0, 1.0)
    with pytest.raises(InputError, match="scales"):
        GaussianVolume([[0.0, 0.0, 0.0]], -1.0, 1.0)
    with pytest.raises(ShapeError, match="grid_shape"):
        GaussianVolume([[0.0, 0.0, 0.0]], 1.0, 1.0).voxelize((4, 4))


def test_study_projector_takes_every_argument_of_the_projector_norm():
    """The study's cheaper ``norm`` is called where the projector's is (FISTA passes
    ``progress=``): it must take the same arguments (it did not, and the study crashed)."""
    import inspect

    from biomip.ops.ct import DivergentProjector
    from biomip.pipelines.vision.splatting import _Projector

    want = set(inspect.signature(DivergentProjector.norm).parameters)
    assert want <= set(inspect.signature(_Projector.norm).parameters)


@pytest.mark.slow
def test_study_tiny_run(tmp_path):
    from biomip.pipelines.vision import splatting

    r = splatting.run(out=tmp_path, mode="tiny", seed=0)
    assert (tmp_path / "report.json").exists() and (tmp_path / "preview.png").exists()
    assert set(r["methods"]) >= {"fdk", "fista_tv", "inr", "3dgs"}
    # 3DGS improves on its FDK start
    assert r["methods"]["3dgs"]["psnr"] > r["methods"]["fdk"]["psnr"]
