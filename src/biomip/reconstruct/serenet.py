"""SeReNet (textbook 8.3; Lu et al., Nature Methods 2025): physics-driven, self-supervised
light-field reconstruction.

* **depth decomposition** -- digital refocusing of every view to every depth (eq. 8.2,
  :func:`biomip.reconstruct.refocus`): the measurement ``(V, h, w)`` becomes a stack
  ``(V, Z, h, w)`` whose view axis is the network's channel axis;
* **deblurring and fusion** -- :class:`SeReNet`, nine 3x3x3 convolutions with LeakyReLU
  (about 0.2 M parameters at 32 channels and 21 views), with ``log2(binning)`` lateral
  x2 upsamplings (before the last layer) when the views are sampled coarser than the volume;
* **self-supervision** -- the output volume is forward-projected through a random subset
  of views with the wave-optics PSF (:class:`LightFieldProjector`) and compared with the
  raw measurement by the mixed Poisson-Gaussian negative log-likelihood
  (:func:`nll_mpg`), plus small total-variation and non-negativity terms.  No ground
  truth is ever used.  An ``"l1"`` loss is provided for comparison.

>>> model, hist = train_serenet(measurements, psf, offset=100, read_noise=2)   # doctest: +SKIP
>>> volume = model.reconstruct(measurement)                                    # doctest: +SKIP
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from ..core.arrays import check_count, check_number
from ..core.errors import InputError, ShapeError
from ..core.progress import progress_bar, track
from ..core.rng import seeded
from ..nn import Conv3d, FrozenSequential, LateralUpsample, bf16_supported, fusable
from ..nn.base import SavedModule
from .lightfield import LightFieldOptics, LightFieldProjector, LightFieldPSF, refocus

__all__ = ["nll_mpg", "SeReNet", "train_serenet", "serenet_loss", "total_variation"]

LOSSES = ("nll-mpg", "l1")


# ------------------------------------------------------------------ loss
def _log_factorial(k: torch.Tensor, stirling: bool) -> torch.Tensor:
    if not stirling:
        return torch.lgamma(k + 1.0)
    kk = k.clamp_min(1.0)
    st = kk * torch.log(kk) - kk + 0.5 * torch.log(2 * math.pi * kk)
    return torch.where(k > 0, st, torch.zeros_like(k))                    # 0! = 1 exactly


def nll_mpg(expected, measurement, offset: float = 0.0, read_noise: float = 1.0, window: int | None = None,
            stirling: bool = False, reduction: str = "mean", eps: float = 1e-6) -> torch.Tensor:
    """Negative log-likelihood of a camera measurement under mixed Poisson-Gaussian noise
    (the SeReNet loss, textbook 8.3)::

        p(M | P) = sum_t  P^t e^-P / t!  *  N(M - offset - t; 0, read_noise^2)
        loss     = -log p(M | P)        (per pixel, averaged with reduction="mean")

    ``expected`` ``P`` is the expected photon count (>= 0; clamped at ``eps``),
    ``measurement`` ``M`` the camera values in the same units (gain 1: counts = photons
    + offset + Gaussian read noise).  ``log t!`` is exact (``lgamma``) by default;
    ``stirling=True`` uses the paper's Stirling approximation ``t log t - t + log(2 pi t)
    / 2``, which overweights ``t = 1, 2`` (by 8 % and 4 %) and so moves the minimum of
    the loss for a dark pixel (true mean 0, read noise 2) to ``P ~ 0.2`` photons -- a
    background haze at very low photon counts; the exact form is unbiased and as cheap.
    The Gaussian part is discretised over the photon counts ``t`` within
    ``window`` (default ``ceil(6 read_noise) + 2``) of ``M - offset`` -- outside it the
    Gaussian factor is below ``e^-18`` -- and the sum is taken by log-sum-exp, so the
    loss is exact up to that truncation and differentiable in ``P``.

    Parameters
    ----------
    expected : torch.Tensor
        Expected photon counts ``P`` (>= 0; clamped at `eps`).
    measurement : torch.Tensor
        Camera values ``M``, same shape (gain 1: photons + offset + read noise).
    offset : float, optional
        Camera baseline (counts).
    read_noise : float, optional
        Standard deviation of the Gaussian read noise (counts).
    window : int, optional
        Photon counts summed on each side of ``M - offset`` (default
        ``ceil(6 read_noise) + 2``).
    stirling : bool, optional
        Use the paper's Stirling approximation of ``log t!`` instead of the exact one.
    reduction : {"mean", "sum", "none"}, optional
        How the per-pixel losses are combined.
    eps : float, optional
        Floor of `expected`.

    Returns
    -------
    torch.Tensor
        The loss (0-dim, or per pixel with ``reduction="none"``), differentiable in `expected`.

    Examples
    --------
    >>> P = torch.tensor([5.0, 20.0]); M = torch.tensor([104.0, 121.0])
    >>> float(nll_mpg(P, M, offset=100, read_noise=2)) > 0
    True
    """
    P = torch.as_tensor(expected)
    M = torch.as_tensor(measurement, device=P.device, dtype=P.dtype if P.is_floating_point() else torch.float32)
    if not P.is_floating_point():
        P = P.float()
    if P.shape != M.shape:
        raise ShapeError(f"measurement: got shape {tuple(M.shape)}; expected the shape of expected {tuple(P.shape)}")
    s = check_number(read_noise, "read_noise", positive=True)
    off = check_number(offset, "offset")
    if reduction not in ("mean", "sum", "none"):
        raise InputError(f"reduction: got {reduction!r}; expected 'mean', 'sum' or 'none'")
    K = int(math.ceil(6 * s)) + 2 if window is None else check_count(window, "window")
    x = M - off                                                          # photons + read noise
    P = P.clamp_min(eps)
    start = torch.clamp(torch.round(x.detach()) - K, min=0.0)
    t = start.unsqueeze(-1) + torch.arange(2 * K + 1, device=P.device, dtype=P.dtype)   # (..., T)
    logp = t * torch.log(P).unsqueeze(-1) - P.unsqueeze(-1) - _log_factorial(t, stirling)
    logg = -((x.unsqueeze(-1) - t) ** 2) / (2 * s * s) - 0.5 * math.log(2 * math.pi * s * s)
    nll = -torch.logsumexp(logp + logg, dim=-1)
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    return nll


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean anisotropic total variation ``|d_z| + |d_y| + |d_x|`` of ``(..., Z, Y, X)``.

    Parameters
    ----------
    x : torch.Tensor
        ``(..., Z, Y, X)`` volume.

    Returns
    -------
    torch.Tensor
        0-dim mean total variation.
    """
    return sum((x.diff(dim=d).abs().mean() for d in (-1, -2, -3) if x.shape[d] > 1), torch.zeros((), device=x.device))


