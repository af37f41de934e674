from .fbp import FILTERS, Reconstruction, fbp, fdk, filter_sinogram, ramp_filter
from .gaussians import GaussianVolume, gaussian_reconstruction
from .iterative import fista_l1, fista_tv, landweber, least_squares, map_gaussian, richardson_lucy, sart, sirt
from .learned import (
                      FourierFeatures,
                      HashGrid,
                      NeuralField,
                      dictionary_reconstruction,
                      inr_reconstruction,
                      learn_dictionary,
)
from .lightfield import LightFieldOptics, LightFieldProjector, LightFieldPSF, lightfield_psf, refocus, refocus_stack
from .projectors import (
                      DivergentBeam,
                      DivergentProjector,
                      LinearOperator,
                      ParallelBeam,
                      ParallelProjector,
                      cone_beam,
                      dot_test,
                      fan_beam,
)

__all__ = [
    "GaussianVolume",
    "gaussian_reconstruction",
"LinearOperator", "dot_test", "ParallelBeam", "ParallelProjector", "fbp", "filter_sinogram",
           "ramp_filter", "FILTERS", "Reconstruction", "least_squares", "map_gaussian", "sart", "sirt",
           "landweber", "richardson_lucy", "LightFieldOptics", "LightFieldProjector", "LightFieldPSF",
           "lightfield_psf", "refocus", "refocus_stack", "fista_tv", "fista_l1", "DivergentBeam", "DivergentProjector", "fan_beam", "cone_beam",
           "fdk", "dictionary_reconstruction", "learn_dictionary", "inr_reconstruction", "NeuralField",
           "FourierFeatures", "HashGrid"]
