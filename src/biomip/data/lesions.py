"""Synthetic pathology on healthy images: lesions (for anomaly detection) and defects (for repair).

* :func:`insert_lesions` -- smooth, textured blobs with soft edges whose intensity is the local
  tissue intensity times ``1 + contrast``, placed inside a mask (the brain), pushing the
  surrounding tissue outwards (mass effect, a smooth radial warp through
  :func:`biomip.ops.spatial.warp`), with the exact lesion mask: the ground truth of
  unsupervised anomaly detection (residual of a model of healthy anatomy, textbook 4.4.2).
* :func:`synthetic_defects` -- the training-data synthesis of defect repair (textbook 4.4.1,
  the maxillofacial CT case): irregular holes and cuts at the object's border set to the
  background value, with the defect mask.

Both work on 2-D and 3-D images (numpy, torch or :class:`~biomip.Image`; the same kind
comes back, an Image with its geometry), take sizes in mm (``spacing`` or the Image's),
draw everything from ``seed`` and never modify their inputs.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import as_numpy, check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..core.kinds import same_kind

__all__ = ["insert_lesions", "synthetic_defects"]


# ------------------------------------------------------------------------------ helpers
def _range(value, name: str, positive: bool = False, low=None) -> tuple[float, float]:
    """A number or a (low, high) pair as a checked (low, high) tuple."""
    v = np.atleast_1d(np.asarray(value, dtype=object)).ravel()
    if v.size == 1:
        v = np.repeat(v, 2)
    if v.size != 2:
        raise InputError(f"{name}: got {value!r}; expected a number or a (low, high) pair")
    a = check_number(v[0], name, positive=positive, low=low)
    b = check_number(v[1], name, positive=positive, low=low)
    if b < a:
        raise InputError(f"{name}: got {value!r}; expected low <= high")
    return a, b


def _object_mask(mask, img: Image, name: str = "mask") -> np.ndarray | None:
    """``mask`` as a bool numpy array on the image's grid (None stays None)."""
    if mask is None:
        return None
    m = as_numpy(mask.array if isinstance(mask, Image) else mask, name=name)
    if tuple(m.shape) != tuple(img.shape):
        raise ShapeError(f"{name}: got shape {tuple(m.shape)}; expected the image's shape {tuple(img.shape)}")
    if m.dtype.kind == "f" and not np.all(np.isfinite(m)):
        raise InputError(f"{name}: contains NaN/Inf; expected a boolean mask")
    m = m != 0
    if not m.any():
        raise InputError(f"{name}: is empty; expected at least one voxel inside")
    return m


def _check_image(img: Image, name: str = "image") -> np.ndarray:
    if img.ndim != img.sdim or img.sdim not in (2, 3):
        raise ShapeError(f"{name}: got {describe(img.array)} with axes {img.axes!r}; expected a 2-D or 3-D image "
                         "without channel axes")
    if 0 in img.shape:
        raise ShapeError(f"{name}: got shape {tuple(img.shape)}; expected a non-empty image")
    return img.numpy().astype(np.float32)


def _axis_spacing(img: Image) -> np.ndarray:
    """Voxel size per array axis (z, y, x order), mm."""
    return np.asarray(img.spacing[::-1], dtype=float)


def _smooth_noise(rng, shape, sigma_vox) -> np.ndarray:
    """Seeded Gaussian-smoothed white noise with unit standard deviation."""
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
    sd = n.std()
    return (n / sd if sd > 0 else n).astype(np.float32)


def _box(center, half_vox, shape):
    lo = [max(0, int(np.floor(c - h))) for c, h in zip(center, half_vox)]
    hi = [min(s, int(np.ceil(c + h)) + 1) for c, h, s in zip(center, half_vox, shape)]
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _offsets(box, center, sp) -> list[np.ndarray]:
    """Physical offsets (mm) from ``center`` of the voxels in ``box``, one broadcastable array per axis."""
    d = len(box)
    out = []
    for k, s in enumerate(box):
        shape = [1] * d
        shape[k] = s.stop - s.start
        out.append(((np.arange(s.start, s.stop) - center[k]) * sp[k]).reshape(shape))
    return out


