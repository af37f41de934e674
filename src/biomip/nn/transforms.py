"""Seeded, recorded, invertible augmentation of subjects (image + label maps + spacing), TorchIO-style.

A :class:`Subject` holds an image ``(C, *S)`` (2-D or 3-D), optional label maps ``(*S)``
and the voxel spacing in mm (world order x, y[, z]).  Every transform is called on a
subject (or a dict / tensor / :class:`biomip.Image` that becomes one) and returns a new
subject whose ``history`` gained one JSON-ready record ``{"name", "params", ...}`` holding
every sampled number: :func:`replay` applies a history again (identical output), and
:func:`invert` undoes its spatial part (affine exactly, elastic by fixed-point inversion of
the displacement, flips / 90-degree turns / crops exactly).

Spatial transforms (:class:`RandomAffine`, :class:`RandomElastic`) describe a *pull-back*
map ``out(p) = in(phi(p))`` in physical coordinates (mm, about the image centre); inside a
:class:`Compose` consecutive ones are chained on the point grid and the image is resampled
**once** (trilinear / bilinear ``grid_sample``; label maps nearest, never a new label
value), which is where the speed comes from: the elastic field lives on a coarse
control-point grid and is expanded to the voxels by separable cubic B-spline matrices
(three small matrix products), not by smoothing a full-resolution random field.

Intensity transforms (:class:`RandomIntensity`, :class:`RandomNoise`,
:class:`RandomBiasField`, :class:`RandomBlur`, :class:`RandomStreaks`,
:class:`RandomOcclusion`) change the image only, never the labels.

Random numbers: each transform owns a CPU ``torch.Generator`` (``seed``), or uses the one
passed to the call; :class:`Compose` / :class:`OneOf` hand theirs to their children, so one
seed fixes a whole pipeline.  Noise fields are drawn from a recorded integer seed on the
image's device (reproducible on that device).  Everything runs where the image lives (CPU
or CUDA).
"""

from __future__ import annotations

import copy as _copy
import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import check_finite, check_memory, check_number, check_spacing
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image

__all__ = ["Subject", "Transform", "SpatialTransform", "RandomAffine", "RandomElastic", "RandomFlip", "RandomRot90",
           "RandomCrop", "CropOrPad", "RandomLabelCrop", "RandomIntensity", "RandomNoise", "RandomBiasField",
           "RandomBlur", "RandomStreaks", "RandomOcclusion", "Compose", "OneOf", "replay", "invert", "metal_shapes",
           "bspline_matrix", "TRANSFORMS"]

_AXES = "xyz"


# ================================================================================ subject
class Subject:
    """An image with its label maps and voxel spacing, plus the history of transforms.

    Parameters
    ----------
    image : torch.Tensor, numpy.ndarray or Image
        ``(C, *S)`` with 2 or 3 spatial axes, or ``(*S)`` for one channel.  A 2-D array is
        one 2-D channel, a 4-D array ``(C, z, y, x)``; a 3-D array is ``(C, y, x)`` unless
        ``sdim=3``, ``spacing`` has 3 values or the labels are 3-D.  An :class:`Image`
        gives its own spatial axes, spacing, origin and direction.  Stored as floating
        point (integers become float32).  **Channels go first**: a numpy ``(H, W, 3)`` RGB
        array is refused (transpose it to ``(3, H, W)``, or wrap it in an :class:`Image`
        with ``axes="yxc"``).  Every spatial size must be >= 1 and every value finite.
    labels : tensor, array, Image or dict, optional
        One label map ``(*S)`` (named ``"label"``) or a dict name -> map, integer or
        boolean values.
    spacing : float or sequence of float, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1 mm.
    sdim : int, optional
        Number of spatial axes (2 or 3) when the array shape leaves it open.
    history : list of dict, optional
        Records of the transforms already applied.

    Attributes
    ----------
    origin : tuple of float or None
        The input Image's origin (mm, world order), ``None`` for an array input.  Carried
        unchanged through every transform (which all act about the image centre), so after
        a crop / pad it is the *input* grid's origin: :meth:`to_image` restores it.
    direction : numpy.ndarray or None
        The input Image's direction matrix, ``None`` for an array input; carried unchanged.

    Raises
    ------
    ShapeError
        When the image is not 2-D / 3-D (with channels), has an empty spatial axis, looks
        like channels-last RGB ``(H, W, 3)``, or a label map's shape differs.
    InputError
        When the image holds NaN / Inf or complex values, a label map holds floating-point
        values or the spacing is invalid.

    Examples
    --------
    >>> import torch
    >>> s = Subject(torch.rand(1, 8, 10), labels=torch.zeros(8, 10, dtype=torch.long), spacing=(0.5, 1.0))
    >>> s.sdim, s.shape, s.spacing, list(s.labels)
    (2, (8, 10), (0.5, 1.0), ['label'])
    """

    def __init__(self, image, labels=None, spacing=None, sdim: int | None = None, history=None):
        self.origin = None
        self.direction = None
        if isinstance(image, Image):
            d = image.sdim
            if spacing is None:
                spacing = image.spacing
            self.origin = tuple(image.origin)
            self.direction = np.array(image.direction)
            t = image.torch() if not image.is_torch else image.array
            t = t.reshape(-1, *image.spatial_shape)
        else:
            if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
                raise InputError(f"image: got the path {str(image)!r}; expected an array or an Image (read a file "
                                 "with biomip.io.read first)")
            try:
                t = image if torch.is_tensor(image) else torch.as_tensor(np.ascontiguousarray(image))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise InputError(f"image: got {describe(image)}; expected a numeric array, tensor or Image") from exc
            if sdim is not None:
                d = int(check_number(sdim, "sdim", integer=True, low=2, high=3))
            elif spacing is not None and np.ndim(spacing) == 1 and len(spacing) in (2, 3):
                d = len(spacing)
            elif labels is not None and not isinstance(labels, dict):
                d = _label_tensor(labels, "labels").ndim
            elif isinstance(labels, dict) and labels:
                d = _label_tensor(next(iter(labels.values())), "labels").ndim
            else:
                d = 2 if t.ndim in (2, 3) else 3
            if (isinstance(image, np.ndarray) and sdim is None and d == 2 and image.ndim == 3
                    and image.shape[-1] in (3, 4) and image.shape[0] > 4):
                raise ShapeError(f"image: got numpy shape {image.shape}, which looks like channels-last RGB(A); "
                                 "channels go first: (C, *S), e.g. image.transpose(2, 0, 1)")
            if t.ndim == d:
                t = t[None]
        if d not in (2, 3) or t.ndim != d + 1:
            why = (f" (spacing {tuple(spacing)} has {d} values, so {d} spatial axes)"
                   if not isinstance(image, Image) and sdim is None and spacing is not None and np.ndim(spacing) == 1
                   else "")
            raise ShapeError(f"image: got {describe(image)}; expected (C, *S) or (*S) with {d if why else '2 or 3'} "
                             f"spatial axes{why}")
        if min(t.shape) < 1:
            raise ShapeError(f"image: got shape {tuple(t.shape)}; expected (C, *S) with every size >= 1")
        if t.is_complex():
            raise InputError("image: got complex values; expected a real image")
        check_finite(t, "image")
        if not t.is_floating_point():
            t = t.to(torch.float32)
        self.image = t
        self.spacing = check_spacing(spacing, d)
        labs = {} if labels is None else (dict(labels) if isinstance(labels, dict) else {"label": labels})
        self.labels = {}
        for k, v in labs.items():
            lt = _label_tensor(v, f"labels[{k!r}]")
            if lt.ndim == d + 1 and lt.shape[0] == 1:
                lt = lt[0]
            if tuple(lt.shape) != self.shape:
                raise ShapeError(f"labels[{k!r}]: got shape {tuple(lt.shape)}; expected {self.shape} (the image's)")
            self.labels[str(k)] = lt.to(t.device)
        self.history = list(history or [])

    @property
    def sdim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.image.ndim - 1

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape in array order (``[z,] y, x``)."""
        return tuple(self.image.shape[1:])

    @property
    def device(self) -> torch.device:
        """Where the image lives."""
        return self.image.device

    def replace(self, image=None, labels=None, spacing=None) -> Subject:
        """A new subject with some parts replaced (the history list is copied).

        Parameters
        ----------
        image : torch.Tensor, optional
            New image ``(C, *S)``.
        labels : dict, optional
            New label maps.
        spacing : tuple of float, optional
            New spacing (world order).

        Returns
        -------
        Subject
            The new subject.
        """
        out = Subject.__new__(Subject)
        out.image = self.image if image is None else image
        out.labels = dict(self.labels if labels is None else labels)
        out.spacing = self.spacing if spacing is None else tuple(float(s) for s in spacing)
        out.history = list(self.history)
        out.origin = getattr(self, "origin", None)
        out.direction = getattr(self, "direction", None)
        return out

    def to_image(self) -> Image:
        """The subject's image as an :class:`Image` with its spacing, origin and direction.

        Returns
        -------
        Image
            ``(*S)`` for one channel, else ``(C, *S)`` with a leading ``"c"`` axis; the
            origin / direction are those of the Image the subject was made from (zero /
            identity for an array input).

        Examples
        --------
        >>> from biomip import Image
        >>> import numpy as np
        >>> img = Image(np.zeros((6, 8), np.float32), spacing=(0.5, 2.0), origin=(10.0, -3.0))
        >>> out = RandomFlip(p_axis=1.0, seed=0)(img).to_image()
        >>> out.shape, out.spacing, out.origin
        ((6, 8), (0.5, 2.0), (10.0, -3.0))
        """
        arr = self.image[0] if self.image.shape[0] == 1 else self.image
        axes = None if self.image.shape[0] == 1 else "c" + "zyx"[3 - self.sdim:]
        return Image(arr, spacing=self.spacing, origin=self.origin, direction=self.direction, axes=axes)

    def to(self, device) -> Subject:
        """The subject on another device.

        Parameters
        ----------
        device : str or torch.device
            Target device.

        Returns
        -------
        Subject
            The moved subject.
        """
        return self.replace(self.image.to(device), {k: v.to(device) for k, v in self.labels.items()})

    def __repr__(self) -> str:
        return (f"Subject(image={tuple(self.image.shape)}, labels={list(self.labels)}, spacing={self.spacing}, "
                f"history={len(self.history)} records)")


def _label_tensor(v, name: str) -> torch.Tensor:
    if isinstance(v, Image):
        v = v.array
    t = v if torch.is_tensor(v) else torch.as_tensor(np.ascontiguousarray(v))
    if t.is_floating_point() or t.is_complex():
        raise InputError(f"{name}: got {describe(t)}; expected integer or boolean label values")
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t


def _as_subject(x) -> Subject:
    if isinstance(x, Subject):
        return x
    if isinstance(x, dict):
        if "image" not in x:
            raise InputError(f"x: got a dict with keys {sorted(x)}; expected an 'image' key")
        return Subject(x["image"], labels=x.get("labels", x.get("label")), spacing=x.get("spacing"),
                       sdim=x.get("sdim"), history=x.get("history"))
    return Subject(x)


def _check_generator(g):
    if g is not None and not isinstance(g, torch.Generator):
        raise InputError(f"generator: got {type(g).__name__}; expected a torch.Generator or None")
    return g


def _seed_generator(seed) -> torch.Generator:
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))           # follows torch.manual_seed
    else:
        seed = int(check_number(seed, "seed", integer=True, low=0))
    return torch.Generator().manual_seed(seed)


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand(1, generator=g, dtype=torch.float64))


def _range(value, name: str, symmetric: bool = False, positive: bool = False) -> tuple[float, float]:
    """A (low, high) range; a number ``v`` means ``(-v, v)`` (symmetric) or ``(v, v)``."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        v = check_number(value, name, nonneg=symmetric)
        lo, hi = (-v, v) if symmetric else (v, v)
    else:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: got {value!r}; expected a number or a (low, high) pair") from exc
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise InputError(f"{name}: got {value!r}; expected finite low <= high")
    if positive and lo <= 0:
        raise InputError(f"{name}: got {value!r}; expected 0 < low <= high")
    return lo, hi


