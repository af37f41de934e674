"""Object detection in pure PyTorch (textbook 5.3.2 "YOLO", 5.2 "Mask R-CNN"): box
utilities, a one-stage dense detector and a detect-then-segment mask head.

Boxes are ``(x1, y1, x2, y2)`` in pixel units, ``x`` along the last array axis: pixel
``(r, c)`` covers ``[c, c + 1] x [r, r + 1]``, so the box of a label region spanning rows
``r0..r1`` and columns ``c0..c1`` is ``(c0, r0, c1 + 1, r1 + 1)``.

* Box utilities: :func:`box_xyxy_to_cxcywh` / :func:`box_cxcywh_to_xyxy`,
  :func:`box_area`, :func:`box_iou`, :func:`generalized_box_iou` (Rezatofighi et al.
  2019), greedy :func:`nms` and :func:`batched_nms` (per-class suppression by the offset
  trick).  They take tensors, lists or numpy arrays and give **numpy out for numpy in**
  (torch otherwise); boxes must be finite with ``x1 <= x2``, ``y1 <= y2`` and scores
  finite (else :class:`~biomip.core.errors.InputError` naming the argument).
* :func:`roi_align` (He et al. 2017, Mask R-CNN): every output bin is the mean of
  ``sampling_ratio x sampling_ratio`` bilinear samples, taken with
  :func:`torch.nn.functional.grid_sample` (``aligned=True``: pixel centres at half
  integers, as torchvision's ``aligned=True``).
* :class:`DetectionNet`: a small convolutional backbone with a feature pyramid (top-down
  path, lateral 1x1 convolutions), a dense FCOS / YOLO-style head on one output level
  (stride ``stride``) predicting per cell an objectness logit, four distances to the box
  sides (left, top, right, bottom, pixels) and a centre-ness logit (Tian et al. 2019), and
  optionally a Mask R-CNN-style mask head: RoIAlign on a finer pyramid level, four 3x3
  convolutions, a 2x transposed convolution, one logit per pixel of an ``M x M`` mask per
  box.
* :func:`detection_loss`: FCOS assignment (cells whose centre lies inside a box and near
  its centre, plus the cell holding the centre; the smallest box wins), sigmoid focal loss
  on the objectness, GIoU loss on the boxes, BCE on the centre-ness;
  :func:`mask_targets` / :func:`mask_loss` for the mask head trained on (jittered)
  ground-truth boxes (teacher forcing).
* :func:`decode_detections`: scores, boxes, thresholds and NMS per image;
  :func:`paste_masks`: the ``M x M`` box masks pasted back into a full-size instance
  label image.

>>> net = DetectionNet(widths=(8, 16, 32), fpn_channels=16, seed=0)
>>> out = net(torch.zeros(1, 1, 32, 32))
>>> tuple(out["objectness"].shape), tuple(out["ltrb"].shape)
((1, 1, 8, 8), (1, 4, 8, 8))
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError, describe
from ..core.rng import seeded
from .base import SavedModule, check_batch

__all__ = ["box_xyxy_to_cxcywh", "box_cxcywh_to_xyxy", "box_area", "box_iou", "generalized_box_iou", "nms",
           "batched_nms", "roi_align", "DetectionNet", "detection_loss", "mask_targets", "mask_loss",
           "decode_detections", "paste_masks", "boxes_from_labels"]


# ============================================================================ boxes
def _boxes(b, name: str = "boxes", corners: bool = True) -> torch.Tensor:
    if not torch.is_tensor(b):
        try:
            b = torch.as_tensor(np.asarray(b, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: got {describe(b)}; expected a (K, 4) array of boxes") from exc
    if b.ndim != 2 or b.shape[-1] != 4:
        if b.numel() == 0:
            return b.reshape(0, 4).float()
        raise ShapeError(f"{name}: got shape {tuple(b.shape)}; expected (K, 4)")
    b = b if b.is_floating_point() else b.float()
    if b.numel():
        if not bool(torch.isfinite(b).all()):
            raise InputError(f"{name}: contains NaN/Inf coordinates; expected finite (x1, y1, x2, y2) boxes")
        bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]) if corners else (b[:, 2] < 0) | (b[:, 3] < 0)
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0, 0])
            want = ("corner boxes (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2" if corners
                    else "centre-size boxes (cx, cy, w, h) with w, h >= 0")
            raise InputError(f"{name}: box {k} is {[round(float(v), 4) for v in b[k]]}, reversed; expected {want}")
    return b


def _scores(scores, n: int, device) -> torch.Tensor:
    s = torch.as_tensor(scores if torch.is_tensor(scores) else np.asarray(scores, dtype=np.float32),
                        dtype=torch.float32, device=device).reshape(-1)
    if s.numel() != n:
        raise InputError(f"scores: got {s.numel()} score(s) for {n} box(es); expected one per box")
    if not bool(torch.isfinite(s).all()):
        raise InputError(f"scores: contains {int((~torch.isfinite(s)).sum())} NaN/Inf value(s); expected finite "
                         "scores")
    return s


def _like(result: torch.Tensor, *inputs):
    """numpy out when any input is a numpy array (nn's box utilities: numpy in -> numpy out)."""
    return result.detach().cpu().numpy() if any(isinstance(x, np.ndarray) for x in inputs) else result


def box_xyxy_to_cxcywh(boxes) -> torch.Tensor:
    """Corner boxes ``(x1, y1, x2, y2)`` to centre-size boxes ``(cx, cy, w, h)``.

    Parameters
    ----------
    boxes : torch.Tensor or array_like
        ``(K, 4)`` corner boxes.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        ``(K, 4)`` centre-size boxes.

    Raises
    ------
    ShapeError
        When ``boxes`` is not ``(K, 4)``.
    InputError
        For NaN / Inf or reversed boxes.

    Examples
    --------
    >>> box_xyxy_to_cxcywh([[0.0, 2.0, 4.0, 8.0]]).tolist()
    [[2.0, 5.0, 4.0, 6.0]]
    """
    b = _boxes(boxes)
    x1, y1, x2, y2 = b.unbind(-1)
    return _like(torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1), boxes)