# ------------------------------------------------------------------ network
class SeReNet(SavedModule):
    """Deblur-and-fusion network of SeReNet (Lu et al. 2025, the published model):
    refocused stack ``(B, V, Z, h, w)`` -> volume ``(B, Z, h * binning, w * binning)``.

    Nine 3x3x3 convolutions with LeakyReLU(0.1) between them; the views are the input
    channels and the widths taper as the lateral sampling grows -- ``channels`` x (1, 1/2,
    1/2, 1/4) at the views' sampling, x2 lateral trilinear upsampling, (1/4, 1/8), x2
    upsampling, (1/8, 1/16), then one output channel.  With ``channels=64`` and 49 views
    this is the paper's 195 k-parameter network; the wide layers run on the coarse view
    grid, so inference costs about 15x fewer operations than nine equal-width layers on
    the volume grid.  ``binning`` (1, 2, 4 or 8: volume pixels per view pixel) sets how
    many x2 upsamplings there are: none at 1, the paper's two at 4.

    Parameters
    ----------
    n_views : int
        Number of views (input channels).
    channels : int, optional
        Width of the first layer (default 64, the paper's).
    binning : {1, 2, 4, 8}, optional
        Volume pixels per view pixel (number of x2 upsamplings: log2).
    negative_slope : float, optional
        Slope of the LeakyReLU.

    Examples
    --------
    >>> net = SeReNet(n_views=49, channels=64, binning=4)
    >>> 190_000 < net.n_parameters < 200_000
    True
    """

    FORMAT, VERSION = "biomip.serenet", 2     # 2: the tapered published architecture

    AUTO_TILE = 256                             # view pixels per side inferred at once by default
    _TAPER = (1, 2, 2, 4, 4, 8, 8, 16)          # width divisors of the eight hidden layers
    _UPSAMPLE_AFTER = (4, 6, 7)                 # the paper's upsamplings follow conv 4 and conv 6

    def __init__(self, n_views: int, channels: int = 64, binning: int = 1, negative_slope: float = 0.1):
        super().__init__()
        self.n_views = check_count(n_views, "n_views")
        self.channels = check_count(channels, "channels")
        self.binning = check_count(binning, "binning")
        ups = int(round(math.log2(self.binning)))
        if 2 ** ups != self.binning or ups > len(self._UPSAMPLE_AFTER):
            raise InputError(f"binning: got {binning}; expected 1, 2, 4 or 8 (volume pixels per view pixel)")
        self.negative_slope = float(negative_slope)
        after = set(self._UPSAMPLE_AFTER[:ups])
        widths = [max(2, round(self.channels / d)) for d in self._TAPER] + [1]
        mods, c_in = [], self.n_views
        for i, c_out in enumerate(widths, start=1):
            mods.append(Conv3d(c_in, c_out, 3, padding=1))
            if i < len(widths):
                mods.append(nn.LeakyReLU(self.negative_slope))
            if i in after:
                mods.append(LateralUpsample(2))
            c_in = c_out
        self.widths = widths
        self.body = nn.Sequential(*mods)
        self.meta: dict = {}

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """Run the network.

        Parameters
        ----------
        stack : torch.Tensor
            Refocused stack ``(B, V, Z, h, w)`` (see :meth:`prepare`).

        Returns
        -------
        torch.Tensor
            ``(B, Z, h * binning, w * binning)`` volume in normalised units (not clamped).
        """
        if stack.ndim != 5 or stack.shape[1] != self.n_views:
            raise ShapeError(f"stack: got shape {tuple(stack.shape)}; expected (B, {self.n_views} views, Z, h, w)")
        return self.body(stack)[:, 0]

    def config(self) -> dict:
        """The constructor arguments (saved with the weights)."""
        return {"n_views": self.n_views, "channels": self.channels, "binning": self.binning,
                "negative_slope": self.negative_slope}

    # -------------------------------------------------------------- use
    def _psf_for_refocus(self) -> LightFieldPSF:
        m = self.meta
        if "shifts" not in m:
            raise InputError("model: has no light-field geometry (train it with train_serenet or load a saved one)")
        return LightFieldPSF(torch.zeros(0), np.asarray(m["shifts"], dtype=float), np.asarray(m["views"]),
                             np.asarray(m["depths"], dtype=float), LightFieldOptics(**m["optics"]))

    def check_measurement(self, measurement, offset: float | None = None, name: str = "measurement",
                          offset_name: str = "offset") -> str | None:
        """Check a raw measurement against the camera offset :meth:`reconstruct` subtracts.

        The network sees ``max(measurement - offset, 0)``: a measurement whose values lie
        at or below the offset gives an empty volume without any error.  That happens
        when the offset was subtracted already (the training offset, 100 counts in the
        simulated runs, then removes all the signal) or when ``offset`` is far above the
        camera's dark level.  A raw measurement has its dark pixels at the offset, spread
        by the read noise, so its median is never far below it.

        Parameters
        ----------
        measurement : numpy.ndarray or torch.Tensor
            Raw measurement ``(V, h, w)`` in camera counts.
        offset : float, optional
            Camera offset that will be subtracted (default the training one).
        name : str, optional
            The argument the messages name (``"MEASUREMENT"`` on the command line).
        offset_name : str, optional
            The option that sets the offset (``"--offset"`` on the command line).

        Returns
        -------
        str or None
            A warning when the median lies more than one read-noise sigma (the training
            one) below the offset: most pixels would be read as darker than the dark
            level; ``None`` otherwise.

        Raises
        ------
        ShapeError
            For a measurement that is not ``(n_views, h, w)``.
        InputError
            For NaN/Inf values, a constant measurement, or one with (almost) nothing
            above the offset (at most 0.1 % of its pixels): an empty volume.

        Examples
        --------
        >>> net = SeReNet(5, channels=8)
        >>> net.meta = {"offset": 100.0, "read_noise": 2.0}
        >>> rng = np.random.default_rng(0)
        >>> raw = 100 + rng.poisson(5.0, (5, 16, 16)) + rng.normal(0, 2, (5, 16, 16))
        >>> net.check_measurement(raw) is None
        True
        >>> try:
        ...     net.check_measurement(raw - 100)                # the offset subtracted already
        ... except InputError as exc:
        ...     print("offset-subtracted already" in str(exc))
        True
        """
        m = np.asarray(measurement.detach().cpu() if torch.is_tensor(measurement) else measurement, dtype=np.float64)
        if m.ndim != 3 or m.shape[0] != self.n_views:
            raise ShapeError(f"{name}: got an array of shape {m.shape}; expected ({self.n_views} views, h, w) for "
                             "this model")
        bad = int(np.count_nonzero(~np.isfinite(m)))
        if bad:
            raise InputError(f"{name}: contains {bad} NaN/Inf value(s) of {m.size}; expected finite camera counts")
        lo, hi = float(m.min()), float(m.max())
        if lo == hi:
            raise InputError(f"{name}: all its {m.size} values are {lo:g}; expected a raw light field (camera counts "
                             "that vary between pixels)")
        trained = offset is None
        off = float(self.meta.get("offset", 0.0)) if trained else check_number(offset, offset_name)
        src = "the model's training offset" if trained else offset_name
        fix = f"{offset_name} 0" if offset_name.startswith("-") else f"{offset_name}=0"
        hint = f"it looks offset-subtracted already: pass {fix} (or the camera's dark level)"
        above = float(np.mean(m > off))
        if above <= 1e-3:
            what = "all its values" if above == 0 else f"all but {100 * above:.2g} % of its values"
            raise InputError(f"{name}: {what} (from {lo:.6g} to {hi:.6g}) are at or below the camera offset "
                             f"{off:g} counts ({src}) that is subtracted first, so the volume would be empty; {hint}")
        med, sigma = float(np.median(m)), float(self.meta.get("read_noise", 1.0))
        if med < off - sigma:
            return (f"{name}: {100 * (1 - above):.0f} % of its values are at or below the camera offset {off:g} counts "
                    f"({src}) that is subtracted first (median {med:.6g}, more than one read-noise sigma, {sigma:g}, "
                    f"below it), so the volume keeps only the brightest pixels; {hint}")
        return None

    def prepare(self, measurement, offset: float | None = None) -> tuple[torch.Tensor, float]:
        """Offset-subtracted, scale-normalised, refocused input ``(1, V, Z, h, w)`` and the scale.

        Parameters
        ----------
        measurement : numpy.ndarray or torch.Tensor
            Raw measurement ``(V, h, w)`` in camera counts.
        offset : float, optional
            Camera offset (default the training one).

        Returns
        -------
        stack : torch.Tensor
            ``(1, V, Z, h, w)`` network input.
        scale : torch.Tensor
            The normalisation (photons per normalised unit).
        """
        dev = next(self.parameters()).device
        m = torch.as_tensor(np.asarray(measurement) if not torch.is_tensor(measurement) else measurement)
        m = m.to(device=dev, dtype=torch.float32)
        _check_measurement(m, self.n_views)
        off = float(self.meta.get("offset", 0.0)) if offset is None else check_number(offset, "offset")
        y = (m - off).clamp_min(0)
        scale = float(y.mean()) or 1.0
        return refocus(y / scale, self._psf_for_refocus(), self.binning)[None], scale

    def _frozen(self, dtype: torch.dtype) -> FrozenSequential | None:
        """The cached CPU inference copy of the body in ``dtype`` (rebuilt when the body
        changes), or None where the module itself must run: not on a CPU, a body or dtype
        the fused path cannot take, hooks on or an override of :meth:`forward`."""
        if (next(self.parameters()).device.type != "cpu" or not fusable(self.body)
                or (dtype == torch.bfloat16 and not bf16_supported())
                or type(self).forward is not SeReNet.forward or self._forward_hooks or self._forward_pre_hooks):
            return None
        cache = self.__dict__.setdefault("_frozen_cache", {})
        f = cache.get(dtype)
        if f is None or not f.is_current(self.body):
            f = cache[dtype] = FrozenSequential(self.body, dtype)
        return f

    def _apply(self, fn, *args, **kwargs):                        # .to(), .cuda(), .float(), ...: drop the copies
        self.__dict__.pop("_frozen_cache", None)
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):                                       # pickle / deepcopy: the copies are not state
        state = dict(super().__getstate__())
        state.pop("_frozen_cache", None)
        return state

    @property
    def halo(self) -> int:
        """Receptive-field radius of the network, in view pixels (rounded up, plus one).

        A tile of the refocused stack that reaches at least this far beyond a voxel gives
        that voxel exactly its whole-field value (:meth:`reconstruct` with ``tile``).

        Examples
        --------
        >>> SeReNet(5, channels=8, binning=2).halo
        9
        """
        r, s = 0.0, 1
        for m in self.body:
            if isinstance(m, nn.Conv3d):
                r += (m.kernel_size[-1] // 2) * m.dilation[-1] / s
            elif isinstance(m, LateralUpsample):
                r += 1.0 / s                                  # linear interpolation reads one source neighbour
                s *= m.scale
        return int(math.ceil(r)) + 1

    def _run(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The network on a ``(1, V, Z, h, w)`` stack -> ``(Z, h * b, w * b)`` (not clamped)."""
        frozen = self._frozen(dtype)
        if frozen is not None:
            return frozen(x)[0, 0]
        was = self.training
        self.eval()
        try:
            if dtype == torch.bfloat16:
                with torch.autocast(x.device.type, dtype=dtype):
                    y = self(x.contiguous(memory_format=torch.channels_last_3d))
            else:
                y = self(x)
        finally:
            self.train(was)
        return y[0]

    def tile_starts(self, shape, tile: int) -> tuple[list[int], list[int]]:
        """Start positions (view pixels) of the tiles :meth:`reconstruct` runs on a field.

        Parameters
        ----------
        shape : tuple of int
            ``(h, w)`` of the views.
        tile : int
            Tile size in view pixels (more than ``2 * halo + max(2, tile // 8)``).

        Returns
        -------
        starts_y, starts_x : list of int
            Tile origins along y and x; neighbouring tiles overlap by at least ``2 * halo``
            plus the blend band.

        Examples
        --------
        >>> SeReNet(5, channels=8, binning=2).tile_starts((100, 40), 64)
        ([0, 36], [0])
        """
        tile = check_count(tile, "tile")
        blend = max(2, tile // 8)
        need = 2 * self.halo + blend                              # overlap (view px) of neighbouring tiles
        if tile <= need:
            raise InputError(f"tile: got {tile}; expected more than {need} view pixels (2 x the network's "
                             f"receptive-field halo {self.halo} + a blend band of {blend})")
        from ..nn.patches import window_starts

        return tuple(window_starts(int(n), tile, min(need / tile, 0.99)) if n > tile else [0] for n in shape)

    def _run_tiled(self, x: torch.Tensor, dtype: torch.dtype, tile: int, progress=None) -> torch.Tensor:
        """:meth:`_run` over overlapping lateral tiles of ``tile`` view pixels, blended.

        Each tile reaches :attr:`halo` view pixels beyond the voxels it contributes (where
        it was cut out of the field), so that every voxel is computed with its whole
        receptive field; the contributions of neighbouring tiles are cross-faded over a
        band of ``max(2, tile // 8)`` view pixels (linear ramps), and every weight is 0
        within the halo of a cut edge.
        """
        _, _, Z, h, w = x.shape
        b, halo, blend = self.binning, self.halo, max(2, tile // 8)
        starts = self.tile_starts((h, w), tile)

        def ramps(n, st):
            t = min(tile, n)
            out = []
            for s0 in st:
                i = torch.arange(t * b, dtype=torch.float32) + 0.5
                wgt = torch.ones(t * b)
                if s0 > 0:                                        # cut on the low side
                    wgt = wgt * ((i - halo * b) / (blend * b)).clamp(0, 1)
                if s0 + t < n:                                    # cut on the high side
                    wgt = wgt * ((t * b - i - halo * b) / (blend * b)).clamp(0, 1)
                out.append(wgt)
            return t, out

        ty, ry = ramps(h, starts[0])
        tx, rx = ramps(w, starts[1])
        out = torch.zeros((Z, h * b, w * b), dtype=torch.float32, device=x.device)
        norm = torch.zeros((h * b, w * b), dtype=torch.float32, device=x.device)
        n = len(ry) * len(rx)
        with progress_bar("SeReNet tiles", n, progress if n > 1 else False) as bar:
            for y0, wy in zip(starts[0], ry):
                for x0, wx in zip(starts[1], rx):
                    yt = self._run(x[..., y0:y0 + ty, x0:x0 + tx].contiguous(), dtype).float()
                    wt = (wy[:, None] * wx[None, :]).to(x.device)
                    out[:, y0 * b:(y0 + ty) * b, x0 * b:(x0 + tx) * b] += yt * wt
                    norm[y0 * b:(y0 + ty) * b, x0 * b:(x0 + tx) * b] += wt
                    bar.advance()
        return out / norm.clamp_min(1e-12)

    @torch.no_grad()
    def reconstruct(self, measurement, offset: float | None = None, precision: str = "float32", tile="auto",
                    progress=None) -> torch.Tensor:
        """Volume ``(Z, H, W)`` (photon units per voxel, >= 0, float32) from one raw
        measurement ``(V, h, w)`` (camera counts; ``offset`` defaults to the training one).

        Parameters
        ----------
        measurement : numpy.ndarray or torch.Tensor
            Raw measurement ``(V, h, w)`` in camera counts.
        offset : float, optional
            Camera offset (default the training one).
        precision : {"float32", "bfloat16"}, optional
            Run the convolutions in bfloat16, about 1.6x faster on CPUs with AVX512-BF16 /
            AMX and on GPUs, at a small cost in accuracy (measured in the SeReNet pipeline
            report).
        tile : int, "auto" or None, optional
            Run the network on overlapping lateral tiles of ``tile`` x ``tile`` view
            pixels and blend them (the memory then does not grow with the field); ``None``:
            the whole field at once; ``"auto"`` (default): whole field up to
            ``AUTO_TILE`` view pixels per side, else tiles of ``AUTO_TILE // 2``.  The
            depth decomposition is always done on the whole field and each tile reaches
            :attr:`halo` view pixels beyond the voxels it gives, so tiles and the whole
            field agree up to rounding.
        progress : bool or None, optional
            Show a progress bar over the tiles.

        Returns
        -------
        torch.Tensor
            ``(Z, H, W)`` float32 volume, photon units per voxel, >= 0.

        Notes
        -----
        On a CPU the network runs as a :class:`~biomip.nn.FrozenSequential` (weights cast
        once, activations fused into oneDNN convolutions, channels-last throughout); on
        other devices as the module, under autocast for bfloat16.
        """
        if precision not in ("float32", "bfloat16"):
            raise InputError(f"precision: got {precision!r}; expected 'float32' or 'bfloat16'")
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        x, scale = self.prepare(measurement, offset)
        h, w = x.shape[-2:]
        if isinstance(tile, str):
            if tile != "auto":
                raise InputError(f"tile: got {tile!r}; expected an int, 'auto' or None")
            tile = None if max(h, w) <= self.AUTO_TILE else self.AUTO_TILE // 2
        elif tile is not None:
            tile = check_count(tile, "tile")
        if tile is None or (tile >= h and tile >= w):
            y = self._run(x, dtype)
        else:
            y = self._run_tiled(x, dtype, tile, progress)
        return y.float().clamp_min(0) * scale

def _check_measurement(m: torch.Tensor, n_views: int):
    if m.ndim != 3 or m.shape[0] != n_views:
        raise ShapeError(f"measurement: got shape {tuple(m.shape)}; expected ({n_views} views, h, w) as the PSF / "
                         "model")
    if not torch.isfinite(m).all():
        raise InputError("measurement: contains NaN/Inf; expected finite camera values")


# ------------------------------------------------------------------ training
def serenet_loss(volume: torch.Tensor, measurement: torch.Tensor, projector: LightFieldProjector, views,
                 scale: torch.Tensor, offset: float, read_noise: float, loss: str = "nll-mpg", tv: float = 0.0,
                 nonneg: float = 1.0, region=None) -> tuple[torch.Tensor, dict]:
    """The self-supervised objective for a batch: ``volume`` (B, Z, H, W) in normalised
    units, ``measurement`` (B, V, h, w) raw counts, ``scale`` (B,) the normalisation
    (expected counts = ``scale * A max(volume, 0) + offset``), ``views`` the view subset.

    Parameters
    ----------
    volume : torch.Tensor
        Network output ``(B, Z, H, W)`` in normalised units.
    measurement : torch.Tensor
        Raw counts ``(B, V, h, w)``.
    projector : LightFieldProjector
        The forward model.
    views : torch.Tensor
        Indices of the views projected this step.
    scale : torch.Tensor
        ``(B,)`` normalisation of each measurement.
    offset : float
        Camera offset (counts).
    read_noise : float
        Read-noise standard deviation (counts).
    loss : {"nll-mpg", "l1"}, optional
        Data term.
    tv : float, optional
        Weight of the total variation.
    nonneg : float, optional
        Weight of the non-negativity term.
    region : tuple of int, optional
        ``(y0, y1, x0, x1)``: compute the data term on these view pixels only (a patch
        minus its margin, where the projection of the patch's volume is complete;
        default all).

    Returns
    -------
    total : torch.Tensor
        0-dim loss.
    terms : dict
        The value of each term (floats).

    The data term projects the clamped volume -- what :meth:`SeReNet.reconstruct` returns --
    so training scores the output it will give; the non-negativity term keeps negative
    voxels from staying dead.  (Projecting the raw output let the network fit the
    measurement with negative voxels that the clamp then removed: on the real GUV light
    field the residual of the returned volume rose from 0.30 to 0.58 between 300 and 1500
    steps while the training loss fell; with the clamp it falls to 0.18.)"""
    pred = projector.project(volume.clamp_min(0), views=views) * scale[:, None, None, None]   # photons, as output
    meas = measurement[:, views]
    if region is not None:
        y0, y1, x0, x1 = (int(v) for v in region)
        pred, meas = pred[..., y0:y1, x0:x1], meas[..., y0:y1, x0:x1]
    if loss == "nll-mpg":
        data = nll_mpg(pred, meas, offset=offset, read_noise=read_noise)
    else:
        data = ((pred - (meas - offset)).abs() / scale[:, None, None, None]).mean()
    total = data
    terms = {"data": float(data.detach())}
    if tv > 0:
        t = total_variation(volume)
        total = total + tv * t
        terms["tv"] = float(t.detach())
    if nonneg > 0:
        n = torch.relu(-volume).mean()
        total = total + nonneg * n
        terms["negative"] = float(n.detach())
    return total, terms


def _patch_window(n: int, win: int, patch: int, margin: int, g: torch.Generator):
    """Origin of a training window along an axis of ``n`` view pixels and the scored range
    inside it: a ``patch``-long range drawn anywhere on the axis (the field's border pixels
    are scored as often as the others, as in whole-field training), the window around it
    with ``margin`` where the field has it, shifted inwards at the field's edges.  A window
    that holds the whole axis scores all of it."""
    if win >= n:
        return 0, (0, n)
    r = int(torch.randint(n - patch + 1, (1,), generator=g))
    w0 = min(max(r - margin, 0), n - win)
    return w0, (r - w0, r - w0 + patch)


def train_serenet(measurements, psf: LightFieldPSF, offset: float = 0.0, read_noise: float = 1.0,
                  steps: int = 400, lr: float = 1e-3, channels: int = 64, binning: int = 1,
                  loss: str = "nll-mpg", views_per_step: int | None = None, batch_size: int = 1, tv: float = 0.01,
                  nonneg: float = 1.0, clip: float | None = 1.0, patch: int | None = None, margin: int | None = None,
                  seed: int = 0, device=None, callback=None, progress=None):
    """Train :class:`SeReNet` self-supervised on raw light-field measurements only.

    Parameters
    ----------
    measurements : numpy.ndarray or torch.Tensor
        ``(N, V, h, w)`` or ``(V, h, w)`` camera counts.
    psf : LightFieldPSF
        The PSF of the microscope (views and depths of the model).
    offset, read_noise : float, optional
        Camera offset and read-noise standard deviation (counts; from dark frames), used
        by the NLL-MPG loss.
    steps : int, optional
        Optimiser steps (Adam, cosine decay of `lr`).
    lr : float, optional
        Initial learning rate.
    channels : int, optional
        Width of the network (:class:`SeReNet`).
    binning : int, optional
        Volume pixels per view pixel.
    loss : {"nll-mpg", "l1"}, optional
        Data term (L1 for comparison).
    views_per_step : int, optional
        Size of the random view subset projected every step (default: all views up to
        21, as the paper draws 21 of its 169).
    batch_size : int, optional
        Measurements per step.
    tv, nonneg : float, optional
        Weights of the total-variation and non-negativity terms.
    clip : float or None, optional
        Clip the gradient norm at this value (None: no clipping; clipping at 1 gave
        24.2 dB where no clipping gave 23.8 dB on the quick benchmark).
    patch : int or None, optional
        Train on random lateral patches, as the paper does (99 view pixels there): each
        step scores ``patch`` x ``patch`` view pixels drawn anywhere in the field and
        feeds the network the window of ``patch + 2 * margin`` view pixels around them
        (shifted inwards at the field's edges, where the whole-field projection has no
        more light either), so that the projection of the window's volume is complete on
        the scored pixels -- and a step costs the same on any field.  An axis shorter than
        the window is taken whole.  ``None`` (default): the whole field every step.
    margin : int or None, optional
        View pixels around a patch (default: the PSF's half support, ``ceil((psf.size //
        2) / binning)``).
    seed : int, optional
        Seed of the initialisation and of the view draws.
    device : str or torch.device, optional
        Where to train.
    callback : callable, optional
        ``callback(step, net, record)`` after every step; returning True stops.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    model : SeReNet
        The trained network; ``model.meta`` keeps the optics, depths, psf shifts, offset
        and read noise, so ``SeReNet.load(path).reconstruct(raw)`` needs nothing else.
    history : list of dict
        One record per step (loss terms, time, ``input_shape`` of the network input).
    """
    if not isinstance(psf, LightFieldPSF):
        raise InputError(f"psf: got {type(psf).__name__}; expected a LightFieldPSF")
    loss = str(loss).lower()
    if loss not in LOSSES:
        raise InputError(f"loss: got {loss!r}; expected one of {', '.join(LOSSES)}")
    steps = check_count(steps, "steps")
    batch_size = check_count(batch_size, "batch_size")
    check_number(lr, "lr", positive=True)
    read_noise = check_number(read_noise, "read_noise", positive=True)
    offset = check_number(offset, "offset")
    V = psf.n_views
    k = min(V, 21) if views_per_step is None else check_count(views_per_step, "views_per_step")
    if k > V:
        raise InputError(f"views_per_step: got {k}; the PSF has only {V} views")
    from ..core.config import get_device

    dev = get_device(device)
    m = torch.as_tensor(np.asarray(measurements) if not torch.is_tensor(measurements) else measurements)
    m = m.to(dtype=torch.float32)
    if m.ndim == 3:
        m = m[None]
    if m.ndim != 4 or m.shape[1] != V:
        raise ShapeError(f"measurements: got shape {tuple(m.shape)}; expected (N, {V} views, h, w) to match the PSF")
    if not torch.isfinite(m).all():
        raise InputError("measurements: contain NaN/Inf; expected finite camera values")
    N, _, h, w = m.shape
    binning = check_count(binning, "binning")
    if patch is None:
        win = (h, w)
    else:
        patch = check_count(patch, "patch")
        mg = math.ceil((psf.size // 2) / binning) if margin is None else check_count(margin, "margin", minimum=0)
        win = (min(patch + 2 * mg, h), min(patch + 2 * mg, w))
    projector = LightFieldProjector(psf, (win[0] * binning, win[1] * binning), binning=binning)
    with seeded(seed):
        net = SeReNet(V, channels=channels, binning=binning)
    net = net.to(dev)
    net.meta = {"optics": psf.optics.to_dict(), "depths": psf.depths.tolist(), "views": psf.views.tolist(),
                "shifts": psf.shifts.tolist(), "offset": offset, "read_noise": read_noise, "loss": loss,
                "psf_size": psf.size}
    if patch is not None:
        net.meta["patch"] = {"patch": patch, "margin": mg, "window": list(win)}
    # precompute the refocused inputs (the depth decomposition is fixed)
    y = (m - offset).clamp_min(0)
    scales = y.mean(dim=(1, 2, 3)).clamp_min(1e-6)
    stacks = torch.stack([refocus(y[i] / scales[i], psf, binning) for i in range(N)])   # (N, V, Z, h, w), CPU
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    history = []
    t0 = time.perf_counter()
    for step in track(range(steps), f"SeReNet ({loss})", progress=progress):
        idx = torch.randint(N, (batch_size,), generator=g)
        views = torch.randperm(V, generator=g)[:k].sort().values
        x, meas, region = stacks[idx], m[idx], None
        if patch is not None:
            (y0, ry), (x0, rx) = (_patch_window(n, wn, patch, mg, g) for n, wn in ((h, win[0]), (w, win[1])))
            x = x[..., y0:y0 + win[0], x0:x0 + win[1]]
            meas = meas[..., y0:y0 + win[0], x0:x0 + win[1]]
            region = (*ry, *rx)
        vol = net(x.to(dev).contiguous())
        total, terms = serenet_loss(vol, meas.to(dev), projector, views.to(dev), scales[idx].to(dev), offset,
                                    read_noise, loss=loss, tv=tv, nonneg=nonneg, region=region)
        opt.zero_grad(set_to_none=True)
        total.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        sched.step()
        rec = {"step": step, "loss": float(total.detach()), **terms, "seconds": round(time.perf_counter() - t0, 2),
               "input_shape": list(x.shape)}
        history.append(rec)
        if callback is not None and callback(step, net, rec) is True:
            break
    net.meta["train_seconds"] = round(time.perf_counter() - t0, 2)
    net.meta["steps"] = len(history)
    net.eval()
    return net, history
