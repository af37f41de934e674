"""Input handling shared by the image-level segmentation methods: one grey-image
validator, one spacing rule, one way back to the caller's kind (Image with geometry,
numpy, torch).
"""

from __future__ import annotations

import copy as _copy

import numpy as np

from ..core.arrays import as_numpy, check_spacing, is_tensor
from ..core.config import get_device
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image


def as_grey(image, name: str = "image", ndims=(2, 3)) -> np.ndarray:
    """The image as a validated numpy array (no copy when possible).

    Validated: grey, 2-D / 3-D, real, finite, not empty; booleans become uint8.

    Parameters
    ----------
    image : Image or array_like or torch.Tensor
        A grey image (an Image with spatial axes only).
    name : str, optional
        The argument's name, for error messages.
    ndims : tuple of int, optional
        Allowed numbers of axes.

    Returns
    -------
    numpy.ndarray
        The array, axes in array order ([z,] y, x).

    Raises
    ------
    ShapeError
        For channel / time axes, a wrong number of axes, or an axis shorter than 2.
    InputError
        For a non-numeric or complex array, or NaN / Inf values.
    """
    if isinstance(image, Image):
        if image.ndim != image.sdim:
            raise ShapeError(f"{name}: got an Image with axes {image.axes!r}; expected a grey image with spatial "
                             "axes only ('yx' or 'zyx'); select one channel / time point first")
        arr = image.numpy()
    elif is_tensor(image):
        arr = as_numpy(image, name=name)
    else:
        try:
            arr = np.asarray(image)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: got {describe(image)}; expected a numeric array") from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise InputError(f"{name}: got {describe(arr)}; expected a real numeric (integer or float) array")
    if arr.ndim not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ShapeError(f"{name}: got {describe(arr)}; expected a {want} grey image (array axes [z,] y, x)")
    if arr.size == 0 or min(arr.shape) < 2:
        raise ShapeError(f"{name}: got shape {arr.shape}; expected at least 2 voxels along every axis")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(f"{name}: contains {int(bad.sum())} NaN/Inf value(s) of {arr.size}; expected finite values")
    return arr


def as_list(x, name: str, what: str = "one image or a list of images") -> list:
    """``x`` as a list (a list or tuple as given, anything else wrapped); an empty one is refused by ``name``."""
    if isinstance(x, (list, tuple)):
        if not x:
            raise InputError(f"{name}: got an empty {type(x).__name__}; expected {what}")
        return list(x)
    return [x]


def spacing_of(image, spacing, d: int) -> tuple[float, ...]:
    """World-order (x, y, z) spacing: ``spacing`` if given, else the Image's, else 1.

    Parameters
    ----------
    image : Image or array_like or torch.Tensor
        The image whose spacing is used when ``spacing`` is ``None``.
    spacing : float or sequence of float or None
        Voxel size in mm, world order (x, y[, z]); a scalar is broadcast.
    d : int
        Number of spatial dimensions.

    Returns
    -------
    tuple of float
        The spacing in mm, world order.

    Raises
    ------
    GeometryError
        For a spacing of the wrong length or with non-positive values.
    """
    if spacing is None and isinstance(image, Image):
        return tuple(image.spacing)
    return check_spacing(spacing, d)


def mask_arg(mask, shape, name: str = "mask") -> np.ndarray | None:
    """A validated binary mask of the image's shape, or ``None``.

    Parameters
    ----------
    mask : array_like or torch.Tensor or None
        Nonzero voxels are selected.
    shape : tuple of int
        The image's shape, array order.
    name : str, optional
        The argument's name, for error messages.

    Returns
    -------
    numpy.ndarray or None
        Boolean mask, or ``None`` when ``mask`` is ``None``.

    Raises
    ------
    ShapeError
        When the shapes differ.
    InputError
        For NaN / Inf or an empty mask.
    """
    if mask is None:
        return None
    m = as_numpy(mask, name=name)
    if m.shape != tuple(shape):
        raise ShapeError(f"{name}: got shape {m.shape}; expected the image's shape {tuple(shape)}")
    if m.dtype.kind == "f" and not np.all(np.isfinite(m)):
        raise InputError(f"{name}: contains NaN/Inf; expected a binary mask")
    m = m != 0
    if not m.any():
        raise InputError(f"{name}: is empty (no nonzero voxel); expected a mask selecting the voxels to use")
    return m


