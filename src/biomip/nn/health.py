"""Did a training learn?  A cheap check of the loss trend and of the output, for every
pipeline that trains a network.

A run that "finishes" is not a run that learned: a network whose output is clamped at
zero from the first step (a dead ReLU start) trains for as long as it is asked, its loss
wandering with the training samples, and returns an empty volume.  :func:`training_health`
says so from what every trainer already has -- its per-step history and one output --
so that a pipeline can write ``"learned": false`` and ``"warnings"`` into its report and
warn (:class:`TrainingWarning`) instead of printing a PSNR as if nothing had happened.

>>> h = training_health([5.0, 4.0, 3.0, 2.0, 1.0], output=[0.0, 1.0, 2.0])
>>> h.learned, h.warnings
(True, [])
>>> training_health([1.0, 1.5, 2.0], output=[0.0, 0.0, 0.0]).learned
False
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.errors import InputError

__all__ = ["TrainingHealth", "TrainingWarning", "training_health"]


class TrainingWarning(UserWarning):
    """A training that did not learn: its loss did not fall, or its output is empty."""


@dataclass
class TrainingHealth:
    """The verdict of :func:`training_health`.

    Parameters
    ----------
    learned : bool
        False when any check failed (then ``warnings`` says which).
    warnings : list of str
        One sentence per failed check (empty when ``learned``).
    loss_start, loss_end : float or None
        Mean loss over the first and the last ``window`` of the steps (None without a
        history).
    steps : int
        Steps in the history.
    window_steps : int
        Steps averaged at each end.
    output_std, output_max : float or None
        Standard deviation and largest absolute value of the output (None without one).
    output_vs_reference : float or None
        Mean absolute output / mean absolute reference (None without a reference).
    contrast_vs_reference : float or None
        Contrast (std / mean absolute value) of the output / that of the reference.
    """

    learned: bool
    warnings: list = field(default_factory=list)
    loss_start: float | None = None
    loss_end: float | None = None
    steps: int = 0
    window_steps: int = 0
    output_std: float | None = None
    output_max: float | None = None
    output_vs_reference: float | None = None
    contrast_vs_reference: float | None = None

    def to_dict(self) -> dict:
        """The verdict as a dict (JSON-ready).

        Returns
        -------
        dict
            Field name -> value.
        """
        return asdict(self)

    def warn(self, stacklevel: int = 2) -> None:
        """Issue every message of ``warnings`` as a :class:`TrainingWarning`.

        Parameters
        ----------
        stacklevel : int, optional
            Passed to :func:`warnings.warn`.
        """
        for msg in self.warnings:
            warnings.warn(msg, TrainingWarning, stacklevel=stacklevel + 1)


def _losses(history, key: str) -> np.ndarray:
    vals = []
    for i, rec in enumerate(history):
        v = rec.get(key) if isinstance(rec, dict) else rec
        if isinstance(rec, dict) and v is None:
            raise InputError(f"history[{i}]: got a record without {key!r}; expected a number or a dict with it")
        try:
            vals.append(float(v))
        except (TypeError, ValueError):
            raise InputError(f"history[{i}]: got {type(v).__name__}; expected a loss value") from None
    return np.asarray(vals, dtype=float)


def _array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):                                    # torch tensors, on any device
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        raise InputError(f"{name}: got an empty array; expected the network's output")
    return a


def training_health(history=None, output=None, reference=None, *, key: str = "loss", window: float = 0.1,
                    min_ratio: float = 0.01, min_contrast: float = 0.15, name: str = "training") -> TrainingHealth:
    """Check that a training learned: its loss fell and its output is not empty.

    * **loss trend** -- the mean loss of the last ``window`` of the steps must be below
      the mean of the first ``window`` (at least one step each; averaging absorbs the
      step-to-step spread of losses drawn on different samples); a non-finite loss fails;
    * **output** -- it must be finite and not constant (all zero included);
    * **against a reference** (optional) -- a baseline output in comparable units (e.g.
      the iterative reconstruction): the mean absolute output must reach ``min_ratio``
      times the reference's (an output that is zero but for a few voxels fails), and its
      contrast (std / mean) ``min_contrast`` times the reference's (a flat haze fails; a
      blurred but structured volume passes: a refocus stack is at about 0.6 of
      Richardson-Lucy's, a SeReNet after three training steps at 0.07).

    The function only looks; :meth:`TrainingHealth.warn` issues the messages as
    :class:`TrainingWarning`.

    Parameters
    ----------
    history : sequence of float or of dict, or None, optional
        Loss per step, or one record per step holding ``key`` (what the trainers return).
    output : array-like or torch.Tensor or None, optional
        What the trained network returns on one input.
    reference : array-like or torch.Tensor or None, optional
        A baseline output for the same input, in comparable units.
    key : str, optional
        The loss entry of a history record.
    window : float, optional
        Fraction of the steps averaged at each end (0 < window <= 0.5).
    min_ratio : float, optional
        Smallest accepted mean absolute output / mean absolute reference.
    min_contrast : float, optional
        Smallest accepted (std / mean absolute value of the output) / (the same of the reference).
    name : str, optional
        What the messages call the training (e.g. ``"serenet (nll-mpg)"``).

    Returns
    -------
    TrainingHealth
        ``learned``, ``warnings`` and the figures behind them.

    Raises
    ------
    InputError
        For a history record without ``key``, an empty output, or ``window`` outside
        (0, 0.5].

    Examples
    --------
    >>> rising = training_health([25.5, 49.1, 25.5, 44.0, 43.9, 43.9], name="net")
    >>> rising.learned, rising.warnings[0][:27]
    (False, 'net: the training loss rose')
    >>> training_health(output=np.zeros((4, 4))).warnings
    ['training: the output is empty (all zero)']
    """
    if not 0 < float(window) <= 0.5:
        raise InputError(f"window: got {window!r}; expected a fraction in (0, 0.5]")
    msgs: list[str] = []
    h = TrainingHealth(learned=True)
    if history is not None:
        loss = _losses(history, key)
        h.steps = int(loss.size)
        if loss.size == 0:
            msgs.append(f"{name}: no training step was recorded")
        elif not np.isfinite(loss).all():
            bad = int(np.flatnonzero(~np.isfinite(loss))[0])
            msgs.append(f"{name}: the training loss became non-finite (NaN/Inf) at step {bad}")
        else:
            n = max(1, int(math.ceil(loss.size * float(window))))
            h.window_steps = n
            h.loss_start, h.loss_end = float(loss[:n].mean()), float(loss[-n:].mean())
            if loss.size < 2:
                msgs.append(f"{name}: one training step cannot show the loss falling")
            elif h.loss_end >= h.loss_start:
                verb = "rose" if h.loss_end > h.loss_start else "did not fall"
                msgs.append(f"{name}: the training loss {verb} (mean of the first {n} steps {h.loss_start:.4g}, "
                            f"of the last {n} {h.loss_end:.4g}): the network did not learn")
    if output is not None:
        a = _array(output, "output")
        if not np.isfinite(a).all():
            msgs.append(f"{name}: the output holds NaN/Inf")
        else:
            h.output_std, h.output_max = float(a.std()), float(np.abs(a).max())
            if h.output_max == 0:
                msgs.append(f"{name}: the output is empty (all zero)")
            elif h.output_std <= 1e-6 * h.output_max:
                msgs.append(f"{name}: the output is constant ({float(a.flat[0]):.4g} everywhere)")
            elif reference is not None:
                r = _array(reference, "reference")
                r = r[np.isfinite(r)]
                ref = float(np.abs(r).mean()) if r.size else 0.0
                if ref > 0:
                    h.output_vs_reference = float(np.abs(a).mean()) / ref
                    ref_cv = float(r.std()) / ref
                    if ref_cv > 0:
                        h.contrast_vs_reference = float(a.std()) / float(np.abs(a).mean()) / ref_cv
                    if h.output_vs_reference < float(min_ratio):
                        msgs.append(f"{name}: the output is nearly empty (its mean intensity is "
                                    f"{h.output_vs_reference:.2g} x the reference's)")
                    elif h.contrast_vs_reference is not None and h.contrast_vs_reference < float(min_contrast):
                        msgs.append(f"{name}: the output is nearly uniform (its contrast, std / mean, is "
                                    f"{h.contrast_vs_reference:.2g} x the reference's)")
    h.warnings = msgs
    h.learned = not msgs
    return h
