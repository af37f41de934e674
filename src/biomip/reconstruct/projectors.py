"""The CT projectors of :mod:`biomip.ops.ct`, re-exported where reconstruction users look."""

from ..ops.ct import (
                      DivergentBeam,
                      DivergentProjector,
                      LinearOperator,
                      ParallelBeam,
                      ParallelProjector,
                      cone_beam,
                      dot_test,
                      fan_beam,
)

__all__ = ["DivergentBeam", "DivergentProjector", "LinearOperator", "ParallelBeam", "ParallelProjector",
           "cone_beam", "dot_test", "fan_beam"]
