"""The book's medical uses of generative models (textbook 4.4), applied to one image.

* :func:`inpaint` -- defect repair / inpainting: biharmonic (scikit-image, the classic
  baseline), a conditional GAN (WGAN-GP pix2pix trained on synthetic defects, the book's
  maxillofacial repair, lines 1365-1373), RePaint-style diffusion, or an MAE;
* :func:`detect_anomalies` -- unsupervised anomaly detection: a model trained on healthy
  images only makes the "healthy version" of the input (diffusion from a partial noise
  level, or a VAE reconstruction); the residual is the anomaly score map (lines 1395-1397);
* :func:`super_resolve` -- super-resolution: cubic-spline interpolation (the baseline), a
  U-Net regression, or conditional diffusion of the detail missing from the upsampled
  image (lines 1399-1400);
* :func:`upsample` -- the geometry-correct interpolation they share.

Models come from :mod:`biomip.generate` (``Diffusion``, ``VAE``, ``Pix2Pix``, ``MAE``);
:mod:`biomip.generate.studies` trains them on the shipped MNI152 template and measures
each use.  Every function returns the kind it was given (numpy, torch or an
:class:`~biomip.Image` with its geometry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.arrays import as_numpy, check_number, like_input
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image

__all__ = ["AnomalyResult", "INPAINT_METHODS", "SR_METHODS", "detect_anomalies", "inpaint", "super_resolve",
           "upsample"]

INPAINT_METHODS = ("biharmonic", "repair", "gan", "diffusion", "mae")
SR_METHODS = ("cubic", "unet", "diffusion")


def _spatial(image, name: str) -> tuple[np.ndarray, int]:
    """``image`` as a float32 array ``(C, *S)`` and its number of spatial axes."""
    arr = as_numpy(image.array if isinstance(image, Image) else image, name=name)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name}: got an array of {arr.dtype}; expected numbers")
    if arr.size == 0:
        raise ShapeError(f"{name}: got shape {arr.shape}; expected a non-empty image")
    arr = arr.astype(np.float32, copy=False)
    if isinstance(image, Image):
        sdim = image.sdim
        if arr.ndim == sdim:
            arr = arr[None]
        elif arr.ndim != sdim + 1 or "c" not in image.axes:
            raise ShapeError(f"{name}: got an Image with axes {image.axes!r}; expected spatial axes, optionally "
                             "channels first")
    elif arr.ndim in (2, 3):
        sdim = arr.ndim
        arr = arr[None]
    elif arr.ndim == 4:
        sdim = 3
    else:
        raise ShapeError(f"{name}: got shape {arr.shape}; expected a 2-D or 3-D image (*S), or (C, *S)")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: holds {int((~np.isfinite(arr)).sum())} NaN / infinite value(s); expected finite "
                         "numbers")
    return arr, sdim


def _mask(mask, shape, name: str = "mask") -> np.ndarray:
    m = as_numpy(mask, name=name)
    if m.ndim == len(shape) + 1 and m.shape[0] == 1:
        m = m[0]
    if tuple(m.shape) != tuple(shape):
        raise ShapeError(f"{name}: got shape {tuple(m.shape)}; expected the image's spatial shape {tuple(shape)}")
    if m.dtype != bool:
        if not np.isin(np.unique(m), (0, 1)).all():
            raise InputError(f"{name}: got values other than 0 / 1 (dtype {m.dtype}); expected a binary mask")
        m = m.astype(bool)
    return m


def _out(result: np.ndarray, image, sdim: int):
    """Back to the input's kind (an Image keeps its geometry), dropping the channel axis the
    input did not have."""
    arr = as_numpy(image)
    if arr.ndim == sdim and result.ndim == sdim + 1:
        result = result[0]
    result = result.astype(np.float32, copy=False)
    if isinstance(image, Image):
        return image.with_array(like_input(result, image.array))
    return like_input(result, image)


def _model_kind(model, kinds: dict, name: str = "model"):
    for kind, cls_name in kinds.items():
        if type(model).__name__ == cls_name:
            return kind
    raise InputError(f"{name}: got {describe(model)}; expected one of {sorted(set(kinds.values()))}")


# ============================================================================ inpainting
def inpaint(image, mask, method: str = "biharmonic", model=None, *, steps: int = 50, resample: int = 1,
            seed: int = 0):
    """Fill the region ``mask`` of ``image`` (defect repair, inpainting).

    Parameters
    ----------
    image : array_like, torch.Tensor or Image
        One image: a 2-D array, a 3-D array (a volume), a 4-D array ``(C, Z, Y, X)``, or
        an Image (its channel axis, if any, is kept apart).
    mask : array_like
        Boolean ``(*S)``: True where the image is missing or damaged.
    method : {"biharmonic", "repair", "gan", "diffusion", "mae"}, optional
        ``"biharmonic"``: :func:`skimage.restoration.inpaint_biharmonic` (no model);
        ``"repair"``: a :class:`~biomip.generate.repair.RepairNet` (biharmonic fill + a
        learned correction, with the mirrored anatomy as context);
        ``"gan"``: a :class:`~biomip.generate.gan.Pix2Pix` trained on (damaged image +
        mask, healthy image) pairs; ``"diffusion"``: RePaint sampling of an
        unconditional :class:`~biomip.generate.diffusion.Diffusion`; ``"mae"``: an
        :class:`~biomip.generate.mae.MAE`.
    model : GenerativeModel or None, optional
        The trained model (required except for ``"biharmonic"``).
    steps : int, optional
        Sampling steps of ``"diffusion"`` (DDIM with eta = 1, i.e. DDPM-like stochastic steps,
        ``steps`` evenly spaced over the schedule).
    resample : int, optional
        RePaint jump-back resamplings per step (``"diffusion"``).
    seed : int, optional
        Random stream of the diffusion sampler.

    Returns
    -------
    same kind as ``image``
        The repaired image; pixels outside ``mask`` are the input's.

    Raises
    ------
    ShapeError
        When ``mask`` does not have the image's spatial shape.
    InputError
        For an unknown ``method``, a missing or wrong ``model``, NaN input.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    >>> hole = np.zeros((32, 32), bool); hole[12:18, 12:18] = True
    >>> out = inpaint(np.where(hole, 0, img), hole)
    >>> float(np.abs(out - img)[hole].max()) < 0.01
    True
    """
    if method not in INPAINT_METHODS:
        raise InputError(f"method: got {method!r}; expected one of {INPAINT_METHODS}")
    if method == "biharmonic" and model is not None:
        raise InputError(f"model: got a {type(model).__name__} with method='biharmonic', which uses no model; "
                         f"expected model=None, or one of the learned methods {INPAINT_METHODS[1:]}")
    arr, sdim = _spatial(image, "image")
    m = _mask(mask, arr.shape[1:])
    if not m.any():
        return _out(arr.copy(), image, sdim)
    if method != "biharmonic":                              # the model is checked before the data
        if model is None:
            raise InputError(f"model: got None; method={method!r} needs a trained model")
        _model_kind(model, {method: {"repair": "RepairNet", "gan": "Pix2Pix", "diffusion": "Diffusion",
                                     "mae": "MAE"}[method]})
    if m.all():
        raise InputError("mask: covers the whole image; nothing is left to fill the region from (expected a mask "
                         "of the damaged region only)")
    if method == "biharmonic":
        from skimage.restoration import inpaint_biharmonic

        filled = np.stack([inpaint_biharmonic(np.where(m, 0, c), m) for c in arr]).astype(np.float32)
    else:
        if model is None:
            raise InputError(f"model: got None; method={method!r} needs a trained model")
        if method == "repair":
            _model_kind(model, {"repair": "RepairNet"})
            filled = np.stack([as_numpy(model(c, m)) for c in arr]).astype(np.float32)
        elif method == "gan":
            _model_kind(model, {"gan": "Pix2Pix"})
            fill = float(model.meta.get("defect_fill", np.percentile(arr[:, ~m], 0.5) if (~m).any() else 0.0))
            x = np.concatenate([np.where(m, fill, arr), m[None].astype(np.float32)])
            filled = as_numpy(model(x)).astype(np.float32)
        elif method == "diffusion":
            _model_kind(model, {"diffusion": "Diffusion"})
            steps = check_number(steps, "steps", low=1, integer=True)
            filled = as_numpy(model.inpaint(arr[None], m, method="ddim", steps=steps, resample=resample, eta=1.0,
                                            seed=seed))[0]
        else:
            _model_kind(model, {"mae": "MAE"})
            filled = as_numpy(model.inpaint(arr[None], m))[0]
        if filled.shape != arr.shape:
            raise InputError(f"model: returned shape {filled.shape} for an image of shape {arr.shape}; expected the "
                             "same (a model for another channel count?)")
    return _out(np.where(m[None], filled, arr), image, sdim)


# ============================================================================ anomaly detection
@dataclass
class AnomalyResult:
    """Result of :func:`detect_anomalies`.

    Attributes
    ----------
    healthy : array_like
        The "healthy version" of the input (same kind and shape as the input).
    score : array_like
        Anomaly score map (same kind, spatial shape): the smoothed absolute residual.
    image_score : float
        One score for the whole image (99th percentile of ``score`` inside ``mask``).
    """

    healthy: object
    score: object
    image_score: float

    def to_dict(self) -> dict:
        """JSON-able summary (the maps are not included)."""
        return {"image_score": self.image_score}


def detect_anomalies(image, model, *, strength: float = 0.15, steps: int = 50, samples: int = 2,
                     smooth: float = 1.0, mask=None, seed: int = 0) -> AnomalyResult:
    """Score every pixel of ``image`` by how far it is from a healthy-only model.

    The model, trained on healthy images only, makes the "healthy version" of the input:
    a :class:`~biomip.generate.diffusion.Diffusion` noises the image to ``strength`` of
    its schedule and denoises it back (what it never saw -- a lesion -- is replaced by
    healthy tissue; the mean of ``samples`` runs), a :class:`~biomip.generate.vae.VAE`
    reconstructs it.  The score map is the absolute residual, smoothed by a Gaussian of
    ``smooth`` pixels.

    Parameters
    ----------
    image : array_like, torch.Tensor or Image
        One image ``(*S)`` or ``(C, *S)``.
    model : Diffusion or VAE
        Trained on healthy images of the same kind and size range.
    strength : float, optional
        Diffusion only: fraction of the noise schedule (0-1) the image is noised to (0.15,
        the level the anomaly study and ``biomip generate anomaly`` use).
    steps : int, optional
        Diffusion only: DDIM steps over the whole schedule (about ``strength * steps``
        are run).
    samples : int, optional
        Diffusion only: healthy versions averaged.
    smooth : float, optional
        Gaussian sigma (pixels) applied to the residual (0: none).
    mask : array_like or None, optional
        Region of interest (e.g. the brain): scores outside are 0.
    seed : int, optional
        Random stream of the diffusion sampler.

    Returns
    -------
    AnomalyResult
        ``healthy``, ``score`` (same kind as ``image``) and ``image_score``.

    Examples
    --------
    A VAE trained (briefly) on smooth "healthy" images scores a bright square highest:

    >>> import numpy as np
    >>> from biomip.generate.vae import VAE
    >>> yy, xx = np.mgrid[:16, :16] / 16.0
    >>> healthy = np.stack([np.sin(3 * xx + p) + np.cos(2 * yy) for p in np.linspace(0, 3, 8)])
    >>> model = VAE(features=(8, 16), seed=0).fit(healthy, steps=30, progress=False)
    >>> test = healthy[3].copy(); test[5:9, 5:9] += 3.0
    >>> result = detect_anomalies(test, model, smooth=0)
    >>> peak = np.unravel_index(np.argmax(result.score), result.score.shape)
    >>> bool(5 <= peak[0] < 9 and 5 <= peak[1] < 9)
    True
    """
    from scipy.ndimage import gaussian_filter

    kind = _model_kind(model, {"diffusion": "Diffusion", "vae": "VAE", "vqvae": "VQVAE"})
    arr, sdim = _spatial(image, "image")
    if sdim != model.sdim:
        raise ShapeError(f"image: got shape {tuple(np.shape(image.array if isinstance(image, Image) else image))}, "
                         f"read as a {sdim}-D image; the model is {model.sdim}-D (score a volume slice by slice; a "
                         "multi-channel 2-D image goes in as biomip.Image(array, axes='cyx'))")
    strength = check_number(strength, "strength", low=0, high=1, low_open=True)
    samples = check_number(samples, "samples", low=1, integer=True)
    smooth = check_number(smooth, "smooth", low=0)
    roi = None if mask is None else _mask(mask, arr.shape[1:])
    if kind == "diffusion":
        steps = check_number(steps, "steps", low=1, integer=True)
        healthy = np.mean([as_numpy(model.denoise(arr[None], strength=strength, steps=steps, seed=seed + k))[0]
                           for k in range(samples)], axis=0)
    else:
        healthy = as_numpy(model.reconstruct(arr[None]))[0]
    res = np.abs(arr - healthy).mean(axis=0)
    if smooth > 0:
        res = gaussian_filter(res, smooth)
    if roi is not None:
        res = np.where(roi, res, 0.0)
    inside = res[roi] if roi is not None and roi.any() else res.ravel()
    return AnomalyResult(healthy=_out(healthy.astype(np.float32), image, sdim),
                         score=_out(res.astype(np.float32)[None], image, sdim) if as_numpy(image).ndim == sdim
                         else like_input(res.astype(np.float32), image),
                         image_score=float(np.percentile(inside, 99)))


# ============================================================================ super-resolution
def _offsets(offset, sdim: int) -> tuple[float, ...]:
    """``offset`` (one number or one per spatial axis, array order) as a tuple."""
    offs = np.atleast_1d(np.asarray(offset, dtype=float))
    if offs.size == 1:
        offs = np.repeat(offs, sdim)
    if offs.size != sdim or not np.isfinite(offs).all():
        raise InputError(f"offset: got {offset!r}; expected one finite number or one per spatial axis ({sdim})")
    return tuple(float(o) for o in offs)


def upsample(image, scale: int = 2, offset: float = 0.0, order: int = 3) -> np.ndarray:
    """Interpolate ``image`` ``scale`` times finer, with the grids' true alignment.

    Low-resolution pixel ``i`` sits at high-resolution index ``scale * i + offset``:
    ``offset = 0`` when both grids share their first sample (a template resampled to a
    coarser grid with the same origin, as nilearn makes its 2 mm MNI152), ``(scale - 1)
    / 2`` for block averages of ``scale`` pixels.  A half-pixel error here costs more
    PSNR than most super-resolution methods gain, so it is explicit.

    Parameters
    ----------
    image : array_like
        ``(*S)`` or ``(C, *S)`` low-resolution image (2-D or 3-D).
    scale : int, optional
        Integer factor per axis.
    offset : float or sequence of float, optional
        High-resolution index of low-resolution sample 0 (one number, or one per spatial
        axis in array order).
    order : int, optional
        Spline order (3: cubic spline, the classic "bicubic" baseline; 1: linear).

    Returns
    -------
    numpy.ndarray
        ``(*S * scale)`` (channels kept), float32.  The image is extended by odd
        reflection before the spline is fitted, so linear trends are reproduced up to the
        borders and samples beyond the last low-resolution one are extrapolated linearly.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(8, dtype=np.float32)[None].repeat(4, 0)
    >>> upsample(x, 2)[0, :6].round(2).tolist()
    [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    """
    from scipy.ndimage import map_coordinates

    scale = check_number(scale, "scale", low=1, integer=True)
    order = check_number(order, "order", low=0, high=5, integer=True)
    arr, sdim = _spatial(image, "image")
    offs = _offsets(offset, sdim)
    out_shape = tuple(s * scale for s in arr.shape[1:])
    grids = np.meshgrid(*[(np.arange(n, dtype=np.float64) - o) / scale for n, o in zip(out_shape, offs)],
                        indexing="ij")
    pad = 8                                   # odd reflection: linear trends continue, no spline edge ringing
    coords = np.stack(grids) + pad
    up = np.stack([map_coordinates(np.pad(c.astype(np.float64), pad, mode="reflect", reflect_type="odd"), coords,
                                   order=order, mode="nearest") for c in arr])
    up = up.astype(np.float32)
    return up[0] if as_numpy(image).ndim == sdim else up


def super_resolve(image, method: str = "cubic", model=None, *, scale: int = 2, offset: float = 0.0,
                  steps: int = 50, sampler: str = "ddim", seed: int = 0):
    """Make a ``scale`` times finer image from a low-resolution one.

    Parameters
    ----------
    image : array_like, torch.Tensor or Image
        Low-resolution image ``(*S)`` or ``(C, *S)``.  An Image comes back with the
        spacing divided by ``scale`` and the origin of the finer grid.
    method : {"cubic", "unet", "diffusion"}, optional
        ``"cubic"``: :func:`upsample` (cubic spline, the baseline); ``"unet"``: a
        :class:`~biomip.nn.UNet` trained to regress the missing detail from the
        upsampled image; ``"diffusion"``: a conditional
        :class:`~biomip.generate.diffusion.Diffusion` (condition: the upsampled image)
        sampling the missing detail.  Both learned methods add their output to the
        upsampled image (residual learning, as in SR3 / ResShift-style models).
    model : UNet or Diffusion or None, optional
        The trained model (:func:`biomip.generate.studies.superres_study` trains both).
    scale : int, optional
        Integer factor per axis.
    offset : float or sequence of float, optional
        Grid alignment (see :func:`upsample`).
    steps : int, optional
        Diffusion sampling steps.
    sampler : {"ddim", "ddpm"}, optional
        Diffusion sampler.
    seed : int, optional
        Random stream of the diffusion sampler.

    Returns
    -------
    same kind as ``image``
        The high-resolution image.

    Examples
    --------
    >>> import numpy as np
    >>> super_resolve(np.zeros((16, 16), np.float32)).shape
    (32, 32)
    """
    if method not in SR_METHODS:
        raise InputError(f"method: got {method!r}; expected one of {SR_METHODS}")
    arr, sdim = _spatial(image, "image")
    up = np.stack([upsample(c, scale, offset) for c in arr])          # (C, *S * scale)
    if method == "unet":
        if model is None:
            raise InputError("model: got None; method='unet' needs a trained UNet (see generate.studies)")
        _model_kind(model, {"unet": "UNet"})
        dev = next(model.parameters()).device
        with torch.inference_mode():
            lo, hi = model.meta.get("norm", (0.0, 1.0))
            x = (torch.from_numpy(up[None]).to(dev) - lo) / (hi - lo)
            detail = model(x)[0].float().cpu().numpy() * (hi - lo)
        up = up + detail
    elif method == "diffusion":
        if model is None:
            raise InputError("model: got None; method='diffusion' needs a trained conditional Diffusion")
        _model_kind(model, {"diffusion": "Diffusion"})
        steps = check_number(steps, "steps", low=1, integer=True)
        detail = as_numpy(model.sample(cond=up[None], method=sampler, steps=steps, seed=seed))[0]
        up = up + detail
    if isinstance(image, Image):
        sp = tuple(s / scale for s in image.spacing)
        out = up[0] if as_numpy(image).ndim == sdim else up
        # high-res index j <-> low-res index (j - offset) / scale: the fine grid starts offset / scale
        # low-res voxels before the coarse one (world order: spacing and origin are x, y[, z])
        shift = np.asarray(image.spacing, float) * np.asarray(_offsets(offset, sdim)[::-1]) / scale
        origin = np.asarray(image.origin, float) - np.asarray(image.direction, float) @ shift
        return Image(out, spacing=sp, origin=origin, direction=image.direction, axes=image.axes,
                     meta=dict(image.meta))
    return _out(up, image, sdim)