def _seed_from(g: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=g))


def _device_gen(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


# ============================================================================== base class
TRANSFORMS: dict[str, type] = {}
"""Transform class name -> class (what :func:`replay` and :func:`invert` look records up in)."""


class Transform:
    """Base class: ``out = t(x, generator=None)`` samples parameters, applies them and
    appends ``{"name": class name, "params": {...}}`` to ``out.history``.

    Subclasses define ``sample(subject, generator) -> params`` and the classmethod
    ``apply(subject, params) -> Subject`` (deterministic: everything it needs is in
    ``params``, so a record can be replayed without the transform's settings).

    Parameters
    ----------
    p : float, optional
        Probability of applying the transform (a skipped call records ``"applied": False``).
    seed : int, optional
        Seed of the transform's own generator (``None``: drawn from torch's global
        generator, so ``torch.manual_seed`` fixes it).

    Raises
    ------
    InputError
        When ``p`` is outside ``[0, 1]`` or ``seed`` is not a non-negative integer.

    Examples
    --------
    >>> import torch
    >>> t = RandomFlip(axes="x", p_axis=1.0, seed=0)
    >>> out = t(torch.arange(6.0).reshape(1, 2, 3))
    >>> out.image[0, 0].tolist(), out.history[-1]["params"]["axes"]
    ([2.0, 1.0, 0.0], ['x'])
    """

    spatial = False
    invertible = False

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        TRANSFORMS[cls.__name__] = cls

    def __init__(self, p: float = 1.0, seed: int | None = None):
        self.p = check_number(p, "p", low=0, high=1)
        self._generator = _seed_generator(seed)

    def __call__(self, x, generator: torch.Generator | None = None) -> Subject:
        s = _as_subject(x)
        g = _check_generator(generator) or self._generator
        if not self._draw_applied(g):
            out = s.replace()
            out.history.append({"name": type(self).__name__, "applied": False, "params": {}})
            return out
        params = self.sample(s, g)
        out = self.apply(s, params)
        out.history.append({"name": type(self).__name__, "applied": True, "params": params})
        return out

    def _draw_applied(self, g) -> bool:
        if self.p >= 1.0:
            return True
        return bool(float(torch.rand(1, generator=g)) < self.p)

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:  # pragma: no cover - abstract
        """Draw the parameters for ``subject``.

        Parameters
        ----------
        subject : Subject
            The input (its shape, spacing and values may shape the draw).
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            JSON-ready parameters, everything :meth:`apply` needs.
        """
        raise NotImplementedError

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:  # pragma: no cover - abstract
        """Apply recorded parameters (deterministic).

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            A record's ``params``.

        Returns
        -------
        Subject
            The transformed subject (history not extended).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        keys = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in keys.items())})"


# ====================================================================== spatial machinery
def bspline_matrix(n: int, m: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Cubic B-spline weights ``(n, m)`` that expand ``m`` control points spread evenly over
    ``n`` samples (first and last control points on the first and last samples).

    Row ``i`` holds ``B3(i (m - 1) / (n - 1) - j)`` for control point ``j``, ``B3`` the
    cubic B-spline kernel (support 4 control spacings); each row sums to <= 1 (< 1 next
    to the ends), so an expanded field never exceeds its largest control value.

    Parameters
    ----------
    n : int
        Number of samples (voxels) along the axis (>= 1).
    m : int
        Number of control points (>= 2).
    dtype : torch.dtype, optional
        Output dtype.
    device : torch.device or str, optional
        Output device.

    Returns
    -------
    torch.Tensor
        The ``(n, m)`` weights.

    Raises
    ------
    InputError
        When ``n < 1`` or ``m < 2``.

    Examples
    --------
    >>> W = bspline_matrix(5, 3)
    >>> [round(v, 4) for v in W[2].tolist()]       # the middle sample sits on control point 1
    [0.1667, 0.6667, 0.1667]
    """
    n = int(check_number(n, "n", integer=True, low=1))
    m = int(check_number(m, "m", integer=True, low=2))
    return _bspline_matrix(n, m, dtype, None if device is None else torch.device(device))


@functools.lru_cache(maxsize=64)
def _bspline_matrix(n, m, dtype, device):
    s = torch.arange(n, dtype=torch.float64) * ((m - 1) / max(n - 1, 1))
    t = (s[:, None] - torch.arange(m, dtype=torch.float64)[None, :]).abs()
    w = torch.where(t < 1, 2.0 / 3.0 - t ** 2 + t ** 3 / 2.0, torch.where(t < 2, (2.0 - t) ** 3 / 6.0, 0.0))
    return w.to(dtype=dtype, device=device)


def _grid_points(shape, spacing, device, dtype=torch.float32) -> torch.Tensor:
    """(*S, d) physical coordinates (mm, world order x, y[, z]) about the image centre."""
    d = len(shape)
    axes = []
    for k in range(d):                        # world axis k is array axis d-1-k
        n = shape[d - 1 - k]
        axes.append((torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2.0) * spacing[k])
    mesh = torch.meshgrid(*axes[::-1], indexing="ij")      # array order
    return torch.stack(mesh[::-1], dim=-1)


def _half_extent(shape, spacing) -> list[float]:
    d = len(shape)
    return [max((shape[d - 1 - k] - 1) / 2.0, 0.5) * spacing[k] for k in range(d)]


def _sample_at(t: torch.Tensor, pts: torch.Tensor, shape, spacing, mode: str, padding: str) -> torch.Tensor:
    """Sample ``t (C, *S)`` at physical points ``pts (*O, d)`` (mm about the centre)."""
    he = torch.as_tensor(_half_extent(shape, spacing), dtype=pts.dtype, device=pts.device)
    grid = (pts / he).to(t.dtype)[None]
    return F.grid_sample(t[None], grid, mode=mode, padding_mode=padding, align_corners=True)[0]


class SpatialTransform(Transform):
    """Base class of the resampling transforms (a pull-back map ``out(p) = in(phi(p))``).

    Subclasses define the classmethod ``points(params, pts, ctx, inverse)`` that maps
    physical points ``(*O, d)`` (mm about the image centre, world order) through ``phi``
    (or ``phi^-1``).  :meth:`apply` resamples once; :class:`Compose` chains the maps of
    consecutive spatial transforms and resamples once for all of them.

    Parameters
    ----------
    p : float, optional
        Probability of applying the transform.
    seed : int, optional
        Seed of the transform's generator.
    padding : {"border", "zeros", "reflection"}, optional
        What the image is outside its grid (labels are always 0 there).

    Raises
    ------
    InputError
        For an unknown padding.
    """

    spatial = True
    invertible = True

    def __init__(self, p: float = 1.0, seed: int | None = None, padding: str = "border"):
        super().__init__(p, seed)
        if padding not in ("border", "zeros", "reflection"):
            raise InputError(f"padding: got {padding!r}; expected 'border', 'zeros' or 'reflection'")
        self.padding = padding

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:
        """Resample ``subject`` with the recorded parameters (one resampling).

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            A record's ``params``.

        Returns
        -------
        Subject
            The resampled subject.
        """
        return _resample(subject, [(cls, params)])

    @classmethod
    def points(cls, params: dict, pts: torch.Tensor, ctx: dict, inverse: bool = False) -> torch.Tensor:
        """Map physical points through the pull-back map (or its inverse).

        Parameters
        ----------
        params : dict
            A record's ``params``.
        pts : torch.Tensor
            Points ``(*O, d)`` in mm about the image centre, world order.
        ctx : dict
            Grid context: ``shape``, ``spacing``, ``on_grid`` (whether ``pts`` is the grid).
        inverse : bool, optional
            Map through the inverse.

        Returns
        -------
        torch.Tensor
            The mapped points, same shape.
        """
        raise NotImplementedError  # pragma: no cover - every subclass defines it


def _resample(subject: Subject, steps, inverse: bool = False) -> Subject:
    """One resampling of ``subject`` through the chained maps of ``steps`` [(cls, params)].

    Forward: ``phi = phi_1 o ... o phi_n`` (``phi_n`` acts on the grid first); inverse:
    ``phi^-1 = phi_n^-1 o ... o phi_1^-1``.
    """
    shape, spacing, dev = subject.shape, subject.spacing, subject.device
    ctx = {"shape": shape, "spacing": spacing, "device": dev, "on_grid": True}
    pts = _grid_points(shape, spacing, dev)
    order = steps if inverse else steps[::-1]
    for cls, params in order:
        pts = cls.points(params, pts, ctx, inverse)
        ctx["on_grid"] = False
    padding = steps[0][1].get("padding", "border")
    img = _sample_at(subject.image, pts, shape, spacing, "bilinear", padding)
    labels = {}
    for k, lab in subject.labels.items():
        wide = lab.dtype in (torch.int64, torch.int32) and lab.numel() and int(lab.abs().max()) >= 2**24
        work = lab.to(torch.float64 if wide else torch.float32)[None]
        out = _sample_at(work, pts.to(work.dtype), shape, spacing, "nearest", "zeros")[0]
        labels[k] = out.round().to(lab.dtype)
    return subject.replace(img, labels)


def _matrix_2d3d(params: dict, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Forward affine ``T(x) = M x + t`` (world order, mm about the centre) from the parameters."""
    S = np.diag(np.asarray(params["scale"], dtype=np.float64))
    Sh = np.eye(d)
    sh = [math.tan(math.radians(a)) for a in params["shear_deg"]]
    pairs = [(i, j) for i in range(d) for j in range(d) if i != j]
    for (i, j), v in zip(pairs, sh):
        Sh[i, j] = v
    ang = [math.radians(a) for a in params["rotation_deg"]]
    if d == 2:
        c, s = math.cos(ang[0]), math.sin(ang[0])
        R = np.array([[c, -s], [s, c]])
    else:
        R = np.eye(3)
        for axis, a in enumerate(ang):              # about x, then y, then z
            c, s = math.cos(a), math.sin(a)
            i, j = [k for k in range(3) if k != axis]
            M = np.eye(3)
            M[i, i], M[i, j], M[j, i], M[j, j] = c, (s if axis == 1 else -s), (-s if axis == 1 else s), c
            R = M @ R
    return R @ Sh @ S, np.asarray(params["translation_mm"], dtype=np.float64)


# ================================================================================ spatial
class RandomAffine(SpatialTransform):
    """Random rotation, scaling, shear and translation about the image centre (physical, mm).

    The content moves by the forward map ``T(x) = R Sh S x + t`` (``x`` in mm about the
    image centre, world order): a scale > 1 enlarges it, a positive angle turns it
    counter-clockwise in the (x, y) plane (right-handed about x, y, z in 3-D, applied in
    that order).  The record holds the sampled numbers and the matrix ``T`` (``matrix``,
    ``offset_mm``); the inverse is exact.

    Parameters
    ----------
    scales : float or tuple of float, optional
        Scale factor range ``(low, high)``, ``0 < low`` (a number ``v``: ``(1 - v, 1 + v)``).
    degrees : float or tuple of float, optional
        Rotation angle range in degrees (a number ``v``: ``(-v, v)``), per rotation axis.
    translation : float or tuple of float, optional
        Translation range in mm (a number ``v``: ``(-v, v)``), per axis.
    shear : float or tuple of float, optional
        Shear angle range in degrees (``d (d - 1)`` shear terms).
    isotropic : bool, optional
        One scale factor for all axes.
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.
    padding : {"border", "zeros", "reflection"}, optional
        Image values outside the grid (labels: 0).

    Raises
    ------
    InputError
        For invalid ranges.

    Examples
    --------
    >>> import torch
    >>> t = RandomAffine(scales=0.1, degrees=10, seed=0)
    >>> out = t(torch.rand(1, 16, 16))
    >>> sorted(out.history[-1]["params"])
    ['matrix', 'offset_mm', 'padding', 'rotation_deg', 'scale', 'shear_deg', 'translation_mm']
    """

    def __init__(self, scales=0.1, degrees=10.0, translation=0.0, shear=0.0, isotropic: bool = False,
                 p: float = 1.0, seed: int | None = None, padding: str = "border"):
        super().__init__(p, seed, padding)
        if isinstance(scales, (int, float)) and not isinstance(scales, bool):
            v = check_number(scales, "scales", low=0, high=1)
            scales = (1.0 - v, 1.0 + v)
        self.scales = _range(scales, "scales", positive=True)
        self.degrees = _range(degrees, "degrees", symmetric=True)
        self.translation = _range(translation, "translation", symmetric=True)
        self.shear = _range(shear, "shear", symmetric=True)
        if max(abs(v) for v in self.shear) >= 89:
            raise InputError(f"shear: got {shear!r}; expected angles within (-89, 89) degrees")
        self.isotropic = bool(isotropic)

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw scale, rotation, shear and translation for ``subject``.

        Parameters
        ----------
        subject : Subject
            The input (its dimension).
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            The parameters (JSON-ready).
        """
        d, g = subject.sdim, generator
        s = [_u(g, *self.scales) for _ in range(d)]
        if self.isotropic:
            s = [s[0]] * d
        params = {"scale": s,
                  "rotation_deg": [_u(g, *self.degrees) for _ in range(1 if d == 2 else 3)],
                  "shear_deg": [_u(g, *self.shear) for _ in range(d * (d - 1))],
                  "translation_mm": [_u(g, *self.translation) for _ in range(d)],
                  "padding": self.padding}
        M, t = _matrix_2d3d(params, d)
        params["matrix"], params["offset_mm"] = M.tolist(), t.tolist()
        return params

    @classmethod
    def points(cls, params: dict, pts: torch.Tensor, ctx: dict, inverse: bool = False) -> torch.Tensor:
        """Pull-back ``phi(p) = T^-1 (p - t)``, or ``phi^-1(p) = T p + t`` when ``inverse``.

        Parameters
        ----------
        params : dict
            The record's parameters.
        pts : torch.Tensor
            Points ``(*O, d)`` in mm about the centre, world order.
        ctx : dict
            Grid context (unused here).
        inverse : bool, optional
            Map through the inverse.

        Returns
        -------
        torch.Tensor
            The mapped points.
        """
        M = np.asarray(params["matrix"], dtype=np.float64)
        t = np.asarray(params["offset_mm"], dtype=np.float64)
        if inverse:
            A, b = M, t
        else:
            A = np.linalg.inv(M)
            b = -A @ t
        At = torch.as_tensor(A.T, dtype=pts.dtype, device=pts.device)
        return pts @ At + torch.as_tensor(b, dtype=pts.dtype, device=pts.device)


class RandomElastic(SpatialTransform):
    """Random smooth (cubic B-spline) elastic deformation on a coarse control-point grid.

    Control-point displacements are uniform in ``[-max_displacement, max_displacement]`` mm
    per axis (the outer ``locked_borders`` layers are 0, as TorchIO's
    ``RandomElasticDeformation``); the dense field is their cubic B-spline expansion
    (:func:`bspline_matrix`, one small matrix product per axis), so no voxel moves more
    than ``max_displacement`` along an axis.  The map is ``phi(p) = p + u(p)``
    (pull-back); the record holds the control displacements (``control_mm``,
    world-ordered components over the control grid in array order) and the largest
    voxel displacement; the inverse is a fixed-point iteration ``q <- p - u(q)``
    (``iterations``), accurate while the field's gradient stays well below 1.

    Parameters
    ----------
    control_points : int or sequence of int, optional
        Control points per axis, world order (>= 4).
    max_displacement : float or sequence of float, optional
        Largest control displacement in mm, per axis (world order).
    locked_borders : int, optional
        Outer control layers held at 0 (0, 1 or 2).
    iterations : int, optional
        Fixed-point iterations of the inverse (recorded).
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.
    padding : {"border", "zeros", "reflection"}, optional
        Image values outside the grid (labels: 0).

    Raises
    ------
    InputError
        For invalid settings.

    Examples
    --------
    >>> import torch
    >>> out = RandomElastic(control_points=5, max_displacement=2.0, seed=0)(torch.rand(1, 16, 16))
    >>> out.history[-1]["params"]["max_voxel_displacement_mm"] <= 2.0 * 2 ** 0.5
    True
    """

    def __init__(self, control_points=7, max_displacement=7.5, locked_borders: int = 2, iterations: int = 20,
                 p: float = 1.0, seed: int | None = None, padding: str = "border"):
        super().__init__(p, seed, padding)
        cp = (control_points,) if np.ndim(control_points) == 0 else tuple(control_points)
        self.control_points = tuple(int(check_number(c, "control_points", integer=True, low=4)) for c in cp)
        md = (max_displacement,) if np.ndim(max_displacement) == 0 else tuple(max_displacement)
        self.max_displacement = tuple(check_number(v, "max_displacement", nonneg=True) for v in md)
        self.locked_borders = int(check_number(locked_borders, "locked_borders", integer=True, low=0, high=2))
        self.iterations = int(check_number(iterations, "iterations", integer=True, low=1))

    def _per_axis(self, v, d, name):
        if len(v) == 1:
            return v * d
        if len(v) != d:
            raise InputError(f"{name}: got {len(v)} values; expected 1 or {d} for a {d}-D image")
        return v

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw the control-point displacements for ``subject``.

        Parameters
        ----------
        subject : Subject
            The input (its dimension).
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            The parameters (JSON-ready).
        """
        d = subject.sdim
        cp = self._per_axis(self.control_points, d, "control_points")
        md = self._per_axis(self.max_displacement, d, "max_displacement")
        grid = tuple(cp[::-1])                                          # array order
        check_memory(8.0 * d * math.prod(grid), "control_points", f"a {'x'.join(map(str, cp))} control grid")
        u = torch.rand((d, *grid), generator=generator, dtype=torch.float64) * 2 - 1
        u = u * torch.as_tensor(md, dtype=torch.float64).reshape(d, *([1] * d))
        lb = self.locked_borders
        if lb:
            mask = torch.zeros(grid, dtype=torch.bool)
            inner = tuple(slice(lb, n - lb) for n in grid)
            mask[inner] = True
            u = u * mask
        params = {"control_mm": u.tolist(), "control_points": list(cp), "iterations": self.iterations,
                  "padding": self.padding}
        # the largest displacement, on a grid 8x finer than the control grid (cheap, close to the true one)
        coarse = tuple(min(n, 8 * (m - 1) + 1) for n, m in zip(subject.shape, grid))
        dense = self.field(params, coarse, "cpu", torch.float64)
        params["max_voxel_displacement_mm"] = float(dense.norm(dim=0).max())
        return params

    @staticmethod
    def field(params: dict, shape, device=None, dtype=torch.float32) -> torch.Tensor:
        """The dense displacement ``(d, *shape)`` in mm (component 0 = x) of a record.

        Parameters
        ----------
        params : dict
            The record's parameters.
        shape : tuple of int
            Spatial shape (array order).
        device : torch.device or str, optional
            Where to build it.
        dtype : torch.dtype, optional
            Its dtype.

        Returns
        -------
        torch.Tensor
            The field.
        """
        c = torch.as_tensor(params["control_mm"], dtype=dtype, device=device)
        d = c.shape[0]
        letters = "zyx"[3 - d:]
        out = c
        for k in range(d):                          # array axis k
            W = _bspline_matrix(shape[k], c.shape[1 + k], dtype, None if device is None else torch.device(device))
            src = "c" + "".join(letters[j].upper() if j < k else letters[j] for j in range(d))
            dst = "c" + "".join(letters[j].upper() if j <= k else letters[j] for j in range(d))
            out = torch.einsum(f"{src},{letters[k].upper()}{letters[k]}->{dst}", out, W)
        return out

    @classmethod
    def points(cls, params: dict, pts: torch.Tensor, ctx: dict, inverse: bool = False) -> torch.Tensor:
        """Pull-back ``phi(p) = p + u(p)``, or its fixed-point inverse when ``inverse``.

        Parameters
        ----------
        params : dict
            The record's parameters.
        pts : torch.Tensor
            Points ``(*O, d)`` in mm about the centre, world order.
        ctx : dict
            Grid context: ``shape``, ``spacing``, ``device``, ``on_grid`` (the points are
            the grid itself).
        inverse : bool, optional
            Map through the inverse.

        Returns
        -------
        torch.Tensor
            The mapped points.
        """
        shape, spacing = ctx["shape"], ctx["spacing"]
        u = cls.field(params, shape, pts.device, pts.dtype)             # (d, *S)

        def at(q):
            return _sample_at(u, q, shape, spacing, "bilinear", "border").movedim(0, -1)

        if not inverse:
            return pts + (u.movedim(0, -1) if ctx.get("on_grid") else at(pts))
        q = pts - (u.movedim(0, -1) if ctx.get("on_grid") else at(pts))
        for _ in range(int(params.get("iterations", 20))):
            q = pts - at(q)
        return q


class RandomFlip(Transform):
    """Random mirroring of spatial axes (exact index flips of image and labels).

    Parameters
    ----------
    axes : str or sequence of str, optional
        World axes that may flip, e.g. ``"xy"`` or ``("x", "z")`` (default all).
    p_axis : float, optional
        Probability of flipping each of them.
    p : float, optional
        Probability of applying the transform at all.
    seed : int, optional
        Seed of its generator.

    Raises
    ------
    InputError
        For an unknown axis or a probability outside [0, 1].

    Examples
    --------
    >>> import torch
    >>> out = RandomFlip(axes="y", p_axis=1.0, seed=0)(torch.arange(4.0).reshape(1, 2, 2))
    >>> out.image[0].tolist()
    [[2.0, 3.0], [0.0, 1.0]]
    """

    invertible = True

    def __init__(self, axes="xyz", p_axis: float = 0.5, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        ax = tuple(axes) if isinstance(axes, (str, Sequence)) else ()
        if not ax or any(not isinstance(a, str) or a not in _AXES for a in ax):
            raise InputError(f"axes: got {axes!r}; expected world axis names among 'x', 'y', 'z'")
        self.axes = ax
        self.p_axis = check_number(p_axis, "p_axis", low=0, high=1)

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw which axes flip.

        Parameters
        ----------
        subject : Subject
            The input.
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            ``{"axes": [...]}``.
        """
        d = subject.sdim
        out = []
        for a in _AXES[:d]:
            hit = float(torch.rand(1, generator=generator)) < self.p_axis
            if hit and a in self.axes:
                out.append(a)
        return {"axes": out}

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:
        """Flip the recorded axes.

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            The record's parameters.

        Returns
        -------
        Subject
            The flipped subject.
        """
        d = subject.sdim
        dims = [d - 1 - _AXES.index(a) for a in params["axes"]]
        if not dims:
            return subject.replace()
        return subject.replace(subject.image.flip([k + 1 for k in dims]),
                               {k: v.flip(dims) for k, v in subject.labels.items()})

    @classmethod
    def inverse_params(cls, params: dict) -> dict:
        """A flip is its own inverse.

        Parameters
        ----------
        params : dict
            The recorded parameters of one application.

        Returns
        -------
        dict
            The parameters of the inverse.
        """
        return dict(params)


class RandomRot90(Transform):
    """Random rotation by a multiple of 90 degrees in a world plane (exact; the spacing of
    the two axes is swapped for odd multiples).

    Parameters
    ----------
    plane : str, optional
        Two world axes, e.g. ``"xy"`` (default) or ``"yz"``; a positive turn takes the
        first towards the second.
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.

    Raises
    ------
    InputError
        For an invalid plane.

    Examples
    --------
    >>> import torch
    >>> out = RandomRot90(seed=0)(torch.rand(1, 4, 6))
    >>> out.history[-1]["params"]["k"] in (0, 1, 2, 3)
    True
    """

    invertible = True

    def __init__(self, plane: str = "xy", p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        if not isinstance(plane, str) or len(plane) != 2 or plane[0] == plane[1] or any(a not in _AXES for a in plane):
            raise InputError(f"plane: got {plane!r}; expected two world axes such as 'xy'")
        self.plane = plane

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw the number of quarter turns.

        Parameters
        ----------
        subject : Subject
            The input.
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            ``{"k": int, "plane": str}``.
        """
        if any(_AXES.index(a) >= subject.sdim for a in self.plane):
            raise InputError(f"plane: got {self.plane!r}; expected axes of a {subject.sdim}-D image")
        return {"k": int(torch.randint(0, 4, (1,), generator=generator)), "plane": self.plane}

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:
        """Turn by the recorded multiple of 90 degrees.

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            The record's parameters.

        Returns
        -------
        Subject
            The turned subject.
        """
        d, k, plane = subject.sdim, int(params["k"]) % 4, params["plane"]
        if k == 0:
            return subject.replace()
        a, b = (d - 1 - _AXES.index(c) for c in plane)
        # torch.rot90 turns dims[0] towards dims[1] in array space; x toward y (columns to rows)
        img = torch.rot90(subject.image, k, dims=(a + 1, b + 1))
        labels = {n: torch.rot90(v, k, dims=(a, b)) for n, v in subject.labels.items()}
        sp = list(subject.spacing)
        if k % 2:
            i, j = _AXES.index(plane[0]), _AXES.index(plane[1])
            sp[i], sp[j] = sp[j], sp[i]
        return subject.replace(img.contiguous(), {n: v.contiguous() for n, v in labels.items()}, sp)

    @classmethod
    def inverse_params(cls, params: dict) -> dict:
        """The opposite turn.

        Parameters
        ----------
        params : dict
            The recorded parameters of one application.

        Returns
        -------
        dict
            The parameters of the inverse.
        """
        return {"k": (-int(params["k"])) % 4, "plane": params["plane"]}


# ============================================================================ crop / pad
def _pad_crop(subject: Subject, margins, value: float) -> Subject:
    """``margins`` [[before, after], ...] per array axis: > 0 pads, < 0 crops."""
    pad = []
    for before, after in reversed(margins):
        pad += [int(before), int(after)]
    if not any(pad):
        return subject.replace()
    img = F.pad(subject.image, pad, value=float(value))
    labels = {k: F.pad(v[None], pad, value=0)[0] for k, v in subject.labels.items()}
    return subject.replace(img, labels)


def _check_size(size, d, name="size"):
    sz = (size,) * d if np.ndim(size) == 0 else tuple(size)
    if len(sz) != d:
        raise InputError(f"{name}: got {size!r}; expected {d} sizes (array order) for a {d}-D image")
    return tuple(int(check_number(s, name, integer=True, low=1)) for s in sz)


class _CropBase(Transform):
    invertible = True

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:
        """Pad / crop by the recorded margins.

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            The record's parameters (``margins``: [before, after] per array axis, > 0
            pads, < 0 crops; ``value``: image padding value).

        Returns
        -------
        Subject
            The cropped / padded subject.
        """
        return _pad_crop(subject, params["margins"], params.get("value", 0.0))

    @classmethod
    def inverse_params(cls, params: dict) -> dict:
        """The opposite margins (cropped parts come back as ``value`` / label 0)."""
        return {"margins": [[-a, -b] for a, b in params["margins"]], "value": params.get("value", 0.0)}


def _margins_for(shape, size, starts):
    """Margins that take the window starting at ``starts`` (may be < 0) of ``size`` from ``shape``."""
    return [[-s, (st + sz) - n] for n, sz, st, s in zip(shape, size, starts, starts)]


class CropOrPad(_CropBase):
    """Crop or pad about the centre to a fixed size (deterministic; recorded, invertible).

    Parameters
    ----------
    size : int or sequence of int
        Output spatial shape, array order (``[z,] y, x``).
    value : float, optional
        Image value of padded voxels (labels: 0).

    Raises
    ------
    InputError
        For a bad size.

    Examples
    --------
    >>> import torch
    >>> CropOrPad((4, 8))(torch.rand(1, 6, 6)).image.shape
    torch.Size([1, 4, 8])
    """

    def __init__(self, size, value: float = 0.0):
        super().__init__(1.0, 0)
        self.size = size
        self.value = check_number(value, "value")

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """The centred margins.

        Parameters
        ----------
        subject : Subject
            The input.
        generator : torch.Generator
            Unused.

        Returns
        -------
        dict
            ``margins`` and ``value``.
        """
        size = _check_size(self.size, subject.sdim)
        starts = [(n - s) // 2 for n, s in zip(subject.shape, size)]
        return {"margins": _margins_for(subject.shape, size, starts), "value": self.value}


class RandomCrop(_CropBase):
    """A random window of fixed size (padded first where the image is smaller).

    Parameters
    ----------
    size : int or sequence of int
        Window shape, array order.
    value : float, optional
        Image value of padded voxels (labels: 0).
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.

    Raises
    ------
    InputError
        For a bad size.

    Examples
    --------
    >>> import torch
    >>> out = RandomCrop(4, seed=0)(torch.rand(1, 10, 10))
    >>> out.image.shape, len(out.history[-1]["params"]["margins"])
    (torch.Size([1, 4, 4]), 2)
    """

    def __init__(self, size, value: float = 0.0, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.size = size
        self.value = check_number(value, "value")

    def _starts(self, subject, size, generator):
        return [int(torch.randint(0, n - s + 1, (1,), generator=generator)) if n >= s else (n - s) // 2
                for n, s in zip(subject.shape, size)]

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw the window.

        Parameters
        ----------
        subject : Subject
            The input.
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            ``margins`` and ``value``.
        """
        size = _check_size(self.size, subject.sdim)
        starts = self._starts(subject, size, generator)
        return {"margins": _margins_for(subject.shape, size, starts), "value": self.value}


class RandomLabelCrop(RandomCrop):
    """A random window centred (with probability ``p_foreground``) on a labelled voxel.

    Parameters
    ----------
    size : int or sequence of int
        Window shape, array order.
    label : str, optional
        Which label map (default the first).
    values : sequence of int, optional
        Label values that count as foreground (default: every value > 0).
    p_foreground : float, optional
        Probability of centring on foreground (else a uniform window, as
        :class:`RandomCrop`).
    value : float, optional
        Image value of padded voxels.
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.

    Raises
    ------
    InputError
        For a bad size or probability, or (when called) a subject without that label map.

    Examples
    --------
    >>> import torch
    >>> lab = torch.zeros(20, 20, dtype=torch.long); lab[15, 15] = 1
    >>> out = RandomLabelCrop(5, seed=0)(Subject(torch.rand(1, 20, 20), lab))
    >>> int(out.labels["label"][2, 2])                   # the only labelled voxel is the centre
    1
    """

    def __init__(self, size, label: str | None = None, values=None, p_foreground: float = 1.0, value: float = 0.0,
                 p: float = 1.0, seed: int | None = None):
        super().__init__(size, value, p, seed)
        self.label = label
        self.values = None if values is None else [int(v) for v in values]
        self.p_foreground = check_number(p_foreground, "p_foreground", low=0, high=1)

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw a foreground centre and the window around it.

        Parameters
        ----------
        subject : Subject
            The input (with a label map).
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            ``margins``, ``value`` and ``centre`` (array index, or None).
        """
        size = _check_size(self.size, subject.sdim)
        if not subject.labels:
            raise InputError("subject: got no label maps; RandomLabelCrop needs one")
        key = self.label if self.label is not None else next(iter(subject.labels))
        if key not in subject.labels:
            raise InputError(f"label: got {key!r}; expected one of {sorted(subject.labels)}")
        lab = subject.labels[key]
        fg = (lab > 0) if self.values is None else torch.isin(lab, torch.as_tensor(self.values, device=lab.device))
        want = float(torch.rand(1, generator=generator)) < self.p_foreground
        idx = torch.nonzero(fg) if want else None
        if idx is None or idx.shape[0] == 0:
            return {"margins": _margins_for(subject.shape, size, self._starts(subject, size, generator)),
                    "value": self.value, "centre": None}
        c = idx[int(torch.randint(0, idx.shape[0], (1,), generator=generator))].tolist()
        starts = []
        for n, s, ci in zip(subject.shape, size, c):
            st = ci - s // 2
            if n >= s:
                st = min(max(st, 0), n - s)
            starts.append(st)
        return {"margins": _margins_for(subject.shape, size, starts), "value": self.value, "centre": c}


# ============================================================================= intensity
class RandomIntensity(Transform):
    """Random gamma, scale and shift of the image (labels untouched).

    ``out = ((x - lo) / (hi - lo)) ** gamma * (hi - lo) + lo`` (per channel, ``lo``/``hi``
    its minimum / maximum), then ``out * scale + shift * std``.

    Parameters
    ----------
    scale : float or tuple of float, optional
        Multiplicative range (a number ``v``: ``(1 - v, 1 + v)``).
    shift : float or tuple of float, optional
        Additive range in units of the image's standard deviation (a number ``v``: ``(-v, v)``).
    gamma : float or tuple of float, optional
        Gamma range, ``0 < low`` (a number ``v``: ``(1/(1+v), 1+v)``).
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.

    Raises
    ------
    InputError
        For invalid ranges.

    Examples
    --------
    >>> import torch
    >>> out = RandomIntensity(scale=(2.0, 2.0), shift=0.0, gamma=(1.0, 1.0), seed=0)(torch.ones(1, 4, 4))
    >>> float(out.image.mean())
    2.0
    """

    def __init__(self, scale=0.1, shift=0.1, gamma=0.3, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            v = check_number(scale, "scale", low=0, high=1)
            scale = (1.0 - v, 1.0 + v)
        if isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
            v = check_number(gamma, "gamma", nonneg=True)
            gamma = (1.0 / (1.0 + v), 1.0 + v)
        self.scale = _range(scale, "scale")
        self.shift = _range(shift, "shift", symmetric=True)
        self.gamma = _range(gamma, "gamma", positive=True)

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw gamma, scale and shift.

        Parameters
        ----------
        subject : Subject
            The input.
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            ``gamma``, ``scale``, ``shift`` (image units) and ``shift_std``.
        """
        g = generator
        gam, sc, sh = _u(g, *self.gamma), _u(g, *self.scale), _u(g, *self.shift)
        std = float(subject.image.std()) if subject.image.numel() > 1 else 0.0
        return {"gamma": gam, "scale": sc, "shift": sh * std, "shift_std": sh}

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:
        """Apply the recorded gamma, scale and shift.

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            The record's parameters.

        Returns
        -------
        Subject
            The new subject.
        """
        x = subject.image
        gam = float(params["gamma"])
        if gam != 1.0:
            flat = x.reshape(x.shape[0], -1)
            lo = flat.amin(1).reshape(-1, *([1] * subject.sdim))
            hi = flat.amax(1).reshape(-1, *([1] * subject.sdim))
            rng = (hi - lo).clamp_min(1e-12)
            x = ((x - lo) / rng).clamp(0, 1).pow(gam) * rng + lo
        x = x * float(params["scale"]) + float(params["shift"])
        return subject.replace(x)


class RandomNoise(Transform):
    """Random Gaussian or Rician noise (labels untouched).

    Gaussian: ``x + sigma n``; Rician (magnitude MR): ``sqrt((x + sigma n1)^2 + (sigma n2)^2)``.
    The noise comes from a recorded seed on the image's device.

    Parameters
    ----------
    std : float or tuple of float, optional
        Range of ``sigma`` (a number ``v``: ``(0, v)``).
    kind : {"gaussian", "rician"}, optional
        Noise model.
    relative : bool, optional
        ``std`` in units of the image's standard deviation (default) instead of image units.
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.

    Raises
    ------
    InputError
        For a bad range or kind.

    Examples
    --------
    >>> import torch
    >>> out = RandomNoise(std=(0.5, 0.5), relative=False, seed=0)(torch.zeros(1, 64, 64))
    >>> round(float(out.image.std()), 1)
    0.5
    """

    def __init__(self, std=0.1, kind: str = "gaussian", relative: bool = True, p: float = 1.0,
                 seed: int | None = None):
        super().__init__(p, seed)
        if isinstance(std, (int, float)) and not isinstance(std, bool):
            std = (0.0, check_number(std, "std", nonneg=True))
        self.std = _range(std, "std")
        if self.std[0] < 0:
            raise InputError(f"std: got {std!r}; expected 0 <= low <= high")
        if kind not in ("gaussian", "rician"):
            raise InputError(f"kind: got {kind!r}; expected 'gaussian' or 'rician'")
        self.kind = kind
        self.relative = bool(relative)

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw sigma and the noise seed.

        Parameters
        ----------
        subject : Subject
            The input.
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            ``sigma`` (image units), ``kind``, ``seed``.
        """
        s = _u(generator, *self.std)
        if self.relative:
            s *= float(subject.image.std()) if subject.image.numel() > 1 else 0.0
        return {"sigma": s, "kind": self.kind, "seed": _seed_from(generator)}

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:
        """Add the recorded noise.

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            The record's parameters.

        Returns
        -------
        Subject
            The noisy subject.
        """
        x = subject.image
        g = _device_gen(params["seed"], x.device)
        s = float(params["sigma"])
        n1 = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * s
        if params["kind"] == "rician":
            n2 = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * s
            return subject.replace(torch.sqrt((x + n1) ** 2 + n2 ** 2))
        return subject.replace(x + n1)


def _monomials(d: int, order: int) -> list[list[int]]:
    out = []
    for total in range(1, order + 1):
        if d == 2:
            out += [[i, total - i] for i in range(total + 1)]
        else:
            out += [[i, j, total - i - j] for i in range(total + 1) for j in range(total + 1 - i)]
    return out


class RandomBiasField(Transform):
    """Random smooth multiplicative bias field (MR inhomogeneity / uneven illumination).

    ``out = x * exp(sum_k c_k x^a y^b [z^c])`` over the monomials of degree 1..``order``
    in coordinates normalised to [-1, 1], each ``c_k`` uniform in ``[-coefficients,
    coefficients]`` (TorchIO's ``RandomBiasField``, without the constant term).

    Parameters
    ----------
    coefficients : float, optional
        Largest absolute coefficient (>= 0).
    order : int, optional
        Polynomial degree (1 to 5).
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.

    Raises
    ------
    InputError
        For invalid settings.

    Examples
    --------
    >>> import torch
    >>> out = RandomBiasField(coefficients=0.3, order=2, seed=0)(torch.ones(1, 8, 8))
    >>> len(out.history[-1]["params"]["coefficients"]), bool((out.image > 0).all())
    (5, True)
    """

    def __init__(self, coefficients: float = 0.5, order: int = 3, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.coefficients = check_number(coefficients, "coefficients", nonneg=True)
        self.order = int(check_number(order, "order", integer=True, low=1, high=5))

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw the polynomial coefficients.

        Parameters
        ----------
        subject : Subject
            The input.
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            ``exponents`` (world order) and ``coefficients``.
        """
        mono = _monomials(subject.sdim, self.order)
        c = [_u(generator, -self.coefficients, self.coefficients) for _ in mono]
        return {"exponents": mono, "coefficients": c}

    @staticmethod
    def field(params: dict, shape, device=None, dtype=torch.float32) -> torch.Tensor:
        """The multiplicative field ``(*shape)`` of a record.

        Parameters
        ----------
        params : dict
            The record's parameters.
        shape : tuple of int
            Spatial shape (array order).
        device : torch.device or str, optional
            Where to build it.
        dtype : torch.dtype, optional
            Its dtype.

        Returns
        -------
        torch.Tensor
            ``exp(polynomial)``.
        """
        d = len(shape)
        co = [torch.linspace(-1, 1, shape[d - 1 - k], device=device, dtype=dtype) for k in range(d)]  # world k
        log = torch.zeros(shape, device=device, dtype=dtype)
        for e, c in zip(params["exponents"], params["coefficients"]):
            term = torch.ones((), device=device, dtype=dtype)
            for k in range(d):
                view = [1] * d
                view[d - 1 - k] = shape[d - 1 - k]
                term = term * co[k].pow(int(e[k])).reshape(view)
            log = log + float(c) * term
        return torch.exp(log)

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:
        """Multiply by the recorded field.

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            The record's parameters.

        Returns
        -------
        Subject
            The new subject.
        """
        f = cls.field(params, subject.shape, subject.device, subject.image.dtype)
        return subject.replace(subject.image * f)


class RandomBlur(Transform):
    """Random isotropic Gaussian blur with ``sigma`` in mm (labels untouched).

    Parameters
    ----------
    sigma : float or tuple of float, optional
        Range of sigma in mm (a number ``v``: ``(0, v)``).
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.

    Raises
    ------
    InputError
        For a bad range.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(1, 15, 15); x[0, 7, 7] = 1.0
    >>> out = RandomBlur(sigma=(1.0, 1.0), seed=0)(x)
    >>> round(float(out.image.sum()), 4)
    1.0
    """

    def __init__(self, sigma=1.0, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            sigma = (0.0, check_number(sigma, "sigma", nonneg=True))
        self.sigma = _range(sigma, "sigma")
        if self.sigma[0] < 0:
            raise InputError(f"sigma: got {sigma!r}; expected 0 <= low <= high (mm)")

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw sigma.

        Parameters
        ----------
        subject : Subject
            The input.
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            ``sigma_mm``.
        """
        return {"sigma_mm": _u(generator, *self.sigma)}

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:
        """Blur with the recorded sigma.

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            The record's parameters.

        Returns
        -------
        Subject
            The blurred subject.
        """
        from ..ops.filters import gaussian_smooth

        s = float(params["sigma_mm"])
        if s <= 0:
            return subject.replace()
        out = gaussian_smooth(subject.image, s, spacing=subject.spacing, sdim=subject.sdim)
        return subject.replace(out)


class RandomOcclusion(Transform):
    """Random cut-out / erasing of boxes in the image (labels untouched).

    Parameters
    ----------
    boxes : int or tuple of int, optional
        Number of boxes, range ``(low, high)`` (inclusive).
    size : float or tuple of float, optional
        Box side as a fraction of the image side, range.
    fill : {"mean", "zero", "noise"} or float, optional
        What the boxes hold: the channel mean, 0, Gaussian noise of the image's mean and
        std (from a recorded seed), or a number.
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.

    Raises
    ------
    InputError
        For invalid settings.

    Examples
    --------
    >>> import torch
    >>> out = RandomOcclusion(boxes=1, size=(0.5, 0.5), fill="zero", seed=0)(torch.ones(1, 8, 8))
    >>> int((out.image == 0).sum())
    16
    """

    def __init__(self, boxes=(1, 3), size=(0.1, 0.25), fill="mean", p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        b = (boxes, boxes) if np.ndim(boxes) == 0 else tuple(boxes)
        if len(b) != 2:
            raise InputError(f"boxes: got {boxes!r}; expected a count or a (low, high) pair")
        self.boxes = tuple(int(check_number(v, "boxes", integer=True, low=0)) for v in b)
        if self.boxes[0] > self.boxes[1]:
            raise InputError(f"boxes: got {boxes!r}; expected low <= high")
        if isinstance(size, (int, float)) and not isinstance(size, bool):
            size = (size, size)
        self.size = _range(size, "size", positive=True)
        if self.size[1] > 1:
            raise InputError(f"size: got {size!r}; expected fractions in (0, 1]")
        if not (fill in ("mean", "zero", "noise") or (isinstance(fill, (int, float)) and not isinstance(fill, bool))):
            raise InputError(f"fill: got {fill!r}; expected 'mean', 'zero', 'noise' or a number")
        self.fill = fill

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw the boxes.

        Parameters
        ----------
        subject : Subject
            The input.
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            ``boxes`` ([[start, stop] per array axis] per box), ``fill``, ``seed``.
        """
        g = generator
        n = int(torch.randint(self.boxes[0], self.boxes[1] + 1, (1,), generator=g))
        boxes = []
        for _ in range(n):
            box = []
            for m in subject.shape:
                s = max(1, int(round(_u(g, *self.size) * m)))
                st = int(torch.randint(0, m - s + 1, (1,), generator=g))
                box.append([st, st + s])
            boxes.append(box)
        return {"boxes": boxes, "fill": self.fill, "seed": _seed_from(g)}

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:
        """Fill the recorded boxes.

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            The record's parameters.

        Returns
        -------
        Subject
            The occluded subject.
        """
        x = subject.image.clone()
        fill = params["fill"]
        d = subject.sdim
        mean = x.reshape(x.shape[0], -1).mean(1).reshape(-1, *([1] * d))
        std = x.reshape(x.shape[0], -1).std(1).reshape(-1, *([1] * d)) if x[0].numel() > 1 else mean * 0
        g = _device_gen(params["seed"], x.device)
        for box in params["boxes"]:
            sl = (slice(None),) + tuple(slice(a, b) for a, b in box)
            region = x[sl]
            if fill == "mean":
                val = mean.expand_as(region)
            elif fill == "zero":
                val = torch.zeros_like(region)
            elif fill == "noise":
                val = mean + std * torch.randn(region.shape, generator=g, device=x.device, dtype=x.dtype)
            else:
                val = torch.full_like(region, float(fill))
            x[sl] = val
        return subject.replace(x)


# ================================================================================ streaks
@functools.lru_cache(maxsize=8)
def _projector(shape2, spacing2, n_views, backend="auto"):
    from ..ops.ct import ParallelBeam, ParallelProjector

    ref = Image(np.zeros(shape2, dtype=np.float32), spacing=spacing2)
    geo = ParallelBeam.for_image(ref, n_views=n_views)
    return ParallelProjector(geo, ref, backend=backend)


def _ramp(sino: torch.Tensor, tau: float) -> torch.Tensor:
    """Ram-Lak filtering along the detector (spatial-domain kernel of Kak & Slaney, zero
    padded): returns ``tau * (sino * h)`` with ``h[0] = 1/(4 tau^2)``,
    ``h[odd n] = -1/(n pi tau)^2``."""
    n = sino.shape[-1]
    size = 1 << int(math.ceil(math.log2(2 * n)))
    k = torch.arange(size, dtype=sino.dtype, device=sino.device)
    k = torch.where(k < size // 2, k, k - size)
    h = torch.zeros(size, dtype=sino.dtype, device=sino.device)
    h[k == 0] = 1.0 / (4 * tau ** 2)
    odd = (k.remainder(2) == 1)
    h[odd] = -1.0 / (math.pi * k[odd] * tau) ** 2
    H = torch.fft.rfft(h)
    out = torch.fft.irfft(torch.fft.rfft(sino, n=size) * H, n=size)[..., :n]
    return out * tau


def metal_shapes(params: dict):
    """``(centre, (a, b), angle_deg)`` of every metal object of a :class:`RandomStreaks`
    record (discs for records without ``axes_mm``).

    Parameters
    ----------
    params : dict
        The record's parameters.

    Returns
    -------
    list of tuple
        One ``(centre_xy_mm, (a_mm, b_mm), angle_deg)`` per object.

    Examples
    --------
    >>> metal_shapes({"centres_mm": [[0.0, 1.0]], "radii_mm": [2.0]})
    [([0.0, 1.0], (2.0, 2.0), 0.0)]
    """
    axes = params.get("axes_mm") or [[r, r] for r in params["radii_mm"]]
    angles = params.get("angles_deg") or [0.0] * len(axes)
    return [(c, (float(a), float(b)), float(t)) for c, (a, b), t in zip(params["centres_mm"], axes, angles)]


class RandomStreaks(Transform):
    """Metal-like streak artefacts simulated through the parallel-beam CT projector.

    Model (documented simplification of a metal-artefact simulation): dense elliptic
    cylinders (ellipses in 2-D -- implants, fillings, wires; in 3-D cylinders along z over
    a random run of slices) of attenuation ``mu_metal`` (1/mm) are placed inside the image;
    their line integrals ``p`` are computed exactly (chord lengths) on the detector of a
    :class:`biomip.ops.ct.ParallelBeam` (``n_views`` over 180 degrees); the measured
    integrals suffer **beam hardening** ``p_h = p / (1 + hardening p)`` and **photon
    starvation** noise of standard deviation ``exp((p_h + background) / 2) / sqrt(photons)``
    (Poisson statistics of ``photons exp(-p_h - background)`` counts behind the metal and a
    patient of line integral ``background``, from a recorded seed); the error
    sinogram is reconstructed by filtered back-projection (Ram-Lak filter, then
    :meth:`biomip.ops.ct.ParallelProjector.backproject`) and added to the
    image in image units (``metal_value / mu_metal`` per 1/mm), and the metal itself is
    pasted in with value ``metal_value``.  Only the metal's path enters the hardening, and
    the patient only as the constant ``background`` in the starvation, so the streaks
    radiate from the metal (along the long axis of elongated pieces) and between metal
    objects as in real scans.  Slices are the last two axes.  Labels are untouched.

    Parameters
    ----------
    objects : int or tuple of int, optional
        Number of metal objects, range (inclusive).
    radius : float or tuple of float, optional
        Range of the objects' equivalent radius ``sqrt(a b)`` in mm (``a``, ``b`` the semi-axes).
    elongation : float or tuple of float, optional
        Range of the axis ratio ``a / b`` (>= 1; 1: discs).
    metal_value : float, optional
        Image value of the metal (default: 2 x the image's maximum, at least 1).
    mu_metal : float, optional
        Metal attenuation in 1/mm (> 0; 1/mm is roughly iron / steel at 70 keV, water is
        about 0.02/mm).
    hardening : float or tuple of float, optional
        Beam-hardening coefficient range (>= 0).
    photons : float or tuple of float, optional
        Incident photons per ray, range (> 0; fewer: stronger starvation streaks).
    background : float, optional
        Line integral of the patient for the starvation noise (>= 0; 3 is about 15 cm of
        water).
    n_views : int, optional
        Projection views over 180 degrees.
    margin : float, optional
        Objects are placed at least this fraction of the image size from its edges
        (discs do not overlap, up to 20 placement tries each).
    backend : {"auto", "numba", "torch"}, optional
        Back-projection kernel of :class:`biomip.ops.ct.ParallelProjector` (``"torch"``
        avoids numba's first-call compilation for small images; recorded).
    p : float, optional
        Probability of applying it.
    seed : int, optional
        Seed of its generator.

    Raises
    ------
    InputError
        For invalid settings.

    Examples
    --------
    >>> import torch
    >>> out = RandomStreaks(objects=1, radius=(2.0, 2.0), seed=0)(torch.zeros(1, 32, 32))
    >>> float(out.image.max()) > 0, out.history[-1]["params"]["n_views"]
    (True, 180)
    """

    def __init__(self, objects=(1, 2), radius=(1.5, 4.0), elongation=(1.0, 3.0), metal_value: float | None = None,
                 mu_metal: float = 1.0, hardening=(0.1, 0.3), photons=(3e4, 3e5), background: float = 3.0,
                 n_views: int = 180, margin: float = 0.25, backend: str = "auto", p: float = 1.0,
                 seed: int | None = None):
        super().__init__(p, seed)
        b = (objects, objects) if np.ndim(objects) == 0 else tuple(objects)
        self.objects = tuple(int(check_number(v, "objects", integer=True, low=1)) for v in b)
        if len(self.objects) != 2 or self.objects[0] > self.objects[1]:
            raise InputError(f"objects: got {objects!r}; expected a count or a (low, high) pair")
        self.radius = _range(radius, "radius", positive=True)
        self.elongation = _range(elongation, "elongation", positive=True)
        if self.elongation[0] < 1:
            raise InputError(f"elongation: got {elongation!r}; expected axis ratios >= 1")
        self.background = check_number(background, "background", nonneg=True)
        self.metal_value = None if metal_value is None else check_number(metal_value, "metal_value")
        self.mu_metal = check_number(mu_metal, "mu_metal", positive=True)
        self.hardening = _range(hardening, "hardening")
        if self.hardening[0] < 0:
            raise InputError(f"hardening: got {hardening!r}; expected values >= 0")
        self.photons = _range(photons, "photons", positive=True)
        self.n_views = int(check_number(n_views, "n_views", integer=True, low=8))
        self.margin = check_number(margin, "margin", low=0, high=0.45)
        if backend not in ("auto", "numba", "torch"):
            raise InputError(f"backend: got {backend!r}; expected 'auto', 'numba' or 'torch'")
        self.backend = backend

    def sample(self, subject: Subject, generator: torch.Generator) -> dict:
        """Draw the metal objects and the acquisition.

        Parameters
        ----------
        subject : Subject
            The input.
        generator : torch.Generator
            Source of the draws.

        Returns
        -------
        dict
            ``centres_mm`` (x, y about the slice centre), ``radii_mm`` (equivalent), ``axes_mm``
            (semi-axes), ``angles_deg`` (of the first axis from x towards y), ``slices``
            (3-D: [start, stop)), ``metal_value``, ``mu_metal``, ``hardening``,
            ``photons``, ``background``, ``n_views``, ``backend``, ``seed``.
        """
        g = generator
        n = int(torch.randint(self.objects[0], self.objects[1] + 1, (1,), generator=g))
        ny, nx = subject.shape[-2:]
        sx, sy = subject.spacing[:2]
        hx, hy = (nx - 1) / 2 * sx, (ny - 1) / 2 * sy
        f = 1 - 2 * self.margin
        radii = [_u(g, *self.radius) for _ in range(n)]
        elong = [_u(g, *self.elongation) for _ in range(n)]
        axes = [[r * math.sqrt(e), r / math.sqrt(e)] for r, e in zip(radii, elong)]
        angles = [_u(g, 0.0, 180.0) for _ in range(n)]
        centres = []
        for ax in axes:                              # up to 20 tries for an object that overlaps no other
            for _ in range(20):
                c = [_u(g, -f * hx, f * hx), _u(g, -f * hy, f * hy)]
                if all(math.hypot(c[0] - o[0], c[1] - o[1]) > ax[0] + ao[0] + min(sx, sy) for o, ao in zip(centres, axes)):
                    break
            centres.append(c)
        slices = None
        if subject.sdim == 3:
            nz = subject.shape[0]
            a = int(torch.randint(0, nz, (1,), generator=g))
            b = int(torch.randint(0, nz, (1,), generator=g))
            lo, hi = min(a, b), max(a, b) + 1
            slices = [lo, hi]
        mv = self.metal_value
        if mv is None:
            mv = max(2.0 * float(subject.image.max()), 1.0)
        return {"centres_mm": centres, "radii_mm": radii, "axes_mm": axes, "angles_deg": angles, "slices": slices,
                "metal_value": mv, "background": self.background,
                "mu_metal": self.mu_metal, "hardening": _u(g, *self.hardening),
                "photons": math.exp(_u(g, math.log(self.photons[0]), math.log(self.photons[1]))),
                "n_views": self.n_views, "backend": self.backend, "seed": _seed_from(g)}

    @staticmethod
    def metal_mask(params: dict, shape2, spacing2, device=None, dtype=torch.float32) -> torch.Tensor:
        """The metal's area fraction per pixel ``(ny, nx)`` (ellipses with a one-pixel ramp edge).

        Parameters
        ----------
        params : dict
            The record's parameters.
        shape2 : tuple of int
            ``(ny, nx)``.
        spacing2 : tuple of float
            ``(sx, sy)`` in mm.
        device : torch.device or str, optional
            Where to build it.
        dtype : torch.dtype, optional
            Its dtype.

        Returns
        -------
        torch.Tensor
            Values in [0, 1].
        """
        ny, nx = shape2
        sx, sy = spacing2
        x = (torch.arange(nx, device=device, dtype=dtype) - (nx - 1) / 2) * sx
        y = (torch.arange(ny, device=device, dtype=dtype) - (ny - 1) / 2) * sy
        m = torch.zeros(ny, nx, device=device, dtype=dtype)
        h = min(sx, sy)
        for (cx, cy), (a, b), ang in metal_shapes(params):
            c, s = math.cos(math.radians(ang)), math.sin(math.radians(ang))
            dx, dy = x[None, :] - cx, y[:, None] - cy
            u, v = dx * c + dy * s, -dx * s + dy * c
            rho = torch.sqrt((u / a) ** 2 + (v / b) ** 2)                   # 1 on the boundary
            m = torch.maximum(m, ((1 - rho) * min(a, b) / h + 0.5).clamp(0, 1))
        return m

    @staticmethod
    def metal_sinogram(params: dict, projector) -> torch.Tensor:
        """Exact path lengths (mm) through the metal ellipses for every ray of ``projector``.

        An ellipse of semi-axes ``a``, ``b`` (unit axes ``u``, ``v``) whose centre projects to
        detector position ``s_c`` is crossed over ``2 a b sqrt(R^2 - (s - s_c)^2) / R^2`` with
        ``R^2 = a^2 (e.u)^2 + b^2 (e.v)^2``; the detector axis of view ``theta`` is
        ``e = (cos theta, -sin theta)``, as in :class:`biomip.ops.ct.ParallelBeam`.

        Parameters
        ----------
        params : dict
            The record's parameters.
        projector : biomip.ops.ct.ParallelProjector
            The geometry (rotation axis at the slice centre).

        Returns
        -------
        torch.Tensor
            ``(n_views, n_det)`` float64 path lengths.
        """
        geo = projector.geometry
        th = torch.as_tensor(geo.angles, dtype=torch.float64)
        e = torch.stack([torch.cos(th), -torch.sin(th)], dim=1)             # (A, 2)
        k = torch.arange(geo.n_det, dtype=torch.float64)
        s = (k - (geo.n_det - 1) / 2.0) * geo.det_spacing + geo.det_offset   # (D,)
        out = torch.zeros(len(th), geo.n_det, dtype=torch.float64)
        for c, (a, b), ang in metal_shapes(params):
            sc = e @ torch.as_tensor(c, dtype=torch.float64)                 # (A,): centres are about the slice centre
            co, si = math.cos(math.radians(ang)), math.sin(math.radians(ang))
            R2 = (a * (e[:, 0] * co + e[:, 1] * si)) ** 2 + (b * (-e[:, 0] * si + e[:, 1] * co)) ** 2   # (A,)
            out += 2.0 * a * b * (R2[:, None] - (s[None, :] - sc[:, None]) ** 2).clamp_min(0).sqrt() / R2[:, None]
        return out

    @classmethod
    def apply(cls, subject: Subject, params: dict) -> Subject:
        """Add the recorded streaks and metal.

        Parameters
        ----------
        subject : Subject
            The input.
        params : dict
            The record's parameters.

        Returns
        -------
        Subject
            The subject with metal and streaks.
        """
        x = subject.image
        ny, nx = subject.shape[-2:]
        sp2 = tuple(subject.spacing[:2])
        op = _projector((ny, nx), sp2, int(params["n_views"]), params.get("backend", "auto"))
        p = float(params["mu_metal"]) * cls.metal_sinogram(params, op)     # (views, det), CPU float64
        b = float(params["hardening"])
        ph = p / (1.0 + b * p)
        g = torch.Generator().manual_seed(int(params["seed"]))
        nz = 1 if subject.sdim == 2 else params["slices"][1] - params["slices"][0]
        n0 = float(params["photons"])
        sigma = torch.exp((ph + float(params.get("background", 0.0))) / 2).clamp_max(math.sqrt(n0)) / math.sqrt(n0)
        noise = torch.randn((nz, *p.shape), generator=g, dtype=torch.float64) * sigma
        err = (ph - p)[None] + noise                                 # (nz, views, det)
        q = _ramp(err, op.geometry.det_spacing)
        art = op.backproject(q) * (math.pi / op.geometry.n_views)   # 1/mm, (nz, ny, nx)
        scale = float(params["metal_value"]) / float(params["mu_metal"])
        art = (art * scale).to(device=x.device, dtype=x.dtype)
        mm = cls.metal_mask(params, (ny, nx), sp2, x.device, x.dtype)
        mv = float(params["metal_value"])
        if subject.sdim == 2:
            out = (x + art[0]) * (1 - mm) + mv * mm
        else:
            out = x.clone()
            lo, hi = params["slices"]
            out[:, lo:hi] = (x[:, lo:hi] + art) * (1 - mm) + mv * mm
        return subject.replace(out)


# ============================================================================= containers
class Compose(Transform):
    """Apply transforms in order; consecutive spatial ones are resampled once together.

    Parameters
    ----------
    transforms : sequence of Transform
        The transforms.
    p : float, optional
        Probability of applying the whole sequence.
    seed : int, optional
        Seed of the generator handed to every child (their own generators are unused).

    Raises
    ------
    InputError
        When an element is not a Transform.

    Examples
    --------
    >>> import torch
    >>> aug = Compose([RandomAffine(degrees=10), RandomElastic(max_displacement=2.0), RandomNoise(0.05)], seed=0)
    >>> out = aug(Subject(torch.rand(1, 24, 24), torch.zeros(24, 24, dtype=torch.long)))
    >>> [r["name"] for r in out.history]
    ['RandomAffine', 'RandomElastic', 'RandomNoise']
    >>> bool((replay(torch.rand(1, 24, 24) * 0, out.history).image.shape == out.image.shape))
    True
    """

    def __init__(self, transforms: Sequence[Transform], p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.transforms = list(transforms)
        for t in self.transforms:
            if not isinstance(t, Transform):
                raise InputError(f"transforms: got {type(t).__name__}; expected biomip.nn.transforms.Transform")

    def __call__(self, x, generator: torch.Generator | None = None) -> Subject:
        s = _as_subject(x)
        g = _check_generator(generator) or self._generator
        if not self._draw_applied(g):
            return s.replace()
        i = 0
        while i < len(self.transforms):
            t = self.transforms[i]
            if not t.spatial:
                s = t(s, g)
                i += 1
                continue
            group = len(s.history)
            steps, records = [], []
            while i < len(self.transforms) and self.transforms[i].spatial:
                t = self.transforms[i]
                if t._draw_applied(g):
                    params = t.sample(s, g)
                    steps.append((type(t), params))
                    records.append({"name": type(t).__name__, "applied": True, "params": params, "group": group})
                else:
                    records.append({"name": type(t).__name__, "applied": False, "params": {}})
                i += 1
            s = _resample(s, steps) if steps else s.replace()
            s.history.extend(records)
        return s


class OneOf(Transform):
    """Apply one transform chosen at random (with given probabilities).

    Parameters
    ----------
    transforms : sequence of Transform
        The candidates.
    probabilities : sequence of float, optional
        Relative weights (default equal).
    p : float, optional
        Probability of applying any.
    seed : int, optional
        Seed of the generator handed to the chosen child.

    Raises
    ------
    InputError
        For an empty list, a non-Transform or bad weights.

    Examples
    --------
    >>> import torch
    >>> out = OneOf([RandomNoise(0.1), RandomBlur(1.0)], probabilities=[0.0, 1.0], seed=0)(torch.rand(1, 8, 8))
    >>> [r["name"] for r in out.history]
    ['OneOf', 'RandomBlur']
    """

    def __init__(self, transforms: Sequence[Transform], probabilities=None, p: float = 1.0, seed: int | None = None):
        super().__init__(p, seed)
        self.transforms = list(transforms)
        if not self.transforms or not all(isinstance(t, Transform) for t in self.transforms):
            raise InputError("transforms: expected a non-empty sequence of Transform objects")
        w = np.ones(len(self.transforms)) if probabilities is None else np.asarray(probabilities, dtype=np.float64)
        if w.shape != (len(self.transforms),) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise InputError(f"probabilities: got {probabilities!r}; expected {len(self.transforms)} non-negative "
                             "weights with a positive sum")
        self.probabilities = (w / w.sum()).tolist()

    def __call__(self, x, generator: torch.Generator | None = None) -> Subject:
        s = _as_subject(x)
        g = _check_generator(generator) or self._generator
        if not self._draw_applied(g):
            return s.replace()
        k = int(torch.multinomial(torch.as_tensor(self.probabilities, dtype=torch.float64), 1, generator=g))
        s = s.replace()
        s.history.append({"name": "OneOf", "container": True, "params": {"chosen": k,
                                                                        "transform": type(self.transforms[k]).__name__}})
        return self.transforms[k](s, g)


# ======================================================================== replay / invert
def _groups(history):
    """Split applied records into runs: (spatial group id or None, [records])."""
    if not isinstance(history, (list, tuple)) or not all(isinstance(r, dict) and isinstance(r.get("name"), str)
                                                         and isinstance(r.get("params", {}), dict) for r in history):
        raise InputError(f"history: got {describe(history)}; expected a list of dicts with a 'name' and 'params' "
                         "(a subject's .history)")
    runs = []
    for r in history:
        if not r.get("applied", True) or r.get("container"):
            continue
        if r["name"] not in TRANSFORMS:
            raise InputError(f"history: got an unknown transform {r['name']!r}; expected one of "
                             f"{', '.join(sorted(TRANSFORMS))}")
        cls = TRANSFORMS[r["name"]]
        gid = r.get("group") if cls.spatial else None
        if cls.spatial and runs and runs[-1][0] is not None and gid is not None and runs[-1][0] == gid:
            runs[-1][1].append(r)
        else:
            runs.append((gid if cls.spatial else None, [r]))
    return runs


def replay(x, history) -> Subject:
    """Apply recorded transforms again: same records, same output (same device).

    Spatial records of one :class:`Compose` group are resampled together, as they were.

    Parameters
    ----------
    x : Subject, dict, tensor, array or Image
        The input (e.g. another image of the same shape, or the original).
    history : list of dict
        Records (``subject.history``), e.g. read back from JSON.

    Returns
    -------
    Subject
        The transformed subject (its history extended by the replayed records).

    Raises
    ------
    InputError
        For an unknown transform name, or a history that is not a list of record dicts.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(1, 16, 16)
    >>> out = Compose([RandomAffine(), RandomNoise(0.1)], seed=3)(x)
    >>> bool(torch.equal(replay(x, out.history).image, out.image))
    True
    """
    s = _as_subject(x)
    for gid, recs in _groups(history):
        cls = TRANSFORMS[recs[0]["name"]]
        if cls.spatial:
            s = _resample(s, [(TRANSFORMS[r["name"]], r["params"]) for r in recs])
        else:
            s = cls.apply(s, recs[0]["params"])
        s.history.extend(_copy.deepcopy(recs))
    return s


def invert(x, history=None) -> Subject:
    """Undo the spatial part of a history (flips, turns, crops exactly; affine exactly up to
    interpolation; elastic by fixed-point inversion).  Intensity records are skipped.

    Parameters
    ----------
    x : Subject, dict, tensor, array or Image
        The transformed subject (or e.g. a network's prediction on its grid).
    history : list of dict, optional
        The records to undo (default ``x.history``).

    Returns
    -------
    Subject
        The subject back on the original grid; its history gains an ``"invert"`` record
        listing what was undone and skipped.

    Raises
    ------
    InputError
        For an unknown transform name, or a history that is not a list of record dicts.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(1, 20, 20)
    >>> out = Compose([RandomFlip(p_axis=1.0), RandomRot90(), CropOrPad((20, 30))], seed=0)(x)
    >>> back = invert(out)
    >>> out.shape, back.shape, bool(torch.equal(back.image, x))
    ((20, 30), (20, 20), True)
    """
    s = _as_subject(x)
    hist = s.history if history is None else history
    undone, skipped = [], []
    for gid, recs in reversed(_groups(hist)):
        cls = TRANSFORMS[recs[0]["name"]]
        if cls.spatial:
            s = _resample(s, [(TRANSFORMS[r["name"]], r["params"]) for r in recs], inverse=True)
            undone += [r["name"] for r in recs]
        elif cls.invertible:
            s = cls.apply(s, cls.inverse_params(recs[0]["params"]))
            undone.append(recs[0]["name"])
        else:
            skipped.append(recs[0]["name"])
    s = s.replace()
    s.history.append({"name": "invert", "container": True, "params": {"undone": undone, "skipped": skipped}})
    return s
