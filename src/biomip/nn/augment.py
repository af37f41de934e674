"""Seeded data augmentation of an image batch and its labels together (nnU-Net-like).

:class:`Augmentation`: flips, 90-degree rotations / axis permutations where the grid
allows, small rotations and scaling, elastic deformation (smoothed random field warped
with :func:`biomip.ops.warp`: linear for images, nearest for labels), and intensity
scale / shift / gamma / noise on the image only.  Every draw comes from the
``torch.Generator`` passed in: same generator state, same batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.arrays import check_number
from ..core.errors import InputError, ShapeError, describe

__all__ = ["Augmentation"]


def _uniform(g: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _rotation_matrix(angles: Sequence[float], d: int) -> np.ndarray:
    """Rotation in array-index order (z, y, x) / (y, x)."""
    if d == 2:
        a = angles[0]
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    R = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        M = np.eye(3)
        M[i, i], M[i, j], M[j, i], M[j, j] = c, -s, s, c
        R = M @ R
    return R


@dataclass
class Augmentation:
    """Seeded data augmentation of an image batch and its labels (nnU-Net-like defaults).

    Spatial changes are applied identically to image and labels.  Rotation, zoom and
    elastic deformation are combined into one displacement field and resampled once with
    :func:`biomip.ops.warp` (images linear, labels nearest, edge values outside).
    Intensity changes apply to the image only, per sample.

    Call: ``image, labels = aug(image (n, C, *S), labels (n, *S), generator)``; inputs
    are not modified; the generator (CPU ``torch.Generator``) makes it reproducible
    (``None``: a generator seeded with 0).  Without ``labels`` only the image is returned.

    Parameters
    ----------
    flip : float, optional
        Probability of mirroring each spatial axis.
    rotate90 : bool, optional
        Random multiple of 90 degrees in the last two axes (y, x) when they have the same
        size.
    permute_axes : bool, optional
        Random permutation of equal-sized axes (3-D; use only for isotropic voxels).
    rotation : float, optional
        Max absolute rotation angle per rotation axis, in degrees.
    p_rotation : float, optional
        Probability of a rotation.
    scale : tuple of float, optional
        Zoom range ``(low, high)``, ``0 < low <= high``.
    p_scale : float, optional
        Probability of a zoom.
    elastic : float, optional
        Largest displacement of the elastic deformation, in voxels.
    elastic_smoothness : float, optional
        Gaussian smoothing (sigma) of the random elastic field, in voxels (> 0).
    p_elastic : float, optional
        Probability of an elastic deformation.
    intensity_scale : tuple of float, optional
        Multiplicative intensity range ``(low, high)``.
    p_intensity_scale : float, optional
        Probability of the intensity scaling.
    intensity_shift : float, optional
        Largest additive shift, as a multiple of the image std.
    p_intensity_shift : float, optional
        Probability of the shift.
    contrast : tuple of float, optional
        Contrast range ``(low, high)`` around the mean.
    p_contrast : float, optional
        Probability of the contrast change.
    bias_field : float, optional
        A smooth multiplicative bias field ``exp(b)`` with ``|b| <= bias_field`` (uneven
        illumination / MR bias, as TorchIO's RandomBiasField).
    p_bias_field : float, optional
        Probability of the bias field.
    gamma : tuple of float, optional
        Gamma range ``(low, high)`` on the min-max rescaled image.
    p_gamma : float, optional
        Probability of the gamma change.
    noise : float, optional
        Gaussian noise with std up to ``noise`` x image std.
    p_noise : float, optional
        Probability of the noise.

    Raises
    ------
    InputError
        When a probability is outside ``[0, 1]``, a magnitude is negative,
        ``elastic_smoothness`` is not positive, or a range is not ``0 < low <= high``.

    Examples
    --------
    >>> import torch
    >>> aug = Augmentation.spatial_only(rotate90=False)
    >>> x, y = aug(torch.rand(2, 1, 16, 16), torch.zeros(2, 16, 16, dtype=torch.long),
    ...            torch.Generator().manual_seed(0))
    >>> tuple(x.shape), tuple(y.shape)
    ((2, 1, 16, 16), (2, 16, 16))
    """

    flip: float = 0.5
    rotate90: bool = True
    permute_axes: bool = False
    rotation: float = 15.0
    p_rotation: float = 0.2
    scale: tuple[float, float] = (0.85, 1.2)
    p_scale: float = 0.2
    elastic: float = 3.0
    elastic_smoothness: float = 6.0
    p_elastic: float = 0.2
    intensity_scale: tuple[float, float] = (0.75, 1.25)
    p_intensity_scale: float = 0.15
    intensity_shift: float = 0.1
    p_intensity_shift: float = 0.15
    contrast: tuple[float, float] = (0.65, 1.5)
    p_contrast: float = 0.15
    bias_field: float = 0.5
    p_bias_field: float = 0.15
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.3
    noise: float = 0.1
    p_noise: float = 0.15

    def __post_init__(self):
        for name in ("flip", "p_rotation", "p_scale", "p_elastic", "p_intensity_scale", "p_intensity_shift",
                     "p_contrast", "p_bias_field", "p_gamma", "p_noise"):
            check_number(getattr(self, name), name, low=0, high=1)
        for name in ("rotation", "elastic", "intensity_shift", "bias_field", "noise"):
            check_number(getattr(self, name), name, low=0)
        check_number(self.elastic_smoothness, "elastic_smoothness", low=0, low_open=True)
        for name in ("scale", "intensity_scale", "contrast", "gamma"):
            lo_hi = getattr(self, name)
            try:
                lo, hi = (float(v) for v in lo_hi)
            except (TypeError, ValueError) as exc:
                raise InputError(f"{name}: got {lo_hi!r}; expected a (low, high) pair") from exc
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise InputError(f"{name}: got {lo_hi!r}; expected 0 < low <= high")

    @classmethod
    def none(cls) -> Augmentation:
        """No augmentation at all (identity)."""
        return cls(flip=0.0, rotate90=False, permute_axes=False, p_rotation=0.0, p_scale=0.0, p_elastic=0.0,
                   **cls._no_intensity())

    @staticmethod
    def _no_intensity() -> dict:
        return dict(p_intensity_scale=0.0, p_intensity_shift=0.0, p_contrast=0.0, p_bias_field=0.0, p_gamma=0.0,
                    p_noise=0.0)

    @classmethod
    def spatial_only(cls, **overrides) -> Augmentation:
        """The spatial part only (no intensity changes).

        Parameters
        ----------
        **overrides : dict
            Fields to set (e.g. ``flip=0.0``); the intensity probabilities are 0 unless
            given here.

        Returns
        -------
        Augmentation
            The augmentation.
        """
        kw = cls._no_intensity()
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict:
        """The settings as a dict (``dataclasses.asdict``).

        Returns
        -------
        dict
            Field name -> value.
        """
        return asdict(self)

    # ------------------------------------------------------------------ apply
    def __call__(self, image: torch.Tensor, labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        if not torch.is_tensor(image) or image.ndim not in (4, 5):
            raise ShapeError(f"image: got {describe(image)}; expected a tensor (n, C, *spatial) with 2 or 3 spatial "
                             "axes")
        d = image.ndim - 2
        n = image.shape[0]
        spatial = tuple(image.shape[2:])
        if labels is not None and tuple(labels.shape) != (n, *spatial):
            raise ShapeError(f"labels: got shape {tuple(labels.shape)}; expected {(n, *spatial)}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        x = image.float().clone()
        y = None if labels is None else labels.clone()
        # ---- flips / rot90 / permutations: exact index operations
        xs, ys = [], []
        for i in range(n):
            xi, yi = x[i], None if y is None else y[i]
            for ax in range(d):
                if float(torch.rand(1, generator=g)) < self.flip:
                    xi = xi.flip(ax + 1)
                    yi = None if yi is None else yi.flip(ax)
            if self.rotate90 and spatial[-1] == spatial[-2]:
                k = int(torch.randint(0, 4, (1,), generator=g))
                if k:
                    xi = torch.rot90(xi, k, dims=(-2, -1))
                    yi = None if yi is None else torch.rot90(yi, k, dims=(-2, -1))
            if self.permute_axes and d == 3:
                perm = torch.randperm(3, generator=g).tolist()
                if all(spatial[p] == spatial[j] for j, p in enumerate(perm)) and perm != [0, 1, 2]:
                    xi = xi.permute(0, *[p + 1 for p in perm])
                    yi = None if yi is None else yi.permute(*perm)
            xs.append(xi)
            ys.append(yi)
        x = torch.stack(xs).contiguous()
        y = None if y is None else torch.stack(ys).contiguous()
        # ---- rotation / scaling / elastic: one displacement field per sample
        fields, chosen = [], []
        centre = (np.asarray(spatial, dtype=np.float64) - 1.0) / 2.0
        for i in range(n):
            rot = float(torch.rand(1, generator=g)) < self.p_rotation and self.rotation > 0
            angles = (_uniform(g, -1, 1, 1 if d == 2 else 3) * math.radians(self.rotation)).tolist()
            zoom = float(torch.rand(1, generator=g)) < self.p_scale
            factor = float(_uniform(g, *self.scale))
            ela = float(torch.rand(1, generator=g)) < self.p_elastic and self.elastic > 0
            mag = float(_uniform(g, 0.5, 1.0)) * self.elastic
            noise = torch.randn((d, *spatial), generator=g) if ela else None
            if not (rot or zoom or ela):
                continue
            A = np.eye(d)
            if rot:
                A = _rotation_matrix(angles, d)
            if zoom:
                A = A / factor                     # sample a smaller region: zoom in when factor > 1
            grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in spatial], indexing="ij")
            p = np.stack(grids) - centre.reshape(d, *([1] * d))            # (d, *S), array order
            q = np.einsum("ij,j...->i...", A, p)
            u = torch.as_tensor(q - p, dtype=torch.float32)
            if ela:
                from ..ops.filters import gaussian_smooth

                sm = gaussian_smooth(noise, float(self.elastic_smoothness), sdim=d)
                norm = sm.pow(2).sum(0).sqrt().max().clamp_min(1e-12)
                u = u + sm * (mag / norm)
            fields.append(u.flip(0))               # biomip fields: component 0 = x
            chosen.append(i)
        if chosen:
            from ..ops.spatial import warp

            fld = torch.stack(fields).to(x.device)
            idx = torch.as_tensor(chosen, device=x.device)
            x = x.clone()
            x[idx] = warp(x[idx], fld, mode="linear", padding="border", sdim=d)
            if y is not None:
                yf = y[idx].to(torch.float32)[:, None]
                y = y.clone()
                y[idx] = warp(yf, fld, mode="nearest", padding="border", sdim=d)[:, 0].round().to(y.dtype)
        # ---- intensity (image only)
        for i in range(n):
            xi = x[i]
            std = xi.std().clamp_min(1e-6)
            if float(torch.rand(1, generator=g)) < self.p_intensity_scale:
                xi = xi * float(_uniform(g, *self.intensity_scale))
            if float(torch.rand(1, generator=g)) < self.p_intensity_shift:
                xi = xi + float(_uniform(g, -1, 1)) * self.intensity_shift * std
            if float(torch.rand(1, generator=g)) < self.p_contrast:
                mean = xi.mean()
                xi = (xi - mean) * float(_uniform(g, *self.contrast)) + mean
            if float(torch.rand(1, generator=g)) < self.p_bias_field and self.bias_field > 0:
                coarse = torch.randn((1, 1, *([3] * d)), generator=g)       # smooth: a 3^d grid, upsampled
                b = F.interpolate(coarse, size=spatial, mode="bilinear" if d == 2 else "trilinear",
                                  align_corners=True)[0]
                b = b / b.abs().max().clamp_min(1e-12) * float(_uniform(g, 0.0, 1.0)) * self.bias_field
                lo = xi.amin()
                xi = (xi - lo) * torch.exp(b).to(xi.device) + lo
            if float(torch.rand(1, generator=g)) < self.p_gamma:
                gam = float(_uniform(g, *self.gamma))
                lo, hi = xi.amin(), xi.amax()
                rng_ = (hi - lo).clamp_min(1e-6)
                xi = ((xi - lo) / rng_).clamp(0, 1).pow(gam) * rng_ + lo
            if float(torch.rand(1, generator=g)) < self.p_noise:
                sigma = float(_uniform(g, 0, self.noise)) * std
                xi = xi + sigma * torch.randn(xi.shape, generator=g).to(xi.device)
            x[i] = xi
        return (x, y) if labels is not None else x
