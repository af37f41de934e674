"""Object detection of cells and nuclei (textbook 5.3.2 "YOLO", 5.2 "Mask R-CNN", 5.4.5
"部件模型"): a learned one-stage detector with a detect-then-segment mask head, and the
classic HOG + linear SVM sliding-window detector (Dalal & Triggs 2005).

* :class:`Detector` trains :class:`biomip.nn.detection.DetectionNet` from images and
  instance label maps (the boxes come from the labels): a dense FCOS / YOLO-style head
  gives boxes and scores (:meth:`Detector.predict`), a Mask R-CNN-style head segments each
  box (trained on jittered true boxes, applied to the predicted ones) and the box masks
  are pasted back into an instance label image (:meth:`Detector.predict_instances`).
  :meth:`Detector.fine_tune` continues training on a few annotated images (simulated
  nuclei first, then real ones), :meth:`Detector.calibrate` picks the score threshold of
  the instances on annotated images; :meth:`Detector.save` / :meth:`Detector.load` as
  every biomip model (a folder with ``model.safetensors`` and ``config.json``).
* :class:`HOGDetector`: dense HOG features (scikit-image) on an image pyramid, a
  sliding window scored by a linear SVM trained on the true boxes (one round of hard
  negative mining), NMS; its instances are the Otsu foreground inside each box.

Boxes are ``(x1, y1, x2, y2)`` in pixels, ``x`` along the last array axis, pixel ``(r,
c)`` covering ``[c, c + 1] x [r, r + 1]`` (see :mod:`biomip.nn.detection`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..core.arrays import check_number, like_input
from ..core.errors import InputError, ShapeError
from ..core.image import Image
from ..nn.detection import (
    DetectionNet,
    boxes_from_labels,
    decode_detections,
    detection_loss,
    mask_loss,
    mask_targets,
    nms,
    paste_masks,
)
from .evaluate import average_precision
from .flows import normalize_percentile

__all__ = ["Detector", "HOGDetector"]


def _pairs(images, labels):
    """Normalised float32 images and int64 label arrays (lists), checked."""
    from .instances import check_labels

    if isinstance(images, (Image, np.ndarray)) or torch.is_tensor(images):
        images, labels = [images], [labels]
    if len(images) != len(labels) or not len(images):
        raise InputError(f"images, labels: got {len(images)} and {len(labels)}; expected the same number (>= 1)")
    xs, ys = [], []
    for i, (im, lab) in enumerate(zip(images, labels)):
        x = normalize_percentile(im).astype(np.float32)
        y = check_labels(lab, f"labels[{i}]").astype(np.int64)
        if x.ndim != 2 or x.shape != y.shape:
            raise ShapeError(f"images[{i}], labels[{i}]: got shapes {x.shape} and {y.shape}; expected one grey 2-D "
                             "image and its instance labels")
        xs.append(x)
        ys.append(y)
    return xs, ys


def _image(image) -> np.ndarray:
    x = normalize_percentile(image).astype(np.float32)
    if x.ndim != 2:
        raise ShapeError(f"image: got shape {x.shape}; expected a grey 2-D image (H, W)")
    return x


def _count(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name}: got {v!r}; expected a positive integer")
    return int(v)


def _jitter(boxes: torch.Tensor, g: torch.Generator, amount: float) -> torch.Tensor:
    """Boxes moved by up to ``amount`` of their size and rescaled by up to ``1 +- amount``."""
    if boxes.shape[0] == 0 or amount <= 0:
        return boxes
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    r = (torch.rand(boxes.shape[0], 4, generator=g) * 2 - 1) * amount
    cx, cy = cx + r[:, 0] * w, cy + r[:, 1] * h
    w, h = w * (1 + r[:, 2]), h * (1 + r[:, 3])
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


class Detector:
    """Learned nucleus / cell detector: a one-stage dense detector (FCOS / YOLO-style)
    plus a Mask R-CNN-style mask head, trained from instance label maps.

    Parameters
    ----------
    model : DetectionNet or None, optional
        A network to wrap (default: a new one built from the arguments below).
    widths : sequence of int, optional
        Backbone channels (see :class:`~biomip.nn.detection.DetectionNet`).
    fpn_channels : int, optional
        Pyramid / head channels.
    stride : int, optional
        Detection-level stride (pixels per output cell).
    masks : bool, optional
        Build the mask head (needed by :meth:`predict_instances`).
    seed : int, optional
        Initialisation seed.

    Attributes
    ----------
    model : DetectionNet
        The network; ``model.meta`` holds ``score_threshold`` (instances) and the training
        record.
    history : list of dict
        Per epoch of the last :meth:`fit` / :meth:`fine_tune`: ``loss``, ``objectness``,
        ``box``, ``centerness``, ``mask``, ``seconds``.

    Raises
    ------
    InputError
        For a ``model`` that is not a DetectionNet.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((64, 64), int)
    >>> for i, (r, c) in enumerate([(12, 12), (12, 44), (44, 20), (40, 48)], start=1):
    ...     lab[r - 5:r + 5, c - 4:c + 4] = i
    >>> img = (lab > 0) + 0.1 * np.random.default_rng(0).random((64, 64))
    >>> det = Detector(widths=(8, 16, 32), fpn_channels=16, seed=0)
    >>> det = det.fit([img], [lab], epochs=20, progress=False)               # doctest: +SKIP
    >>> boxes, scores = det.predict(img)                  # (an untrained network here)
    >>> boxes.shape[1], det.predict_instances(img)[0].shape
    (4, (64, 64))
    """

    def __init__(self, model=None, widths=(16, 32, 64, 96, 128), fpn_channels: int = 64, stride: int = 4,
                 masks: bool = True, seed: int = 0):
        if model is None:
            model = DetectionNet(in_channels=1, widths=widths, fpn_channels=fpn_channels, stride=stride, masks=masks,
                                 seed=seed)
        elif not isinstance(model, DetectionNet):
            raise InputError(f"model: got {type(model).__name__}; expected a biomip.nn.detection.DetectionNet")
        self.model = model
        self.model.meta.setdefault("kind", "detector")
        self.history: list = []

    def __repr__(self) -> str:
        return (f"Detector(widths={self.model.widths}, stride={self.model.stride}, masks={self.model.masks}, "
                f"parameters={self.model.n_parameters})")

    # ------------------------------------------------------------------ training
    def fit(self, images, labels, epochs: int = 10, iterations_per_epoch: int = 20, batch_size: int = 8,
            patch_size=128, lr: float = 2e-3, augment: bool = True, mask_rois: int = 24, jitter: float = 0.1,
            seed: int = 0, device=None, progress=None, callback=None):
        """Train (or continue training) on images and their instance label maps.

        Batches of random patches (half centred on an object), augmented (flips, 90-degree
        rotations, small rotations / zooms / elastic deformations and intensity changes,
        :class:`biomip.nn.Augmentation`); the true boxes are read from the augmented labels
        (:func:`~biomip.nn.detection.boxes_from_labels`, objects of at least 4 pixels).  Loss:
        :func:`~biomip.nn.detection.detection_loss` plus, with a mask head, the mask BCE on
        up to ``mask_rois`` jittered true boxes per patch (teacher forcing).  AdamW with a
        cosine learning-rate decay.

        Parameters
        ----------
        images : Image or array_like or list
            Grey 2-D image(s).
        labels : Image or array_like or list
            Instance label image(s), one per image.
        epochs : int, optional
            Number of epochs.
        iterations_per_epoch : int, optional
            Optimiser steps per epoch.
        batch_size : int, optional
            Patches per step.
        patch_size : int or tuple of int, optional
            Patch size in pixels (array order).
        lr : float, optional
            Peak learning rate.
        augment : bool, optional
            Use the default augmentation (else none).
        mask_rois : int, optional
            Largest number of boxes per patch the mask head trains on.
        jitter : float, optional
            Relative jitter of those boxes (centre shift and size change), so the head
            learns to segment imperfect predicted boxes.
        seed : int, optional
            Patch sampling, augmentation and jitter seed.
        device : str or torch.device or None, optional
            Where to train (default CPU).
        progress : bool or None, optional
            Show a progress bar (``None``: only on a terminal).
        callback : callable or None, optional
            ``callback(epoch, detector, record)`` after every epoch; True stops.

        Returns
        -------
        Detector
            ``self``, the network in eval mode, :attr:`history` filled.

        Raises
        ------
        InputError
            For mismatched images and labels or non-positive counts.
        """
        from ..core.progress import progress_bar
        from ..core.rng import seeded
        from ..nn.augment import Augmentation
        from ..nn.patches import PatchSampler

        xs, ys = _pairs(images, labels)
        epochs, iters = _count(epochs, "epochs"), _count(iterations_per_epoch, "iterations_per_epoch")
        bs, n_rois = _count(batch_size, "batch_size"), _count(mask_rois, "mask_rois")
        ps = (int(patch_size),) * 2 if np.ndim(patch_size) == 0 else tuple(int(v) for v in patch_size)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        net = self.model.to(dev)
        sampler = PatchSampler([torch.as_tensor(x)[None] for x in xs], [torch.as_tensor(y) for y in ys], ps,
                               foreground_fraction=0.5, seed=int(seed))
        aug = Augmentation() if augment else Augmentation.none()
        g = torch.Generator().manual_seed(int(seed))
        opt = torch.optim.AdamW(net.parameters(), lr=float(lr), weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(lr), total_steps=epochs * iters,
                                                    pct_start=0.1, anneal_strategy="cos")
        M = net.mask_size
        self.history = []
        with progress_bar("detector training", epochs, progress) as bar, seeded(int(seed), dev):
            for ep in range(epochs):
                t0 = time.perf_counter()
                net.train()
                acc = np.zeros(5)
                for _ in range(iters):
                    x, y = sampler.sample(bs, g)
                    x, y = aug(x, y, g)
                    boxes, rois, ids = [], [], []
                    for i in range(bs):
                        b, idv = boxes_from_labels(y[i], min_area=4)
                        boxes.append(torch.as_tensor(b))
                        if net.masks and len(b):
                            sel = torch.randperm(len(b), generator=g)[:n_rois]
                            jb = _jitter(torch.as_tensor(b)[sel], g, float(jitter))
                            rois.append(torch.cat([torch.full((len(sel), 1), float(i)), jb], 1))
                            ids.append(torch.as_tensor(idv)[sel])
                    x, y = x.to(dev), y.to(dev)
                    out = net(x)
                    parts = detection_loss(out, [b.to(dev) for b in boxes])
                    loss = parts["loss"]
                    l_mask = torch.zeros((), device=dev)
                    if net.masks and rois:
                        r, idt = torch.cat(rois).to(dev), torch.cat(ids).to(dev)
                        l_mask = mask_loss(net.mask_logits(out["mask_features"], r), mask_targets(y, r, idt, M))
                        loss = loss + l_mask
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
                    opt.step()
                    sched.step()
                    acc += [loss.item(), parts["objectness"].item(), parts["box"].item(),
                            parts["centerness"].item(), l_mask.item()]
                acc /= iters
                rec = {"epoch": ep, "loss": float(acc[0]), "objectness": float(acc[1]), "box": float(acc[2]),
                       "centerness": float(acc[3]), "mask": float(acc[4]), "seconds": time.perf_counter() - t0}
                self.history.append(rec)
                bar.advance()
                if callback is not None and callback(ep, self, rec) is True:
                    break
        net.eval()
        net.meta["trained_steps"] = int(net.meta.get("trained_steps", 0)) + len(self.history) * iters
        return self

    def fine_tune(self, images, labels, epochs: int = 5, lr: float = 5e-4, **kwargs):
        """Continue training on a few annotated images at a lower learning rate.

        Parameters
        ----------
        images : Image or array_like or list
            Grey 2-D image(s).
        labels : Image or array_like or list
            Their instance labels.
        epochs : int, optional
            Number of epochs.
        lr : float, optional
            Peak learning rate.
        **kwargs : dict
            Passed to :meth:`fit`.

        Returns
        -------
        Detector
            ``self``.

        Examples
        --------
        >>> det = Detector().fit(sim_images, sim_labels).fine_tune([real], [real_labels])   # doctest: +SKIP
        """
        return self.fit(images, labels, epochs=epochs, lr=lr, **kwargs)

    # ------------------------------------------------------------------ inference
    def _run(self, image, device):
        x = _image(image)
        dev = torch.device(device) if device is not None else next(self.model.parameters()).device
        net = self.model.to(dev).eval()
        with torch.no_grad():
            out = net(torch.as_tensor(np.ascontiguousarray(x))[None, None].to(dev))
        return x, out

    def predict(self, image, score_threshold: float = 0.05, nms_threshold: float = 0.5, max_detections: int = 1000,
                device=None):
        """Boxes and scores of the objects in a 2-D image.

        Parameters
        ----------
        image : Image or array_like
            Grey 2-D image (any size; normalised by its 1st / 99th percentiles).
        score_threshold : float, optional
            Smallest score kept (low values for average precision).
        nms_threshold : float, optional
            NMS IoU threshold.
        max_detections : int, optional
            Largest number of boxes.
        device : str or torch.device or None, optional
            Where the network runs (default: where it is).

        Returns
        -------
        boxes : numpy.ndarray
            ``(K, 4)`` float32 boxes ``(x1, y1, x2, y2)``, pixels.
        scores : numpy.ndarray
            ``(K,)`` float32 scores in ``[0, 1]``, decreasing.

        Raises
        ------
        ShapeError
            For an image that is not grey 2-D.
        InputError
            For a ``score_threshold`` outside ``[0, 1]``.
        """
        score_threshold = check_number(score_threshold, "score_threshold", low=0, high=1)
        x, out = self._run(image, device)
        (b, s), = decode_detections(out, score_threshold, nms_threshold, max_detections, image_size=x.shape)
        return b.cpu().numpy().astype(np.float32), s.cpu().numpy().astype(np.float32)

    def predict_instances(self, image, score_threshold: float | None = None, nms_threshold: float = 0.5,
                          mask_threshold: float = 0.5, min_area: int = 10, max_overlap: float = 0.5, device=None):
        """Instance label image: detect, segment every box, paste the masks back.

        Parameters
        ----------
        image : Image or array_like
            Grey 2-D image.
        score_threshold : float or None, optional
            Smallest box score kept (default ``model.meta["score_threshold"]``, set by
            :meth:`calibrate`, else 0.4).
        nms_threshold : float, optional
            NMS IoU threshold.
        mask_threshold : float, optional
            Mask probability threshold.
        min_area : int, optional
            Smallest instance kept, pixels.
        max_overlap : float, optional
            A mask lying on better-scoring instances for more than this fraction of its
            pixels is dropped (mask NMS, see :func:`~biomip.nn.detection.paste_masks`).
        device : str or torch.device or None, optional
            Where the network runs.

        Returns
        -------
        labels : Image, numpy.ndarray or torch.Tensor
            int32 instances ``1..n`` (by decreasing score), of the input's kind: an Image
            with the input's geometry for an Image, a tensor on the input's device for a
            tensor, numpy for an array.
        info : dict
            ``boxes`` (``(K, 4)``), ``scores`` (``(K,)``) of the kept detections and the
            ``score_threshold`` used.

        Raises
        ------
        ShapeError
            For an image that is not grey 2-D.
        InputError
            For a network without a mask head or a ``score_threshold`` outside ``[0, 1]``.
        """
        if not self.model.masks:
            raise InputError("model: built with masks=False; predict_instances needs the mask head")
        thr = float(self.model.meta.get("score_threshold", 0.4) if score_threshold is None else
                    check_number(score_threshold, "score_threshold", low=0, high=1))
        x, out = self._run(image, device)
        (b, s), = decode_detections(out, thr, nms_threshold, 2000, image_size=x.shape)
        with torch.no_grad():
            probs = torch.sigmoid(self.model.mask_logits(out["mask_features"], [b])) if len(b) else torch.zeros(
                0, 1, self.model.mask_size, self.model.mask_size)
        lab = paste_masks(probs, b, x.shape, scores=s, threshold=mask_threshold, min_area=min_area,
                          max_overlap=max_overlap)
        info = {"boxes": b.cpu().numpy(), "scores": s.cpu().numpy(), "score_threshold": thr}
        lab = like_input(lab, image)
        return (image.with_array(lab) if isinstance(image, Image) else lab), info

    def calibrate(self, images, labels, thresholds=(0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6), **kwargs):
        """Choose the instance score threshold that maximises the mean instance AP@0.5 on
        annotated images (use training images, never the test set).

        Parameters
        ----------
        images : Image or array_like or list
            Grey 2-D image(s).
        labels : Image or array_like or list
            Their instance labels.
        thresholds : sequence of float, optional
            Candidate score thresholds.
        **kwargs : dict
            Passed to :meth:`predict_instances`.

        Returns
        -------
        dict
            ``{threshold: mean AP@0.5}``; ``model.meta["score_threshold"]`` is set to the
            best.

        Raises
        ------
        InputError
            For mismatched images and labels or no thresholds.
        """
        _pairs(images, labels)
        if isinstance(images, (Image, np.ndarray)) or torch.is_tensor(images):
            images, labels = [images], [labels]
        ths = [float(t) for t in thresholds]
        if not ths:
            raise InputError("thresholds: got none; expected candidate score thresholds")
        res = {}
        for t in ths:
            aps = [average_precision(self.predict_instances(im, score_threshold=t, **kwargs)[0], lab, 0.5)
                   for im, lab in zip(images, labels)]
            res[t] = float(np.mean(aps))
        self.model.meta["score_threshold"] = max(res, key=lambda t: (res[t], -abs(t - 0.4)))
        return res

    # ------------------------------------------------------------------ files
    def save(self, path, overwrite: bool = True):
        """Write the detector as a model folder (``model.safetensors`` + ``config.json``).

        Parameters
        ----------
        path : str or pathlib.Path
            The folder.
        overwrite : bool, optional
            Replace an existing folder.

        Returns
        -------
        pathlib.Path
            ``path``.

        Raises
        ------
        FormatError
            See :meth:`biomip.nn.SavedModule.save`.
        """
        return self.model.save(path, overwrite=overwrite)

    @classmethod
    def load(cls, path, device=None):
        """Read a detector written by :meth:`save`.

        Parameters
        ----------
        path : str or pathlib.Path
            The model folder.
        device : str or torch.device or None, optional
            Where the network is put.

        Returns
        -------
        Detector
            The detector (network in eval mode, ``meta`` restored).

        Raises
        ------
        FormatError
            When ``path`` is not a saved DetectionNet.
        """
        return cls(model=DetectionNet.load(path, device=device))


# ============================================================================ HOG + SVM
class HOGDetector:
    """Dalal-Triggs sliding-window detector: dense HOG on an image pyramid + linear SVM.

    The window is ``window`` pixels square (``window / cell`` cells, blocks of 2 x 2
    cells, L2-Hys, 9 orientations; :func:`skimage.feature.hog` once per pyramid level, the
    windows read from its block array); an object of ``object_size`` pixels fills its
    centre.  The pyramid scales map the typical object sizes of the training boxes to
    ``object_size``.  Training: one positive per true box (at its nearest scale, the
    nearest window, plus the 90-degree rotations of the images), random negatives
    (windows whose box overlaps no true box by IoU >= 0.3), a linear SVM, then one round
    of hard negative mining.  Detection: every window at every scale, the SVM score,
    NMS.  A detection's box is the ``object_size`` square at the window centre.

    Parameters
    ----------
    window : int, optional
        Window side in pixels (a multiple of ``cell``).
    cell : int, optional
        HOG cell side in pixels.
    object_size : int, optional
        Object side within the window, pixels.
    n_scales : int, optional
        Pyramid levels, spread over the 5th-95th percentile of training object sizes.
    C : float, optional
        SVM regularisation.
    seed : int, optional
        Negative sampling seed.

    Raises
    ------
    InputError
        For a window that is not a multiple of the cell or too small.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((64, 64), int)
    >>> for i, (r, c) in enumerate([(12, 12), (12, 44), (44, 20), (40, 48)], start=1):
    ...     lab[r - 5:r + 5, c - 4:c + 4] = i
    >>> img = (lab > 0) + 0.1 * np.random.default_rng(0).random((64, 64))
    >>> hogd = HOGDetector(n_scales=1).fit([img], [lab], rotations=False)
    >>> boxes, scores = hogd.predict(img)
    >>> boxes.shape[1]
    4
    """

    def __init__(self, window: int = 24, cell: int = 4, object_size: int = 16, n_scales: int = 5, C: float = 0.01,
                 seed: int = 0):
        if window % cell or window // cell < 3:
            raise InputError(f"window: got {window} with cell {cell}; expected a multiple of the cell, >= 3 cells")
        self.window, self.cell, self.object_size = int(window), int(cell), float(object_size)
        self.n_scales, self.C, self.seed = _count(n_scales, "n_scales"), float(C), int(seed)
        self.scales: list = []
        self.svm = None

    def _dense(self, x: np.ndarray, s: float):
        """Window features ``(n, D)`` and their object boxes ``(n, 4)`` (input pixels) at scale ``s``."""
        from numpy.lib.stride_tricks import sliding_window_view
        from skimage.feature import hog
        from skimage.transform import rescale

        xs = rescale(x, s, order=1, anti_aliasing=s < 1, mode="reflect") if s != 1 else x
        wc = self.window // self.cell
        if min(xs.shape) < self.window:
            return np.zeros((0, 1), np.float32), np.zeros((0, 4), np.float32)
        blocks = hog(xs, orientations=9, pixels_per_cell=(self.cell, self.cell), cells_per_block=(2, 2),
                     block_norm="L2-Hys", feature_vector=False)
        nb = wc - 1
        if blocks.shape[0] < nb or blocks.shape[1] < nb:
            return np.zeros((0, 1), np.float32), np.zeros((0, 4), np.float32)
        v = sliding_window_view(blocks, (nb, nb), axis=(0, 1))           # (R, C, 2, 2, 9, nb, nb)
        R, Cn = v.shape[:2]
        feats = np.ascontiguousarray(v.reshape(R * Cn, -1), dtype=np.float32)
        ii, jj = np.meshgrid(np.arange(R), np.arange(Cn), indexing="ij")
        cy = (ii.ravel() * self.cell + self.window / 2) / s
        cx = (jj.ravel() * self.cell + self.window / 2) / s
        half = self.object_size / 2 / s
        boxes = np.stack([cx - half, cy - half, cx + half, cy + half], 1).astype(np.float32)
        return feats, boxes

    def fit(self, images, labels, negatives: int = 4000, rotations: bool = True):
        """Train the SVM on images and their instance labels.

        Parameters
        ----------
        images : Image or array_like or list
            Grey 2-D image(s).
        labels : Image or array_like or list
            Their instance labels (the true boxes).
        negatives : int, optional
            Random negative windows per round.
        rotations : bool, optional
            Add the 90, 180 and 270 degree rotations of the images.

        Returns
        -------
        HOGDetector
            ``self``.

        Raises
        ------
        InputError
            For mismatched images and labels or labels without objects.
        """
        from sklearn.svm import LinearSVC

        from ..metrics.detection import box_iou_matrix

        xs, ys = _pairs(images, labels)
        if rotations:
            xs = [np.rot90(x, k) for x in xs for k in range(4)]
            ys = [np.rot90(y, k) for y in ys for k in range(4)]
        gts = [boxes_from_labels(np.ascontiguousarray(y), min_area=4)[0] for y in ys]
        sizes = np.concatenate([np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) for b in gts])
        if sizes.size == 0:
            raise InputError("labels: no objects; expected instance labels with at least one object")
        lo, hi = np.percentile(sizes, [5, 95])
        obj = np.geomspace(max(lo, 3.0), max(hi, lo + 1e-3, 3.0), self.n_scales)
        self.scales = sorted({float(round(self.object_size / d, 4)) for d in obj})
        rng = np.random.default_rng(self.seed)
        pos, neg_pool = [], []
        for x, gt in zip(xs, gts):
            gs = np.maximum(gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1])
            best = np.argmin(np.abs(np.log(self.object_size / np.maximum(gs, 1e-3))[:, None]
                                    - np.log(np.asarray(self.scales))[None]), axis=1)
            for si, s in enumerate(self.scales):
                f, b = self._dense(np.ascontiguousarray(x, dtype=np.float32), s)
                if len(f) == 0:
                    continue
                iou = box_iou_matrix(b, gt) if len(gt) else np.zeros((len(b), 0))
                for k in np.nonzero(best == si)[0]:
                    gcx, gcy = (gt[k, 0] + gt[k, 2]) / 2, (gt[k, 1] + gt[k, 3]) / 2
                    d = ((b[:, 0] + b[:, 2]) / 2 - gcx) ** 2 + ((b[:, 1] + b[:, 3]) / 2 - gcy) ** 2
                    j = int(np.argmin(d))
                    if iou[j, k] >= 0.4:
                        pos.append(f[j])
                neg = np.nonzero(iou.max(1) < 0.3 if iou.shape[1] else np.ones(len(b), bool))[0]
                if len(neg):
                    take = rng.choice(neg, size=min(len(neg), max(negatives // (len(xs) * len(self.scales)), 50)),
                                      replace=False)
                    neg_pool.append(f[take])
        if not pos:
            raise InputError("labels: no object fits the detection window; expected objects of a few pixels or more")
        P, N = np.asarray(pos), np.concatenate(neg_pool)
        svm = LinearSVC(C=self.C, max_iter=5000, random_state=self.seed)
        svm.fit(np.concatenate([P, N]), np.r_[np.ones(len(P)), np.zeros(len(N))])
        # one round of hard negatives (Dalal-Triggs): the best-scoring windows far from every object
        hard = []
        for x, gt in zip(xs, gts):
            for s in self.scales:
                f, b = self._dense(np.ascontiguousarray(x, dtype=np.float32), s)
                if len(f) == 0:
                    continue
                iou = box_iou_matrix(b, gt) if len(gt) else np.zeros((len(b), 0))
                far = iou.max(1) < 0.3 if iou.shape[1] else np.ones(len(b), bool)
                sc = svm.decision_function(f)
                cand = np.nonzero(far & (sc > -1.0))[0]
                if len(cand):
                    hard.append(f[cand[np.argsort(-sc[cand])[: max(negatives // len(xs), 50)]]])
        if hard:
            N = np.concatenate([N] + hard)
            svm = LinearSVC(C=self.C, max_iter=5000, random_state=self.seed)
            svm.fit(np.concatenate([P, N]), np.r_[np.ones(len(P)), np.zeros(len(N))])
        self.svm = svm
        self.n_train = {"positives": int(len(P)), "negatives": int(len(N))}
        return self

    def predict(self, image, score_threshold: float = -0.5, nms_threshold: float = 0.3, max_detections: int = 1000):
        """Boxes and SVM scores of the objects in a 2-D image.

        Parameters
        ----------
        image : Image or array_like
            Grey 2-D image.
        score_threshold : float, optional
            Smallest SVM decision value kept.
        nms_threshold : float, optional
            NMS IoU threshold.
        max_detections : int, optional
            Largest number of boxes.

        Returns
        -------
        boxes : numpy.ndarray
            ``(K, 4)`` float32 boxes.
        scores : numpy.ndarray
            ``(K,)`` float32 SVM decision values, decreasing.

        Raises
        ------
        InputError
            Before :meth:`fit`, or for an image that is not grey 2-D.
        """
        if self.svm is None:
            raise InputError("image: the HOGDetector is not trained; call fit first")
        x = np.ascontiguousarray(_image(image), dtype=np.float32)
        bs, ss = [], []
        for s in self.scales:
            f, b = self._dense(x, s)
            if len(f) == 0:
                continue
            sc = self.svm.decision_function(f)
            k = sc >= score_threshold
            bs.append(b[k])
            ss.append(sc[k])
        if not bs:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        b, s = np.concatenate(bs), np.concatenate(ss)
        if len(s) > 20 * max_detections:
            top = np.argsort(-s)[: 20 * max_detections]
            b, s = b[top], s[top]
        b[:, 0::2] = np.clip(b[:, 0::2], 0, x.shape[1])
        b[:, 1::2] = np.clip(b[:, 1::2], 0, x.shape[0])
        keep = nms(torch.as_tensor(b), torch.as_tensor(s, dtype=torch.float32), nms_threshold).numpy()[:max_detections]
        return b[keep].astype(np.float32), s[keep].astype(np.float32)

    def predict_instances(self, image, score_threshold: float = 0.0, nms_threshold: float = 0.3, min_area: int = 10):
        """Instance labels: the Otsu foreground inside each detected box (best score wins).

        Parameters
        ----------
        image : Image or array_like
            Grey 2-D image.
        score_threshold : float, optional
            Smallest SVM decision value kept.
        nms_threshold : float, optional
            NMS IoU threshold.
        min_area : int, optional
            Smallest instance kept, pixels.

        Returns
        -------
        labels : Image, numpy.ndarray or torch.Tensor
            int32 instances, of the input's kind (an Image with the input's geometry, a
            tensor on the input's device, or numpy).
        info : dict
            ``boxes`` and ``scores`` of the kept detections.

        Raises
        ------
        InputError
            Before :meth:`fit`, or for an image that is not grey 2-D.
        """
        from skimage.filters import threshold_otsu

        b, s = self.predict(image, score_threshold, nms_threshold)
        x = _image(image)
        fg = (x > threshold_otsu(x)).astype(np.float32)
        crops = []
        for x1, y1, x2, y2 in b:                    # the foreground sampled on a 28 x 28 grid of each box
            rows = np.clip(((np.arange(28) + 0.5) / 28 * (y2 - y1) + y1).astype(int), 0, x.shape[0] - 1)
            cols = np.clip(((np.arange(28) + 0.5) / 28 * (x2 - x1) + x1).astype(int), 0, x.shape[1] - 1)
            crops.append(fg[np.ix_(rows, cols)])
        m = np.asarray(crops, np.float32).reshape(-1, 28, 28)
        lab = like_input(paste_masks(m, b, x.shape, scores=s, threshold=0.5, min_area=min_area, max_overlap=0.5),
                         image)
        return (image.with_array(lab) if isinstance(image, Image) else lab), {"boxes": b, "scores": s}
