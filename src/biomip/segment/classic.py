"""Classic segmentation (textbook 6.3): thresholds, region growing, edge-based
segmentation, snakes with gradient vector flow, and level sets (Chan-Vese, geodesic).

One call convention: ``method(image, ...) -> labels``.  ``image`` is a grey 2-D
(``"yx"``) or 3-D (``"zyx"``) :class:`~biomip.core.Image`, numpy array or torch tensor;
the result is a label image (``uint8`` / ``int32``, 0 = background) of the same kind:
an Image with the input's geometry (``meta["kind"] == "labels"``), numpy for numpy,
torch for torch.  Distances (smoothing widths, radii, seeds given in world
coordinates) are in millimetres, read from ``Image.spacing`` or a ``spacing=``
argument (world order x, y, z; default 1 mm per voxel for plain arrays).

Thresholds (:func:`threshold`, :func:`threshold_value`)
    ``"otsu"``, ``"multiotsu"``, ``"valley"`` (histogram minimum between two peaks,
    alias ``"minimum"``), ``"kapur"`` (maximum entropy, alias ``"max_entropy"``; written
    here, any number of classes by dynamic programming), ``"isodata"`` (the iterative
    mean-of-means rule, alias ``"iterative"``), ``"li"``, ``"yen"``, ``"triangle"``,
    ``"mean"``.  scikit-image computes all but Kapur, so values agree with it exactly.
    Convention: a voxel is above a threshold ``t`` when ``value > t``.
Region growing (:func:`region_grow`)
    flood fill from seeds with an intensity ``tolerance`` around each seed's value
    (equal to :func:`skimage.segmentation.flood`), a fixed ``[lower, upper]`` interval
    (ITK ConnectedThreshold) or confidence-connected statistics (ITK
    ConfidenceConnected: mean +- k std of the region, re-estimated ``n`` times).
Edges (:func:`edge_segment`)
    Canny (scikit-image in 2-D; a 3-D Canny -- gradient, non-maximum suppression,
    hysteresis -- here), morphological closing with a ball of ``closing_radius`` mm,
    hole filling, one label per closed region.
Active contours
    :func:`gvf` (gradient vector flow of Xu & Prince, on torch), :func:`snake` (Kass
    snake, semi-implicit, with the plain edge-map gradient or GVF as external force),
    :func:`chan_vese` (Chan & Vese, the semi-implicit scheme of Getreuer, 2-D and 3-D)
    and :func:`geodesic_active_contour` (Caselles, Kimmel & Sapiro, upwind explicit
    scheme with Sussman reinitialisation, 2-D and 3-D).  Level sets are positive
    inside and change topology freely (one contour may split into several).

The methods live in one module per topic -- :mod:`.threshold`, :mod:`.region`,
:mod:`.edges` (edges, GVF, snakes), :mod:`.levelset` -- and are re-exported here.
"""

from .edges import SnakeResult, edge_segment, gvf, snake
from .levelset import chan_vese, geodesic_active_contour
from .region import region_grow, region_growing
from .thresholds import THRESHOLD_METHODS, threshold, threshold_value

__all__ = [
    "THRESHOLD_METHODS", "threshold", "threshold_value", "region_grow", "region_growing", "edge_segment",
    "gvf", "snake", "SnakeResult", "chan_vese", "geodesic_active_contour",
]
