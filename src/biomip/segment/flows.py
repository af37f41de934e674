"""Cellpose-style instance flows (Stringer et al. 2021): the representation and its inverse.

* :func:`masks_to_flows` -- for every instance, heat diffused from its centre (the
  member pixel closest to its median) with the other pixels of the instance as the only
  conductors; the normalised spatial gradient of that heat is a unit flow pointing to
  the centre.  All instances diffuse together (a masked Jacobi iteration on torch), 2-D
  or 3-D.
* :func:`flows_to_masks` -- instance recovery: every foreground pixel follows the flow
  (Euler steps with linear interpolation of the field), the end points pile up at the
  centres; local maxima of the end-point histogram seed the instances and every pixel
  joins the seed its trajectory ends next to.  Flow consistency (the flows of the
  recovered masks against the given ones) is reported so bad masks can be dropped.

The network (:func:`train_flows`): a :class:`~biomip.segment.unet.UNet` with ``d + 1``
outputs, ``5 x`` flows regressed by MSE and the cell probability by binary
cross-entropy (Cellpose's losses), trained on patches whose flows are recomputed after
each augmentation; :func:`predict_instances` runs it by sliding windows and recovers
instances; :func:`fine_tune` is the human-in-the-loop entry point: add corrected masks,
train a few epochs from the current weights, see the metric move.

Volumes (3-D), three routes, as Cellpose:

* a **3-D network** (:func:`train_flows` on volumes): 3-D flows from 3-D labels, a 3-D
  U-Net, 3-D flow following;
* a **2-D network run slice by slice** (:func:`train_flows` with ``dimension="2d"`` trains
  it on the slices of labelled volumes): every slice gets 2-D masks, then
  :func:`stitch_slices` links the masks of neighbouring slices whose IoU reaches
  ``stitch_threshold`` (Cellpose's ``stitch_threshold``);
* a **2-D network on the three orthogonal planes** (``do_3d=True``, Cellpose's
  ``do_3D``): the 2-D flows of the ZY, ZX and YX slicings are averaged into one 3-D
  field (:func:`planes_to_flows`) that is followed in 3-D.

A ``diameter`` (mm) rescales the input so that objects have the size the network was
trained on (``model.meta["diameter_voxels"]``), and makes anisotropic volumes isotropic.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import InputError
from ..core.image import Image

__all__ = ["masks_to_flows", "flows_to_masks", "train_flows", "predict_instances", "fine_tune", "normalize_percentile",
           "stitch_slices", "planes_to_flows"]


def _labels(x, name="labels"):
    a = x.numpy() if isinstance(x, Image) else np.asarray(x)
    if a.ndim not in (2, 3):
        raise InputError(f"{name}: got {a.ndim}-D; expected a 2-D or 3-D instance label image")
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name}: got dtype {a.dtype}; expected integer instance labels")
    if a.size and a.min() < 0:
        raise InputError(f"{name}: negative ids; expected 0 = background and 1..n instances")
    return a


def _centres(lab: np.ndarray) -> np.ndarray:
    """(n, d) index of each instance's centre: the member closest to the median position."""
    from scipy import ndimage as ndi

    n = int(lab.max())
    out = np.zeros((n, lab.ndim), np.int64)
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        pts = np.argwhere(lab[sl] == i)
        med = np.median(pts, axis=0)
        out[i - 1] = pts[np.argmin(((pts - med) ** 2).sum(1))] + [s.start for s in sl]
    return out


def masks_to_flows(labels, iterations: int | None = None, device=None) -> np.ndarray:
    """Unit flows ``(d, *S)`` of an instance label image (Cellpose's representation).

    For every instance, heat diffuses from its centre (the member pixel closest to its
    median) with the other pixels of the instance as the only conductors; the normalised
    spatial gradient of that heat is a unit flow pointing to the centre.  All instances
    diffuse together (a masked Jacobi iteration on torch), 2-D or 3-D.  Component 0 is
    along the first array axis (y in 2-D, z in 3-D) -- the array order of Cellpose; zero on
    the background.

    Parameters
    ----------
    labels : Image or array_like
        2-D / 3-D integer instance labels (0 = background).
    iterations : int or None, optional
        Jacobi iterations of the heat diffusion (default: twice the largest instance
        extent in voxels, plus 10).
    device : str or torch.device or None, optional
        Where the diffusion runs (default CPU).

    Returns
    -------
    numpy.ndarray
        float32 flows ``(d, *S)``, components in array order.

    Raises
    ------
    InputError
        For labels that are not 2-D / 3-D non-negative integers.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((32, 32), int); lab[8:24, 8:24] = 1
    >>> fl = masks_to_flows(lab)
    >>> fl.shape, bool(fl[1, 16, 10] > 0.9)          # left of the centre, flow points right (+x)
    ((2, 32, 32), True)
    """
    lab = _labels(labels)
    d = lab.ndim
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if lab.max() == 0:
        return np.zeros((d, *lab.shape), np.float32)
    from scipy import ndimage as ndi

    ext = max(max(s.stop - s.start for s in sl) for sl in ndi.find_objects(lab) if sl is not None)
    n_it = int(iterations) if iterations is not None else 2 * ext + 10
    L = torch.as_tensor(lab.astype(np.int64), device=dev)
    pad = tuple([1, 1] * d)
    Lp = F.pad(L[None, None].float(), pad, value=-1)[0, 0]
    centres = torch.as_tensor(_centres(lab), device=dev)
    # neighbour masks: a neighbour conducts only inside the same instance
    shifts = []
    for ax in range(d):
        for s in (-1, 1):
            sl = [slice(1, -1)] * d
            sl[ax] = slice(1 + s, Lp.shape[ax] - 1 + s)
            shifts.append((ax, s, (Lp[tuple(sl)] == L.float()) & (L > 0)))
    heat = torch.zeros(lab.shape, device=dev, dtype=torch.float64)
    cidx = tuple(centres.T)
    for _ in range(n_it):
        heat[cidx] += 1.0
        hp = F.pad(heat[None, None], pad)[0, 0]
        acc = heat.clone()
        cnt = torch.ones_like(heat)
        for ax, s, same in shifts:
            sl = [slice(1, -1)] * d
            sl[ax] = slice(1 + s, hp.shape[ax] - 1 + s)
            acc = acc + torch.where(same, hp[tuple(sl)], torch.zeros_like(heat))
            cnt = cnt + same.to(heat.dtype)
        heat = torch.where(L > 0, acc / cnt, torch.zeros_like(heat))
    lg = torch.log1p(heat)
    grads = []
    for ax in range(d):          # central differences of log-heat inside the instance
        fw = [s for s in shifts if s[0] == ax]
        lp = F.pad(lg[None, None], pad)[0, 0]
        vals = []
        for _, s, same in fw:
            sl = [slice(1, -1)] * d
            sl[ax] = slice(1 + s, lp.shape[ax] - 1 + s)
            vals.append(torch.where(same, lp[tuple(sl)], lg))
        grads.append(0.5 * (vals[1] - vals[0]))
    g = torch.stack(grads)
    norm = torch.sqrt((g * g).sum(0)).clamp_min(1e-12)
    flows = torch.where(L[None] > 0, g / norm, torch.zeros_like(g))
    return flows.float().cpu().numpy()


