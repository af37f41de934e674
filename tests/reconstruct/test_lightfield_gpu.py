"""Light-field and SeReNet on CUDA (skipped without a GPU): same results as on the CPU."""

import numpy as np
import pytest
import torch

from biomip.reconstruct import LightFieldOptics, LightFieldProjector, lightfield_psf, refocus, richardson_lucy
from biomip.reconstruct.serenet import nll_mpg, train_serenet

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def psf():
    return lightfield_psf(LightFieldOptics(n_views=5), depths=np.linspace(-4, 4, 5))


def test_projector_refocus_rl_cuda_match_cpu(psf):
    op = LightFieldProjector(psf, (48, 48), binning=2)
    x = torch.rand(5, 48, 48, generator=torch.Generator().manual_seed(0))
    y = op(x)
    yg = op(x.cuda())
    assert yg.is_cuda
    np.testing.assert_allclose(yg.cpu().numpy(), y.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(op.adjoint(yg).cpu().numpy(), op.adjoint(y).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(refocus(yg, psf, 2).cpu().numpy(), refocus(y, psf, 2).numpy(), atol=1e-5)
    rl_gpu = richardson_lucy(yg, op, iterations=5).image
    np.testing.assert_allclose(rl_gpu.cpu().numpy(), richardson_lucy(y, op, iterations=5).image.numpy(),
                               rtol=1e-3, atol=1e-5)


def test_serenet_trains_and_reconstructs_on_cuda(psf):
    op = LightFieldProjector(psf, (32, 32))
    rng = np.random.default_rng(0)
    vol = np.zeros((5, 32, 32), np.float32)
    vol[2, 10:20, 12] = 1.0
    clean = np.clip(op(vol), 0, None) * 300
    meas = (rng.poisson(clean) + 100 + rng.normal(0, 2, clean.shape)).astype(np.float32)
    net, hist = train_serenet(meas[None], psf, offset=100, read_noise=2, steps=20, channels=8, device="cuda")
    assert next(net.parameters()).is_cuda and np.isfinite(hist[-1]["loss"])
    out = net.reconstruct(torch.tensor(meas, device="cuda"))
    assert out.is_cuda and out.shape == (5, 32, 32)
    P = torch.rand(100, device="cuda") * 20
    M = P + 100
    assert torch.allclose(nll_mpg(P, M, 100, 2.0).cpu(), nll_mpg(P.cpu(), M.cpu(), 100, 2.0), rtol=1e-5)