def box_cxcywh_to_xyxy(boxes) -> torch.Tensor:
    """Centre-size boxes ``(cx, cy, w, h)`` to corner boxes ``(x1, y1, x2, y2)``.

    Parameters
    ----------
    boxes : torch.Tensor or array_like
        ``(K, 4)`` centre-size boxes.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        ``(K, 4)`` corner boxes.

    Raises
    ------
    ShapeError
        When ``boxes`` is not ``(K, 4)``.
    InputError
        For NaN / Inf or reversed boxes.

    Examples
    --------
    >>> box_cxcywh_to_xyxy([[2.0, 5.0, 4.0, 6.0]]).tolist()
    [[0.0, 2.0, 4.0, 8.0]]
    """
    b = _boxes(boxes, corners=False)
    cx, cy, w, h = b.unbind(-1)
    return _like(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1), boxes)


def box_area(boxes) -> torch.Tensor:
    """Areas of corner boxes (0 for degenerate ones).

    Parameters
    ----------
    boxes : torch.Tensor or array_like
        ``(K, 4)`` corner boxes.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        ``(K,)`` areas.

    Raises
    ------
    ShapeError
        When ``boxes`` is not ``(K, 4)``.
    InputError
        For NaN / Inf or reversed boxes.

    Examples
    --------
    >>> box_area([[0, 0, 2, 3]]).tolist()
    [6.0]
    """
    b = _boxes(boxes)
    return _like((b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0), boxes)


def _inter_union(a: torch.Tensor, b: torch.Tensor):
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return inter, union


def box_iou(boxes1, boxes2) -> torch.Tensor:
    """Intersection over union of every pair of corner boxes.

    Parameters
    ----------
    boxes1 : torch.Tensor or array_like
        ``(K, 4)`` boxes.
    boxes2 : torch.Tensor or array_like
        ``(L, 4)`` boxes.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        ``(K, L)`` IoU (0 where the union is empty).

    Raises
    ------
    ShapeError
        When a box array is not ``(K, 4)``.
    InputError
        For NaN / Inf or reversed boxes (``x2 < x1`` or ``y2 < y1``).

    Examples
    --------
    >>> box_iou([[0, 0, 2, 2]], [[1, 0, 3, 2], [5, 5, 6, 6]]).tolist()
    [[0.3333333432674408, 0.0]]
    """
    a, b = _boxes(boxes1, "boxes1"), _boxes(boxes2, "boxes2")
    inter, union = _inter_union(a, b)
    return _like(torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter)), boxes1, boxes2)


def generalized_box_iou(boxes1, boxes2) -> torch.Tensor:
    """Generalised IoU ``IoU - |C \\ (A u B)| / |C|`` of every pair (``C``: the smallest
    enclosing box; Rezatofighi et al. 2019), in ``[-1, 1]``.

    Parameters
    ----------
    boxes1 : torch.Tensor or array_like
        ``(K, 4)`` boxes.
    boxes2 : torch.Tensor or array_like
        ``(L, 4)`` boxes.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        ``(K, L)`` GIoU.

    Raises
    ------
    ShapeError
        When a box array is not ``(K, 4)``.
    InputError
        For NaN / Inf or reversed boxes (``x2 < x1`` or ``y2 < y1``).

    Examples
    --------
    >>> generalized_box_iou([[0, 0, 1, 1]], [[2, 0, 3, 1]]).tolist()      # IoU 0, hull 3, union 2
    [[-0.3333333432674408]]
    """
    a, b = _boxes(boxes1, "boxes1"), _boxes(boxes2, "boxes2")
    inter, union = _inter_union(a, b)
    iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    hull = wh[..., 0] * wh[..., 1]
    return _like(iou - torch.where(hull > 0, (hull - union) / hull.clamp_min(1e-12), torch.zeros_like(hull)),
                 boxes1, boxes2)


def _giou_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of matched rows ``a[i]`` / ``b[i]`` (differentiable)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    union = area_a + area_b - inter
    iou = inter / union.clamp_min(1e-7)
    hwh = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp_min(0)
    hull = hwh[:, 0] * hwh[:, 1]
    return iou - (hull - union) / hull.clamp_min(1e-7)


def nms(boxes, scores, iou_threshold: float = 0.5) -> torch.Tensor:
    """Greedy non-maximum suppression: keep the best-scoring box, drop every box whose
    IoU with it exceeds ``iou_threshold``, repeat with the best remaining box.

    Parameters
    ----------
    boxes : torch.Tensor or array_like
        ``(K, 4)`` corner boxes.
    scores : torch.Tensor or array_like
        ``(K,)`` scores.
    iou_threshold : float, optional
        Boxes overlapping a kept box by more than this IoU are suppressed, in ``[0, 1]``.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        int64 indices of the kept boxes, by decreasing score.

    Raises
    ------
    InputError
        For a threshold outside ``[0, 1]``, NaN / Inf or reversed boxes, or scores that
        are not finite or do not fit the boxes.

    Examples
    --------
    >>> nms([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7]).tolist()
    [0, 2]
    """
    b = _boxes(boxes)
    s = _scores(scores, b.shape[0], b.device)
    thr = check_number(iou_threshold, "iou_threshold", low=0, high=1)
    if b.shape[0] == 0:
        return _like(torch.zeros(0, dtype=torch.long, device=b.device), boxes, scores)
    order = torch.argsort(s, descending=True, stable=True)
    bo = b[order]
    inter, union = _inter_union(bo, bo)
    over = (torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter)) > thr).cpu().numpy()
    alive = np.ones(len(order), bool)
    keep = []
    for i in range(len(order)):
        if alive[i]:
            keep.append(i)
            alive &= ~over[i]
    return _like(order[torch.as_tensor(keep, dtype=torch.long, device=b.device)], boxes, scores)