def trace_flows(flows: torch.Tensor, pts: torch.Tensor, niter: int, origin=None, size=None) -> torch.Tensor:
    """Euler integration of points ``(n, d)`` (array index order) along ``flows`` ``(d, *S)``.

    Points are in the coordinates of the whole image (``size``, default ``S``; they stay
    inside it), the flows cover the box that starts at ``origin`` (default 0).  Linear
    interpolation takes the integer part and the fraction of the global position, so a box
    gives bitwise the trajectories of the whole image as long as they stay inside it
    (chunked instance recovery relies on that).
    """
    from ..ops import fieldkernels

    d = flows.shape[0]
    shape = list(flows.shape[1:])
    if pts.device.type == "cpu" and fieldkernels.AVAILABLE:          # one fused numba loop per point
        fl = flows.detach().cpu().numpy().astype(np.float32, copy=False)
        p = pts.detach().cpu().numpy().astype(np.float64)
        org = np.asarray([0] * d if origin is None else list(origin), np.int64)
        top = np.asarray([n - 1 for n in (shape if size is None else size)], np.float64)
        if d == 2:
            fl = np.concatenate([np.zeros((1, 1, *shape), np.float32), fl[:, None]])
            p = np.concatenate([np.zeros((len(p), 1)), p], axis=1)
            org, top = np.concatenate([[0], org]), np.concatenate([[0.0], top])
        out = np.empty_like(p)
        fieldkernels.follow_flows(np.ascontiguousarray(fl), np.ascontiguousarray(p), int(niter), org, top, out)
        return torch.from_numpy(out[:, 1:] if d == 2 else out)
    org = torch.as_tensor([0] * d if origin is None else list(origin), dtype=torch.long, device=pts.device)
    top = torch.as_tensor([n - 1 for n in (shape if size is None else size)], dtype=pts.dtype, device=pts.device)
    table = flows.reshape(d, -1).T.contiguous()                       # (voxels, d)
    strides = [int(np.prod(shape[a + 1:])) for a in range(d)]
    zero = torch.zeros_like(top)
    for _ in range(niter):
        base = torch.floor(pts)
        frac = pts - base
        i0 = base.long() - org
        # corner offsets and weights, built axis by axis (the same order everywhere)
        idx, w = [torch.zeros_like(i0[:, 0])], [torch.ones_like(pts[:, 0])]
        for a in range(d):
            lo = i0[:, a].clamp(0, shape[a] - 1) * strides[a]
            hi = (i0[:, a] + 1).clamp(0, shape[a] - 1) * strides[a]
            f = frac[:, a]
            idx = [j + k for j in idx for k in (lo, hi)]
            w = [u * g for u in w for g in (1 - f, f)]
        v = w[0][:, None] * table[idx[0]]
        for j, u in zip(idx[1:], w[1:]):
            v = v + u[:, None] * table[j]
        pts = torch.minimum(torch.maximum(pts + v, zero), top)
    return pts


def endpoint_histogram(ends: torch.Tensor, shape, origin=None) -> torch.Tensor:
    """Counts of the rounded end points ``(n, d)`` (global coordinates) on the box ``shape`` at ``origin``."""
    cells = torch.round(ends).long()
    if origin is not None:
        cells = cells - torch.as_tensor(list(origin), dtype=torch.long, device=ends.device)
    inside = ((cells >= 0) & (cells < torch.as_tensor(list(shape), device=ends.device))).all(1)
    hist = torch.zeros(tuple(shape), device=ends.device)
    hist.index_put_(tuple(cells[inside].T), torch.ones(int(inside.sum()), device=ends.device), accumulate=True)
    return hist


