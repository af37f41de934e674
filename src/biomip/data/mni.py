"""The real MNI152 T1 template as 2-D training / test slices (and their 2 mm low-resolution pairs).

The volume is nilearn's copy of the MNI ICBM152 2009a symmetric T1 template at 1 mm
(``biomip.data.load("mni152-t1")``, see the catalogue): 189 x 233 x 197 voxels, skull-stripped
by its authors, stored as uint8.  Nothing is downloaded.

Low resolution.  nilearn ships only the 1 mm file; ``nilearn.datasets.load_mni152_template(
resolution=2)`` *derives* its 2 mm template from it: it divides the 1 mm data by their
maximum and calls ``nilearn.image.resample_img(img, np.eye(3) * 2)`` with the default
``"continuous"`` interpolation, i.e. ``scipy.ndimage.affine_transform`` with a cubic B-spline
(``order=3``) sampled at every second 1 mm voxel centre, starting at the first one (the 2 mm
grid keeps the 1 mm origin).  A cubic *interpolating* spline evaluated at the knots returns the
data, so that 2 mm template is exactly ``t1[::2, ::2, ::2]`` (checked: largest difference
3e-16), a decimation without anti-aliasing.  :func:`mni152_slices` makes the low-resolution
slices the same way (``lr_method="nilearn"``: the same cubic-spline resampling in the slice
plane, which for an integer factor is that decimation; slice ``2k`` of the axial stack is
slice ``k`` of nilearn's 2 mm volume, pixel for pixel) or by averaging blocks
(``lr_method="area"``, what a coarser acquisition integrates).  No independent 2 mm
acquisition ships, so either way the pair is an honest LR / HR pair of the *same* anatomy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import check_number
from ..core.errors import InputError

__all__ = ["TISSUES", "SliceSet", "mni152_slices", "mni152_tissues", "slab_split"]

_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
TISSUES = ("background", "csf", "gm", "wm")
"""Tissue label names of :func:`mni152_tissues` (label ``i`` is ``TISSUES[i]``)."""
UNITS = ("MR T1 signal in arbitrary units: the template file's uint8 values divided by 255 "
         "(as nilearn's load_mni152_template rescales them), so in [0, 1]")


@dataclass(eq=False)
class SliceSet:
    """2-D slices of the MNI152 T1 template split into training and test slabs.

    Parameters
    ----------
    train, test : numpy.ndarray
        float32 slices ``(N, H, W)``, intensities as :data:`UNITS` says.
    train_mask, test_mask : numpy.ndarray
        bool brain masks ``(N, H, W)``.
    train_lr, test_lr : numpy.ndarray or None
        The low-resolution versions ``(N, H / f, W / f)`` (``low_res`` given), else None.
    indices : dict
        ``{"train", "test", "gap"}``: slice indices along ``axis`` in the 1 mm volume
        (``gap``: brain slices dropped between held-out slabs and training slices).
    spacing : tuple of float
        Pixel size ``(x, y)`` of the slices in mm (world order: columns, then rows).
    spacing_lr : tuple of float or None
        Pixel size of the low-resolution slices in mm.
    train_tissue : numpy.ndarray or None
        uint8 tissue labels ``(N, H, W)`` of the training slices (``tissues=True``; label
        ``i`` is :data:`TISSUES` ``[i]``: 0 background, 1 CSF, 2 grey, 3 white matter), else None.
    test_tissue : numpy.ndarray or None
        The same for the held-out slices.
    axis : str
        ``"axial"``, ``"coronal"`` or ``"sagittal"``.
    box : dict
        The crop in the 1 mm volume (array axes ``z, y, x``): ``{axis_name: [start, stop)}``
        for the two in-plane axes (may extend past the volume where ``size`` pads).
    slabs : list of list of int
        ``[first, last]`` slice index of each held-out slab.
    meta : dict
        Source, units, orientation, the parameters.
    """

    train: np.ndarray
    test: np.ndarray
    train_mask: np.ndarray
    test_mask: np.ndarray
    indices: dict
    spacing: tuple
    axis: str
    box: dict
    slabs: list
    train_lr: np.ndarray | None = None
    test_lr: np.ndarray | None = None
    spacing_lr: tuple | None = None
    train_tissue: np.ndarray | None = None
    test_tissue: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (shapes, indices, box, spacing; no pixel arrays).

        Returns
        -------
        dict
            The summary.
        """
        return {
            "axis": self.axis,
            "n_train": int(len(self.train)), "n_test": int(len(self.test)),
            "shape": list(self.train.shape[1:]),
            "shape_lr": None if self.train_lr is None else list(self.train_lr.shape[1:]),
            "spacing": list(self.spacing), "spacing_lr": None if self.spacing_lr is None else list(self.spacing_lr),
            "indices": {k: [int(i) for i in v] for k, v in self.indices.items()},
            "box": {k: [int(a), int(b)] for k, (a, b) in self.box.items()},
            "slabs": [[int(a), int(b)] for a, b in self.slabs],
            "brain_fraction_train": float(self.train_mask.mean()) if self.train_mask.size else 0.0,
            "meta": dict(self.meta),
        }


