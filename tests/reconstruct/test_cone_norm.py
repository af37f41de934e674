"""``LinearOperator.norm`` on a 3-D cone-beam projector (its ``_apply`` takes a batch axis):
FISTA-TV, which steps by ``1 / norm^2``, runs on cone-beam CT."""

import torch

from biomip.reconstruct import DivergentProjector, cone_beam, fista_tv


def test_cone_beam_norm_and_fista_tv():
    op = DivergentProjector(cone_beam(8, sod=80.0, sdd=120.0, det_shape=(16, 16), det_spacing=1.5), (12, 12, 12))
    n = op.norm(iterations=20)
    x = torch.rand(3, 12, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ratios = torch.linalg.vector_norm(op(x).reshape(3, -1), dim=1) / torch.linalg.vector_norm(x.reshape(3, -1), dim=1)
    assert float(ratios.max()) <= n * 1.001                   # the 2-norm bounds every gain
    v = torch.zeros(12, 12, 12)
    v[3:9, 3:9, 3:9] = 1.0
    r = fista_tv(op(v), op, lam=1e-3, iterations=8)
    assert float((r.image - v).abs().mean()) < float(v.abs().mean())
