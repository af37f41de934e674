"""Synthetic fluorescent specimens and camera noise for the light-field microscopy case
study (SeReNet): tubes, hollow bubbles and beads built in micrometres, and the mixed
Poisson-Gaussian (MPG) camera model ``M = Poisson(tau * M') + N(mu, sigma^2)``.

Everything comes from one seed, so a specimen and its noisy measurement are
reproducible on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..core.arrays import (
    as_numpy,
    check_count,
    check_finite,
    check_number,
    check_shape,
    check_spacing,
    is_tensor,
)
from ..core.errors import GeometryError, InputError, describe

__all__ = ["LightFieldSpecimen", "lightfield_specimen", "photon_scale", "poisson_gaussian"]

KINDS = {"mixed": ("tubes", "bubbles", "beads"), "tubes": ("tubes",), "bubbles": ("bubbles",), "beads": ("beads",)}
# default number of structures per um^3: a 38.4 x 38.4 x 21 um volume holds ~6 / 5 / 15
_DENSITY = {"tubes": 6 / 30966.0, "bubbles": 5 / 30966.0, "beads": 15 / 30966.0}
_EDGE = 0.25      # half width (um) of the smooth falloff at every structure's edge
_MARGIN = 2.0     # lateral distance (um) kept free at the border
_SHELL = 0.5      # bubble shell thickness (um)


@dataclass
class LightFieldSpecimen:
    """A synthetic fluorescent volume for light-field simulation.

    Parameters
    ----------
    volume : numpy.ndarray
        float32 ``(Z, Y, X)``, values in [0, 1], max exactly 1 unless empty.
    spacing : tuple of float
        Voxel size (x, y, z) in micrometres.
    kind : {"mixed", "tubes", "bubbles", "beads"}
        Which structures were drawn.
    counts : dict
        Number of structures drawn, ``{"tubes": n, "bubbles": n, "beads": n}``.
    params : dict, optional
        The generation parameters (seed, blur).
    """

    volume: np.ndarray
    spacing: tuple
    kind: str
    counts: dict
    params: dict = field(default_factory=dict)

    def to_dict(self, arrays: bool = False) -> dict:
        """Summary as JSON-able values (``arrays=True`` adds ``volume``).

        Parameters
        ----------
        arrays : bool, optional
            Also include the arrays (default False).

        Returns
        -------
        dict
            JSON-ready values.
        """
        out = {"shape": list(self.volume.shape), "spacing": [float(s) for s in self.spacing], "kind": self.kind,
               "counts": {k: int(v) for k, v in self.counts.items()},
               "foreground_fraction": float((self.volume > 0.05).mean()), **self.params}
        if arrays:
            out["volume"] = self.volume
        return out


def _smooth(d, radius):
    """1 inside ``radius - _EDGE``, 0 beyond ``radius + _EDGE``, smoothstep between."""
    t = np.clip((radius + _EDGE - d) / (2 * _EDGE), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _paint(vol, sp, lo, hi, value_fn):
    """``vol = max(vol, value_fn(coords))`` over the voxels whose physical position (um,
    array order z, y, x) lies in the box ``[lo, hi]``; ``coords`` is (..., 3)."""
    a = np.maximum(np.floor(np.asarray(lo) / sp).astype(int), 0)
    b = np.minimum(np.ceil(np.asarray(hi) / sp).astype(int) + 1, vol.shape)
    if np.any(b <= a):
        return
    sl = tuple(slice(i, j) for i, j in zip(a, b))
    axes = [np.arange(i, j) * s for i, j, s in zip(a, b, sp)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    np.maximum(vol[sl], value_fn(coords), out=vol[sl])


def _tube(vol, sp, ext, rng):
    """A cubic Bezier curve, mostly lateral (drifts <= 2 um in z), as a soft tube."""
    m = np.minimum(_MARGIN, ext[1:] / 4)
    lo_b, hi_b = np.r_[0.0, m], np.r_[ext[0], ext[1:] - m]            # box (z, y, x) of control points
    z0 = rng.uniform(0.2, 0.8) * ext[0]
    p0 = np.r_[z0, rng.uniform(m, ext[1:] - m)]
    ang = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.5, 1.0) * min(ext[1:])
    p3 = p0 + length * np.r_[0.0, np.sin(ang), np.cos(ang)]
    perp = np.r_[0.0, np.cos(ang), -np.sin(ang)]
    ctrl = [p0, None, None, p3]
    for k, f in ((1, 1 / 3), (2, 2 / 3)):
        ctrl[k] = p0 + f * (p3 - p0) + perp * rng.uniform(-0.35, 0.35) * length
    ctrl = np.clip(np.stack(ctrl), lo_b, hi_b)
    ctrl[1:, 0] = np.clip(z0 + rng.uniform(-2.0, 2.0, size=3), 0.0, ext[0])
    radius, bright = rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.0)
    n = max(int(np.linalg.norm(np.diff(ctrl, axis=0), axis=1).sum() / 0.1), 8)   # ~0.1 um steps
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = ((1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1] + 3 * (1 - t) * t ** 2 * ctrl[2]
           + t ** 3 * ctrl[3])
    reach = radius + _EDGE
    for i in range(0, n, 24):                                          # ~2.4 um pieces, own bounding box
        piece = pts[i:i + 25]

        def value(c, piece=piece):
            d = np.sqrt(((c[..., None, :] - piece) ** 2).sum(-1).min(-1))
            return bright * _smooth(d, radius)

        _paint(vol, sp, piece.min(0) - reach, piece.max(0) + reach, value)


def _ball(vol, sp, centre, radius, bright, shell=None):
    """A soft ball (``shell=None``) or spherical shell of the given thickness (um)."""
    reach = radius + _EDGE

    def value(c):
        d = np.sqrt(((c - centre) ** 2).sum(-1))
        if shell is not None:
            return bright * _smooth(np.abs(d - (radius - shell / 2)), shell / 2)
        return bright * _smooth(d, radius)

    _paint(vol, sp, centre - reach, centre + reach, value)


def _check_kind_counts(kind, given, volume_um3):
    if not isinstance(kind, str) or kind not in KINDS:
        raise InputError(f"kind: got {kind!r}; expected one of {sorted(KINDS)}")
    counts = {}
    for name, n in given.items():
        if n is not None:
            n = check_count(n, f"n_{name}", minimum=0)
            if n > 0 and name not in KINDS[kind]:
                raise InputError(f"n_{name}: got {n} with kind={kind!r}; expected 0 or None (use kind='mixed')")
        elif name in KINDS[kind]:
            n = max(1, round(_DENSITY[name] * volume_um3))
        counts[name] = n or 0
    return counts


def lightfield_specimen(shape=(21, 96, 96), spacing=(0.4, 0.4, 1.0), kind: str = "mixed", n_tubes=None,
                        n_bubbles=None, n_beads=None, blur: float = 0.5, seed: int = 0) -> LightFieldSpecimen:
    """Synthetic fluorescent specimen: tubes, hollow bubbles and sub-resolution beads.

    Structures are drawn in micrometres, so anisotropic voxels still give round
    objects: tubes (smooth cubic Bezier curves, mostly lateral, radius 0.4-1.0 um,
    brightness 0.5-1.0), hollow bubbles (outer radius 1.5-4 um, shell 0.5 um,
    brightness 0.4-1.0) and beads (radius 0.2-0.5 um, brightness 0.6-1.0, centred on a
    voxel so none falls between two planes).  Every edge has a smooth 0.5 um falloff,
    overlapping structures take the brighter value, centres stay ~2 um from the
    lateral border.  The volume is then blurred by ``blur`` voxels and scaled to max 1.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(nz, ny, nx)``, each >= 4.
    spacing : tuple of float, optional
        Voxel size ``(x, y, z)`` in um (lateral 0.4, axial 1.0 by default).
    kind : {"mixed", "tubes", "bubbles", "beads"}, optional
        "mixed", "tubes", "bubbles" or "beads" (which structures to draw).
    n_tubes, n_bubbles, n_beads : int, optional
        Counts (>= 0); ``None`` scales with the physical
        volume (~6 tubes, 5 bubbles, 15 beads in 38.4 x 38.4 x 21 um, at least 1 each
        of the drawn kinds).  A count > 0 for a structure outside ``kind`` is an error.
    blur : float, optional
        Sigma of the final Gaussian blur in voxels (0: none).
    seed : int, optional
        Integer seed (``numpy.random.default_rng``).

    Returns
    -------
    LightFieldSpecimen
        :class:`LightFieldSpecimen` with ``volume`` float32 (Z, Y, X) in [0, 1].

    Examples
    --------
    >>> from biomip.data.lightfield import lightfield_specimen
    >>> s = lightfield_specimen((21, 64, 64), kind="bubbles", n_bubbles=3, seed=1)
    >>> s.volume.shape, float(s.volume.max()), s.counts["bubbles"]
    ((21, 64, 64), 1.0, 3)
    """
    shp = check_shape(shape, ndims=(3,), min_size=4)
    if np.ndim(spacing) != 1 or len(spacing) != 3:
        raise GeometryError(f"spacing: got {spacing!r}; expected 3 positive numbers (x, y, z) in um")
    sp = np.asarray(check_spacing(spacing, 3))[::-1]                  # array order (z, y, x)
    blur = check_number(blur, "blur", nonneg=True)
    seed = check_count(seed, "seed", minimum=0)
    ext = (np.asarray(shp) - 1) * sp                                  # physical extent (um), z, y, x
    counts = _check_kind_counts(kind, {"tubes": n_tubes, "bubbles": n_bubbles, "beads": n_beads},
                                float(np.prod(np.asarray(shp) * sp)))

    rng = np.random.default_rng(seed)
    vol = np.zeros(shp, dtype=np.float64)
    m = np.minimum(_MARGIN, ext[1:] / 4)
    for _ in range(counts["tubes"]):
        _tube(vol, sp, ext, rng)
    for _ in range(counts["bubbles"]):
        radius, bright = rng.uniform(1.5, 4.0), rng.uniform(0.4, 1.0)
        zr = min(radius, ext[0] / 2)
        centre = np.r_[rng.uniform(zr, ext[0] - zr), rng.uniform(m, ext[1:] - m)]
        _ball(vol, sp, centre, radius, bright, shell=_SHELL)
    for _ in range(counts["beads"]):
        radius, bright = rng.uniform(0.2, 0.5), rng.uniform(0.6, 1.0)
        centre = np.r_[rng.uniform(0, ext[0]), rng.uniform(m, ext[1:] - m)]
        _ball(vol, sp, np.round(centre / sp) * sp, radius, bright)
    if blur > 0:
        vol = ndi.gaussian_filter(vol, sigma=blur, mode="constant")
    top = vol.max()
    if top > 0:
        vol /= top
    return LightFieldSpecimen(volume=np.clip(vol, 0.0, 1.0).astype(np.float32),
                              spacing=tuple(float(s) for s in sp[::-1]), kind=kind, counts=counts,
                              params={"seed": seed, "blur": blur})


def _check_camera(photons, offset, read_noise=None):
    photons = check_number(photons, "photons", positive=True)
    offset = check_number(offset, "offset")
    if read_noise is not None:
        read_noise = check_number(read_noise, "read_noise", nonneg=True)
    return photons, offset, read_noise


def _check_array(x, name):
    if is_tensor(x):
        if x.is_complex():
            raise InputError(f"{name}: got a complex tensor; expected real values")
        return check_finite(x, name)
    arr = as_numpy(x, name=name)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: got {describe(arr)}; expected a real numeric array")
    return check_finite(arr, name)


def poisson_gaussian(clean, photons: float, offset: float = 100.0, read_noise: float = 2.0, seed: int = 0):
    """Mixed Poisson-Gaussian camera: ``M = Poisson(photons * clean) + N(offset, read_noise^2)``.

    The MPG model of SeReNet's NLL-MPG loss: shot noise on ``photons * clean`` expected
    photo-electrons plus Gaussian read noise with mean ``offset`` (camera baseline).
    So ``E[M] = photons * clean + offset`` and ``Var[M] = photons * clean + read_noise^2``.

    Parameters
    ----------
    clean : numpy.ndarray or torch.Tensor
        Ideal non-negative measurement, numpy array or torch tensor.
    photons : float
        Expected photon count for a value of 1.0 in ``clean`` (> 0).
    offset : float, optional
        Camera baseline (mean of the Gaussian part).
    read_noise : float, optional
        Standard deviation of the Gaussian part (>= 0).
    seed : int or torch.Generator, optional
        Integer seed (numpy ``default_rng``, or a ``torch.Generator`` on the
        tensor's device).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        float32 array of the same kind (torch: same device), in camera counts.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.lightfield import poisson_gaussian, photon_scale
    >>> m = poisson_gaussian(np.full((64, 64), 0.5), photons=200.0, seed=0)
    >>> abs(float(m.mean()) - 200.0) < 1.0, abs(float(photon_scale(m, 200.0, 100.0).mean()) - 0.5) < 0.01
    (True, True)
    """
    photons, offset, read_noise = _check_camera(photons, offset, read_noise)
    seed = check_count(seed, "seed", minimum=0)
    clean = _check_array(clean, "clean")
    if is_tensor(clean):
        import torch

        lam = clean.detach().to(torch.float32) * photons
        if lam.numel() and float(lam.min()) < 0:
            raise InputError(f"clean: got minimum {float(clean.min())!r}; expected non-negative values")
        gen = torch.Generator(device=lam.device).manual_seed(seed)
        shot = torch.poisson(lam, generator=gen)
        read = torch.randn(lam.shape, generator=gen, device=lam.device, dtype=torch.float32)
        return shot + (read * read_noise + offset)
    lam = np.asarray(clean, dtype=np.float64) * photons
    if lam.size and lam.min() < 0:
        raise InputError(f"clean: got minimum {float(np.min(clean))!r}; expected non-negative values")
    rng = np.random.default_rng(seed)
    out = rng.poisson(lam).astype(np.float64) + rng.normal(offset, read_noise, size=lam.shape)
    return out.astype(np.float32)


def photon_scale(measurement, photons: float, offset: float = 100.0):
    """Camera counts back to the clean scale: ``(measurement - offset) / photons``.

    Parameters
    ----------
    measurement : numpy.ndarray or torch.Tensor
        Camera counts.
    photons : float
        Expected photon count for a clean value of 1.0.
    offset : float, optional
        Camera baseline (default 100).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        float32 values on the clean scale.

    Examples
    --------
    >>> import numpy as np
    >>> from biomip.data.lightfield import photon_scale
    >>> photon_scale(np.array([100.0, 300.0]), photons=200.0, offset=100.0)
    array([0., 1.], dtype=float32)
    """
    photons, offset, _ = _check_camera(photons, offset)
    measurement = _check_array(measurement, "measurement")
    if is_tensor(measurement):
        import torch

        return (measurement.to(torch.float32) - offset) / photons
    return ((np.asarray(measurement, dtype=np.float64) - offset) / photons).astype(np.float32)