def slab_split(n: int, held_out: float = 0.25, gap: int = 2, slabs: int = 2, seed: int = 0):
    """Split ``n`` consecutive slices into training slices and held-out contiguous slabs.

    ``round(held_out * n)`` slices are held out in ``slabs`` contiguous slabs at seeded
    positions; the ``gap`` slices on each side of a slab that touch training slices are
    dropped, so every held-out slice is more than ``gap`` slices away from every training
    slice.

    Parameters
    ----------
    n : int
        Number of slices (positions ``0 .. n - 1``).
    held_out : float, optional
        Fraction of the slices held out, in (0, 1).
    gap : int, optional
        Slices dropped between a held-out slab and the training slices.
    slabs : int, optional
        Number of held-out slabs.
    seed : int, optional
        Seed of the slab positions.

    Returns
    -------
    train, test, gap : numpy.ndarray
        Positions (int64, sorted) of the training, held-out and dropped slices.
    bounds : list of (int, int)
        First and last position of each slab.

    Raises
    ------
    InputError
        For ``held_out`` outside (0, 1), a negative ``gap``, ``slabs < 1``, or too few slices.

    Examples
    --------
    >>> tr, te, gp, b = slab_split(20, held_out=0.25, gap=1, slabs=1, seed=0)
    >>> len(te), len(gp) <= 2, int(np.abs(te[:, None] - tr[None]).min()) > 1
    (5, True, True)
    """
    n = check_number(n, "n", integer=True, low=1)
    held_out = check_number(held_out, "held_out", low=0.0, high=1.0, low_open=True)
    if held_out >= 1.0:
        raise InputError(f"held_out: got {held_out}; expected a fraction in (0, 1)")
    gap = check_number(gap, "gap", integer=True, low=0)
    slabs = check_number(slabs, "slabs", integer=True, low=1)
    seed = check_number(seed, "seed", integer=True)
    n_test = max(slabs, int(round(held_out * n)))
    free = n - n_test - 2 * gap * slabs
    if free < max(1, slabs - 1):
        need = n_test + 2 * gap * slabs + max(1, slabs - 1)
        raise InputError(f"held_out, gap, slabs: {n_test} held-out slices in {slabs} slab(s) with gaps of {gap} "
                         f"need at least {need} slices; got {n} (lower held_out, gap or slabs)")
    rng = np.random.default_rng(seed)
    lengths = np.full(slabs, n_test // slabs)
    lengths[: n_test % slabs] += 1
    lengths = rng.permutation(lengths)
    # training runs before, between and after the slabs: a random composition of `free`
    # into slabs + 1 parts, the inner ones at least 1 (so slabs never merge)
    inner = slabs - 1
    cuts = np.sort(rng.choice(free - inner + slabs, size=slabs, replace=False))
    parts = np.diff(np.concatenate([[0], cuts - np.arange(slabs), [free - inner]]))
    parts[1:-1] += 1
    kind = np.empty(n, dtype=np.int8)          # 0 train, 1 test, 2 gap
    pos, bounds = 0, []
    for i in range(slabs):
        kind[pos: pos + parts[i]] = 0
        pos += parts[i]
        kind[pos: pos + gap] = 2
        pos += gap
        kind[pos: pos + lengths[i]] = 1
        bounds.append((int(pos), int(pos + lengths[i] - 1)))
        pos += lengths[i]
        kind[pos: pos + gap] = 2
        pos += gap
    kind[pos:] = 0
    # a gap that touches no training slice (a slab at either end) stays dropped
    idx = np.arange(n)
    return idx[kind == 0], idx[kind == 1], idx[kind == 2], bounds


@functools.lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm T1 in [0, 1] and its filled brain mask (cached, read-only)."""
    from .catalogue import load

    t1 = load("mni152-t1").numpy().astype(np.float32) / np.float32(255.0)
    mask = ndi.binary_fill_holes(t1 > 0.2)
    t1.flags.writeable = False
    mask.flags.writeable = False
    return t1, mask


@functools.lru_cache(maxsize=1)
def _tissue_volume() -> np.ndarray:
    """uint8 labels 0 background, 1 CSF, 2 GM, 3 WM of the 1 mm template (cached, read-only)."""
    from .catalogue import load

    _, mask = _template()
    gm = load("mni152-gm").numpy().astype(np.float32)
    wm = load("mni152-wm").numpy().astype(np.float32)
    gm /= max(float(gm.max()), 1e-6) if gm.max() > 1.5 else 1.0
    wm /= max(float(wm.max()), 1e-6) if wm.max() > 1.5 else 1.0
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    lab = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
    lab[~mask] = 0
    lab.flags.writeable = False
    return lab


def mni152_tissues() -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm MNI152 T1 template and its CSF / grey / white-matter label volume.

    The labels are the most probable class of nilearn's grey- and white-matter probability
    maps (``mni152-gm``, ``mni152-wm``) with ``CSF = 1 - GM - WM`` (clipped to [0, 1]) inside
    the filled brain mask ``T1 > 0.2`` (nilearn's ``load_mni152_brain_mask``); outside it 0.

    Returns
    -------
    t1 : numpy.ndarray
        float32 T1 in [0, 1], array axes ``(z, y, x)``, 1 mm (read-only, shared).
    labels : numpy.ndarray
        uint8 labels, :data:`TISSUES` names them (read-only, shared).

    Raises
    ------
    SampleNotFoundError
        When nilearn is not installed.

    Examples
    --------
    >>> t1, lab = mni152_tissues()                                   # doctest: +SKIP
    >>> t1.shape == lab.shape, sorted(np.unique(lab).tolist())         # doctest: +SKIP
    (True, [0, 1, 2, 3])
    """
    return _template()[0], _tissue_volume()


def _to_slices(vol: np.ndarray, ax: int) -> np.ndarray:
    """(n, rows, cols) in display orientation: axial rows anterior -> posterior, coronal and
    sagittal rows superior -> inferior (array axes z, y, x: z inferior -> superior, y posterior
    -> anterior, x the subject's left -> right)."""
    if ax == 0:
        return vol[:, ::-1, :]
    if ax == 1:
        return np.moveaxis(vol, 1, 0)[:, ::-1, :]
    return np.moveaxis(vol, 2, 0)[:, ::-1, :]


def _crop(stack: np.ndarray, lo, hi) -> np.ndarray:
    """stack[:, lo0:hi0, lo1:hi1] with zero padding where the box leaves the array."""
    n, h, w = stack.shape
    out = np.zeros((n, hi[0] - lo[0], hi[1] - lo[1]), dtype=stack.dtype)
    s0, s1 = max(lo[0], 0), max(lo[1], 0)
    e0, e1 = min(hi[0], h), min(hi[1], w)
    out[:, s0 - lo[0]: e0 - lo[0], s1 - lo[1]: e1 - lo[1]] = stack[:, s0:e0, s1:e1]
    return out


def _low_res(stack: np.ndarray, f: int, method: str) -> np.ndarray:
    n, h, w = stack.shape
    if method == "area":
        return stack.reshape(n, h // f, f, w // f, f).mean(axis=(2, 4), dtype=np.float64).astype(np.float32)
    # nilearn: resample_img(..., "continuous") = affine_transform(order=3, cval=0) onto the grid f * i
    out = np.empty((n, h // f, w // f), dtype=np.float32)
    for i in range(n):
        out[i] = ndi.affine_transform(stack[i].astype(np.float64), np.diag([float(f), float(f)]),
                                      output_shape=(h // f, w // f), order=3, mode="constant", cval=0.0)
    out[np.abs(out) < 1e-6] = 0.0          # the spline at sample positions returns the data up to rounding (1e-17)
    return out


def mni152_slices(axis: str = "axial", size=None, held_out: float = 0.25, gap: int = 2, low_res=None,
                  seed: int = 0, brain_only: bool = True, lr_method: str = "nilearn", slabs: int = 2,
                  min_brain: float = 0.1, tissues: bool = False) -> SliceSet:
    """2-D slices of the real MNI152 T1 template (1 mm) split into training and held-out slabs.

    Needs nilearn (it ships the template).  Steps:

    1. the 1 mm T1, as float32 in [0, 1] (the file's uint8 / 255, nilearn's own scaling; see
       :data:`UNITS`); brain mask = ``T1 > 0.2`` with holes filled -- nilearn ships no mask
       file, and this is how ``nilearn.datasets.load_mni152_brain_mask`` makes its mask
       (threshold 0.2 of the rescaled template; the grey + white matter probability maps
       above 0.5 miss the CSF of the midline and sulci);
    2. slices along ``axis`` whose brain area is below ``min_brain`` times the largest
       slice's are dropped;
    3. every slice is cropped to the common brain bounding box of the kept slices (start and
       size rounded to a multiple of the low-resolution factor, so the low-resolution grid
       is nilearn's 2 mm grid);
    4. ``size`` (optional): the box is then cropped or zero-padded symmetrically about its
       centre to ``size`` pixels at 1 mm -- no resampling, the spacing stays 1 mm (a 96 x 96
       or 128 x 128 axial slice holds the central part of the brain);
    5. contiguous held-out slabs (:func:`slab_split`): ``held_out`` of the slices in ``slabs``
       slabs, ``gap`` slices dropped on each side of a slab.

    Orientation: axial slices have rows from anterior to posterior, coronal and sagittal
    slices rows from superior to inferior; columns run from the subject's left to right
    (axial, coronal) or posterior to anterior (sagittal).

    Parameters
    ----------
    axis : {"axial", "coronal", "sagittal"}, optional
        Slicing direction.
    size : int or (int, int), optional
        Output ``(H, W)`` by cropping / padding about the brain centre (default: the brain box).
        Each must be a multiple of the low-resolution factor.
    held_out : float, optional
        Fraction of the slices in the held-out slabs, in (0, 1).
    gap : int, optional
        Slices dropped between a held-out slab and the training slices.
    low_res : float, optional
        Low-resolution pixel size in mm, an integer multiple of 1 mm (``2.0``: nilearn's 2 mm
        template); adds ``train_lr`` / ``test_lr`` of shape ``(H / f, W / f)``.
    seed : int, optional
        Seed of the slab positions.
    brain_only : bool, optional
        Set the pixels outside the brain mask to 0 (the template is skull-stripped already;
        this removes only its faint rim below the mask threshold).
    lr_method : {"nilearn", "area"}, optional
        How the low-resolution slices are made (see the module notes): ``"nilearn"``, nilearn's
        cubic-spline resampling onto every ``f``-th 1 mm pixel (for an integer factor this
        equals the decimation ``hr[::f, ::f]`` of the volume grid), or ``"area"``, the mean of
        ``f x f`` blocks.
    slabs : int, optional
        Number of held-out slabs.
    min_brain : float, optional
        Keep slices whose brain area is at least this fraction of the largest slice's.
    tissues : bool, optional
        Also return the CSF / GM / WM labels of every slice (``train_tissue``, ``test_tissue``;
        see :func:`mni152_tissues`).

    Returns
    -------
    SliceSet
        ``train``, ``test`` (N, H, W) float32, masks, indices, spacing, crop box, slabs.

    Raises
    ------
    InputError
        For an unknown ``axis`` or ``lr_method``, a ``low_res`` that is not an integer
        multiple of 1 mm, a ``size`` that is not positive or not a multiple of the factor,
        and the errors of :func:`slab_split`.
    SampleNotFoundError
        When nilearn is not installed.

    Examples
    --------
    >>> s = mni152_slices("axial", size=96, low_res=2.0)          # doctest: +SKIP
    >>> s.train.shape[1:], s.train_lr.shape[1:], s.spacing_lr      # doctest: +SKIP
    ((96, 96), (48, 48), (2.0, 2.0))
    """
    if axis not in _AXES:
        raise InputError(f"axis: got {axis!r}; expected one of {sorted(_AXES)}")
    if lr_method not in ("nilearn", "area"):
        raise InputError(f"lr_method: got {lr_method!r}; expected 'nilearn' or 'area'")
    f = 1
    if low_res is not None:
        lr = check_number(low_res, "low_res", positive=True)
        if abs(lr - round(lr)) > 1e-6 or round(lr) < 2:
            raise InputError(f"low_res: got {low_res!r}; expected an integer multiple (>= 2) of the 1 mm "
                             "template spacing, e.g. 2.0")
        f = int(round(lr))
    if size is not None:
        sz = np.atleast_1d(np.asarray(size)).ravel()
        if sz.size == 1:
            sz = np.repeat(sz, 2)
        if sz.size != 2 or not np.all(np.mod(sz, 1) == 0) or np.any(sz < f) or np.any(sz % f):
            raise InputError(f"size: got {size!r}; expected one or two positive integers"
                             + (f" divisible by the low-resolution factor {f}" if f > 1 else ""))
        size = (int(sz[0]), int(sz[1]))
    min_brain = check_number(min_brain, "min_brain", low=0.0, high=1.0)
    seed = check_number(seed, "seed", integer=True)
    held = check_number(held_out, "held_out", low=0.0, high=1.0, low_open=True)
    if held >= 1.0:
        raise InputError(f"held_out: got {held_out}; expected a fraction in (0, 1)")
    check_number(gap, "gap", integer=True, low=0)
    check_number(slabs, "slabs", integer=True, low=1)
    ax = _AXES[axis]

    t1, mask3 = _template()
    if brain_only:
        t1 = np.where(mask3, t1, np.float32(0.0))
    # slice positions along the axis: index k of the volume's axis `ax`
    area = mask3.sum(axis=tuple(a for a in range(3) if a != ax))
    keep = np.nonzero(area >= max(1.0, min_brain * area.max()))[0]
    k0, k1 = int(keep[0]), int(keep[-1]) + 1          # brain slices are contiguous
    stack = _to_slices(t1, ax)[k0:k1]
    mstack = _to_slices(mask3, ax)[k0:k1]
    tstack = _to_slices(_tissue_volume(), ax)[k0:k1] if tissues else None

    # common brain box in the display frame; the low-res grid must be nilearn's (even 1 mm indices
    # of the volume): rows are flipped, so align row starts from the end of the flipped axis
    n_rows, n_cols = stack.shape[1:]
    rows = np.nonzero(mstack.any(axis=(0, 2)))[0]
    cols = np.nonzero(mstack.any(axis=(0, 1)))[0]

    def box1(lo, hi, n, flipped, want):
        # [lo, hi) -> aligned to f in the volume's own index (volume index = n - 1 - row when flipped)
        if want is not None:
            c = (lo + hi) / 2.0
            lo = int(np.floor(c - want / 2.0))
            hi = lo + want
        if flipped:
            vlo, vhi = n - hi, n - lo                # volume indices [vlo, vhi)
            vlo -= vlo % f
            vhi = vlo + int(np.ceil((vhi - vlo) / f)) * f if want is None else vlo + want
            return n - vhi, n - vlo
        lo -= lo % f
        hi = lo + int(np.ceil((hi - lo) / f)) * f if want is None else lo + want
        return lo, hi

    r0, r1 = box1(int(rows[0]), int(rows[-1]) + 1, n_rows, True, None if size is None else size[0])
    c0, c1 = box1(int(cols[0]), int(cols[-1]) + 1, n_cols, False, None if size is None else size[1])
    stack = _crop(stack, (r0, c0), (r1, c1))
    mstack = _crop(mstack, (r0, c0), (r1, c1))
    if tissues:
        tstack = _crop(tstack, (r0, c0), (r1, c1))

    tr, te, gp, bounds = slab_split(len(stack), held_out=held_out, gap=gap, slabs=slabs, seed=seed)
    plane = [a for a in range(3) if a != ax]
    names = "zyx"
    # box in volume indices of the two in-plane axes (rows flipped back)
    box = {names[plane[0]]: (int(n_rows - r1), int(n_rows - r0)), names[plane[1]]: (int(c0), int(c1))}
    out = SliceSet(
        train=np.ascontiguousarray(stack[tr]), test=np.ascontiguousarray(stack[te]),
        train_mask=np.ascontiguousarray(mstack[tr]), test_mask=np.ascontiguousarray(mstack[te]),
        indices={"train": tr + k0, "test": te + k0, "gap": gp + k0},
        spacing=(1.0, 1.0), axis=axis, box=box, slabs=[(int(a) + k0, int(b) + k0) for a, b in bounds],
        meta={"source": "mni152-t1 (nilearn, MNI ICBM152 2009a symmetric, 1 mm)", "units": UNITS,
              "mask": "T1 > 0.2, holes filled (nilearn's load_mni152_brain_mask)", "held_out": float(held_out),
              "gap": int(gap), "seed": int(seed), "brain_only": bool(brain_only), "size": size,
              "min_brain": float(min_brain), "slice_spacing_mm": 1.0,
              "orientation": {"axial": "rows anterior->posterior, columns left->right",
                              "coronal": "rows superior->inferior, columns left->right",
                              "sagittal": "rows superior->inferior, columns posterior->anterior"}[axis]})
    if tissues:
        out.train_tissue = np.ascontiguousarray(tstack[tr])
        out.test_tissue = np.ascontiguousarray(tstack[te])
        out.meta["tissues"] = {"labels": list(TISSUES), "rule": "argmax of (1 - GM - WM, GM, WM) inside the mask"}
    if f > 1:
        # flip rows back so the decimation grid starts at an f-aligned volume index, then flip again
        out.train_lr = _low_res(out.train[:, ::-1], f, lr_method)[:, ::-1].copy()
        out.test_lr = _low_res(out.test[:, ::-1], f, lr_method)[:, ::-1].copy()
        out.spacing_lr = (float(f), float(f))
        out.meta.update({"low_res": float(f), "lr_method": lr_method})
    return out
