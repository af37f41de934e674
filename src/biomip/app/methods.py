"""The methods the page can run (``POST /infer/{method}``), with their parameter schemas.

Every method calls the biomip function of the same name with the parameters the client
sent, checked against the schema first; the result is what that call returns in Python,
voxel for voxel (the tests compare them).  ``segment`` methods take one image and return
a label map on its grid; the ``register`` method takes a fixed and a moving image and
returns the moving image resampled onto the fixed grid.

Seeds are voxel indices in the image's numpy order (``[z, y, x]``, ``[y, x]`` in 2-D; for
a 2-D image ``[0, y, x]`` is accepted too, as the browser shows it as a one-slice
volume).  Multi-channel images are segmented on one ``channel`` (default 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.image import Image
from .workspace import NotFoundError

__all__ = ["Param", "Method", "METHODS", "catalogue", "check_params", "run_method", "grey"]


@dataclass
class Param:
    """One parameter of a method, as the page shows it.

    Parameters
    ----------
    name : str
        The keyword of the biomip function.
    type : {"int", "float", "bool", "choice", "seeds", "str"}
        The kind of value.
    default : object, optional
        The default (``None``: the function's own default / not set).
    help : str, optional
        One line for the page.
    min, max : float or None, optional
        Bounds (inclusive) of numbers.
    choices : list or None, optional
        The values of a ``choice``.
    """

    name: str
    type: str
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: list | None = None

    def to_dict(self) -> dict:
        """The JSON form (``GET /info``).

        Returns
        -------
        dict
            ``name``, ``type``, ``default``, ``min``, ``max``, ``choices``, ``help``.

        Examples
        --------
        >>> Param("k", "int", 3, min=2).to_dict()["min"]
        2
        """
        return {"name": self.name, "type": self.type, "default": self.default, "min": self.min, "max": self.max,
                "choices": self.choices, "help": self.help}


@dataclass
class Method:
    """A method of the catalogue.

    Parameters
    ----------
    name : str
        The route name (``POST /infer/{name}``).
    kind : {"segment", "register"}
        What it takes and returns.
    description : str
        One line for the page.
    params : list of Param
        The parameters.
    fn : callable
        ``fn(image, params, workspace)`` -> Image (segment) or ``fn(fixed, moving, params,
        workspace)`` (register).
    """

    name: str
    kind: str
    description: str
    params: list = field(default_factory=list)
    fn: Callable | None = None

    def to_dict(self) -> dict:
        """The JSON form (``GET /info``).

        Returns
        -------
        dict
            ``kind``, ``description``, ``params`` (list of :meth:`Param.to_dict`).

        Examples
        --------
        >>> METHODS["threshold"].to_dict()["kind"]
        'segment'
        """
        return {"kind": self.kind, "description": self.description, "params": [p.to_dict() for p in self.params]}


def grey(image: Image, channel: int = 0, option: str = "params.channel") -> Image:
    """One grey channel (or time point) of an image, with the spatial geometry.

    Parameters
    ----------
    image : Image
        Any image.
    channel : int, optional
        Which channel / time point (flattened index) of a multi-channel image.
    option : str, optional
        The parameter an error names.

    Returns
    -------
    Image
        ``yx`` or ``zyx``; ``image`` itself when it has no channel axis.

    Raises
    ------
    InputError
        For a channel the image does not have.

    Examples
    --------
    >>> img = Image(np.zeros((3, 4, 5)), axes="cyx")
    >>> grey(img, 2).axes
    'yx'
    """
    if image.ndim == image.sdim:
        if channel not in (0, None):
            raise InputError(f"{option}: got {channel!r}; the image has one channel (0)")
        return image
    frames = image.numpy().reshape((-1,) + image.spatial_shape)
    k = 0 if channel is None else channel
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < frames.shape[0]:
        raise InputError(f"{option}: got {channel!r}; expected 0..{frames.shape[0] - 1}")
    return Image(frames[int(k)], spacing=image.spacing, origin=image.origin, direction=image.direction)


def _seeds(value, image: Image) -> np.ndarray:
    try:
        pts = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"params.seeds: got {value!r}; expected [[z, y, x], ...] voxel indices") from None
    if pts.size == 0:
        raise InputError(f"params.seeds: got {value!r}; expected at least one seed [z, y, x] (voxel indices)")
    if pts.ndim == 1:
        pts = pts[None]
    d = image.sdim
    if pts.ndim != 2 or pts.shape[0] > 10000 or not np.all(np.isfinite(pts)):
        raise InputError(f"params.seeds: got {value!r}; expected a list of 1 to 10000 points [z, y, x] (voxel "
                         "indices)")
    if d == 2 and pts.shape[1] == 3 and np.all(pts[:, 0] == 0):
        pts = pts[:, 1:]                  # a 2-D image shown as a one-slice volume
    if pts.shape[1] != d:
        raise InputError(f"params.seeds: got points of {pts.shape[1]} coordinates; expected {d} ({'zyx'[-d:]}, "
                         "numpy order voxel indices)")
    shape = np.asarray(image.spatial_shape)
    r = np.rint(pts)
    if np.any(r < 0) or np.any(r >= shape):
        raise InputError(f"params.seeds: got {pts.tolist()}; expected voxel indices inside the image shape "
                         f"{shape.tolist()}")
    return r.astype(np.int64)


# ------------------------------------------------------------------------ the methods
def _threshold(img: Image, p: dict, ws) -> Image:
    from ..segment import threshold

    if p["method"] == "value":
        if p.get("value") is None:
            raise InputError("params.value: method 'value' needs a threshold value (image units)")
        arr = img.numpy() > p["value"]
        if p["invert"]:
            arr = ~arr
        return img.with_array(arr.astype(np.uint8), meta={**img.meta, "kind": "labels", "method": "threshold:value",
                                                           "thresholds": [float(p["value"])]})
    return threshold(img, p["method"], classes=p.get("classes"), invert=p["invert"])


def _region_grow(img: Image, p: dict, ws) -> Image:
    from ..segment import region_grow

    if p.get("seeds") is None:
        raise InputError("params.seeds: region_grow needs at least one seed [z, y, x] (voxel indices)")
    seeds = _seeds(p["seeds"], img)
    kw = {"connectivity": p["connectivity"], "max_distance": p.get("max_distance")}
    rules = {k: p.get(k) for k in ("tolerance", "lower", "upper") if p.get(k) is not None}
    if rules.get("tolerance") is not None and ("lower" in rules or "upper" in rules):
        # the function takes exactly one rule; say it in the route's terms, not after a silent choice
        raise InputError(f"params.tolerance: give exactly one rule -- tolerance, or lower / upper, or neither "
                         f"(confidence-connected: multiplier, iterations); got tolerance={p['tolerance']!r}, "
                         f"lower={p.get('lower')!r}, upper={p.get('upper')!r}")
    if rules:
        return region_grow(img, seeds, **rules, **kw)
    return region_grow(img, seeds, confidence=(p["multiplier"], p["iterations"]), **kw)


def _kmeans(img: Image, p: dict, ws) -> Image:
    from ..segment import kmeans_segment

    return kmeans_segment(img, p["k"], features=p["features"], superpixels=p.get("superpixels"), seed=p["seed"])


def _gmm(img: Image, p: dict, ws) -> Image:
    from ..segment import gmm_segment

    return gmm_segment(img, p["k"], features=p["features"], superpixels=p.get("superpixels"), seed=p["seed"])


def _chan_vese(img: Image, p: dict, ws) -> Image:
    from ..segment import chan_vese

    return chan_vese(img, init=p["init"], mu=p["mu"], iterations=p["iterations"], polarity=p["polarity"])


def _gac(img: Image, p: dict, ws) -> Image:
    from ..segment import geodesic_active_contour

    return geodesic_active_contour(img, balloon=p["balloon"], sigma=p["sigma"], iterations=p["iterations"])


def _edges(img: Image, p: dict, ws) -> Image:
    from ..segment import edge_segment

    return edge_segment(img, sigma=p["sigma"], low=p["low"], high=p["high"], closing_radius=p["closing_radius"],
                        min_size=p["min_size"])


def _watershed(img: Image, p: dict, ws) -> Image:
    from ..segment import threshold_watershed

    return threshold_watershed(img, method=p["method"], diameter=p.get("diameter"),
                               min_distance=p.get("min_distance"))


def _load_model(ws, name: str, version, kind: str):
    if ws is None:
        raise InputError("params.model: running a trained model needs a workspace")
    names = sorted(n for n, m in ws.models().items() if m.get("kind") == kind)
    if name is None and names:
        name = names[0]                   # the default GET /info advertises (see catalogue)
    if name is None or (isinstance(name, str) and name not in ws.models()):
        got = "no model given" if name is None else f"got {name!r}"
        err = InputError if name is None else NotFoundError
        if names:
            raise err(f"params.model: {got}; expected one of the trained {kind} models: {', '.join(names)}")
        raise err(f"params.model: {got}; the workspace has no trained {kind} model yet: save labels, add "
                  f"them to the training set and train one (POST /train/NAME with kind {kind!r})")
    return ws.load_model(name, version, kind)


def _flows(img: Image, p: dict, ws) -> Image:
    from ..segment import predict_instances

    model = _load_model(ws, p["model"], p.get("version"), "flows")
    labels, _ = predict_instances(model, img, prob_threshold=p["prob_threshold"],
                                  flow_threshold=p["flow_threshold"], min_size=p["min_size"],
                                  diameter=p.get("diameter"))
    return labels


def _unet(img: Image, p: dict, ws) -> Image:
    from ..segment import predict

    model = _load_model(ws, p["model"], p.get("version"), "unet")
    return predict(model, img, progress=False)


def _register(fixed: Image, moving: Image, p: dict, ws) -> Image:
    from ..register import linear

    return linear(fixed, moving, transform=p["transform"], metric=p["metric"], levels=p["levels"],
                  iterations=p["iterations"]).warped


_CH = Param("channel", "int", 0, "Channel of a multi-channel image", 0, 255)
_THR = ["otsu", "li", "yen", "triangle", "isodata", "mean", "valley", "kapur", "multiotsu"]
_MODEL = Param("model", "str", None, "Model name (GET /models)")
_VERSION = Param("version", "int", None, "Model version (default: the latest)", 1, None)

METHODS: dict[str, Method] = {m.name: m for m in [
    Method("threshold", "segment", "Histogram threshold (biomip.segment.threshold) or a fixed value: label = value > t",
           [Param("method", "choice", "otsu", "Histogram method, or 'value' for a fixed threshold",
                  choices=_THR + ["value"]),
            Param("value", "float", None, "The threshold with method 'value' (image units)"),
            Param("classes", "int", None, "Classes of multiotsu / kapur", 2, 8),
            Param("invert", "bool", False, "Dark objects are foreground"), _CH], _threshold),
    Method("region_grow", "segment", "Seeded region growing (biomip.segment.region_grow): click seeds",
           [Param("seeds", "seeds", None, "Seeds [[z, y, x], ...], voxel indices in numpy order"),
            Param("tolerance", "float", None, "Intensity tolerance around each seed (image units); empty: "
                  "confidence-connected", 0.0, None),
            Param("lower", "float", None, "Fixed interval: lower bound"),
            Param("upper", "float", None, "Fixed interval: upper bound"),
            Param("multiplier", "float", 2.5, "Confidence-connected: interval = mean +- multiplier * std", 0.0, 100.0),
            Param("iterations", "int", 4, "Confidence-connected iterations", 0, 100),
            Param("connectivity", "int", 1, "1: faces; 2, 3: also edges, corners", 1, 3),
            Param("max_distance", "float", None, "Only voxels within this distance of a seed (mm)", 0.0, None),
            _CH], _region_grow),
    Method("kmeans_segment", "segment", "k-means clustering of pixel intensities (biomip.segment.kmeans_segment)",
           [Param("k", "int", 3, "Number of classes", 2, 32),
            Param("features", "choice", "intensity", "Features clustered", choices=["intensity", "intensity+position"]),
            Param("superpixels", "int", None, "Cluster that many SLIC superpixels instead of pixels", 2, 100000),
            Param("seed", "int", 0, "Random seed", 0, 2**31 - 1), _CH], _kmeans),
    Method("gmm_segment", "segment", "Gaussian mixture of pixel intensities (biomip.segment.gmm_segment)",
           [Param("k", "int", 3, "Number of classes", 2, 32),
            Param("features", "choice", "intensity", "Features clustered", choices=["intensity", "intensity+position"]),
            Param("superpixels", "int", None, "Cluster that many SLIC superpixels instead of pixels", 2, 100000),
            Param("seed", "int", 0, "Random seed", 0, 2**31 - 1), _CH], _gmm),
    Method("chan_vese", "segment", "Chan-Vese level set, active contour without edges (biomip.segment.chan_vese)",
           [Param("mu", "float", 0.25, "Length weight (smoother contours)", 0.0, 100.0),
            Param("iterations", "int", 200, "Maximum iterations", 1, 5000),
            Param("init", "choice", "checkerboard", "Initial level set", choices=["checkerboard", "disk", "small disk"]),
            Param("polarity", "choice", "bright", "Which phase is label 1", choices=["bright", "dark", "inside"]),
            _CH], _chan_vese),
    Method("geodesic_active_contour", "segment", "Geodesic active contour shrinking from the image border "
           "(biomip.segment.geodesic_active_contour)",
           [Param("balloon", "float", -0.5, "Balloon speed (< 0 shrinks)", -10.0, 10.0),
            Param("sigma", "float", 1.0, "Edge smoothing (mm)", 0.0, 100.0),
            Param("iterations", "int", 300, "Iterations", 1, 5000), _CH], _gac),
    Method("edge_segment", "segment", "Canny edges, closing, hole filling (biomip.segment.edge_segment)",
           [Param("sigma", "float", 1.0, "Gaussian width (mm)", 0.0, 100.0),
            Param("low", "float", 0.1, "Low hysteresis threshold (fraction of the largest gradient)", 0.0, 1.0),
            Param("high", "float", 0.2, "High hysteresis threshold", 0.0, 1.0),
            Param("closing_radius", "float", 2.0, "Closing radius (mm)", 0.0, 100.0),
            Param("min_size", "int", 0, "Drop regions with fewer voxels", 0, None), _CH], _edges),
    Method("threshold_watershed", "segment", "Instances: threshold + distance-transform watershed "
           "(biomip.segment.threshold_watershed)",
           [Param("method", "choice", "otsu", "Threshold method", choices=_THR[:-2]),
            Param("diameter", "float", None, "Typical object diameter (mm; empty: estimated)", 0.0, None),
            Param("min_distance", "float", None, "Smallest distance between centres (mm)", 0.0, None), _CH],
           _watershed),
    Method("flows", "segment", "Cellpose-style flows model trained in this workspace "
           "(biomip.segment.predict_instances)",
           [_MODEL, _VERSION,
            Param("diameter", "float", None, "Typical object diameter in mm (empty: as trained)", 0.0, None),
            Param("prob_threshold", "float", 0.5, "Cell probability threshold", 0.0, 1.0),
            Param("flow_threshold", "float", 0.4, "Flow error threshold", 0.0, 10.0),
            Param("min_size", "int", 15, "Smallest object (voxels)", 0, None), _CH], _flows),
    Method("unet", "segment", "U-Net trained in this workspace (biomip.segment.predict)", [_MODEL, _VERSION, _CH],
           _unet),
    Method("register", "register", "Rigid / affine registration (biomip.register.linear): the moving image on the "
           "fixed grid",
           [Param("transform", "choice", "rigid", "Transform model", choices=["rigid", "affine"]),
            Param("metric", "choice", "mse", "Similarity: mse (same modality), ncc, mi / nmi (multimodal)",
                  choices=["mse", "ncc", "mi", "nmi"]),
            Param("levels", "int", 3, "Pyramid levels", 1, 6),
            Param("iterations", "int", 50, "Iterations per level", 1, 1000),
            Param("channel", "int", 0, "Channel of a multi-channel fixed image", 0, 255),
            Param("moving_channel", "int", None, "Channel of a multi-channel moving image (default: the fixed "
                  "image's channel; 0 for a one-channel moving image)", 0, 255)], _register),
]}
"""The catalogue: name -> :class:`Method`."""


def catalogue(workspace=None) -> dict[str, dict]:
    """The methods as JSON (``GET /info``), model choices filled from the workspace.

    Parameters
    ----------
    workspace : Workspace or None, optional
        Fills the ``choices`` of the ``model`` parameter of ``flows`` / ``unet``.

    Returns
    -------
    dict
        ``{name: Method.to_dict()}``.

    Examples
    --------
    >>> sorted(catalogue())[:3]
    ['chan_vese', 'edge_segment', 'flows']
    """
    out = {k: m.to_dict() for k, m in METHODS.items()}
    if workspace is not None:
        models = workspace.models()
        for kind in ("flows", "unet"):
            names = [n for n, m in models.items() if m["kind"] == kind]
            for p in out[kind]["params"]:
                if p["name"] == "model":
                    p["choices"] = names
                    p["default"] = names[0] if names else None     # what POST /infer/{kind} uses without one
    return out


def _coerce(p: Param, v):
    if v is None:
        return None
    if p.type == "seeds":
        return v
    if p.type == "bool":
        if not isinstance(v, bool):
            raise InputError(f"params.{p.name}: got {v!r}; expected true or false")
        return v
    if p.type == "choice":
        if v not in (p.choices or []):
            raise InputError(f"params.{p.name}: got {v!r}; expected one of {', '.join(map(str, p.choices or []))}")
        return v
    if p.type == "str":
        if not isinstance(v, str) or not v:
            raise InputError(f"params.{p.name}: got {v!r}; expected a name")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"params.{p.name}: got {v!r}; expected a number")
    if p.type == "int":
        if not float(v).is_integer():
            raise InputError(f"params.{p.name}: got {v!r}; expected an integer")
        v = int(v)
    else:
        v = float(v)
        if not math.isfinite(v):
            raise InputError(f"params.{p.name}: got {v!r}; expected a finite number")
    if (p.min is not None and v < p.min) or (p.max is not None and v > p.max):
        lo = "-inf" if p.min is None else p.min
        hi = "inf" if p.max is None else p.max
        raise InputError(f"params.{p.name}: got {v!r}; expected {lo} <= {p.name} <= {hi}")
    return v


def check_params(method: str, params: dict | None) -> dict:
    """Check and complete the parameters of a method against its schema.

    Parameters
    ----------
    method : str
        A name of :data:`METHODS`.
    params : dict or None
        What the client sent.

    Returns
    -------
    dict
        Every parameter of the schema: the value sent (type-checked, within bounds) or
        the default.

    Raises
    ------
    InputError
        For an unknown method or parameter, or a value of the wrong type or out of bounds.

    Examples
    --------
    >>> check_params("kmeans_segment", {"k": 2})["k"]
    2
    >>> check_params("kmeans_segment", {"k": 1})
    Traceback (most recent call last):
    ...
    biomip.core.errors.InputError: params.k: got 1; expected 2 <= k <= 32
    """
    if method not in METHODS:
        raise InputError(f"method: got {method!r}; expected one of {', '.join(METHODS)}")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise InputError(f"params: got {type(params).__name__}; expected a JSON object")
    schema = {p.name: p for p in METHODS[method].params}
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise InputError(f"params: {method} has no parameter {', '.join(unknown)}; expected some of "
                         f"{', '.join(schema)}")
    return {name: _coerce(p, params[name]) if name in params else p.default for name, p in schema.items()}


def run_method(method: str, image: Image, params: dict | None = None, *, moving: Image | None = None,
               workspace=None) -> Image:
    """Run a method of the catalogue on an image, as ``POST /infer/{method}`` does.

    Parameters
    ----------
    method : str
        A name of :data:`METHODS`.
    image : Image
        The image (the fixed image of ``register``).
    params : dict or None, optional
        The parameters (checked by :func:`check_params`).
    moving : Image or None, optional
        The moving image of ``register``.
    workspace : Workspace or None, optional
        Where ``flows`` / ``unet`` find their models.

    Returns
    -------
    Image
        Segment methods: the label map with the image's spatial geometry (integer dtype);
        ``threshold`` records the threshold(s) it used in ``meta["thresholds"]`` (a list of
        floats in image units: those of :func:`biomip.segment.threshold_value`, or
        ``[value]``).  ``register``: the moving image resampled onto the fixed grid.

    Raises
    ------
    InputError
        For bad parameters, or whatever the biomip function raises.

    Examples
    --------
    >>> img = Image(np.r_[np.zeros(8), np.ones(8)][None].repeat(4, 0))
    >>> run_method("threshold", img, {"method": "otsu"}).numpy()[0].tolist()
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    >>> run_method("threshold", img, {"method": "value", "value": 0.25}).meta["thresholds"]
    [0.25]
    """
    p = check_params(method, params)
    m = METHODS[method]
    src = grey(image, p.get("channel", 0))
    if m.kind == "register":
        if moving is None:
            raise InputError("moving: register needs a moving image")
        k = p["moving_channel"]
        if k is None:                      # the fixed image's channel, where the moving image has channels
            k = p["channel"] if moving.ndim > moving.sdim else 0
        return m.fn(src, grey(moving, k, "params.moving_channel"), p, workspace)
    if src.sdim == 3 and src.shape[0] == 1:
        # a one-slice volume (a 2-D NIfTI is stored as x, y, 1[, 1, c]): segment the slice as a 2-D image
        flat = Image(src.numpy()[0], spacing=src.spacing[:2], origin=src.origin[:2],
                     direction=np.asarray(src.direction, dtype=float)[:2, :2])
        out = m.fn(flat, p, workspace)      # seeds [[0, y, x]] are read as [[y, x]] on a 2-D image
        if not isinstance(out, Image):      # pragma: no cover
            out = flat.with_array(np.asarray(out))
        res = src.with_array(out.numpy()[None])
        res.meta.update(out.meta)
        out = res
    else:
        out = m.fn(src, p, workspace)
    if not isinstance(out, Image):      # pragma: no cover - every method returns an Image for an Image
        out = src.with_array(np.asarray(out))
    arr = out.numpy()
    if arr.dtype.kind not in "iub":
        raise InputError(f"{method}: returned {arr.dtype} values; expected a label map")   # pragma: no cover
    return out
