"""Synthetic fluorescence-microscopy nuclei with exact instance labels (2-D and 3-D).

Everything -- positions, shapes, textures, background, noise -- comes from one seed,
so a sample is reproducible on every machine; use it to test segmentation and
instance metrics where the ground truth must be exact.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import check_number, check_shape, check_spacing
from ..core.errors import InputError
from ..core.image import Image

__all__ = ["NucleiSample", "synthetic_nuclei"]


@dataclass
class NucleiSample:
    """A synthetic nuclei image and its instance labels.

    Parameters
    ----------
    image : Image
        float32, roughly in [0, 1] (clipped), fluorescence-like.
    labels : Image
        uint16, 0 = background, nuclei numbered 1..n without gaps.
    n : int
        Number of nuclei in `labels`.
    params : dict
        The generation parameters (seed, radius, ...).
    """

    image: Image
    labels: Image
    n: int
    params: dict

    def to_dict(self, arrays: bool = False) -> dict:
        """Summary as JSON-able values (``arrays=True`` adds ``image`` and ``labels``).

        Parameters
        ----------
        arrays : bool, optional
            Also include the arrays (default False).

        Returns
        -------
        dict
            JSON-ready values.
        """
        sizes = np.bincount(self.labels.numpy().ravel().astype(np.int64), minlength=self.n + 1)[1:]
        out = {
            "shape": list(self.image.shape), "spacing": list(self.image.spacing), "n": int(self.n),
            "mean_size_voxels": float(sizes.mean()) if self.n else 0.0,
            "foreground_fraction": float((self.labels.numpy() > 0).mean()),
            **self.params,
        }
        if arrays:
            out["image"] = self.image.numpy()
            out["labels"] = self.labels.numpy()
        return out


def _random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix (d x d)."""
    if d == 2:
        a = rng.uniform(0, np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def synthetic_nuclei(shape=(256, 256), n_nuclei: int = 40, radius=(6, 12), touching: float = 0.3,
                     spacing=None, noise: float = 0.05, seed: int = 0) -> NucleiSample:
    """Synthetic fluorescent nuclei (ellipses / ellipsoids) with instance labels.

    Nuclei are random ellipses (2-D) or ellipsoids (3-D) with random orientation and
    aspect ratio.  A fraction ``touching`` of them is placed against an existing
    nucleus (slight overlap, resolved so that every voxel belongs to the nucleus whose
    normalised ellipse distance is smallest); the others keep a gap.  The image has
    per-nucleus brightness, smooth intra-nuclear texture, a background gradient, an
    optical blur and Poisson-Gaussian noise.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)`` or ``(nz, ny, nx)``.
    n_nuclei : int, optional
        Requested number of nuclei (>= 0).  Placement is by rejection sampling,
        so a crowded image may hold fewer; ``NucleiSample.n`` tells.
    radius : float or (float, float), optional
        ``(min, max)`` nucleus radius in voxels along x (a number: fixed radius).
        With anisotropic ``spacing`` nuclei stay round in physical space (fewer
        voxels along the coarser axes).
    touching : float, optional
        Fraction (0..1) of nuclei placed touching / slightly overlapping
        another one.
    spacing : sequence of float, optional
        Voxel size (x, y, [z]) in mm (default 1).
    noise : float, optional
        Noise level (0: clean image).  Shot noise with ``1 / noise**2`` photons at
        intensity 1 plus Gaussian read noise of standard deviation ``noise / 2``.
    seed : int, optional
        Integer seed.

    Returns
    -------
    NucleiSample
        :class:`NucleiSample` with ``image`` (float32) and ``labels`` (uint16, ids 1..n).
        Both Images have the given spacing, origin 0 and ``meta = {"modality":
        "fluorescence", "name": "synthetic-nuclei", ...}``.

    Examples
    --------
    >>> from biomip.data.nuclei import synthetic_nuclei
    >>> sample = synthetic_nuclei((128, 128), n_nuclei=12, radius=(5, 9), seed=3)
    >>> sample.n, int(sample.labels.array.max()) == sample.n
    (12, True)
    """
    shp = check_shape(shape, min_size=4)
    d = len(shp)
    sp = np.asarray(check_spacing(spacing, d))
    check_number(n_nuclei, "n_nuclei", low=0, integer=True)
    r = np.atleast_1d(np.asarray(radius, dtype=float)).ravel() if not isinstance(radius, bool) else np.array([np.nan])
    if r.size == 1:
        r = np.repeat(r, 2)
    if r.size != 2 or not np.all(np.isfinite(r)) or r[0] <= 0 or r[1] < r[0]:
        raise InputError(f"radius: got {radius!r}; expected a positive number or (min, max) with 0 < min <= max (voxels)")
    check_number(touching, "touching", low=0)
    if touching > 1:
        raise InputError(f"touching: got {touching!r}; expected a fraction between 0 and 1")
    check_number(noise, "noise", low=0)
    check_number(seed, "seed", integer=True)
    if r[0] < 1.0:
        raise InputError(f"radius: got {radius!r}; expected at least 1 voxel")

    rng = np.random.default_rng(int(seed))
    # physical-ish units: voxels along x; axis k (world order) has spacing ratio sp[k]/sp[0]
    scale_w = sp / sp[0]                                       # world order (x, y, z)
    scale_a = scale_w[::-1]                                    # array order (z, y, x)
    extent = np.asarray(shp, float) * scale_a                  # grid extent in x-voxel units

    centres, axes_list, rots, rmax = [], [], [], []
    attempts = 0
    max_attempts = 200 * max(int(n_nuclei), 1)
    while len(centres) < int(n_nuclei) and attempts < max_attempts:
        attempts += 1
        rad = rng.uniform(r[0], r[1])
        aspect = rng.uniform(0.65, 1.0, size=d)
        aspect /= aspect.max()
        semi = rad * aspect                                     # semi-axes (x-voxel units)
        rot = _random_rotation(d, rng)
        big = semi.max()
        want_touch = len(centres) > 0 and rng.random() < touching
        if want_touch:
            j = int(rng.integers(len(centres)))
            direction = rng.standard_normal(d)
            direction /= np.linalg.norm(direction)
            # distance between centres: the two radii along the line, minus a slight overlap
            rj = _radius_along(axes_list[j], rots[j], direction)
            ri = _radius_along(semi, rot, direction)
            c = centres[j] + direction * (ri + rj) * rng.uniform(0.85, 0.97)
        else:
            c = np.array([rng.uniform(0, e) for e in extent])
        # keep the nucleus inside the image (centre at least 0.6 radius from the edge)
        if np.any(c < 0.6 * big) or np.any(c > extent - 1 - 0.6 * big):
            continue
        if centres:
            dist = np.linalg.norm(np.asarray(centres) - c, axis=1)
            need = np.asarray(rmax) + big + 2.0                 # others: keep a gap
            if want_touch:
                need[j] = 0.6 * (big + rmax[j]) * 0.85          # partner: not swallowed
            if np.any(dist < need):
                continue
        centres.append(c)
        axes_list.append(semi)
        rots.append(rot)
        rmax.append(big)

    # ---------------------------------------------------------------- rasterise
    labels = np.zeros(shp, dtype=np.uint16)
    best = np.full(shp, np.inf)
    grids = [np.arange(n, dtype=float) * s for n, s in zip(shp, scale_a)]   # coords (x-voxel units)
    for i, (c, semi, rot, big) in enumerate(zip(centres, axes_list, rots, rmax), start=1):
        lo = [max(0, int(np.floor((ci - big - 1) / s))) for ci, s in zip(c, scale_a)]
        hi = [min(n, int(np.ceil((ci + big + 1) / s)) + 1) for ci, n, s in zip(c, shp, scale_a)]
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        coords = np.meshgrid(*[g[s] for g, s in zip(grids, sl)], indexing="ij")
        rel = np.stack([co - ci for co, ci in zip(coords, c)], axis=-1)       # array order
        local = rel @ rot                                                      # ellipse frame
        q = ((local / semi) ** 2).sum(-1)
        inside = (q <= 1.0) & (q < best[sl])
        labels[sl][inside] = i
        best[sl][inside] = q[inside]
    # contiguous ids 1..n (a nucleus may vanish under a neighbour)
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(len(centres) + 1, dtype=np.uint16)
    lut[present] = np.arange(1, present.size + 1, dtype=np.uint16)
    labels = lut[labels]
    n = int(present.size)
    if n < 0.8 * n_nuclei:
        warnings.warn(f"n_nuclei: asked for {n_nuclei}, placed {n}: the {'x'.join(map(str, shp))} image has no room "
                      "for more of this radius (a larger shape or smaller radius holds more)", stacklevel=2)

    # ---------------------------------------------------------------- intensities
    sigma_a = 1.0 / scale_a                                    # 1 x-voxel in every axis, in voxels
    brightness = np.concatenate([[0.0], rng.uniform(0.55, 0.9, size=n)])
    texture = ndi.gaussian_filter(rng.standard_normal(shp), sigma=1.5 * sigma_a, mode="reflect")
    texture /= max(texture.std(), 1e-12)
    # slightly darker rim / brighter core from the normalised distance
    qn = np.where(labels > 0, best, 1.0)
    profile = 1.0 - 0.25 * np.clip(qn, 0.0, 1.0)
    fg = brightness[labels] * profile * (1.0 + 0.12 * texture) * (labels > 0)
    ramp_dir = rng.standard_normal(d)
    ramp_dir /= np.linalg.norm(ramp_dir)
    coords = np.meshgrid(*[np.linspace(-0.5, 0.5, n_) for n_ in shp], indexing="ij")
    background = 0.08 + 0.06 * sum(cd * w for cd, w in zip(coords, ramp_dir))
    clean = ndi.gaussian_filter(fg, sigma=0.8 * sigma_a, mode="reflect") + background
    if noise > 0:
        photons = 1.0 / float(noise) ** 2
        img = rng.poisson(np.clip(clean, 0, None) * photons) / photons
        img = img + rng.normal(0.0, float(noise) / 2.0, size=shp)
    else:
        img = clean
    img = np.clip(img, 0.0, 1.0).astype(np.float32)

    params = {"seed": int(seed), "n_requested": int(n_nuclei), "radius": [float(r[0]), float(r[1])],
              "touching": float(touching), "noise": float(noise)}
    meta = {"modality": "fluorescence", "name": "synthetic-nuclei", **params}
    geom = {"spacing": tuple(sp)}
    return NucleiSample(
        image=Image(img, meta=dict(meta), **geom),
        labels=Image(labels, meta=dict(meta, kind="labels"), **geom),
        n=n, params=params,
    )


def _radius_along(semi: np.ndarray, rot: np.ndarray, direction: np.ndarray) -> float:
    """Distance from an ellipse's centre to its boundary along a unit ``direction``."""
    local = direction @ rot
    return float(1.0 / np.sqrt(((local / semi) ** 2).sum()))
