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

The network that predicts ``(flows, cell probability)`` from an image and the
human-in-the-loop fine-tuning are the next part of issue 5 (they build on the U-Net).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import InputError
from ..core.image import Image

__all__ = ["masks_to_flows", "flows_to_masks"]


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
    """Unit flows (d, *S) of an instance label image, component 0 along the first array
    axis (y in 2-D, z in 3-D) -- the array order of Cellpose; zero on the background.

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


def _follow(flows: torch.Tensor, pts: torch.Tensor, niter: int) -> torch.Tensor:
    """Euler integration of points (n, d) (array index order) along ``flows`` (d, *S)."""
    d = flows.shape[0]
    S = torch.as_tensor(flows.shape[1:], dtype=pts.dtype, device=pts.device)
    inp = flows[None]
    for _ in range(niter):
        norm = pts / (S - 1).clamp_min(1) * 2 - 1                     # grid_sample coords, reversed order
        grid = norm.flip(-1).reshape(1, *([1] * (d - 1)), -1, d)
        v = F.grid_sample(inp, grid, mode="bilinear", align_corners=True, padding_mode="border")
        v = v.reshape(d, -1).T
        pts = torch.minimum(torch.maximum(pts + v, torch.zeros_like(S)), S - 1)
    return pts


def flows_to_masks(flows, probability, threshold: float = 0.5, niter: int | None = None, min_size: int = 15,
                   flow_threshold: float | None = 0.4, device=None):
    """Instances from flows (d, *S) and a cell-probability map (*S).

    Returns ``(labels, info)``: an int32 label image (0 = background) and a dict with
    the number of seeds, masks dropped for size or flow error, and the flow error of
    each kept mask (mean squared difference between the flows recomputed from the
    masks and the given ones; masks above ``flow_threshold`` are dropped, as Cellpose).
    """
    fl = np.asarray(flows, dtype=np.float32)
    pr = np.asarray(probability.numpy() if isinstance(probability, Image) else probability, dtype=np.float32)
    if fl.ndim - 1 != pr.ndim or fl.shape[0] != pr.ndim or fl.shape[1:] != pr.shape:
        raise InputError(f"flows, probability: got shapes {fl.shape} and {pr.shape}; expected (d, *S) and S")
    if not (np.all(np.isfinite(fl)) and np.all(np.isfinite(pr))):
        raise InputError("flows, probability: contain NaN/Inf")
    d = pr.ndim
    dev = torch.device(device) if device is not None else torch.device("cpu")
    fg = pr > threshold
    if not fg.any():
        return np.zeros(pr.shape, np.int32), {"seeds": 0, "dropped_small": 0, "dropped_flow": 0, "flow_error": {}}
    n_it = int(niter) if niter is not None else 200
    pts0 = torch.as_tensor(np.argwhere(fg), dtype=torch.float32, device=dev)
    end = _follow(torch.as_tensor(fl * fg, device=dev), pts0, n_it)
    cells = torch.round(end).long()
    # histogram of end points; seeds are its local maxima with enough support
    hist = torch.zeros(pr.shape, device=dev)
    hist.index_put_(tuple(cells.T), torch.ones(len(cells), device=dev), accumulate=True)
    pool = F.max_pool2d if d == 2 else F.max_pool3d
    hmax = pool(hist[None, None], 5, stride=1, padding=2)[0, 0]
    seeds = torch.nonzero((hist == hmax) & (hist > max(3.0, 0.1 * min_size)))
    if len(seeds) == 0:
        return np.zeros(pr.shape, np.int32), {"seeds": 0, "dropped_small": 0, "dropped_flow": 0, "flow_error": {}}
    # each pixel joins the nearest seed to its end point (within a few voxels)
    dist = torch.cdist(end, seeds.float())
    near, which = dist.min(1)
    lab = np.zeros(pr.shape, np.int32)
    ok = (near < 4.0).cpu().numpy()
    idx = np.argwhere(fg)[ok]
    lab[tuple(idx.T)] = which.cpu().numpy()[ok] + 1
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
