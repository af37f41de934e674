"""Differentiable CT / X-ray projectors (PyTorch autograd; numba kernels on the CPU).

These are shared kernels: reconstruction (:mod:`biomip.reconstruct`), CT simulation
(:func:`biomip.data.simulate_ct`) and 2-D/3-D registration (digitally reconstructed
radiographs) all use them.

* :class:`ParallelBeam` + :class:`ParallelProjector`: 2-D parallel beam, slice by slice
  for volumes (ray-driven Joseph or pixel-driven model);
* :func:`fan_beam` / :func:`cone_beam` (or :class:`DivergentBeam` with arbitrary
  per-view poses) + :class:`DivergentProjector`: 2-D fan beam and 3-D cone beam;
* :class:`LinearOperator` and :func:`dot_test` (adjoint check);
* :class:`DRR`: one-view cone-beam DRRs (line integrals, tissue-class rendering, mask and
  point projection) through a precomputed sparse system matrix, differentiable.
"""

from .divergent import DivergentBeam, DivergentProjector, cone_beam, fan_beam
from .drr import DRR
from .operators import LinearOperator, dot_test
from .parallel import ParallelBeam, ParallelProjector

__all__ = ["LinearOperator", "dot_test", "ParallelBeam", "ParallelProjector", "DivergentBeam",
           "DivergentProjector", "fan_beam", "cone_beam", "DRR"]