def batched_nms(boxes, scores, idxs, iou_threshold: float = 0.5) -> torch.Tensor:
    """Non-maximum suppression within each group (class or image) ``idxs`` only.

    Boxes of different groups are moved apart by an offset larger than every coordinate,
    so that one :func:`nms` call never lets them suppress each other.

    Parameters
    ----------
    boxes : torch.Tensor or array_like
        ``(K, 4)`` corner boxes.
    scores : torch.Tensor or array_like
        ``(K,)`` scores.
    idxs : torch.Tensor or array_like
        ``(K,)`` integer group of each box.
    iou_threshold : float, optional
        See :func:`nms`.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        int64 indices of the kept boxes, by decreasing score.

    Raises
    ------
    InputError
        For groups or scores that do not fit the boxes (see :func:`nms`).

    Examples
    --------
    >>> batched_nms([[0, 0, 10, 10], [1, 1, 10, 10]], [0.9, 0.8], [0, 1]).tolist()
    [0, 1]
    """
    b = _boxes(boxes)
    g = torch.as_tensor(idxs, device=b.device).reshape(-1)
    if g.numel() != b.shape[0]:
        raise InputError(f"idxs: got {g.numel()} group(s) for {b.shape[0]} box(es); expected one per box")
    if b.shape[0] == 0:
        return _like(torch.zeros(0, dtype=torch.long, device=b.device), boxes, scores, idxs)
    span = float(b.max() - min(float(b.min()), 0.0)) + 1.0
    return _like(nms(b + (g.to(b.dtype) * span)[:, None], _scores(scores, b.shape[0], b.device), iou_threshold),
                 boxes, scores, idxs)


# ============================================================================ RoIAlign
def _rois(rois, n_images: int, device) -> torch.Tensor:
    """``(K, 5)`` rois (batch index, x1, y1, x2, y2) from a (K, 5) tensor or a list of (K_i, 4)."""
    if isinstance(rois, (list, tuple)):
        if len(rois) != n_images:
            raise InputError(f"rois: got boxes for {len(rois)} image(s); expected one (K_i, 4) array per image "
                             f"({n_images})")
        parts = [torch.cat([torch.full((len(_boxes(r)), 1), float(i), dtype=torch.float64),
                            _boxes(r).detach().cpu().double()], 1) for i, r in enumerate(rois)]
        r = torch.cat(parts) if parts else torch.zeros(0, 5, dtype=torch.float64)
        return r.to(device)
    r = torch.as_tensor(rois, device=device)
    r = r if r.is_floating_point() else r.double()
    if r.ndim != 2 or r.shape[1] != 5:
        raise ShapeError(f"rois: got shape {tuple(r.shape)}; expected (K, 5) rows (batch index, x1, y1, x2, y2) "
                         "or a list of (K_i, 4) boxes")
    if r.numel() and (r[:, 0].min() < 0 or r[:, 0].max() >= n_images):
        raise InputError(f"rois: batch index outside [0, {n_images - 1}]")
    return r


def roi_align(features, rois, output_size=7, spatial_scale: float = 1.0, sampling_ratio: int = 2,
              aligned: bool = True) -> torch.Tensor:
    """RoIAlign (He et al. 2017): a fixed ``output_size`` grid of features per box,
    without any rounding of the box.

    Each box (image coordinates, scaled by ``spatial_scale`` to the feature map) is cut
    into ``oh x ow`` bins; every bin is the mean of ``sampling_ratio x sampling_ratio``
    regularly spaced bilinear samples (:func:`torch.nn.functional.grid_sample`; samples
    outside the map take the nearest border value).  With ``aligned`` the feature pixel
    ``i`` is centred at ``i + 0.5`` (torchvision's ``aligned=True``), so a box that covers
    exactly some pixels samples their values.

    Parameters
    ----------
    features : torch.Tensor
        ``(N, C, H, W)`` feature maps.
    rois : torch.Tensor or list of array_like
        ``(K, 5)`` rows ``(batch index, x1, y1, x2, y2)`` or a list of ``N`` ``(K_i, 4)``
        box arrays.
    output_size : int or tuple of int, optional
        ``oh`` or ``(oh, ow)``.
    spatial_scale : float, optional
        Feature-map pixels per image pixel (``1 / stride``).
    sampling_ratio : int, optional
        Bilinear samples per bin along each axis (>= 1).
    aligned : bool, optional
        Shift by half a pixel (pixel centres at half integers).

    Returns
    -------
    torch.Tensor
        ``(K, C, oh, ow)`` pooled features, rows in the order of ``rois``.

    Raises
    ------
    ShapeError
        For features that are not ``(N, C, H, W)`` or rois of the wrong shape.
    InputError
        For a bad ``output_size``, ``sampling_ratio`` or batch index.

    Examples
    --------
    >>> import torch
    >>> f = torch.arange(16.0).reshape(1, 1, 4, 4)              # f[y, x] = 4 y + x
    >>> roi_align(f, [torch.tensor([[0.0, 0.0, 2.0, 2.0]])], 1)[0, 0].tolist()   # mean of the 2x2 corner
    [[2.5]]
    """
    if not torch.is_tensor(features):
        raise InputError(f"features: got {describe(features)}; expected a torch tensor (N, C, H, W), "
                         "e.g. torch.as_tensor(features)")
    if features.ndim != 4:
        raise ShapeError(f"features: got {describe(features)}; expected a (N, C, H, W) tensor")
    oh, ow = (int(output_size), int(output_size)) if np.ndim(output_size) == 0 else tuple(int(v) for v in output_size)
    if oh < 1 or ow < 1:
        raise InputError(f"output_size: got {output_size!r}; expected positive bin counts")
    s = int(sampling_ratio)
    if isinstance(sampling_ratio, bool) or s < 1:
        raise InputError(f"sampling_ratio: got {sampling_ratio!r}; expected an integer >= 1")
    n, c, h, w = features.shape
    r = _rois(rois, n, features.device).to(features.dtype)
    out = features.new_zeros((r.shape[0], c, oh, ow))
    if r.shape[0] == 0:
        return out
    off = 0.5 if aligned else 0.0
    x1, y1 = r[:, 1] * spatial_scale - off, r[:, 2] * spatial_scale - off
    x2, y2 = r[:, 3] * spatial_scale - off, r[:, 4] * spatial_scale - off
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = rw.clamp_min(1.0), rh.clamp_min(1.0)
    # sample positions (feature-pixel index coordinates), (K, oh * s) and (K, ow * s)
    fy = (torch.arange(oh * s, device=features.device, dtype=features.dtype) + 0.5) / (oh * s)
    fx = (torch.arange(ow * s, device=features.device, dtype=features.dtype) + 0.5) / (ow * s)
    ys = y1[:, None] + fy[None] * rh[:, None]
    xs = x1[:, None] + fx[None] * rw[:, None]
    gy = ys / max(h - 1, 1) * 2 - 1 if h > 1 else torch.zeros_like(ys)
    gx = xs / max(w - 1, 1) * 2 - 1 if w > 1 else torch.zeros_like(xs)
    bidx = r[:, 0].long()
    for b in torch.unique(bidx).tolist():
        sel = torch.nonzero(bidx == b).reshape(-1)
        k = sel.numel()
        grid = torch.stack(torch.broadcast_tensors(gx[sel][:, None, :], gy[sel][:, :, None]), -1)  # (k, oh s, ow s, 2)
        grid = grid.reshape(1, k * oh * s, ow * s, 2)
        smp = F.grid_sample(features[b:b + 1], grid, mode="bilinear", padding_mode="border", align_corners=True)
        smp = smp.reshape(c, k, oh * s, ow * s).permute(1, 0, 2, 3)
        out[sel] = F.avg_pool2d(smp, s) if s > 1 else smp
    return out


