"""CT acquisition simulator: projections of an attenuation image with Beer-Lambert
photon statistics (Poisson) and electronic (Gaussian) noise."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.arrays import as_tensor, check_finite, check_memory, is_tensor
from ..core.errors import InputError
from ..core.image import Image

MU_WATER = 0.0192  # linear attenuation of water at ~70 keV, 1/mm


def hu_to_mu(hu, mu_water: float = MU_WATER):
    """Hounsfield units -> linear attenuation in 1/mm (``mu = mu_water (1 + HU / 1000)``, >= 0).

    Parameters
    ----------
    hu : array_like, torch.Tensor or Image
        CT values in Hounsfield units.
    mu_water : float, optional
        Attenuation of water in 1/mm (default the module's ``MU_WATER``).

    Returns
    -------
    array_like, torch.Tensor or Image
        Attenuation in 1/mm, of the kind of `hu`.
    """
    arr = hu.numpy() if isinstance(hu, Image) else hu
    mu = np.clip(mu_water * (1.0 + np.asarray(arr, dtype=np.float64) / 1000.0), 0, None)
    return hu.with_array(mu.astype(np.float32)) if isinstance(hu, Image) else mu


@dataclass
class CTScan:
    """A simulated scan: ``measurement`` (noisy line integrals), ``clean`` line
    integrals, the ``projector`` that made them, and the noise settings.

    Parameters
    ----------
    measurement : numpy.ndarray or torch.Tensor
        Noisy line integrals (sinogram ``(views, detector)``, or projections).
    clean : numpy.ndarray or torch.Tensor
        Noise-free line integrals.
    projector : LinearOperator
        The projector that made them (its ``geometry`` is the scan geometry).
    photons : float, optional
        Incident photons per detector pixel ``I0`` (None: no photon noise).
    gaussian_sigma : float, optional
        Standard deviation of the electronic noise (counts, or line integrals without
        photon noise).
    seed : int, optional
        Seed of the noise.
    counts : numpy.ndarray, optional
        The simulated detector counts (with photon noise)."""

    measurement: object
    clean: object
    projector: object
    photons: float | None = None
    gaussian_sigma: float | None = None
    seed: int = 0
    counts: object | None = field(default=None, repr=False)

    @property
    def geometry(self):
        """The scan geometry (``projector.geometry``)."""
        return self.projector.geometry

    def to_dict(self) -> dict:
        """Geometry, noise settings and shapes as a JSON-ready dict."""
        return {"geometry": self.geometry.to_dict(), "photons": self.photons, "gaussian_sigma": self.gaussian_sigma,
                "seed": self.seed, "shape": list(np.shape(self.measurement)),
                "image_shape": list(self.projector.in_shape)}


def check_sinogram_memory(n_views: int, det_shape, slices: int = 1, photons=None, gaussian_sigma=None,
                          name: str = "geometry") -> None:
    """Refuse a simulated scan whose sinogram would not fit in memory, before any work.

    The clean float32 sinogram, and with ``photons`` the float64 rate, counts and log
    taken in turn (``gaussian_sigma`` alone: one float64 noise array).

    Parameters
    ----------
    n_views : int
        Views of the scan.
    det_shape : sequence of int
        Detector pixels per view (``(n_det,)`` or ``(rows, cols)``).
    slices : int, optional
        Slices of a slice-wise parallel-beam scan of a volume.
    photons, gaussian_sigma : float or None, optional
        The noise options of :func:`simulate_ct`.
    name : str, optional
        The argument named in the error.

    Raises
    ------
    InputError
        When the sinogram would need more memory than this process can get.

    Examples
    --------
    >>> check_sinogram_memory(180, (256,))
    """
    per = 4.0 + (24.0 if photons is not None else 8.0 if gaussian_sigma else 0.0)
    check_memory(per * int(n_views) * math.prod(int(n) for n in det_shape) * int(slices), name,
                 f"the sinogram ({int(n_views)} views x {tuple(int(n) for n in det_shape)} detector pixels)")


def simulate_ct(image, geometry=None, photons: float | None = None, gaussian_sigma: float | None = None,
                seed: int = 0, n_views: int = 180, model: str = "joseph") -> CTScan:
    """Simulate a CT acquisition of ``image`` (attenuation in 1/mm).

    Parameters
    ----------
    image : Image or array_like
        Attenuation in 1/mm, 2-D, or 3-D (slice-wise parallel beam / cone beam); an
        Image's geometry places it in the scanner.
    geometry : ParallelBeam or DivergentBeam, optional
        A :class:`~biomip.ops.ct.ParallelBeam`, or a fan / cone beam from
        :func:`~biomip.ops.ct.fan_beam` / :func:`~biomip.ops.ct.cone_beam`; default a
        parallel beam with `n_views` views over a half turn covering the image.
    photons : float, optional
        Incident photons per detector pixel ``I0``: counts are ``Poisson(I0 exp(-p))``
        (+ Gaussian electronic noise of `gaussian_sigma` counts), and the measurement
        is ``-log(counts / I0)``.  None: no photon noise, and `gaussian_sigma` (if
        given) is added to the line integrals directly.
    gaussian_sigma : float, optional
        Standard deviation of the electronic noise (see `photons`).
    seed : int, optional
        Random seed; same seed, same noise.
    n_views : int, optional
        Number of views of the default parallel beam (default 180).
    model : {"joseph", "pixel"}, optional
        Projector model of the default parallel beam (see
        :class:`~biomip.ops.ct.ParallelProjector`).

    Returns
    -------
    CTScan
        The measurement, the clean line integrals and the projector.

    Examples
    --------
    >>> from biomip.data import shepp_logan, simulate_ct
    >>> scan = simulate_ct(shepp_logan((128, 128)) * 0.02, photons=1e4, n_views=90, seed=0)
    >>> scan.measurement.shape
    (90, 183)
    """
    from ..ops.ct import (
        DivergentBeam,
        DivergentProjector,
        ParallelBeam,
        ParallelProjector,
    )

    if isinstance(image, Image):
        arr, grid = image.array, image
    else:
        arr = image
        grid = tuple(np.shape(image))
    x = as_tensor(arr, name="image")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    check_finite(x, "image")
    if photons is not None and x.numel() and float(x.min()) < 0:
        warnings.warn(f"image: holds negative attenuation (min {float(x.min()):.3g}); its Beer-Lambert counts exceed "
                      "the source's photons there (is it in HU? biomip.data.hu_to_mu converts)", stacklevel=2)
    if geometry is None:
        geometry = ParallelBeam.for_image(grid, n_views=n_views)
    if not isinstance(geometry, (ParallelBeam, DivergentBeam)):
        raise InputError(f"geometry: got {type(geometry).__name__}; expected ParallelBeam, fan_beam(...) or cone_beam(...)")
    det = geometry.det_shape if isinstance(geometry, DivergentBeam) else (geometry.n_det,)
    slices = int(np.shape(arr)[0]) if isinstance(geometry, ParallelBeam) and len(np.shape(arr)) == 3 else 1
    check_sinogram_memory(geometry.n_views, det, slices, photons, gaussian_sigma)
    if isinstance(geometry, ParallelBeam):
        op = ParallelProjector(geometry, grid, model=model)
    else:
        op = DivergentProjector(geometry, grid)
    clean = op(x)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    counts = None
    meas = clean
    if photons is not None:
        if not np.isfinite(photons) or photons <= 0:
            raise InputError(f"photons: got {photons!r}; expected a positive number of incident photons (I0)")
        pmax = float(clean.max())
        if pmax > np.log(photons) + 3:   # fewer than 0.05 photons expected on the darkest ray
            raise InputError(
                f"image: line integrals reach {pmax:.3g}, so almost no photon of I0 = {photons:g} would pass; the "
                "image must be an attenuation in 1/mm (e.g. biomip.data.hu_to_mu(ct) or phantom * 0.02 for "
                "water-like values), or raise photons")
        rate = float(photons) * torch.exp(-clean.detach().cpu().double())
        counts = torch.poisson(rate, generator=g)
        if gaussian_sigma:
            counts = counts + float(gaussian_sigma) * torch.randn(counts.shape, generator=g, dtype=counts.dtype)
        meas = -torch.log(counts.clamp_min(0.5) / float(photons))
        meas = meas.to(clean.dtype).to(clean.device)
    elif gaussian_sigma:
        if not np.isfinite(gaussian_sigma) or gaussian_sigma < 0:
            raise InputError(f"gaussian_sigma: got {gaussian_sigma!r}; expected a non-negative number")
        noise = torch.randn(clean.shape, generator=g, dtype=torch.float64) * float(gaussian_sigma)
        meas = clean + noise.to(clean.dtype).to(clean.device)
    to_kind = (lambda t: t) if is_tensor(arr) else (lambda t: None if t is None else t.detach().cpu().numpy())
    return CTScan(to_kind(meas), to_kind(clean), op, photons, gaussian_sigma, int(seed), to_kind(counts))