def _rotation(rng, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _blob(rng, box, center, sp, radius, roughness=0.25, edge_mm=None):
    """Soft blob (values in [0, 1]) on ``box``: a randomly oriented ellipsoid with semi-axes
    ``radius * (0.75 .. 1.25)`` whose boundary is perturbed by smooth noise; the edge is a
    smoothstep from 0 to 1 over ``2 edge_mm`` (about mm) across the boundary."""
    d = len(box)
    off = _offsets(box, center, sp)
    shape = tuple(s.stop - s.start for s in box)
    R = _rotation(rng, d)
    axes = radius * rng.uniform(0.75, 1.25, size=d)
    coords = [np.broadcast_to(o, shape) for o in off]
    rho2 = np.zeros(shape)
    for j in range(d):
        proj = sum(R[k, j] * coords[k] for k in range(d))
        rho2 += (proj / axes[j]) ** 2
    rho = np.sqrt(rho2)
    noise = np.clip(_smooth_noise(rng, shape, np.maximum(0.5 * radius / sp, 0.5)), -2.0, 2.0)
    bound = 1.0 + roughness * noise                       # in (0.5, 1.5): the centre is always inside
    edge = edge_mm if edge_mm is not None else max(0.75, 0.12 * radius)
    t = np.clip(((bound - rho) * radius + edge) / (2.0 * edge), 0.0, 1.0)   # ~ mm from the boundary
    return t * t * (3.0 - 2.0 * t), rho


def _pick_center(rng, allowed: np.ndarray, depth: np.ndarray | None, min_depth_mm: float):
    """A voxel of ``allowed`` at least ``min_depth_mm`` inside it (``depth``: its distance map) when
    there is one."""
    cand = np.argwhere(depth >= min_depth_mm) if depth is not None else np.empty((0, allowed.ndim), int)
    if not len(cand):
        cand = np.argwhere(allowed)
    return cand[rng.integers(len(cand))].astype(float)


def _mass_effect(arrs, center, sp, radius, strength):
    """Push the tissue of each array in ``arrs`` away from ``center`` (returns new arrays).

    Pull-back warp ``out(p) = in(p - s(d) e)`` with ``d = |p - c|`` (mm), ``e`` the unit
    vector from the centre and ``s(d) = a d (1 - d^2 / R^2)^2`` for ``d < R = 3 r`` (0 beyond):
    ``s(d) < d`` and ``s'(d) <= a < 1``, so the map is a diffeomorphism; the largest push is
    ``0.286 a R`` at ``d = R / sqrt(5)``, about ``0.69 * mass_effect * r`` with ``a = 0.8 mass_effect``.
    """
    from ..ops.spatial import warp

    d = len(center)
    R = 3.0 * radius
    a = 0.8 * strength
    shape = arrs[0].shape
    box = _box(center, R / sp + 1, shape)
    off = _offsets(box, center, sp)
    sub_shape = tuple(s.stop - s.start for s in box)
    coords = [np.broadcast_to(o, sub_shape) for o in off]
    dist = np.sqrt(sum(c ** 2 for c in coords))
    q = np.clip(1.0 - (dist / R) ** 2, 0.0, None)
    # s(d) e = a d (1-d^2/R^2)^2 * x / d = a (1 - d^2/R^2)^2 x
    factor = -a * q ** 2
    # displacement (world order x, y[, z]) in mm: component 0 = last array axis
    field = np.stack([(factor * coords[k]).astype(np.float32) for k in reversed(range(d))])
    out = []
    for arr in arrs:
        new = arr.copy()
        new[box] = warp(np.ascontiguousarray(arr[box]), field, spacing=tuple(sp[::-1]), mode="linear",
                        padding="border")
        out.append(new)
    return out


def _local_mean(img: np.ndarray, weight: np.ndarray, sigma_vox, box) -> np.ndarray:
    """Normalised Gaussian mean of ``img`` over the voxels where ``weight`` is 1, on ``box``
    (computed on ``box`` grown by 4 sigma, exact up to the filter's truncation)."""
    big = tuple(slice(max(0, s.start - int(np.ceil(4 * g)) - 1), min(n, s.stop + int(np.ceil(4 * g)) + 1))
                for s, g, n in zip(box, sigma_vox, img.shape))
    wb = weight[big].astype(np.float32)
    num = ndi.gaussian_filter(img[big] * wb, sigma_vox, mode="nearest")
    den = ndi.gaussian_filter(wb, sigma_vox, mode="nearest")
    inner = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(box, big))
    return (num / np.maximum(den, 1e-6))[inner]


