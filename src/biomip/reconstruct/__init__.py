"""3-D reconstruction (textbook ch. 8): differentiable projectors and reconstruction
algorithms, on PyTorch (CPU and CUDA).

Projectors are :class:`LinearOperator` objects with ``forward`` / ``adjoint``::

    from biomip.reconstruct import ParallelBeam, ParallelProjector, fbp
    geo = ParallelBeam.full(180, n_det=367)
    op = ParallelProjector(geo, image)          # image: biomip.Image or a shape
    sino = op(image.array)                      # forward projection
    rec = fbp(sino, op, filter="ramp")
"""

from .divergent import DivergentBeam, DivergentProjector, cone_beam, fan_beam, fdk
from .fbp import FILTERS, Reconstruction, fbp, filter_sinogram, ramp_filter
from .iterative import fista_l1, fista_tv, landweber, least_squares, map_gaussian, sart, sirt
from .operators import LinearOperator, dot_test
from .parallel import ParallelBeam, ParallelProjector

__all__ = ["LinearOperator", "dot_test", "ParallelBeam", "ParallelProjector", "fbp", "filter_sinogram",
           "ramp_filter", "FILTERS", "Reconstruction", "least_squares", "map_gaussian", "sart", "sirt",
           "landweber", "fista_tv", "fista_l1", "DivergentBeam", "DivergentProjector", "fan_beam", "cone_beam",
           "fdk"]
