"""What every generative model of biomip shares (textbook 4.4).

* :class:`GenerativeModel` -- a :class:`~biomip.nn.SavedModule` (safetensors + JSON) that
  remembers the intensity range of its training data (``meta["norm"]``), maps inputs to
  the network range [-1, 1] and outputs back to the data's units, checks the channel
  count and the finiteness of every input, and keeps its training ``history``;
* :func:`as_stack` -- training data or one image (array, tensor, :class:`~biomip.Image`
  or a list of them) to one float32 tensor ``(N, C, *S)``;
* :func:`read_images` / :func:`restore_layout` (and :func:`restore_kind`) -- one image or a
  stack in, the result back in the same layout and kind (numpy, torch on its device, an
  :class:`~biomip.Image` with its geometry);
* :func:`eval_mode` -- eval mode without autograd inside a block, restored after;
* :func:`random_batch` -- a seeded batch of whole images or random crops;
* :func:`fit_loop` -- the training loop every ``fit`` runs: a progress bar showing the
  loss and steps per second (with its ETA), a history averaged over windows, a callback
  that can stop training, and a clear error when the loss becomes NaN / infinite.

Examples
--------
>>> import numpy as np
>>> as_stack(np.zeros((4, 16, 16)), sdim=2).shape
torch.Size([4, 1, 16, 16])
>>> history = fit_loop(lambda i: {"loss": 1.0 / (i + 1)}, 10, "toy", progress=False, log_every=5)
>>> [h["step"] for h in history], round(history[-1]["loss"], 3)
([5, 10], 0.129)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..core.arrays import check_number
from ..core.config import get_device
from ..core.errors import BiomipError, InputError, ShapeError, describe
from ..core.image import Image
from ..core.progress import progress_bar
from ..nn.base import SavedModule

__all__ = ["GenerativeModel", "TrainingDivergedError", "as_stack", "eval_mode", "fit_loop", "image_shape", "random_batch",
           "read_images", "restore_kind", "restore_layout"]


class TrainingDivergedError(BiomipError):
    """The training loss became NaN or infinite (lower ``lr`` or check the data)."""


def _one(item, name: str) -> torch.Tensor:
    if isinstance(item, Image):
        item = item.array
    if isinstance(item, torch.Tensor):
        t = item.detach().to("cpu", torch.float32)
    else:
        try:
            arr = np.asarray(item)
        except Exception as exc:  # noqa: BLE001 - anything numpy cannot read is bad input
            raise InputError(f"{name}: got {describe(item)}; expected an array, tensor or Image") from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InputError(f"{name}: got an array of {arr.dtype}; expected numbers")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return t


def as_stack(data, sdim: int, name: str = "images", channels: int | None = None) -> torch.Tensor:
    """Images as one float32 CPU tensor ``(N, C, *S)``.

    Parameters
    ----------
    data : array_like, torch.Tensor, Image or list of them
        An array ``(*S)`` (one single-channel image), ``(N, *S)`` (a stack of
        single-channel images) or ``(N, C, *S)``; an :class:`~biomip.Image` (its array,
        read the same way); or a list of images each ``(*S)`` or ``(C, *S)``, all of one
        shape.  A single multi-channel image is ``[image]`` or ``image[None]``.
    sdim : {2, 3}
        Number of spatial axes.
    name : str, optional
        Argument name used in error messages.
    channels : int or None, optional
        Expected channel count (checked when given).

    Returns
    -------
    torch.Tensor
        ``(N, C, *S)``, float32, on the CPU (a copy: the input is never modified).

    Raises
    ------
    InputError
        For non-numeric, empty or non-finite data, or the wrong channel count.
    ShapeError
        For the wrong number of axes or images of different shapes in a list.

    Examples
    --------
    >>> import numpy as np
    >>> as_stack([np.zeros((3, 8, 8)), np.ones((3, 8, 8))], sdim=2).shape
    torch.Size([2, 3, 8, 8])
    """
    if isinstance(data, (list, tuple)):
        if not data:
            raise InputError(f"{name}: got an empty list; expected at least one image")
        items = [_one(d, f"{name}[{i}]") for i, d in enumerate(data)]
        for i, t in enumerate(items):
            if t.ndim not in (sdim, sdim + 1):
                raise ShapeError(f"{name}[{i}]: got shape {tuple(t.shape)}; expected {sdim} spatial axes "
                                 f"(*S) or channels first (C, *S)")
        items = [t[None] if t.ndim == sdim else t for t in items]
        if len({tuple(t.shape) for t in items}) > 1:
            raise ShapeError(f"{name}: the images have different shapes {sorted({tuple(t.shape) for t in items})}; "
                             "expected one shape (crop or resample them first)")
        x = torch.stack(items)
    else:
        t = _one(data, name)
        if t.ndim == sdim:
            x = t[None, None]
        elif t.ndim == sdim + 1:
            x = t[:, None]
        elif t.ndim == sdim + 2:
            x = t
        else:
            raise ShapeError(f"{name}: got shape {tuple(t.shape)}; expected (*S), (N, *S) or (N, C, *S) with "
                             f"{sdim} spatial axes")
        x = x.clone()
    if x.numel() == 0:
        raise InputError(f"{name}: got an empty array of shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{name}: holds {bad} NaN / infinite value(s); expected finite numbers")
    if channels is not None and x.shape[1] != channels:
        hint = ""
        if x.shape[1] == 1 and x.shape[0] == channels:        # (C, *S) read as a stack of C images
            hint = (f"; a single {channels}-channel image is read as {channels} one-channel images: pass "
                    f"[image] or image[None]")
        raise InputError(f"{name}: got {x.shape[1]} channel(s) (shape {tuple(x.shape)}); the model expects "
                         f"{channels}{hint}")
    return x.contiguous()


# ============================================================================ layouts and kinds
def image_shape(x) -> tuple[int, ...] | None:
    """Shape of an array, tensor or Image (its array); ``None`` for a list of images.

    Examples
    --------
    >>> import numpy as np
    >>> image_shape(np.zeros((3, 4))), image_shape([np.zeros(2)])
    ((3, 4), None)
    """
    if isinstance(x, Image):
        x = x.array
    if isinstance(x, (list, tuple)):
        return None
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(x))


def image_layout(x, sdim: int, channels: int = 1) -> str:
    """How an input is laid out: ``"single"`` ``(*S)``; ``"chan"`` ``(C, *S)`` (one
    multi-channel image: read so when ``channels > 1`` and the first axis has that length);
    ``"stack"`` ``(N, *S)``; ``"full"`` ``(N, C, *S)``; ``"list"`` a list of images.

    Examples
    --------
    >>> import numpy as np
    >>> image_layout(np.zeros((3, 8, 8)), 2, channels=3), image_layout(np.zeros((3, 8, 8)), 2)
    ('chan', 'stack')
    """
    shape = image_shape(x)
    if shape is None:
        return "list"
    nd = len(shape)
    if nd == sdim:
        return "single"
    if nd == sdim + 1:
        return "chan" if channels > 1 and shape[0] == channels else "stack"
    return "full"


def read_images(x, sdim: int, name: str, channels: int, device) -> tuple[torch.Tensor, str]:
    """Input -> ``(N, C, *S)`` float32 tensor on ``device`` and its layout (:func:`image_layout`).

    Errors name ``name`` (see :func:`as_stack`).

    Examples
    --------
    >>> import numpy as np
    >>> t, layout = read_images(np.zeros((8, 8)), 2, "image", 1, "cpu")
    >>> tuple(t.shape), layout
    ((1, 1, 8, 8), 'single')
    """
    layout = image_layout(x, sdim, channels)
    if layout == "chan":
        x = [x.array if isinstance(x, Image) else x]
    return as_stack(x, sdim, name, channels).to(device), layout


def restore_layout(y: torch.Tensor, layout: str, like):
    """``(N, C, *S)`` result -> the layout (:func:`image_layout`) and kind of the input ``like``:
    torch on its device, an Image with its geometry, numpy otherwise (also for ``like=None``).

    Examples
    --------
    >>> import numpy as np
    >>> restore_layout(torch.zeros(1, 1, 4, 4), "single", np.ones((4, 4))).shape
    (4, 4)
    """
    c = y.shape[1]
    if layout == "single":
        y = y[0, 0] if c == 1 else y[0]
    elif layout == "chan":
        y = y[0]
    elif layout == "stack":
        y = y[:, 0] if c == 1 else y
    y = y.detach()
    if isinstance(like, Image):
        return like.with_array(y.to(like.device) if like.is_torch else y.cpu().numpy())
    if isinstance(like, torch.Tensor):
        return y.to(like.device)
    return y.cpu().numpy()


def restore_kind(y: torch.Tensor, x, sdim: int, channels: int = 1):
    """``y`` ``(N, C, *S)`` in the layout and kind of the input ``x`` (:func:`restore_layout`
    of :func:`image_layout`).

    Examples
    --------
    >>> import numpy as np
    >>> restore_kind(torch.zeros(1, 1, 4, 4), np.ones((4, 4)), 2).shape
    (4, 4)
    """
    return restore_layout(y, image_layout(x, sdim, channels), x)


class eval_mode:
    """Context manager: the model in eval mode without autograd inside the block; its mode
    and the autograd switch restored after.

    Examples
    --------
    >>> net = torch.nn.Dropout(0.5)
    >>> with eval_mode(net):
    ...     net.training
    False
    >>> net.training
    True
    """

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was = self.model.training
        self.grad = torch.is_grad_enabled()
        self.model.eval()
        torch.set_grad_enabled(False)
        return self.model

    def __exit__(self, *exc):
        torch.set_grad_enabled(self.grad)
        self.model.train(self.was)
        return False


def random_batch(data: torch.Tensor, batch_size: int, generator: torch.Generator,
                 patch: Sequence[int] | None = None, *others: torch.Tensor) -> torch.Tensor | tuple:
    """A seeded random batch of images (or random crops of them).

    Parameters
    ----------
    data : torch.Tensor
        ``(N, C, *S)``.
    batch_size : int
        Images in the batch (drawn with replacement).
    generator : torch.Generator
        The random stream (CPU).
    patch : sequence of int or None, optional
        Crop size (voxels, one per spatial axis); ``None``: whole images.
    *others : torch.Tensor
        Tensors ``(N, C', *S')`` paired with ``data`` (conditions, targets) cropped at the
        same place; ``S'`` may be an integer multiple of ``S`` (a high-resolution target
        of a low-resolution input): its crop is scaled accordingly.

    Returns
    -------
    torch.Tensor or tuple of torch.Tensor
        The batch of ``data``, and of every tensor in ``others`` when given.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> random_batch(torch.zeros(5, 1, 20, 20), 3, g, (8, 8)).shape
    torch.Size([3, 1, 8, 8])
    """
    n = data.shape[0]
    idx = torch.randint(0, n, (batch_size,), generator=generator)
    tensors = (data, *others)
    if patch is None:
        out = [t[idx] for t in tensors]
    else:
        size = data.shape[2:]
        patch = [min(int(p), int(s)) for p, s in zip(patch, size)]
        out = [[] for _ in tensors]
        for i in idx.tolist():
            start = [int(torch.randint(0, s - p + 1, (1,), generator=generator)) for s, p in zip(size, patch)]
            for k, t in enumerate(tensors):
                f = [ts // s for ts, s in zip(t.shape[2:], size)]
                sl = tuple(slice(a * fk, (a + p) * fk) for a, p, fk in zip(start, patch, f))
                out[k].append(t[(i, slice(None), *sl)])
        out = [torch.stack(o) for o in out]
    return out[0] if not others else tuple(out)


def fit_loop(step: Callable[[int], dict], steps: int, description: str, progress: bool | None = None,
             callback: Callable[[int, dict], bool | None] | None = None, log_every: int | None = None) -> list[dict]:
    """Run ``step(i)`` for every ``i`` in ``range(steps)`` with a progress bar and a loss history.

    Parameters
    ----------
    step : callable
        ``step(i) -> dict`` of float figures of one training step; must hold ``"loss"``.
    steps : int
        Number of steps (>= 1).
    description : str
        Text of the progress bar (the current loss and steps per second are appended).
    progress : bool or None, optional
        Show the bar (``None``: only on a terminal; plain lines when the CLI writes to a
        file).
    callback : callable or None, optional
        ``callback(step, record)`` after every logged window; return True to stop.
    log_every : int or None, optional
        Steps per history record (default: ``steps // 50``, at least 1).

    Returns
    -------
    list of dict
        One record per window: the figures averaged over it, ``step`` (steps done),
        ``seconds`` (since the start) and ``steps_per_second``.

    Raises
    ------
    TrainingDivergedError
        When a step returns a NaN or infinite loss.

    Examples
    --------
    >>> h = fit_loop(lambda i: {"loss": 2.0}, 4, "toy", progress=False, log_every=2)
    >>> [r["loss"] for r in h]
    [2.0, 2.0]
    """
    steps = check_number(steps, "steps", low=1, integer=True)
    log_every = max(1, steps // 50) if log_every is None else check_number(log_every, "log_every", low=1, integer=True)
    history: list[dict] = []
    acc: dict[str, float] = {}
    count = 0
    t0 = t_window = time.perf_counter()
    with progress_bar(description, steps, progress) as bar:
        for i in range(steps):
            rec = step(i)
            loss = float(rec.get("loss", math.nan))
            if not math.isfinite(loss):
                raise TrainingDivergedError(f"{description}: the loss became {loss} at step {i + 1}; "
                                            "lower lr, or check the training data for outliers")
            for k, v in rec.items():
                acc[k] = acc.get(k, 0.0) + float(v)
            count += 1
            bar.advance()
            if (i + 1) % log_every == 0 or i == steps - 1:
                now = time.perf_counter()
                avg = {k: v / count for k, v in acc.items()}
                avg.update(step=i + 1, seconds=now - t0, steps_per_second=count / max(now - t_window, 1e-9))
                history.append(avg)
                bar.update(description=f"{description} loss {avg['loss']:.4g} ({avg['steps_per_second']:.1f} step/s)")
                acc, count, t_window = {}, 0, now
                if callback is not None and callback(i + 1, avg) is True:
                    break
    return history


class GenerativeModel(SavedModule):
    """Base class of biomip's generative models (VAE, VQ-VAE, MAE, GANs, diffusion).

    A subclass builds its networks in ``__init__`` from JSON-able arguments (returned by
    ``config()``), sets ``FORMAT`` / ``VERSION``, ``self.sdim`` and ``self.channels``, and
    implements ``fit``.  This base keeps ``meta`` (saved with the weights) and
    ``history``, and converts between data units and the network range:

    * :meth:`set_norm` -- remember the data's intensity range (0.5 / 99.5 percentiles by
      default), saved in ``meta["norm"]``;
    * :meth:`to_net` / :meth:`from_net` -- data units -> [-1, 1] and back;
    * :meth:`check_input` -- any input -> ``(N, C, *S)`` tensor on the model's device,
      with the channel count and finiteness checked (errors name the argument).

    Parameters
    ----------
    sdim : {2, 3}, optional
        Number of spatial axes of the model.
    channels : int, optional
        Image channels the model takes and makes.

    Examples
    --------
    >>> import numpy as np
    >>> class Echo(GenerativeModel):
    ...     FORMAT = "example.Echo"
    ...     def __init__(self, channels=1):
    ...         super().__init__(sdim=2, channels=channels)
    ...         self.w = torch.nn.Parameter(torch.zeros(1))
    ...     def config(self):
    ...         return {"channels": self.channels}
    >>> m = Echo(); m.set_norm(np.array([0.0, 100.0]), low=0, high=100)
    (0.0, 100.0)
    >>> float(m.to_net(torch.tensor([50.0])))
    0.0
    """

    def __init__(self, sdim: int = 2, channels: int = 1):
        super().__init__()
        if sdim not in (2, 3):
            raise InputError(f"sdim: got {sdim!r}; expected 2 or 3")
        self.sdim = int(sdim)
        self.channels = check_number(channels, "channels", low=1, integer=True)
        self.meta: dict = {}
        self.history: list[dict] = []

    # ------------------------------------------------------------------ save / load
    def save(self, path, overwrite: bool = True):
        """Write the model as a folder (weights, ``config.json`` with ``meta`` and the training history).

        Parameters
        ----------
        path : str or pathlib.Path
            The folder to write.
        overwrite : bool, optional
            Replace an existing folder.

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        from ..core.checkpoint import save_module

        meta = dict(self.meta)
        if self.history:
            meta["history"] = list(self.history)
        return save_module(self, path, self.FORMAT, self.VERSION, self.config(), meta, overwrite=overwrite)

    @classmethod
    def load(cls, path, device=None):
        """Read a model written by :meth:`save`, its training ``history`` included.

        Parameters
        ----------
        path : str or pathlib.Path
            The model folder.
        device : str or torch.device or None, optional
            Where the model is put (``None``: ``biomip.config.device``).

        Returns
        -------
        GenerativeModel
            The model, in eval mode.
        """
        model = super().load(path, device=device)
        model.history = list(model.meta.pop("history", []))
        return model

    # ------------------------------------------------------------------ device
    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def place(self, device=None):
        """Move the model to ``device`` and return it.

        Parameters
        ----------
        device : str or torch.device or None, optional
            Target device (``None``: ``biomip.config.device``).

        Returns
        -------
        GenerativeModel
            ``self``, moved.
        """
        return self.to(get_device(device))

    # ------------------------------------------------------------------ units
    def set_norm(self, data, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
        """Remember the intensity range of ``data`` (percentiles ``low`` / ``high``).

        Parameters
        ----------
        data : array_like or torch.Tensor
            The training data (any shape).
        low, high : float, optional
            Percentiles mapped to -1 and 1.

        Returns
        -------
        tuple of float
            ``(lo, hi)``, stored in ``meta["norm"]``; data in ``[lo, hi]`` maps to [-1, 1].
        """
        arr = data.detach().float().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data, np.float32)
        lo, hi = (float(v) for v in np.percentile(arr, [low, high]))
        if not hi > lo:
            hi = lo + 1.0
        self.meta["norm"] = [lo, hi]
        return lo, hi

    @property
    def norm(self) -> tuple[float, float]:
        """``(lo, hi)``: the data range mapped to [-1, 1] (``(-1, 1)`` before training)."""
        lo, hi = self.meta.get("norm", (-1.0, 1.0))
        return float(lo), float(hi)

    def to_net(self, x: torch.Tensor) -> torch.Tensor:
        """Data units -> network range ([lo, hi] -> [-1, 1]).

        Parameters
        ----------
        x : torch.Tensor
            Values in data units.

        Returns
        -------
        torch.Tensor
            The same values in the network range.
        """
        lo, hi = self.norm
        return (x - lo) * (2.0 / (hi - lo)) - 1.0

    def from_net(self, y: torch.Tensor) -> torch.Tensor:
        """Network range -> data units (inverse of :meth:`to_net`).

        Parameters
        ----------
        y : torch.Tensor
            Values in the network range.

        Returns
        -------
        torch.Tensor
            The same values in data units.
        """
        lo, hi = self.norm
        return (y + 1.0) * ((hi - lo) / 2.0) + lo

    def check_input(self, x, name: str = "image", channels: int | None = None) -> torch.Tensor:
        """``x`` as ``(N, C, *S)`` float32 on the model's device (see :func:`as_stack`).

        Parameters
        ----------
        x : array_like, torch.Tensor, Image or list
            One image or a stack.
        name : str, optional
            Argument name for error messages.
        channels : int or None, optional
            Expected channels (default ``self.channels``).

        Returns
        -------
        torch.Tensor
            ``(N, C, *S)`` on the model's device.

        Raises
        ------
        InputError
            Wrong channel count (``channels``, default ``self.channels``) or non-finite values.
        """
        return as_stack(x, self.sdim, name, self.channels if channels is None else channels).to(self.device)

    def extra_repr(self) -> str:
        """One line of the module's repr: dimensions, channels, parameters."""
        return f"sdim={self.sdim}, channels={self.channels}, parameters={self.n_parameters:,}"