# ------------------------------------------------------------------------------ lesions
@same_kind("image")
def insert_lesions(image, n: int = 1, radius=(3.0, 8.0), contrast=(-0.5, 0.6), mask=None, spacing=None,
                   texture: float = 0.15, mass_effect: float = 0.5, seed: int = 0):
    """Insert synthetic lesions into a healthy 2-D or 3-D image.

    Each lesion is a randomly oriented ellipsoid (semi-axes ``r * U(0.75, 1.25)``, ``r`` drawn
    from ``radius``) whose boundary is perturbed by seeded smooth noise (+-25 % of the radius),
    with a soft edge (a smoothstep from 0 to 1 over about ``max(0.75, 0.12 r)`` mm on either
    side of the boundary; nothing changes beyond it).  Its intensity is the local
    tissue intensity (normalised Gaussian mean of the image inside ``mask``, sigma ``r``) times
    ``1 + c`` (``c`` drawn from ``contrast``; negative: hypo-intense), times
    ``1 + texture * n(p)`` with ``n`` seeded smooth noise (unit SD, clipped to +-2), blended
    into the image with the soft edge.  Before painting, ``mass_effect`` pushes the
    surrounding tissue outwards by a smooth radial, diffeomorphic displacement (largest push
    about ``0.69 * mass_effect * r`` at ``1.3 r`` from the centre, none beyond ``3 r``; see
    :func:`biomip.ops.spatial.warp`), so the lesion displaces anatomy instead of only painting
    over it.  Centres lie inside ``mask``, at least half a radius from its edge where
    possible; the lesion (painted intensities and returned mask) is restricted to ``mask``.

    Parameters
    ----------
    image : Image, numpy.ndarray or torch.Tensor
        Healthy 2-D ``(y, x)`` or 3-D ``(z, y, x)`` image (no channel axes).
    n : int, optional
        Number of lesions (0: the image comes back unchanged, with an empty mask).
    radius : float or (float, float), optional
        Lesion radius in mm, or the range it is drawn from (uniform).
    contrast : float or (float, float), optional
        Relative intensity change ``c`` (lesion = local tissue * (1 + c)), or its range; > -1.
    mask : array_like, optional
        Where lesions may lie (e.g. the brain), the image's shape; default: everywhere.
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm for array input (default 1 mm; an Image gives its own).
    texture : float, optional
        Relative standard deviation of the smooth interior texture (>= 0).
    mass_effect : float, optional
        Strength of the outward push, in [0, 1) (0: no displacement).
    seed : int, optional
        Seed of every random draw.

    Returns
    -------
    image_with_lesions : Image, numpy.ndarray or torch.Tensor
        float32, the kind of ``image`` (an Image keeps its geometry and metadata).
    lesion_mask : Image, numpy.ndarray or torch.Tensor
        bool, True inside the lesions (soft edge > 0.5), inside ``mask``.

    Raises
    ------
    InputError
        For ``n < 0``, a ``radius`` <= 0, a ``contrast`` <= -1, a negative ``texture``, a
        ``mass_effect`` outside [0, 1), an empty ``mask`` or NaN in ``image``.
    ShapeError
        For an image that is not 2-D / 3-D or a ``mask`` of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((64, 64), 100.0, np.float32)
    >>> out, les = insert_lesions(img, n=1, radius=6.0, contrast=0.5, mass_effect=0.0, texture=0.0)
    >>> bool(les.any()), round(float(out.max() / 100.0), 2), float(out[~les].min())
    (True, 1.5, 100.0)
    """
    n = check_number(n, "n", integer=True, low=0)
    r_lo, r_hi = _range(radius, "radius", positive=True)
    c_lo, c_hi = _range(contrast, "contrast", low=-1.0)
    if c_lo <= -1.0:
        raise InputError(f"contrast: got {contrast!r}; expected values > -1 (lesion = tissue * (1 + contrast))")
    texture = check_number(texture, "texture", nonneg=True)
    mass_effect = check_number(mass_effect, "mass_effect", low=0.0, high=1.0)
    if mass_effect >= 1.0:
        raise InputError(f"mass_effect: got {mass_effect}; expected a value in [0, 1)")
    seed = check_number(seed, "seed", integer=True)
    arr = _check_image(image)
    allowed = _object_mask(mask, image)
    if allowed is None:
        allowed = np.ones(arr.shape, dtype=bool)
    sp = _axis_spacing(image)
    rng = np.random.default_rng(seed)
    out = arr.copy()
    soft = np.zeros(arr.shape, dtype=np.float32)
    depth = ndi.distance_transform_edt(np.pad(allowed, 1), sampling=sp)[(slice(1, -1),) * arr.ndim] if n else None
    for _ in range(n):
        r = float(rng.uniform(r_lo, r_hi))
        c = float(rng.uniform(c_lo, c_hi))
        center = _pick_center(rng, allowed, depth, 0.5 * r)
        if mass_effect > 0:
            out, soft = _mass_effect([out, soft], center, sp, r, mass_effect)
        box = _box(center, 2.0 * r / sp + 2, arr.shape)
        w, _ = _blob(rng, box, center, sp, r)
        w = (w * allowed[box]).astype(np.float32)
        local = _local_mean(out, allowed, np.maximum(r / sp, 0.5), box)
        tex = 1.0 + texture * np.clip(_smooth_noise(rng, w.shape, np.maximum(1.0 / sp, 0.5)), -2, 2)
        value = local * (1.0 + c) * tex
        out[box] = (1.0 - w) * out[box] + w * value
        soft[box] = np.maximum(soft[box], w)
    lesion = (soft > 0.5) & allowed
    geo = dict(spacing=image.spacing, origin=image.origin, direction=image.direction, axes=image.axes)
    meta = dict(image.meta)
    return (Image(out.astype(np.float32), meta=meta, **geo),
            Image(lesion, meta={**meta, "kind": "labels"}, **geo))