def labels_out(labels: np.ndarray, image, method: str, **info):
    """Return ``labels`` in the kind of ``image`` (Image with its geometry, numpy, torch).

    Parameters
    ----------
    labels : numpy.ndarray
        The label array, the image's spatial shape.
    image : Image or array_like or torch.Tensor
        The input whose kind (and geometry, device) the result takes.
    method : str
        Recorded in ``meta["method"]`` of an Image result.
    **info : dict
        More ``meta`` entries of an Image result.

    Returns
    -------
    Image or numpy.ndarray or torch.Tensor
        The labels; an Image has ``meta["kind"] == "labels"``.
    """
    if isinstance(image, Image):
        meta = _copy.deepcopy(image.meta)
        meta.update(kind="labels", method=method, **info)
        arr = labels
        if image.is_torch:
            import torch

            arr = torch.from_numpy(np.ascontiguousarray(labels)).to(image.device)
        return image.with_array(arr, meta=meta)
    if is_tensor(image):
        import torch

        return torch.from_numpy(np.ascontiguousarray(labels)).to(image.device)
    return labels


def normalised01(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """The array as float64 scaled to [0, 1] by its min and max.

    Parameters
    ----------
    arr : numpy.ndarray
        The image.
    name : str, optional
        The argument's name, for error messages.

    Returns
    -------
    numpy.ndarray
        ``(arr - min) / (max - min)``.

    Raises
    ------
    InputError
        For a constant image.
    """
    a = arr.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        raise InputError(f"{name}: is constant (every voxel is {lo:g}); expected an image with contrast")
    return (a - lo) / (hi - lo)


def torch_input(image, device, name: str = "image"):
    """A float32 tensor and its device for a validated grey image.

    Torch input stays where it is.

    Parameters
    ----------
    image : Image or array_like or torch.Tensor
        A grey 2-D / 3-D image (see :func:`as_grey`).
    device : str or torch.device or None
        Where to compute (``None``: where a tensor input lives, else
        ``biomip.config.device``).
    name : str, optional
        The argument's name, for error messages.

    Returns
    -------
    tensor : torch.Tensor
        The float32 image.
    device : torch.device
        Its device.
    """
    import torch

    arr = as_grey(image, name)
    src = image.array if isinstance(image, Image) else image
    if device is None and is_tensor(src):
        dev = src.device
    else:
        dev = get_device(device)
    return torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32), device=dev), dev


def shifted(p, ax: int, start: int, shape):
    """The window of the padded ``p`` starting at ``start`` along ``ax`` (1 elsewhere).

    Parameters
    ----------
    p : torch.Tensor
        ``(c, *S)`` padded by one voxel on every spatial side.
    ax : int
        Axis of ``p`` to shift (1 = first spatial axis).
    start : int
        Start of the window along ``ax``: 0, 1 or 2 for the backward, centre and forward
        neighbour.
    shape : tuple of int
        Shape ``(c, *S)`` of the unpadded array.

    Returns
    -------
    torch.Tensor
        A view of shape ``shape``.
    """
    sl = [slice(None)] + [slice(1, 1 + n) for n in shape[1:]]
    sl[ax] = slice(start, start + shape[ax])
    return p[tuple(sl)]


def points_to_index(points, image, shape, spacing, world: bool, name: str) -> np.ndarray:
    """``(n, d)`` points -> continuous array indices ``(n, d)`` in (z, y, x) order.

    Parameters
    ----------
    points : array_like
        One point or an ``(n, d)`` array: voxel indices in array order, or with ``world``
        world coordinates ``(x, y[, z])`` in mm.
    image : Image or array_like or torch.Tensor
        An Image maps world points with its origin / direction / spacing.
    shape : tuple of int
        The image's shape, array order.
    spacing : sequence of float
        Voxel size in mm, world order (x, y[, z]); for plain arrays
        ``index = point / spacing``.
    world : bool
        Whether ``points`` are world coordinates in mm.
    name : str
        The argument's name, for error messages.

    Returns
    -------
    numpy.ndarray
        ``(n, d)`` continuous indices, array order.

    Raises
    ------
    InputError
        For points of the wrong shape or with NaN / Inf.
    """
    d = len(shape)
    try:
        pts = np.asarray(as_numpy(points, name=name), dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: got {describe(points)}; expected points of shape (n, {d})") from exc
    if pts.ndim == 1:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[1] != d or pts.shape[0] == 0:
        order = "(x, y, z) mm" if world else "voxel index (" + ", ".join("zyx"[-d:]) + ")"
        raise InputError(f"{name}: got {describe(np.asarray(points))}; expected one point or an (n, {d}) array "
                         f"of {order}")
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{name}: contains NaN/Inf; expected finite coordinates")
    if world:
        if isinstance(image, Image):
            idx_xyz = image.world_to_index(pts)
        else:
            idx_xyz = pts / np.asarray(spacing)
        return idx_xyz[:, ::-1]
    return pts