def histogram_seeds(hist: torch.Tensor, min_size: int) -> torch.Tensor:
    """Seeds ``(m, d)`` (box index, C order): local maxima (5-voxel window) of the end-point histogram
    with enough support."""
    pool = F.max_pool2d if hist.ndim == 2 else F.max_pool3d
    hmax = pool(hist[None, None], 5, stride=1, padding=2)[0, 0]
    return torch.nonzero((hist == hmax) & (hist > max(3.0, 0.1 * min_size)))


def nearest_seed(ends: np.ndarray, seeds: np.ndarray, radius: float = 4.0) -> np.ndarray:
    """Index of the seed nearest to each end point (float64 distances, ties to the first seed), -1
    when none is closer than ``radius`` voxels."""
    from scipy.spatial import cKDTree

    which = np.full(len(ends), -1, np.int64)
    if len(seeds) == 0 or len(ends) == 0:
        return which
    k = min(4, len(seeds))
    dist, idx = cKDTree(np.asarray(seeds, np.float64)).query(np.asarray(ends, np.float64), k=k,
                                                             distance_upper_bound=radius)
    dist, idx = dist.reshape(len(ends), k), idx.reshape(len(ends), k)
    best = dist.min(1)
    cand = np.where(dist == best[:, None], idx, np.iinfo(np.int64).max)
    ok = best < radius
    which[ok] = cand[ok].min(1)
    return which


def flows_to_masks(flows, probability, threshold: float = 0.5, niter: int | None = None, min_size: int = 15,
                   flow_threshold: float | None = 0.4, device=None):
    """Instances from flows ``(d, *S)`` and a cell-probability map ``(*S)``.

    Every foreground pixel follows the flow (Euler steps with linear interpolation of the
    field), the end points pile up at the centres; local maxima of the end-point histogram
    seed the instances and every pixel joins the seed its trajectory ends next to.  Masks
    whose flows disagree with the given ones are dropped, as Cellpose.

    Parameters
    ----------
    flows : array_like
        ``(d, *S)`` flows, components in array order (as :func:`masks_to_flows`).
    probability : array_like or Image
        ``(*S)`` cell probability.
    threshold : float, optional
        Foreground is ``probability > threshold``.
    niter : int or None, optional
        Euler steps (default 200); each moves a point by the flow, in voxels.
    min_size : int, optional
        Masks with fewer voxels are dropped.
    flow_threshold : float or None, optional
        Masks whose flow error (mean squared difference between the flows recomputed
        from the masks and the given ones) exceeds it are dropped; ``None`` keeps all.
    device : str or torch.device or None, optional
        Where the integration runs (default CPU).

    Returns
    -------
    labels : numpy.ndarray
        int32 label image (0 = background).
    info : dict
        The number of ``seeds``, masks dropped for size (``dropped_small``) or flow error
        (``dropped_flow``), and the ``flow_error`` of each kept mask.

    Raises
    ------
    InputError
        For shapes that do not fit together or NaN / Inf.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((32, 32), int); lab[4:14, 4:14] = 1; lab[18:30, 16:28] = 2
    >>> out, info = flows_to_masks(masks_to_flows(lab), (lab > 0).astype(float))
    >>> int(out.max()), info["seeds"]
    (2, 2)
    """
    fl = np.asarray(flows, dtype=np.float32)
    pr = np.asarray(probability.numpy() if isinstance(probability, Image) else probability, dtype=np.float32)
    if fl.ndim - 1 != pr.ndim or fl.shape[0] != pr.ndim or fl.shape[1:] != pr.shape:
        raise InputError(f"flows, probability: got shapes {fl.shape} and {pr.shape}; expected (d, *S) and S")
    if not (np.all(np.isfinite(fl)) and np.all(np.isfinite(pr))):
        raise InputError("flows, probability: contain NaN/Inf")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    fg = pr > threshold
    if not fg.any():
        return np.zeros(pr.shape, np.int32), {"seeds": 0, "dropped_small": 0, "dropped_flow": 0, "flow_error": {}}
    n_it = int(niter) if niter is not None else 200
    start = np.argwhere(fg)
    end = trace_flows(torch.as_tensor(fl * fg, device=dev), torch.as_tensor(start, dtype=torch.float32, device=dev), n_it)
    # histogram of end points; seeds are its local maxima with enough support
    seeds = histogram_seeds(endpoint_histogram(end, pr.shape), min_size)
    if len(seeds) == 0:
        return np.zeros(pr.shape, np.int32), {"seeds": 0, "dropped_small": 0, "dropped_flow": 0, "flow_error": {}}
    # each pixel joins the seed nearest to its end point (within a few voxels)
    which = nearest_seed(end.cpu().numpy(), seeds.cpu().numpy())
    lab = np.zeros(pr.shape, np.int32)
    ok = which >= 0
    lab[tuple(start[ok].T)] = which[ok] + 1
    # drop small masks, then masks whose own flows disagree with the given ones
    counts = np.bincount(lab.ravel())
    small = np.nonzero(counts < min_size)[0]
    lab[np.isin(lab, small[small > 0])] = 0
    from skimage.segmentation import relabel_sequential

    lab = relabel_sequential(lab)[0].astype(np.int32)
    info = {"seeds": int(len(seeds)), "dropped_small": int((small > 0).sum()), "dropped_flow": 0, "flow_error": {}}
    if flow_threshold is not None and lab.max() > 0:
        own = masks_to_flows(lab, device=dev)
        err = ((own - fl) ** 2).sum(0)
        n = int(lab.max())
        per = np.bincount(lab.ravel(), weights=err.ravel(), minlength=n + 1) / np.maximum(
            np.bincount(lab.ravel(), minlength=n + 1), 1)
        bad = [i for i in range(1, n + 1) if per[i] > flow_threshold]
        lab[np.isin(lab, bad)] = 0
        lab = relabel_sequential(lab)[0].astype(np.int32)
        info["dropped_flow"] = len(bad)
        info["flow_error"] = {int(i): float(per[i]) for i in range(1, n + 1) if i not in bad}
    return lab, info