# ------------------------------------------------------------------------------ defects
def _boundary_normal(obj: np.ndarray, sp):
    """Outward unit normals (per array axis) of a smoothed object mask, and its border voxels."""
    sm = ndi.gaussian_filter(obj.astype(np.float32), np.maximum(1.5 / sp, 0.75))
    grads = np.gradient(sm, *sp)
    border = obj & ~ndi.binary_erosion(obj)
    return [-g for g in grads], border


@same_kind("image")
def synthetic_defects(image, n: int = 1, size=(6.0, 16.0), kind: str = "hole", fill=None, mask=None, spacing=None,
                      seed: int = 0):
    """Damage an image with synthetic defects (training data for defect repair / inpainting).

    The synthesis of the textbook's defect-repair case (4.4.1, maxillofacial CT): damaged
    images made from healthy ones, the healthy image being the target.

    * ``"hole"``: an irregular blob (noise-perturbed ellipsoid, diameter drawn from ``size``)
      centred inside the object, set to ``fill``;
    * ``"cut"``: a piece removed at the border of the object: around a random border point
      ``b`` with outward normal ``e``, every voxel within ``1.5 D`` of ``b`` (``D`` the drawn
      size) whose depth below the border plane, ``-(p - b) . e``, is less than ``D / 2``
      (irregular by smooth noise), set to ``fill`` -- a band / wedge sliced off the object;
    * ``"mixed"``: each defect is a hole or a cut with equal probability.

    Parameters
    ----------
    image : Image, numpy.ndarray or torch.Tensor
        Healthy 2-D or 3-D image (no channel axes).
    n : int, optional
        Number of defects (0: unchanged image, empty mask).
    size : float or (float, float), optional
        Defect diameter / cut size in mm, or the range it is drawn from.
    kind : {"hole", "cut", "mixed"}, optional
        Defect type.
    fill : float, optional
        Value of the removed voxels (default: the image's 1st percentile, its background).
    mask : array_like, optional
        The object (e.g. bone), the image's shape; default: voxels above the image's Otsu
        threshold.  Defects are restricted to it.
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm for array input (an Image gives its own).
    seed : int, optional
        Seed of every random draw.

    Returns
    -------
    damaged : Image, numpy.ndarray or torch.Tensor
        float32 image with the defect voxels set to ``fill``, the kind of ``image``.
    defect_mask : Image, numpy.ndarray or torch.Tensor
        bool, True where voxels were removed (a subset of the object).

    Raises
    ------
    InputError
        For ``n < 0``, a ``size`` <= 0, an unknown ``kind``, a non-finite ``fill``, an empty
        object or NaN in ``image``.
    ShapeError
        For an image that is not 2-D / 3-D or a ``mask`` of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((64, 64), np.float32); img[16:48, 16:48] = 1.0
    >>> dmg, hole = synthetic_defects(img, n=1, size=10.0, kind="cut", fill=0.0)
    >>> bool(hole.any()), float(dmg[hole].max()), bool((img[hole] == 1).all())
    (True, 0.0, True)
    """
    n = check_number(n, "n", integer=True, low=0)
    s_lo, s_hi = _range(size, "size", positive=True)
    if kind not in ("hole", "cut", "mixed"):
        raise InputError(f"kind: got {kind!r}; expected 'hole', 'cut' or 'mixed'")
    seed = check_number(seed, "seed", integer=True)
    arr = _check_image(image)
    obj = _object_mask(mask, image)
    if obj is None:
        from skimage.filters import threshold_otsu

        obj = arr > threshold_otsu(arr) if arr.max() > arr.min() else np.zeros(arr.shape, bool)
        if not obj.any():
            raise InputError("image: is constant, so no object can be found by Otsu's threshold; pass mask")
    fill = float(np.percentile(arr, 1.0)) if fill is None else check_number(fill, "fill")
    sp = _axis_spacing(image)
    rng = np.random.default_rng(seed)
    defect = np.zeros(arr.shape, dtype=bool)
    normals = border = None
    for _ in range(n):
        D = float(rng.uniform(s_lo, s_hi))
        this = kind if kind != "mixed" else ("hole" if rng.random() < 0.5 else "cut")
        if this == "hole":
            center = _pick_center(rng, obj, None, 0.0)
            box = _box(center, 0.5 * D * 1.6 / sp + 2, arr.shape)
            w, _ = _blob(rng, box, center, sp, 0.5 * D, roughness=0.3, edge_mm=1e-3)
            defect[box] |= w > 0.5
        else:
            if normals is None:
                normals, border = _boundary_normal(obj, sp)
            pts = np.argwhere(border)
            b = pts[rng.integers(len(pts))].astype(float)
            e = np.array([g[tuple(b.astype(int))] for g in normals])
            norm = np.linalg.norm(e)
            e = e / norm if norm > 0 else _rotation(rng, len(sp))[:, 0]
            box = _box(b, 1.5 * D / sp + 2, arr.shape)
            off = _offsets(box, b, sp)
            shape = tuple(s.stop - s.start for s in box)
            coords = [np.broadcast_to(o, shape) for o in off]
            depth = -sum(e[k] * coords[k] for k in range(len(sp)))
            dist = np.sqrt(sum(c ** 2 for c in coords))
            rough = 0.15 * D * np.clip(_smooth_noise(rng, shape, np.maximum(0.25 * D / sp, 0.5)), -2, 2)
            defect[box] |= (depth < 0.5 * D + rough) & (dist < 1.5 * D)
    defect &= obj
    out = arr.copy()
    out[defect] = fill
    geo = dict(spacing=image.spacing, origin=image.origin, direction=image.direction, axes=image.axes)
    meta = dict(image.meta)
    return (Image(out, meta=meta, **geo), Image(defect, meta={**meta, "kind": "labels"}, **geo))
