"""3-D reconstruction (textbook ch. 8): differentiable projectors and reconstruction
algorithms, on PyTorch (CPU and CUDA).

Projectors are :class:`LinearOperator` objects with ``forward`` / ``adjoint``::

    from biomip.reconstruct import ParallelBeam, ParallelProjector, fbp
    geo = ParallelBeam.full(180, n_det=367)
    op = ParallelProjector(geo, image)          # image: biomip.Image or a shape
    sino = op(image.array)                      # forward projection
    rec = fbp(sino, op, filter="ramp")
"""

from ..ops.ct import (DivergentBeam, DivergentProjector, LinearOperator, ParallelBeam, ParallelProjector,
                      cone_beam, dot_test, fan_beam)
from .fbp import FILTERS, Reconstruction, fbp, fdk, filter_sinogram, ramp_filter
from .learned import (FourierFeatures, HashGrid, NeuralField, dictionary_reconstruction, inr_reconstruction,
                      learn_dictionary)
from .iterative import fista_l1, fista_tv, landweber, least_squares, map_gaussian, richardson_lucy, sart, sirt
from .lightfield import (LightFieldOptics, LightFieldProjector, LightFieldPSF, lightfield_psf, refocus,
                         refocus_stack)

__all__ = ["LinearOperator", "dot_test", "ParallelBeam", "ParallelProjector", "fbp", "filter_sinogram",
           "ramp_filter", "FILTERS", "Reconstruction", "least_squares", "map_gaussian", "sart", "sirt",
           "landweber", "richardson_lucy", "LightFieldOptics", "LightFieldProjector", "LightFieldPSF",
           "lightfield_psf", "refocus", "refocus_stack", "fista_tv", "fista_l1", "DivergentBeam", "DivergentProjector", "fan_beam", "cone_beam",
           "fdk", "dictionary_reconstruction", "learn_dictionary", "inr_reconstruction", "NeuralField",
           "FourierFeatures", "HashGrid"]