def stitch_slices(labels, threshold: float = 0.25):
    """3-D instances from a stack of independently labelled 2-D slices (Cellpose's stitching).

    Slice by slice along the first axis, every mask of slice ``z + 1`` takes the id of the
    mask of slice ``z`` it overlaps most when their IoU reaches ``threshold`` (and that mask
    is its best match too); otherwise it starts a new object.

    Parameters
    ----------
    labels : Image or array_like
        ``(Z, Y, X)`` integer labels whose ids need not agree between slices (0 =
        background).
    threshold : float, optional
        Smallest IoU that links two masks of neighbouring slices, in ``(0, 1]``.

    Returns
    -------
    Image or numpy.ndarray
        int32 3-D instances ``1..n``; an Image with the input's geometry when the input is
        one.

    Raises
    ------
    InputError
        For labels that are not 3-D non-negative integers or a threshold outside ``(0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((3, 8, 8), int)
    >>> lab[0, 1:5, 1:5] = 4; lab[1, 1:5, 2:6] = 1; lab[2, 1:5, 2:6] = 7; lab[2, 6:8, 6:8] = 2
    >>> out = stitch_slices(lab)
    >>> int(out.max()), bool(out[0, 2, 2] == out[2, 2, 3])
    (2, True)
    """
    from skimage.segmentation import relabel_sequential

    lab = _labels(labels)
    if lab.ndim != 3:
        raise InputError(f"labels: got {lab.ndim}-D; expected a (Z, Y, X) stack of 2-D label slices")
    if isinstance(threshold, bool) or not (0 < float(threshold) <= 1):
        raise InputError(f"threshold: got {threshold!r}; expected an IoU in (0, 1]")
    out = np.zeros(lab.shape, np.int32)
    nxt = 1
    prev = None
    for z in range(lab.shape[0]):
        cur, _, _ = relabel_sequential(lab[z].astype(np.int64))
        n = int(cur.max())
        if n == 0:
            prev = None
            continue
        ids = np.zeros(n + 1, np.int64)
        if prev is not None and prev.max() > 0:
            pid, p_inv = np.unique(prev.ravel(), return_inverse=True)
            cont = np.zeros((n + 1, pid.size), np.int64)
            np.add.at(cont, (cur.ravel(), p_inv.ravel()), 1)
            area_c = np.bincount(cur.ravel(), minlength=n + 1)
            area_p = cont.sum(0)
            inter = cont[1:, pid != 0].astype(float)
            union = area_c[1:, None] + area_p[None, pid != 0] - inter
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            iou[iou < float(threshold)] = 0.0
            iou[iou < iou.max(axis=0, keepdims=True)] = 0.0          # a previous mask continues in one mask only
            best = iou.argmax(axis=1)
            linked = iou.max(axis=1) > 0
            ids[1:][linked] = pid[pid != 0][best[linked]]
        new = np.nonzero(ids[1:] == 0)[0] + 1
        ids[new] = np.arange(nxt, nxt + new.size)
        nxt += new.size
        out[z] = ids[cur]
        prev = out[z]
    out = relabel_sequential(out)[0].astype(np.int32)
    return labels.with_array(out) if isinstance(labels, Image) else out


def planes_to_flows(planes):
    """One 3-D flow field and cell probability from 2-D predictions on the three
    orthogonal slicings of a volume (Cellpose's ``do_3D``).

    ``planes[a]`` holds what a 2-D model gives when the volume is sliced along array axis
    ``a``: the flow along the first and the second remaining axis and the cell
    probability.  Every 3-D flow component is seen by two slicings and is their mean; the
    probability is the mean of the three.

    Parameters
    ----------
    planes : sequence of array_like
        Three ``(3, Z, Y, X)`` arrays, for slicings along axis 0 (YX slices: ``y, x``
        flows), axis 1 (ZX slices: ``z, x``) and axis 2 (ZY slices: ``z, y``), each
        followed by the probability.

    Returns
    -------
    flows : numpy.ndarray
        ``(3, Z, Y, X)`` float32 flows, components in array order.
    probability : numpy.ndarray
        ``(Z, Y, X)`` float32 mean cell probability.

    Raises
    ------
    InputError
        For anything but three ``(3, Z, Y, X)`` arrays of one shape.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((20, 20, 20), int); lab[4:16, 4:16, 4:16] = 1
    >>> planes = []
    >>> for a in range(3):                        # true 2-D flows of every slice, per slicing
    ...     sl = np.moveaxis(lab, a, 0)
    ...     f = np.stack([masks_to_flows(s) for s in sl], axis=1)          # (2, n, ...)
    ...     p = (sl > 0)[None].astype(np.float32)
    ...     planes.append(np.moveaxis(np.concatenate([f, p]), 1, a + 1))
    >>> flows, prob = planes_to_flows(planes)
    >>> out, info = flows_to_masks(flows, prob)
    >>> int(out.max())
    1
    """
    if len(planes) != 3:
        raise InputError(f"planes: got {len(planes)} array(s); expected 3 (slicings along axes 0, 1, 2)")
    ps = [np.asarray(p, dtype=np.float32) for p in planes]
    if any(p.ndim != 4 or p.shape[0] != 3 or p.shape != ps[0].shape for p in ps):
        raise InputError(f"planes: got shapes {[p.shape for p in ps]}; expected three (3, Z, Y, X) arrays of one shape")
    # slicing along a: in-plane components are the two other axes, in order
    acc = np.zeros((3, *ps[0].shape[1:]), np.float32)
    for a, p in enumerate(ps):
        others = [b for b in range(3) if b != a]
        acc[others[0]] += p[0]
        acc[others[1]] += p[1]
    return acc / 2.0, (ps[0][2] + ps[1][2] + ps[2][2]) / 3.0


