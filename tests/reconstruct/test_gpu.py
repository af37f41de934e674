"""CUDA paths (skipped without a GPU): the torch kernels must agree with the CPU ones."""

import numpy as np
import pytest
import torch

from biomip.data import shepp_logan
from biomip.reconstruct import (
    DivergentProjector,
    ParallelBeam,
    ParallelProjector,
    cone_beam,
    dot_test,
    fbp,
    fista_tv,
    sart,
)

pytestmark = pytest.mark.gpu


def test_parallel_projector_cuda_matches_cpu():
    img = shepp_logan((96, 96)).numpy().astype(np.float32)
    for model in ("joseph", "pixel"):
        op = ParallelProjector(ParallelBeam.full(60, 140), img.shape, model=model)
        cpu = op(img)
        gpu = op(torch.tensor(img, device="cuda"))
        assert gpu.is_cuda
        np.testing.assert_allclose(gpu.cpu().numpy(), cpu, rtol=1e-4, atol=1e-4)
        y = torch.tensor(cpu, device="cuda")
        np.testing.assert_allclose(op.adjoint(y).cpu().numpy(), op.adjoint(cpu), rtol=1e-4, atol=1e-3)


def test_fbp_sart_tv_on_cuda():
    img = shepp_logan((96, 96)).numpy().astype(np.float32)
    op = ParallelProjector(ParallelBeam.full(60, 140), img.shape)
    y = torch.tensor(op(img), device="cuda")
    np.testing.assert_allclose(fbp(y, op).cpu().numpy(), fbp(y.cpu().numpy(), op), atol=1e-4)
    assert sart(y, op, 3).image.is_cuda
    assert fista_tv(y, op, lam=0.01, iterations=20).image.is_cuda


def test_cone_projector_cuda():
    vol = shepp_logan((24, 24, 24)).numpy().astype(np.float32)
    op = DivergentProjector(cone_beam(20, 80.0, 160.0, (32, 32)), vol.shape)
    cpu = op(vol)
    gpu = op(torch.tensor(vol, device="cuda")).cpu().numpy()
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)
    assert dot_test(op) < 1e-10
