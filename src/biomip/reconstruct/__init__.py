"""3-D reconstruction (textbook ch. 8): differentiable projectors and reconstruction
algorithms, on PyTorch (CPU and CUDA).

Projectors are :class:`LinearOperator` objects with ``forward`` / ``adjoint``::

    from biomip.reconstruct import ParallelBeam, ParallelProjector, fbp
    geo = ParallelBeam.full(180, n_det=367)
    op = ParallelProjector(geo, image)          # image: biomip.Image or a shape
    sino = op(image.array)                      # forward projection
    rec = fbp(sino, op, filter="ramp")

Besides analytic (FBP / FDK), iterative (SART, SIRT, CG, FISTA-TV, wavelets) and learned
(dictionaries, implicit neural representations) reconstruction, :mod:`.gaussians` fits a
set of 3-D Gaussians to cone-beam projections by exact, differentiable splatting
(:class:`GaussianVolume`, :func:`gaussian_reconstruction`; book 4.7).
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
