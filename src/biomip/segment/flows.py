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
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import InputError
from ..core.image import Image

__all__ = ["masks_to_flows", "flows_to_masks", "train_flows", "predict_instances", "fine_tune", "normalize_percentile"]


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


def train_flows(images, labels, epochs: int = 30, patch_size=None, batch_size: int = 8, lr: float = 2e-3,
                iterations_per_epoch: int = 25, features=(16, 32, 64, 128), model=None, augment: bool = True,
                seed: int = 0, device=None, callback=None, progress=None):
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

    Returns
    -------
    model : UNet
        The network, in eval mode, ``meta["kind"] == "flows"``.
    history : list of dict
        Per epoch: ``epoch``, ``loss``, ``flow_mse``, ``prob_bce``, ``seconds``.

    Raises
    ------
    InputError
        For mismatched images and labels, non-positive counts, or a ``model`` that is not
        a flows model.

    Examples
    --------
    >>> s = biomip.data.synthetic_nuclei((128, 128), seed=0)             # doctest: +SKIP
    >>> net, hist = train_flows([s.image], [s.labels], epochs=20)        # doctest: +SKIP
    """
    import time

    from ..core.progress import progress_bar
    from ..core.rng import seeded
    from ..nn.augment import Augmentation
    from ..nn.patches import PatchSampler
    from ..nn.unet import UNet

    xs, ys = _cases(images, labels)
    d = xs[0].ndim - 1
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("iterations_per_epoch", iterations_per_epoch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name}: got {v!r}; expected a positive integer")
    if patch_size is None:
        patch_size = (128, 128) if d == 2 else (48, 64, 64)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if model is None:
        model = UNet(sdim=d, in_channels=1, classes=d + 1, features=tuple(features), seed=int(seed))
        model.meta["kind"] = "flows"
    elif getattr(model, "meta", {}).get("kind") != "flows":
        raise InputError("model: expected a flows model (from train_flows), got another network")
    model = model.to(dev)
    sampler = PatchSampler(xs, ys, patch_size, foreground_fraction=0.5, seed=int(seed))
    aug = Augmentation() if augment else Augmentation.none()
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=float(lr), weight_decay=1e-5)
    history = []
    with progress_bar("flows training", int(epochs), progress) as bar, seeded(int(seed), dev):   # dropout: seeded, restored
        for ep in range(int(epochs)):
            t0 = time.perf_counter()
            model.train()
            acc = np.zeros(3)
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
                acc += [float(loss.detach()), float(l_flow.detach()), float(l_prob.detach())]
            acc /= int(iterations_per_epoch)
            rec = {"epoch": ep, "loss": acc[0], "flow_mse": acc[1], "prob_bce": acc[2], "seconds": time.perf_counter() - t0}
            history.append(rec)
            bar.advance()
            if callback is not None and callback(ep, model, rec) is True:
                break
    model.eval()
    return model, history


def predict_instances(model, image, patch_size=None, prob_threshold: float = 0.5, flow_threshold: float | None = 0.4,
                      min_size: int = 15, device=None):
    """Instances of ``image`` by a flow network.

    The network runs by sliding windows, then :func:`flows_to_masks` recovers instances.

    Parameters
    ----------
    model : UNet
        A flows model (from :func:`train_flows`).
    image : Image or array_like
        Grey image of the model's dimensionality.
    patch_size : int or sequence of int or None, optional
        Window size in voxels, array order (default up to 256 per axis in 2-D, 64 in
        3-D).
    prob_threshold : float, optional
        Foreground threshold of the cell probability.
    flow_threshold : float or None, optional
        See :func:`flows_to_masks`.
    min_size : int, optional
        Masks with fewer voxels are dropped.
    device : str or torch.device or None, optional
        Where the network runs.

    Returns
    -------
    labels : Image or numpy.ndarray
        int32 instances; an Image with the input's geometry when the input is one.
    info : dict
        As :func:`flows_to_masks`, plus the cell ``probability`` map.

    Raises
    ------
    InputError
        For a model that is not a flows model or does not fit the image.
    """
    from ..nn.patches import sliding_window_inference

    if getattr(model, "meta", {}).get("kind") != "flows":
        raise InputError("model: expected a flows model (from train_flows)")
    x = normalize_percentile(image)
    d = x.ndim
    if model.in_channels != 1 or model.sdim != d:
        raise InputError(f"image: got a {d}-D grey image; the model expects {model.sdim}-D with "
                         f"{model.in_channels} channel(s)")
    if patch_size is None:
        patch_size = tuple(min(n, 256 if d == 2 else 64) for n in x.shape)
    out = sliding_window_inference(model, torch.as_tensor(x)[None], patch_size, activation=None, device=device)
    out = out.numpy() if torch.is_tensor(out) else np.asarray(out)
    flows = out[:d] / FLOW_SCALE
    prob = 1.0 / (1.0 + np.exp(-out[d]))
    lab, info = flows_to_masks(flows, prob, threshold=prob_threshold, flow_threshold=flow_threshold,
                               min_size=min_size, device=device)
    info["probability"] = prob
    return (image.with_array(lab) if isinstance(image, Image) else lab), info


def fine_tune(model, images, labels, epochs: int = 5, lr: float = 5e-4, **kwargs):
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
    **kwargs : dict
        Passed to :func:`train_flows`.

    Returns
    -------
    model : UNet
        The network, in eval mode.
    history : list of dict
        Per epoch, as :func:`train_flows`.

    Examples
    --------
    >>> net, hist = fine_tune(net, [image], [corrected])             # doctest: +SKIP
    """
    return train_flows(images, labels, epochs=epochs, lr=lr, model=model, **kwargs)