# ============================================================================ network
def _gn(c: int) -> nn.Module:
    return nn.GroupNorm(min(8, c), c)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), _gn(c_out), nn.ReLU(True))


class DetectionNet(SavedModule):
    """One-stage dense detector (FCOS / YOLO-style head) with an optional Mask R-CNN-style
    mask head, for grey or multi-channel 2-D images.

    Backbone: a stem (a 3x3 convolution at full resolution) and ``len(widths) - 1``
    stages (a stride-2 3x3 convolution and a 3x3 convolution, GroupNorm, ReLU), then a
    feature pyramid: 1x1 laterals to ``fpn_channels``, a top-down path with nearest 2x
    upsampling and addition, a 3x3 smoothing convolution at the detection level (stride
    ``stride``) and the mask level (stride ``mask_stride``).  The dense head (two 3x3
    convolutions) predicts per cell of the detection level an objectness logit, the
    distances ``(l, t, r, b)`` from the cell centre to the box sides (pixels, as
    ``stride * exp(.)``) and a centre-ness logit.  The mask head pools ``roi_size x
    roi_size`` features of the mask level per box (:func:`roi_align`), applies four 3x3
    convolutions and a 2x transposed convolution: ``mask_size = 2 * roi_size`` mask
    logits per box.

    Parameters
    ----------
    in_channels : int, optional
        Input channels.
    widths : sequence of int, optional
        Channels of the stem and of each stride-2 stage (the input is padded to a multiple
        of ``2 ** (len(widths) - 1)``).
    fpn_channels : int, optional
        Channels of the pyramid and the heads.
    stride : int, optional
        Stride of the detection level, a power of two reached by the backbone.
    mask_stride : int, optional
        Stride of the level the mask head pools from, a power of two ``<= stride``.
    roi_size : int, optional
        RoIAlign output size of the mask head (the mask is ``2 * roi_size`` square).
    mask_channels : int, optional
        Channels of the mask level and the mask head.
    masks : bool, optional
        Build the mask head.
    seed : int, optional
        Initialisation seed (the global torch RNG is left untouched).

    Raises
    ------
    InputError
        For bad widths, strides or sizes.

    Examples
    --------
    >>> net = DetectionNet(widths=(8, 16, 32), fpn_channels=16, seed=0)
    >>> out = net(torch.zeros(2, 1, 30, 30))                       # padded to 32 x 32
    >>> tuple(out["centerness"].shape), tuple(out["mask_features"].shape)
    ((2, 1, 8, 8), (2, 32, 16, 16))
    >>> tuple(net.mask_logits(out["mask_features"], [torch.tensor([[0.0, 0, 8, 8]]), torch.zeros(0, 4)]).shape)
    (1, 1, 28, 28)
    """

    FORMAT = "biomip.nn.DetectionNet"
    VERSION = 1

    def __init__(self, in_channels: int = 1, widths=(16, 32, 64, 96, 128), fpn_channels: int = 64, stride: int = 4,
                 mask_stride: int = 2, roi_size: int = 14, mask_channels: int = 32, masks: bool = True,
                 seed: int = 0):
        super().__init__()
        try:
            widths = tuple(int(w) for w in widths)
        except (TypeError, ValueError) as exc:
            raise InputError(f"widths: got {widths!r}; expected a sequence of positive integers") from exc
        if len(widths) < 2 or min(widths) < 1:
            raise InputError(f"widths: got {widths!r}; expected at least two positive channel counts")
        top = 2 ** (len(widths) - 1)
        for name, v in (("stride", stride), ("mask_stride", mask_stride)):
            if isinstance(v, bool) or int(v) != v or int(v) < 1 or int(v) & (int(v) - 1) or int(v) > top:
                raise InputError(f"{name}: got {v!r}; expected a power of two <= {top} (reached by the backbone)")
        if mask_stride > stride:
            raise InputError(f"mask_stride: got {mask_stride}; expected <= stride ({stride})")
        self.in_channels = int(check_number(in_channels, "in_channels", integer=True, low=1))
        self.widths, self.fpn_channels = widths, int(check_number(fpn_channels, "fpn_channels", integer=True, low=1))
        self.stride, self.mask_stride = int(stride), int(mask_stride)
        self.roi_size = int(check_number(roi_size, "roi_size", integer=True, low=1))
        self.mask_channels = int(check_number(mask_channels, "mask_channels", integer=True, low=1))
        self.masks, self.seed = bool(masks), int(seed)
        self.meta: dict = {}
        f = self.fpn_channels
        with seeded(self.seed):
            self.stem = _conv(self.in_channels, widths[0])
            self.stages = nn.ModuleList(nn.Sequential(_conv(widths[i - 1], widths[i], 2), _conv(widths[i], widths[i]))
                                        for i in range(1, len(widths)))
            lo = int(math.log2(self.mask_stride))
            self._levels = list(range(lo, len(widths)))                      # levels with a lateral
            self.laterals = nn.ModuleList(nn.Conv2d(widths[i], f, 1) for i in self._levels)
            self.smooth_det = _conv(f, f)
            self.smooth_mask = _conv(f, self.mask_channels)
            self.tower = nn.Sequential(_conv(f, f), _conv(f, f))
            self.obj = nn.Conv2d(f, 1, 3, padding=1)
            self.reg = nn.Conv2d(f, 4, 3, padding=1)
            self.ctr = nn.Conv2d(f, 1, 3, padding=1)
            nn.init.normal_(self.obj.weight, std=0.01)
            nn.init.constant_(self.obj.bias, -math.log(99.0))              # prior probability 0.01 (RetinaNet)
            nn.init.normal_(self.reg.weight, std=0.01)
            nn.init.constant_(self.reg.bias, math.log(2.0))
            if self.masks:
                mc = self.mask_channels
                self.mask_head = nn.Sequential(*[_conv(mc, mc) for _ in range(4)], nn.ConvTranspose2d(mc, mc, 2, 2),
                                               nn.ReLU(True), nn.Conv2d(mc, 1, 1))

    def config(self) -> dict:
        """Constructor arguments (JSON-able).

        Returns
        -------
        dict
            ``cls(**config())`` rebuilds the network.
        """
        return {"in_channels": self.in_channels, "widths": list(self.widths), "fpn_channels": self.fpn_channels,
                "stride": self.stride, "mask_stride": self.mask_stride, "roi_size": self.roi_size,
                "mask_channels": self.mask_channels, "masks": self.masks, "seed": self.seed}

    @property
    def divisor(self) -> int:
        """Inputs are padded to a multiple of this size."""
        return 2 ** (len(self.widths) - 1)

    @property
    def mask_size(self) -> int:
        """Side of the predicted box masks (``2 * roi_size``)."""
        return 2 * self.roi_size

    def forward(self, x: torch.Tensor) -> dict:
        """Dense predictions of a batch.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, H, W)``; padded (edge values) on the bottom / right to a
            multiple of :attr:`divisor`.

        Returns
        -------
        dict
            ``objectness`` ``(N, 1, h, w)`` logits, ``ltrb`` ``(N, 4, h, w)`` distances
            in pixels, ``centerness`` ``(N, 1, h, w)`` logits (``h = ceil(H / stride)``),
            ``mask_features`` ``(N, mask_channels, H / mask_stride, W / mask_stride)`` and
            ``stride``.
        """
        x = check_batch(x, 2, self.in_channels)
        h, w = x.shape[-2:]
        dv = self.divisor
        ph, pw = (-h) % dv, (-w) % dv
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        feats = [self.stem(x)]
        for st in self.stages:
            feats.append(st(feats[-1]))
        p = None
        pyramid = {}
        for lat, lv in zip(reversed(self.laterals), reversed(self._levels)):
            q = lat(feats[lv])
            p = q if p is None else q + F.interpolate(p, size=q.shape[-2:], mode="nearest")
            pyramid[lv] = p
        det = self.smooth_det(pyramid[int(math.log2(self.stride))])
        mfeat = self.smooth_mask(pyramid[int(math.log2(self.mask_stride))])
        t = self.tower(det)
        oh, ow = -(-h // self.stride), -(-w // self.stride)
        ltrb = self.stride * torch.exp(self.reg(t).clamp(max=8.0))
        return {"objectness": self.obj(t)[..., :oh, :ow], "ltrb": ltrb[..., :oh, :ow],
                "centerness": self.ctr(t)[..., :oh, :ow], "mask_features": mfeat, "stride": self.stride}

    def mask_logits(self, mask_features: torch.Tensor, boxes) -> torch.Tensor:
        """Mask logits ``(K, 1, M, M)`` of boxes (image pixels) from ``forward``'s ``mask_features``.

        Parameters
        ----------
        mask_features : torch.Tensor
            ``(N, mask_channels, H', W')`` from :meth:`forward`.
        boxes : torch.Tensor or list of array_like
            ``(K, 5)`` rois or a list of ``N`` ``(K_i, 4)`` boxes (see :func:`roi_align`).

        Returns
        -------
        torch.Tensor
            ``(K, 1, mask_size, mask_size)`` logits.

        Raises
        ------
        InputError
            When the network has no mask head.
        """
        if not self.masks:
            raise InputError("boxes: this DetectionNet was built with masks=False (no mask head)")
        pooled = roi_align(mask_features, boxes, self.roi_size, spatial_scale=1.0 / self.mask_stride, sampling_ratio=2)
        return self.mask_head(pooled)


# ============================================================================ training
def boxes_from_labels(labels, min_area: int = 1):
    """Boxes and ids of the instances of a 2-D label image.

    Parameters
    ----------
    labels : array_like or torch.Tensor
        ``(H, W)`` integer instance labels (0 = background).
    min_area : int, optional
        Instances with fewer pixels are left out.

    Returns
    -------
    boxes : numpy.ndarray
        ``(K, 4)`` float32 corner boxes ``(x1, y1, x2, y2)`` (pixel edges).
    ids : numpy.ndarray
        ``(K,)`` int64 label of each box.

    Raises
    ------
    InputError
        For labels that are not 2-D integers.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((10, 10), int); lab[2:5, 3:9] = 7
    >>> b, ids = boxes_from_labels(lab)
    >>> b.tolist(), ids.tolist()
    ([[3.0, 2.0, 9.0, 5.0]], [7])
    """
    from scipy import ndimage as ndi

    a = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if a.ndim != 2 or not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise InputError(f"labels: got {a.ndim}-D {a.dtype}; expected a 2-D integer instance label image")
    a = a.astype(np.int64)
    boxes, ids = [], []
    if a.size and a.max() > 0:
        areas = np.bincount(a.ravel())
        for i, sl in enumerate(ndi.find_objects(a), start=1):
            if sl is None or areas[i] < min_area:
                continue
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            ids.append(i)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(ids, np.int64)


def _sigmoid_focal(logits, target, alpha: float = 0.25, gamma: float = 2.0):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    a = alpha * target + (1 - alpha) * (1 - target)
    return a * (1 - pt) ** gamma * ce


def _cell_centres(h: int, w: int, stride: int, device, dtype=torch.float32):
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    return cx.reshape(-1), cy.reshape(-1)


def detection_loss(outputs: dict, boxes, radius: float = 1.5, focal_alpha: float = 0.25,
                   focal_gamma: float = 2.0) -> dict:
    """FCOS-style loss of :class:`DetectionNet`'s dense outputs against ground-truth boxes.

    Assignment: a cell is positive for a box when its centre lies inside the box and within
    ``radius * stride`` of the box centre (centre sampling), or when it holds the box
    centre; a cell positive for several boxes takes the smallest.  Objectness: sigmoid
    focal loss over all cells, divided by the number of positives; boxes: ``1 - GIoU`` of
    the predicted and the assigned box, weighted by the centre-ness target; centre-ness:
    BCE against ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` on the positives.

    Parameters
    ----------
    outputs : dict
        :meth:`DetectionNet.forward` output.
    boxes : list of array_like
        One ``(K_i, 4)`` box array per image (image pixels; may be empty).
    radius : float, optional
        Centre-sampling radius in cells.
    focal_alpha : float, optional
        Focal-loss weight of the positives.
    focal_gamma : float, optional
        Focal-loss focusing exponent.

    Returns
    -------
    dict
        ``loss`` (the sum, differentiable), ``objectness``, ``box``, ``centerness``
        (tensors) and ``positives`` (int).

    Raises
    ------
    InputError
        When ``boxes`` does not hold one array per image.

    Examples
    --------
    >>> net = DetectionNet(widths=(8, 16, 32), fpn_channels=16, masks=False, seed=0)
    >>> parts = detection_loss(net(torch.zeros(1, 1, 32, 32)), [torch.tensor([[4.0, 4.0, 20.0, 16.0]])])
    >>> parts["positives"] > 0, bool(parts["loss"] > 0)
    (True, True)
    """
    obj, ltrb, ctr, stride = outputs["objectness"], outputs["ltrb"], outputs["centerness"], outputs["stride"]
    n, _, h, w = obj.shape
    if len(boxes) != n:
        raise InputError(f"boxes: got {len(boxes)} box array(s); expected one per image ({n})")
    dev = obj.device
    cx, cy = _cell_centres(h, w, stride, dev, obj.dtype)
    obj_t = torch.zeros(n, h * w, device=dev, dtype=obj.dtype)
    l_box, l_ctr, n_pos = obj.new_zeros(()), obj.new_zeros(()), 0
    w_sum = obj.new_zeros(())
    for i in range(n):
        gt = _boxes(boxes[i]).to(dev, obj.dtype)
        if gt.shape[0] == 0:
            continue
        x1, y1, x2, y2 = gt.unbind(-1)
        bcx, bcy = (x1 + x2) / 2, (y1 + y2) / 2
        inside = ((cx[:, None] > x1) & (cx[:, None] < x2) & (cy[:, None] > y1) & (cy[:, None] < y2))
        near = ((cx[:, None] - bcx).abs() < radius * stride) & ((cy[:, None] - bcy).abs() < radius * stride)
        cell = (torch.floor(bcy / stride).clamp(0, h - 1) * w + torch.floor(bcx / stride).clamp(0, w - 1)).long()
        holds = torch.zeros_like(inside)
        holds[cell, torch.arange(gt.shape[0], device=dev)] = True
        cand = (inside & near) | holds
        area = ((x2 - x1) * (y2 - y1))[None].expand_as(cand)
        area = torch.where(cand, area, torch.full_like(area, float("inf")))
        best_area, which = area.min(1)
        pos = torch.isfinite(best_area)
        if not bool(pos.any()):
            continue
        obj_t[i, pos] = 1.0
        tb = gt[which[pos]]
        pcx, pcy = cx[pos], cy[pos]
        d = ltrb[i].reshape(4, -1)[:, pos]
        pred = torch.stack([pcx - d[0], pcy - d[1], pcx + d[2], pcy + d[3]], -1)
        tl, tt, tr, tbm = pcx - tb[:, 0], pcy - tb[:, 1], tb[:, 2] - pcx, tb[:, 3] - pcy
        lr = torch.minimum(tl, tr).clamp_min(0) / torch.maximum(tl, tr).clamp_min(1e-6)
        tbr = torch.minimum(tt, tbm).clamp_min(0) / torch.maximum(tt, tbm).clamp_min(1e-6)
        ctr_t = torch.sqrt(lr * tbr)
        wgt = ctr_t.clamp_min(0.05)
        l_box = l_box + (wgt * (1 - _giou_pairs(pred, tb))).sum()
        w_sum = w_sum + wgt.sum()
        l_ctr = l_ctr + F.binary_cross_entropy_with_logits(ctr[i].reshape(-1)[pos], ctr_t, reduction="sum")
        n_pos += int(pos.sum())
    norm = max(n_pos, 1)
    l_obj = _sigmoid_focal(obj.reshape(n, -1), obj_t, focal_alpha, focal_gamma).sum() / norm
    l_box = l_box / w_sum.clamp_min(1e-6)
    l_ctr = l_ctr / norm
    return {"loss": l_obj + 2.0 * l_box + l_ctr, "objectness": l_obj, "box": l_box, "centerness": l_ctr,
            "positives": n_pos}


def mask_targets(labels, rois, ids, mask_size: int = 28) -> torch.Tensor:
    """Binary ``mask_size`` square targets of instances in boxes (RoIAlign of the instance
    indicator, thresholded at 0.5), the targets of Mask R-CNN's mask head.

    Parameters
    ----------
    labels : torch.Tensor
        ``(N, H, W)`` integer instance labels.
    rois : torch.Tensor
        ``(K, 5)`` rows ``(batch index, x1, y1, x2, y2)``.
    ids : torch.Tensor or array_like
        ``(K,)`` the instance id of each roi.
    mask_size : int, optional
        Side of the targets.

    Returns
    -------
    torch.Tensor
        ``(K, 1, mask_size, mask_size)`` float32 targets in {0, 1}.

    Raises
    ------
    ShapeError
        For labels that are not ``(N, H, W)``.

    Examples
    --------
    >>> lab = torch.zeros(1, 8, 8, dtype=torch.long); lab[0, 2:6, 2:4] = 1
    >>> t = mask_targets(lab, torch.tensor([[0.0, 2, 2, 6, 6]]), [1], 4)
    >>> t[0, 0].tolist()
    [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    """
    if not torch.is_tensor(labels) or labels.ndim != 3:
        raise ShapeError(f"labels: got {describe(labels)}; expected a (N, H, W) tensor")
    r = _rois(rois, labels.shape[0], labels.device)
    idv = torch.as_tensor(ids, device=labels.device).reshape(-1, 1, 1)
    m, smp = int(mask_size), 2
    _, h, w = labels.shape
    k = r.shape[0]
    if k == 0:
        return torch.zeros(0, 1, m, m, device=labels.device)
    # RoIAlign (aligned, sampling ratio 2) of each instance indicator, as bilinear weights of 4 neighbours
    f = (torch.arange(m * smp, device=labels.device, dtype=torch.float32) + 0.5) / (m * smp)
    ys = (r[:, 2:3] - 0.5 + f[None] * (r[:, 4:5] - r[:, 2:3])).clamp(0, h - 1)          # (K, m s)
    xs = (r[:, 1:2] - 0.5 + f[None] * (r[:, 3:4] - r[:, 1:2])).clamp(0, w - 1)
    y0, x0 = ys.floor().long(), xs.floor().long()
    y1, x1 = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
    fy, fx = ys - y0, xs - x0
    b = r[:, 0].long()[:, None, None]
    acc = torch.zeros(k, m * smp, m * smp, device=labels.device)
    for yy, wy in ((y0, 1 - fy), (y1, fy)):
        for xx, wx in ((x0, 1 - fx), (x1, fx)):
            hit = (labels[b, yy[:, :, None], xx[:, None, :]] == idv).float()
            acc = acc + hit * wy[:, :, None] * wx[:, None, :]
    out = F.avg_pool2d(acc[:, None], smp)
    return (out >= 0.5).float()


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel binary cross-entropy of mask logits (Mask R-CNN's mask loss).

    Parameters
    ----------
    logits : torch.Tensor
        ``(K, 1, M, M)`` mask logits.
    targets : torch.Tensor
        ``(K, 1, M, M)`` targets in {0, 1}.

    Returns
    -------
    torch.Tensor
        The loss (0 for ``K = 0``).

    Raises
    ------
    ShapeError
        When the shapes differ.

    Examples
    --------
    >>> float(mask_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)))  # log 2
    0.6931471824645996
    """
    if logits.shape != targets.shape:
        raise ShapeError(f"logits, targets: got shapes {tuple(logits.shape)} and {tuple(targets.shape)}; expected "
                         "the same")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits, targets)


def decode_detections(outputs: dict, score_threshold: float = 0.05, nms_threshold: float = 0.5,
                      max_detections: int = 500, image_size=None) -> list:
    """Boxes and scores per image from :class:`DetectionNet`'s dense outputs.

    Score of a cell: ``sqrt(sigmoid(objectness) * sigmoid(centerness))`` (FCOS); its box:
    the cell centre minus / plus the predicted distances.  Cells under
    ``score_threshold`` are dropped, then :func:`nms`.

    Parameters
    ----------
    outputs : dict
        :meth:`DetectionNet.forward` output.
    score_threshold : float, optional
        Smallest score kept.
    nms_threshold : float, optional
        NMS IoU threshold.
    max_detections : int, optional
        At most this many boxes per image (best scores).
    image_size : tuple of int or None, optional
        ``(H, W)``: boxes are clipped to the image.

    Returns
    -------
    list of tuple
        Per image ``(boxes (K, 4), scores (K,))`` tensors, by decreasing score.

    Examples
    --------
    >>> net = DetectionNet(widths=(8, 16, 32), fpn_channels=16, masks=False, seed=0)
    >>> [b.shape[1] for b, s in decode_detections(net(torch.zeros(1, 1, 32, 32)), 0.0)]
    [4]
    """
    obj, ltrb, ctr, stride = outputs["objectness"], outputs["ltrb"], outputs["centerness"], outputs["stride"]
    n, _, h, w = obj.shape
    cx, cy = _cell_centres(h, w, stride, obj.device, obj.dtype)
    res = []
    for i in range(n):
        s = torch.sqrt(torch.sigmoid(obj[i, 0]) * torch.sigmoid(ctr[i, 0])).reshape(-1)
        keep = torch.nonzero(s >= float(score_threshold)).reshape(-1)
        if keep.numel() > 4 * int(max_detections):
            keep = keep[torch.topk(s[keep], 4 * int(max_detections)).indices]
        d = ltrb[i].reshape(4, -1)[:, keep]
        b = torch.stack([cx[keep] - d[0], cy[keep] - d[1], cx[keep] + d[2], cy[keep] + d[3]], -1)
        if image_size is not None:
            b[:, 0::2] = b[:, 0::2].clamp(0, float(image_size[1]))
            b[:, 1::2] = b[:, 1::2].clamp(0, float(image_size[0]))
        sk = s[keep]
        k = nms(b, sk, nms_threshold)[:int(max_detections)]
        res.append((b[k], sk[k]))
    return res


def paste_masks(masks, boxes, shape, scores=None, threshold: float = 0.5, min_area: int = 0,
                max_overlap: float = 1.0) -> np.ndarray:
    """Paste ``M x M`` box masks (probabilities) back into an instance label image.

    Every pixel of a box takes the mask value at its centre (bilinear, the mask stretched
    over the box as RoIAlign sampled it); pixels above ``threshold`` belong to the
    instance.  Masks are pasted by decreasing score into the pixels still free, so where
    masks overlap the best-scoring one wins; a mask that finds more than ``max_overlap``
    of its pixels taken already is dropped (mask NMS), as are instances left with fewer
    than ``min_area`` pixels.  Labels are ``1..n`` in order of decreasing score.

    Parameters
    ----------
    masks : torch.Tensor or array_like
        ``(K, M, M)`` or ``(K, 1, M, M)`` mask probabilities.
    boxes : torch.Tensor or array_like
        ``(K, 4)`` corner boxes (image pixels).
    shape : tuple of int
        ``(H, W)`` of the label image.
    scores : array_like or None, optional
        ``(K,)`` scores (default: the given order is best first).
    threshold : float, optional
        Mask probability threshold.
    min_area : int, optional
        Smallest instance kept, in pixels.
    max_overlap : float, optional
        Largest fraction of a mask that may lie on better-scoring instances, in ``[0, 1]``
        (1: keep every mask).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` int32 instance labels.

    Raises
    ------
    ShapeError
        For masks or boxes of the wrong shape.
    InputError
        For ``max_overlap`` outside ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> lab = paste_masks(np.ones((1, 4, 4)), [[2, 1, 6, 3]], (5, 8))
    >>> lab
    array([[0, 0, 0, 0, 0, 0, 0, 0],
           [0, 0, 1, 1, 1, 1, 0, 0],
           [0, 0, 1, 1, 1, 1, 0, 0],
           [0, 0, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0, 0]], dtype=int32)
    """
    m = torch.as_tensor(np.asarray(masks.detach().cpu() if torch.is_tensor(masks) else masks, np.float32))
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    b = _boxes(boxes).detach().cpu().float()
    if m.ndim != 3 or m.shape[0] != b.shape[0]:
        raise ShapeError(f"masks: got shape {tuple(m.shape)}; expected (K, M, M) with K = {b.shape[0]} boxes")
    mo = check_number(max_overlap, "max_overlap", low=0, high=1)
    H, W = int(shape[0]), int(shape[1])
    lab = np.zeros((H, W), np.int32)
    k = b.shape[0]
    if k == 0:
        return lab
    sc = np.arange(k, 0, -1, dtype=np.float64) if scores is None else np.asarray(
        scores.detach().cpu() if torch.is_tensor(scores) else scores, np.float64).reshape(-1)
    nxt = 1
    for j in np.argsort(-sc, kind="stable"):                  # best first, into the free pixels
        x1, y1, x2, y2 = b[j].tolist()
        c0, c1 = max(int(math.floor(x1)), 0), min(int(math.ceil(x2)), W)
        r0, r1 = max(int(math.floor(y1)), 0), min(int(math.ceil(y2)), H)
        if c1 <= c0 or r1 <= r0 or x2 <= x1 or y2 <= y1:
            continue
        px = (torch.arange(c0, c1, dtype=torch.float32) + 0.5 - x1) / (x2 - x1) * 2 - 1
        py = (torch.arange(r0, r1, dtype=torch.float32) + 0.5 - y1) / (y2 - y1) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(px[None, :], py[:, None]), -1)[None]
        v = F.grid_sample(m[j][None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
        inside = (px.abs() <= 1)[None, :] & (py.abs() <= 1)[:, None]
        on = ((v >= threshold) & inside).numpy()
        n_on = int(on.sum())
        if n_on == 0:
            continue
        win = lab[r0:r1, c0:c1]
        free = on & (win == 0)
        n_free = int(free.sum())
        if n_free < max(min_area, 1) or (n_on - n_free) > mo * n_on:
            continue
        win[free] = nxt
        nxt += 1
    return lab