# ============================================================================ network
FLOW_SCALE = 5.0          # Cellpose regresses 5 x the unit flows


def normalize_percentile(image, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """``(x - p_low) / (p_high - p_low)`` per image (Cellpose's normalisation).

    Parameters
    ----------
    image : Image or array_like
        The image.
    low : float, optional
        Lower percentile, mapped to 0.
    high : float, optional
        Upper percentile, mapped to 1.

    Returns
    -------
    numpy.ndarray
        float32 normalised image.

    Raises
    ------
    InputError
        For NaN / Inf or no contrast between the two percentiles.

    Examples
    --------
    >>> import numpy as np
    >>> x = normalize_percentile(np.arange(101.0), 0, 100)
    >>> float(x.min()), float(x.max())
    (0.0, 1.0)
    """
    a = np.asarray(image.numpy() if isinstance(image, Image) else image, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise InputError("image: contains NaN/Inf")
    lo, hi = np.percentile(a, [low, high])
    if hi <= lo:
        raise InputError("image: constant (no contrast between the 1st and 99th percentile)")
    return (a - lo) / (hi - lo)


def _cases(images, labels):
    from .instances import check_labels

    if isinstance(images, (Image, np.ndarray)) or torch.is_tensor(images):
        images, labels = [images], [labels]
    if len(images) != len(labels) or not images:
        raise InputError(f"images, labels: got {len(images)} and {len(labels)}; expected the same number (>= 1)")
    xs, ys = [], []
    for i, (im, lab) in enumerate(zip(images, labels)):
        x = normalize_percentile(im)
        y = check_labels(lab, f"labels[{i}]").astype(np.int64)
        if x.shape != y.shape or x.ndim not in (2, 3):
            raise InputError(f"images[{i}], labels[{i}]: got shapes {x.shape} and {y.shape}; expected one grey "
                             "2-D or 3-D image and its instance labels")
        xs.append(torch.as_tensor(x)[None])
        ys.append(torch.as_tensor(y))
    if len({x.ndim for x in xs}) != 1:
        raise InputError("images: mix of 2-D and 3-D images")
    return xs, ys


def _typical_width(ys) -> float | None:
    """Median typical object width (voxels) of training label images."""
    from .instances import estimate_diameter

    ws = [estimate_diameter(y.numpy() > 0, spacing=1.0) for y in ys if bool((y > 0).any())]
    return float(np.median(ws)) if ws else None


def _slices(xs, ys, axes):
    """2-D training cases from volumes: every slice along ``axes``, labels split into
    their connected pieces (a 3-D object can cut a slice more than once)."""
    from skimage.measure import label as cc

    try:
        axes = sorted({int(a) for a in (axes if np.ndim(axes) else [axes])})
    except (TypeError, ValueError):
        axes = []
    if not axes or any(a not in (0, 1, 2) for a in axes):
        raise InputError(f"slice_axes: got {axes!r}; expected array axes among 0, 1, 2")
    sx, sy = [], []
    for x, y in zip(xs, ys):
        for a in axes:
            for i in range(x.shape[1 + a]):
                sx.append(x.select(1 + a, i).contiguous())
                sy.append(torch.as_tensor(cc(y.select(a, i).numpy(), background=0).astype(np.int64)))
    return sx, sy


def train_flows(images, labels, epochs: int = 30, patch_size=None, batch_size: int = 8, lr: float = 2e-3,
                iterations_per_epoch: int = 25, features=(16, 32, 64, 128), model=None, augment: bool = True,
                seed: int = 0, device=None, callback=None, progress=None, dimension: str | None = None,
                slice_axes=(0,), step_callback=None):
    """Train (or, with ``model``, continue training) a flow network on instance masks.

    The network is a :class:`~biomip.nn.UNet` with ``d + 1`` outputs: ``5 x`` flows
    regressed by MSE and the cell probability by binary cross-entropy (Cellpose's losses),
    trained on patches whose flows are recomputed after each augmentation.

    Parameters
    ----------
    images : Image or array_like or list
        One image, or a list of them (2-D or 3-D, grey).
    labels : Image or array_like or list
        The instance label image(s), one per image.
    epochs : int, optional
        Number of epochs.
    patch_size : int or sequence of int or None, optional
        Patch size in voxels, array order (default 128 x 128 in 2-D, 48 x 64 x 64 in 3-D).
    batch_size : int, optional
        Patches per batch.
    lr : float, optional
        AdamW learning rate.
    iterations_per_epoch : int, optional
        Batches per epoch.
    features : sequence of int, optional
        Channels per U-Net level of a new model.
    model : UNet or None, optional
        A flows model (from :func:`train_flows`) to continue training.
    augment : bool, optional
        Use the default :class:`~biomip.nn.Augmentation` (else none).
    seed : int, optional
        Initialisation, patch sampling, augmentation and dropout seed.
    device : str or torch.device or None, optional
        Where to train (default CPU).
    callback : callable or None, optional
        ``callback(epoch, model, record)`` after every epoch; return True to stop.
    progress : bool or None, optional
        Show a progress bar (``None``: only on a terminal).
    dimension : {None, "2d", "3d"}, optional
        Network dimensionality: ``None`` that of the data; ``"2d"`` with volumes trains a
        2-D network on their slices (run it on volumes slice-wise with stitching or on
        the three planes, see :func:`predict_instances`).
    slice_axes : sequence of int, optional
        With ``dimension="2d"`` and volumes: the array axes the volumes are sliced along
        (``(0,)``: YX slices; ``(0, 1, 2)``: all three planes, as Cellpose's 3-D
        training; the volumes should be isotropic then).
    step_callback : callable or None, optional
        ``step_callback(step, loss)`` after every optimiser step: ``step`` counts from 1
        over the whole training (``epochs * iterations_per_epoch`` steps in all), ``loss``
        is that step's training loss (a Python float).  Returning True stops the training
        right after that step: the per-epoch ``callback`` is not called for the epoch
        in progress, and the model returned is the network as it is after that step.

    Returns
    -------
    model : UNet
        The network, in eval mode, ``meta["kind"] == "flows"`` and
        ``meta["diameter_voxels"]``, the typical object width of the training labels (see
        :func:`biomip.segment.estimate_diameter`), used to rescale inputs by a
        ``diameter`` at prediction.
    history : list of dict
        Per epoch: ``epoch``, ``loss``, ``flow_mse``, ``prob_bce`` (means over the epoch's
        steps), ``steps`` (optimiser steps in the epoch), ``seconds``.  When
        ``step_callback`` stopped the training, the last record is that of the epoch in
        progress, averaged over its ``steps`` steps (possibly fewer than
        ``iterations_per_epoch``).

    Raises
    ------
    InputError
        For mismatched images and labels, non-positive counts, or a ``model`` that is not
        a flows model.

    Examples
    --------
    >>> s = biomip.data.synthetic_nuclei((128, 128), seed=0)             # doctest: +SKIP
    >>> net, hist = train_flows([s.image], [s.labels], epochs=20)        # doctest: +SKIP

    Follow every step, and stop after the fifth:

    >>> import biomip
    >>> s = biomip.data.synthetic_nuclei((32, 32), n_nuclei=3, seed=0)
    >>> losses = []
    >>> net, hist = train_flows([s.image], [s.labels], epochs=3, iterations_per_epoch=2, batch_size=1,
    ...                         patch_size=(32, 32), features=(4, 8), progress=False,
    ...                         step_callback=lambda step, loss: losses.append(loss) or step == 5)
    >>> len(losses), [h["steps"] for h in hist]
    (5, [2, 2, 1])
    """
    import time

    from ..core.progress import progress_bar
    from ..core.rng import seeded
    from ..nn.augment import Augmentation
    from ..nn.patches import PatchSampler
    from ..nn.unet import UNet

    if step_callback is not None and not callable(step_callback):
        raise InputError(f"step_callback: got {type(step_callback).__name__}; expected a callable "
                         "step_callback(step, loss) or None")
    xs, ys = _cases(images, labels)
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("iterations_per_epoch", iterations_per_epoch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name}: got {v!r}; expected a positive integer")
    diam = _typical_width(ys)
    if dimension not in (None, "2d", "3d"):
        raise InputError(f"dimension: got {dimension!r}; expected None, '2d' or '3d'")
    if dimension == "3d" and xs[0].ndim - 1 == 2:
        raise InputError("dimension: '3d' needs volumes; got 2-D images")
    if dimension == "2d" and xs[0].ndim - 1 == 3:
        xs, ys = _slices(xs, ys, slice_axes)
    d = xs[0].ndim - 1
    if patch_size is None:
        patch_size = (128, 128) if d == 2 else (48, 64, 64)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if model is None:
        model = UNet(sdim=d, in_channels=1, classes=d + 1, features=tuple(features), seed=int(seed))
        model.meta["kind"] = "flows"
    elif getattr(model, "meta", {}).get("kind") != "flows":
        raise InputError("model: expected a flows model (from train_flows), got another network")
    elif model.sdim != d:
        raise InputError(f"model: got a {model.sdim}-D flows model for {d}-D training data")
    if diam is not None and "diameter_voxels" not in model.meta:
        model.meta["diameter_voxels"] = diam
    model = model.to(dev)
    sampler = PatchSampler(xs, ys, patch_size, foreground_fraction=0.5, seed=int(seed))
    aug = Augmentation() if augment else Augmentation.none()
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=float(lr), weight_decay=1e-5)
    history = []
    step, stop = 0, False
    with progress_bar("flows training", int(epochs), progress) as bar, seeded(int(seed), dev):   # dropout: seeded, restored
        for ep in range(int(epochs)):
            t0 = time.perf_counter()
            model.train()
            acc = np.zeros(3)
            n = 0
            for _ in range(int(iterations_per_epoch)):
                x, y = sampler.sample(int(batch_size), g)
                x, y = aug(x, y, g)
                flows = torch.stack([torch.as_tensor(masks_to_flows(lab.numpy().astype(np.int64))) for lab in y])
                x, flows, prob = x.to(dev), flows.to(dev), (y > 0).to(dev, torch.float32)
                out = model(x)
                l_flow = F.mse_loss(out[:, :d], FLOW_SCALE * flows) / 2
                l_prob = F.binary_cross_entropy_with_logits(out[:, d], prob)
                loss = l_flow + l_prob
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step_loss = loss.detach().item()
                acc += [step_loss, l_flow.detach().item(), l_prob.detach().item()]
                n += 1
                step += 1
                if step_callback is not None and step_callback(step, step_loss) is True:
                    stop = True
                    break
            acc /= n
            rec = {"epoch": ep, "loss": float(acc[0]), "flow_mse": float(acc[1]), "prob_bce": float(acc[2]),
                   "steps": n, "seconds": time.perf_counter() - t0}
            history.append(rec)
            bar.advance()
            if stop or (callback is not None and callback(ep, model, rec) is True):
                break
    model.eval()
    return model, history


def _outputs(model, x: np.ndarray, patch_size, device) -> np.ndarray:
    """Raw network outputs ``(d + 1, *S)`` of one normalised image by sliding windows."""
    from ..nn.patches import sliding_window_inference

    d = x.ndim
    if patch_size is None:
        patch = tuple(min(n, 256 if d == 2 else 64) for n in x.shape)
    else:
        patch = patch_size
    out = sliding_window_inference(model, torch.as_tensor(np.ascontiguousarray(x))[None], patch, activation=None,
                                   device=device, progress=False)
    return out.numpy() if torch.is_tensor(out) else np.asarray(out)


def _plane_outputs(model, x: np.ndarray, axis: int, patch_size, device) -> np.ndarray:
    """A 2-D flows model on every slice of volume ``x`` along ``axis``: ``(3, Z, Y, X)``
    (flow along the first and second in-plane axis, cell probability)."""
    patch = None if patch_size is None else tuple(patch_size)[-2:]
    sl = np.moveaxis(x, axis, 0)
    outs = np.stack([_outputs(model, s, patch, device) for s in sl], axis=1)       # (3, n, a, b)
    outs[:2] /= FLOW_SCALE
    outs[2] = 1.0 / (1.0 + np.exp(-outs[2]))
    return np.moveaxis(outs, 1, axis + 1)


def _resize(a: np.ndarray, shape, order: int) -> np.ndarray:
    from skimage.transform import resize

    if tuple(a.shape) == tuple(shape):
        return a
    return resize(a, shape, order=order, preserve_range=True, anti_aliasing=False, mode="edge").astype(a.dtype)


def predict_instances(model, image, patch_size=None, prob_threshold: float = 0.5, flow_threshold: float | None = 0.4,
                      min_size: int = 15, device=None, do_3d: bool = False, stitch_threshold: float | None = 0.25,
                      diameter=None, spacing=None, niter: int | None = None):
    """Instances of ``image`` by a flow network, in 2-D or 3-D.

    The network runs by sliding windows, then :func:`flows_to_masks` recovers instances.
    A 3-D network on a volume follows its 3-D flows.  A 2-D network on a volume runs
    slice by slice and :func:`stitch_slices` links the slice masks by IoU (Cellpose's
    ``stitch_threshold``), or, with ``do_3d``, runs on the three orthogonal slicings whose
    flows are averaged into one 3-D field (:func:`planes_to_flows`, Cellpose's
    ``do_3D``) and followed in 3-D.

    Parameters
    ----------
    model : UNet
        A flows model (from :func:`train_flows`).
    image : Image or array_like
        Grey 2-D or 3-D image (3-D needs a 3-D model or a 2-D one run on slices / planes).
    patch_size : int or sequence of int or None, optional
        Window size in voxels, array order (default up to 256 per axis in 2-D, 64 in
        3-D).
    prob_threshold : float, optional
        Foreground threshold of the cell probability.
    flow_threshold : float or None, optional
        See :func:`flows_to_masks`.
    min_size : int, optional
        Masks with fewer voxels (of the network's grid) are dropped.
    device : str or torch.device or None, optional
        Where the network runs.
    do_3d : bool, optional
        2-D model on a volume: average the flows of the three orthogonal slicings into a
        3-D field (the volume is made isotropic first) instead of stitching slices.
    stitch_threshold : float or None, optional
        2-D model on a volume without ``do_3d``: smallest IoU that links masks of
        neighbouring slices into one object (``None`` or 0: no stitching, every slice
        mask is its own object).
    diameter : float or "auto" or None, optional
        Typical object diameter in mm (``"auto"``: estimated from the image by
        :func:`biomip.segment.estimate_diameter`).  The image is rescaled so that objects
        have the width the network was trained on (``model.meta["diameter_voxels"]``);
        ``None``: no rescaling (besides making a volume isotropic for ``do_3d``).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]); default the Image's, else 1.
    niter : int or None, optional
        Euler steps of the flow following (see :func:`flows_to_masks`).

    Returns
    -------
    labels : Image or numpy.ndarray
        int32 instances on the input's grid; an Image with the input's geometry when the
        input is one.
    info : dict
        As :func:`flows_to_masks` (summed over the slices for the slice-wise routes,
        without ``flow_error`` there), plus the cell ``probability`` map (input grid) and
        the ``route`` taken (``"2d"``, ``"3d"``, ``"stitch"``, ``"planes"`` or
        ``"slices"``).

    Raises
    ------
    InputError
        For a model that is not a flows model or does not fit the image, or a bad
        ``diameter`` / ``stitch_threshold``.

    Examples
    --------
    >>> net, _ = train_flows(slices, slice_labels, epochs=20)              # doctest: +SKIP
    >>> lab, info = predict_instances(net, volume, stitch_threshold=0.25)  # doctest: +SKIP
    """
    from .base import spacing_of
    from .instances import estimate_diameter

    if getattr(model, "meta", {}).get("kind") != "flows":
        raise InputError("model: expected a flows model (from train_flows)")
    x = normalize_percentile(image)
    d = x.ndim
    if model.in_channels != 1 or model.sdim > d:
        raise InputError(f"image: got a {d}-D grey image; the model expects {model.sdim}-D with "
                         f"{model.in_channels} channel(s)")
    sp = np.asarray(spacing_of(image, spacing, d), dtype=float)[::-1]  # array order
    if model.sdim == d:
        route = "2d" if d == 2 else "3d"
    elif do_3d:
        route = "planes"
    else:
        st = 0.0 if stitch_threshold is None else stitch_threshold
        if isinstance(st, bool) or not (0 <= float(st) <= 1):
            raise InputError(f"stitch_threshold: got {stitch_threshold!r}; expected an IoU in [0, 1] or None")
        route = "stitch" if float(st) > 0 else "slices"
    # the network's grid: objects of the trained width, isotropic for the 3-D routes
    factor = np.ones(d)
    if diameter is not None:
        if isinstance(diameter, str):
            if diameter != "auto":
                raise InputError(f"diameter: got {diameter!r}; expected a width in mm, 'auto' or None")
            diam = estimate_diameter(image, spacing=spacing)
        else:
            try:
                diam = float(diameter)
            except (TypeError, ValueError):
                diam = float("nan")
            if isinstance(diameter, bool) or not np.isfinite(diam) or diam <= 0:
                raise InputError(f"diameter: got {diameter!r}; expected a positive width in mm, 'auto' or None")
        trained = model.meta.get("diameter_voxels")
        if trained is None:
            raise InputError("diameter: the model has no meta['diameter_voxels'] (train it with train_flows) to "
                             "rescale to; pass diameter=None")
        factor = float(trained) * sp / diam
    elif route == "planes":
        factor = sp / sp.min()
    if route in ("stitch", "slices"):
        factor[0] = 1.0                                                   # slices stay slices
    shape = tuple(max(2, int(round(n * f))) for n, f in zip(x.shape, factor))
    xs = _resize(x, shape, 1) if shape != x.shape else x
    if route in ("2d", "3d"):
        out = _outputs(model, xs, patch_size, device)
        flows, prob = out[:d] / FLOW_SCALE, 1.0 / (1.0 + np.exp(-out[d]))
        lab, info = flows_to_masks(flows, prob, threshold=prob_threshold, flow_threshold=flow_threshold,
                                   min_size=min_size, niter=niter, device=device)
    elif route == "planes":
        planes = [_plane_outputs(model, xs, a, patch_size, device) for a in range(3)]
        flows, prob = planes_to_flows(planes)
        lab, info = flows_to_masks(flows, prob, threshold=prob_threshold, flow_threshold=flow_threshold,
                                   min_size=min_size, niter=niter, device=device)
    else:
        outs = _plane_outputs(model, xs, 0, patch_size, device)
        prob = outs[2]
        lab = np.zeros(xs.shape, np.int32)
        info = {"seeds": 0, "dropped_small": 0, "dropped_flow": 0}
        offset = 0
        for z in range(xs.shape[0]):
            lz, iz = flows_to_masks(outs[:2, z], prob[z], threshold=prob_threshold, flow_threshold=flow_threshold,
                                    min_size=min_size, niter=niter, device=device)
            for k in ("seeds", "dropped_small", "dropped_flow"):
                info[k] += iz[k]
            lab[z] = np.where(lz > 0, lz + offset, 0)
            offset += int(lz.max())
        if route == "stitch":
            lab = stitch_slices(lab, float(stitch_threshold))
            counts = np.bincount(lab.ravel())
            small = np.nonzero(counts < min_size)[0]
            lab[np.isin(lab, small[small > 0])] = 0
            from skimage.segmentation import relabel_sequential

            lab = relabel_sequential(lab)[0].astype(np.int32)
    if lab.shape != x.shape:
        lab = _resize(lab, x.shape, 0).astype(np.int32)
        prob = _resize(prob.astype(np.float32), x.shape, 1)
    info["probability"] = prob
    info["route"] = route
    return (image.with_array(lab) if isinstance(image, Image) else lab), info


def fine_tune(model, images, labels, epochs: int = 5, lr: float = 5e-4, step_callback=None, **kwargs):
    """Human-in-the-loop step: continue training ``model`` on corrected masks.

    A few epochs at a lower learning rate; add corrected masks, train from the current
    weights, see the metric move.

    Parameters
    ----------
    model : UNet
        A flows model (from :func:`train_flows`).
    images : Image or array_like or list
        Image(s) with corrected masks.
    labels : Image or array_like or list
        The corrected instance labels.
    epochs : int, optional
        Number of epochs.
    lr : float, optional
        Learning rate.
    step_callback : callable or None, optional
        ``step_callback(step, loss)`` after every optimiser step; return True to stop
        after that step (see :func:`train_flows`).
    **kwargs : dict
        Passed to :func:`train_flows`.

    Returns
    -------
    model : UNet
        The network, in eval mode (as it is after the last step when ``step_callback``
        stopped the training).
    history : list of dict
        Per epoch, as :func:`train_flows` (the last record covers the steps of a stopped
        epoch).

    Examples
    --------
    >>> net, hist = fine_tune(net, [image], [corrected])             # doctest: +SKIP
    >>> net, hist = fine_tune(net, [image], [corrected],
    ...                       step_callback=lambda step, loss: print(step, loss))  # doctest: +SKIP
    """
    return train_flows(images, labels, epochs=epochs, lr=lr, model=model, step_callback=step_callback, **kwargs)
