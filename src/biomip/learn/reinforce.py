"""Reinforcement learning for CT display windows (textbook 2.1.2): an agent adjusts the
window centre (level) and width of a CT image step by step until a target tissue is shown
with the best contrast.

* :func:`window_contrast` -- the image-quality score: the display contrast of a target
  tissue against a reference tissue after windowing, penalised by the target's
  saturation (see its docstring for the formula);
* :func:`grid_search_window` -- the exhaustive reference: the score over a grid of
  (centre, width), and its best window;
* :class:`WindowLevelEnv` -- the environment: state = the current window and histograms of
  where the target and reference fall in it, discrete actions (:data:`ACTIONS`: move the
  centre by a fraction of the width, multiply / divide the width, stop), reward = the
  score's improvement;
* :class:`DQNAgent` -- a deep Q-network (MLP Q-function :class:`QNetwork`, replay buffer,
  target network, double-DQN targets, epsilon-greedy exploration), seeded, saved as
  safetensors + JSON;
* :func:`train_agent`, :func:`run_agent` and the one-step-lookahead baseline
  :func:`greedy_run`.

Scores are computed from the sorted values of the two masks with prefix sums, so one
window costs ``O(log n)`` whatever the image size and a whole grid is one vectorised call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

from ..core.arrays import as_numpy, check_number
from ..core.errors import InputError, ShapeError
from ..core.image import Image
from ..core.progress import progress_bar
from ..core.rng import seeded
from ..nn.base import SavedModule
from .base import check_seed

__all__ = ["ACTIONS", "AgentRun", "DQNAgent", "GridSearchResult", "QNetwork", "TrainHistory", "WindowLevelEnv",
           "greedy_run", "grid_search_window", "run_agent", "train_agent", "window_contrast"]

ACTIONS = (
    ("centre - 25%", -0.25, 1.0),
    ("centre - 5%", -0.05, 1.0),
    ("centre + 5%", 0.05, 1.0),
    ("centre + 25%", 0.25, 1.0),
    ("width x 2", 0.0, 2.0),
    ("width x 1.2", 0.0, 1.2),
    ("width / 1.2", 0.0, 1.0 / 1.2),
    ("width / 2", 0.0, 0.5),
    ("stop", 0.0, 1.0),
)
"""The actions of :class:`WindowLevelEnv`: ``(name, centre step as a fraction of the width,
width factor)``; the last one ends the episode."""

STOP = len(ACTIONS) - 1
MIN_WIDTH, MAX_WIDTH = 1.0, 10000.0
MAX_CENTRE = 5000.0
_BINS = 8
_RING = 5


# ----------------------------------------------------------------------------- the score
def _as_array(image, name: str = "image_hu") -> np.ndarray:
    a = image.numpy() if isinstance(image, Image) else as_numpy(image)
    a = np.asarray(a)
    if a.dtype.kind not in "iuf":
        raise InputError(f"{name}: got dtype {a.dtype}; expected a real-valued image (HU)")
    if a.ndim not in (2, 3):
        raise ShapeError(f"{name}: got shape {a.shape}; expected a 2-D (H, W) or 3-D (D, H, W) image")
    return a.astype(np.float64, copy=False)


def _as_mask(mask, shape, name: str) -> np.ndarray:
    m = mask.numpy() if isinstance(mask, Image) else as_numpy(mask)
    m = np.asarray(m)
    if m.shape != tuple(shape):
        raise ShapeError(f"{name}: got shape {m.shape}; expected the image's shape {tuple(shape)}")
    if m.dtype != bool:
        if m.dtype.kind not in "iu" or not np.isin(m, (0, 1)).all():
            raise InputError(f"{name}: got values other than 0 / 1 (dtype {m.dtype}); expected a boolean mask")
        m = m.astype(bool)
    return m


def _masks(image_hu, target_mask, reference_mask):
    """Image, target and reference values (reference: a ring around the target when None)."""
    a = _as_array(image_hu)
    t = _as_mask(target_mask, a.shape, "target_mask")
    if reference_mask is None:
        r = ndi.binary_dilation(t, iterations=_RING) & ~t
    else:
        r = _as_mask(reference_mask, a.shape, "reference_mask")
    if not t.any():
        raise InputError("target_mask: got an empty mask; expected at least one target pixel")
    if not r.any():
        raise InputError("reference_mask: got an empty mask (or no pixel around the target); expected at least one "
                         "reference pixel")
    if (t & r).any():
        raise InputError(f"reference_mask: overlaps target_mask in {int((t & r).sum())} pixel(s); expected disjoint "
                         "masks")
    tv, rv = a[t], a[r]
    if not (np.isfinite(tv).all() and np.isfinite(rv).all()):
        raise InputError("image_hu: got NaN or infinite values inside the masks; expected finite HU")
    return a, tv, rv


class _Sorted:
    """Sorted values with prefix sums: display mean and clipped fraction of any window in O(log n)."""

    def __init__(self, values: np.ndarray):
        self.x = np.sort(np.asarray(values, dtype=np.float64).ravel())
        self.cs = np.concatenate([[0.0], np.cumsum(self.x)])
        self.n = self.x.size
        self.mean = float(self.x.mean())
        self.std = float(self.x.std())

    def display(self, lo, hi):
        """Mean of ``clip((x - lo) / (hi - lo), 0, 1)`` and the fraction with ``x < lo`` or ``x > hi``."""
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        i = np.searchsorted(self.x, lo, side="left")           # x < lo
        j = np.searchsorted(self.x, hi, side="right")          # x <= hi
        inside = self.cs[j] - self.cs[i] - (j - i) * lo
        mean = (inside / (hi - lo) + (self.n - j)) / self.n
        return mean, (i + self.n - j) / self.n

    def fractions(self, lo: float, hi: float, bins: int = _BINS) -> np.ndarray:
        """Fractions below the window, in ``bins`` equal display bins, and above (``bins + 2``)."""
        edges = lo + (hi - lo) * np.arange(bins + 1) / bins
        c = np.searchsorted(self.x, edges, side="left").astype(np.float64)
        c[-1] = np.searchsorted(self.x, hi, side="right")
        return np.concatenate([[c[0]], np.diff(c), [self.n - c[-1]]]) / self.n


def _score(t: _Sorted, r: _Sorted, centre, width):
    lo = np.asarray(centre, dtype=np.float64) - np.asarray(width, dtype=np.float64) / 2.0
    hi = lo + np.asarray(width, dtype=np.float64)
    mt, st = t.display(lo, hi)
    mr, _ = r.display(lo, hi)
    return np.abs(mt - mr) * (1.0 - st)


def _window(window) -> tuple[float, float]:
    if hasattr(window, "center") and hasattr(window, "width"):
        c, w = window.center, window.width
    else:
        try:
            c, w = (float(v) for v in window)
        except (TypeError, ValueError) as exc:
            raise InputError(f"window: got {window!r}; expected (centre, width) or a Window") from exc
    c, w = float(c), float(w)
    if not (math.isfinite(c) and math.isfinite(w) and w > 0):
        raise InputError(f"window: got (centre {c}, width {w}); expected finite numbers with width > 0")
    return c, w


def window_contrast(image_hu, window, target_mask, reference_mask=None) -> float:
    """Display contrast of a target tissue against a reference under a window, penalised by
    the target's saturation.

    Every pixel is windowed to the display range ``d = clip((x - c) / w + 1/2, 0, 1)``
    (``c`` the centre, ``w`` the width: black at ``c - w/2``, white at ``c + w/2``).  With
    ``m_T``, ``m_R`` the mean display values of the target and the reference and ``s_T``
    the fraction of target pixels clipped (below ``c - w/2`` or above ``c + w/2``)::

        score = |m_T - m_R| * (1 - s_T)          in [0, 1]

    The first factor is the grey-level difference a reader sees (a Weber-type contrast on
    the display scale, independent of the noise); the second keeps the target's own
    detail visible: a window that turns the target into flat black or white (a
    threshold) scores 0, however well it separates the tissues.  The best window spans
    roughly from the reference's level to the top of the target's histogram, so the
    reference is dark and the whole target is shown in grey levels (or mirrored, for a
    target darker than its reference).  A full-range window scores low (both tissues
    squeezed into a few grey levels).

    Parameters
    ----------
    image_hu : array_like or Image
        The image (HU for CT; any real values), 2-D or 3-D.
    window : tuple of float or Window
        ``(centre, width)`` (width > 0) or a :class:`~biomip.core.preview.Window`.
    target_mask : array_like
        Boolean mask of the target tissue, the image's shape.
    reference_mask : array_like or None, optional
        Boolean mask of the reference tissue (disjoint from the target); ``None``: the
        pixels within 5 pixels around the target (its surroundings).

    Returns
    -------
    float
        The score, 0 (target invisible or flat) to 1 (target white, reference black, no
        target pixel clipped).

    Raises
    ------
    InputError
        For a bad window, empty or overlapping masks, or non-finite values in the masks.
    ShapeError
        When an image is not 2-D / 3-D or a mask's shape differs from the image's.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((8, 8)); img[:, 4:] = 100.0
    >>> target, ref = img > 50, img < 50
    >>> round(window_contrast(img, (50, 100), target, ref), 3)
    1.0
    >>> round(window_contrast(img, (50, 400), target, ref), 3)
    0.25
    """
    c, w = _window(window)
    _, tv, rv = _masks(image_hu, target_mask, reference_mask)
    return float(_score(_Sorted(tv), _Sorted(rv), c, w))


@dataclass
class GridSearchResult:
    """Result of :func:`grid_search_window`.

    Parameters
    ----------
    centre : float
        Centre of the best window.
    width : float
        Width of the best window.
    score : float
        Its :func:`window_contrast`.
    scores : numpy.ndarray
        ``(len(widths), len(centres))`` score map.
    centres : numpy.ndarray
        The centres searched.
    widths : numpy.ndarray
        The widths searched.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((8, 8)); img[:, 4:] = 100.0
    >>> r = grid_search_window(img, img > 50, img < 50, centres=[50], widths=[100, 200])
    >>> r.scores.tolist()
    [[1.0], [0.5]]
    """

    centre: float
    width: float
    score: float
    scores: np.ndarray
    centres: np.ndarray
    widths: np.ndarray

    @property
    def window(self) -> tuple[float, float]:
        """``(centre, width)`` of the best window."""
        return self.centre, self.width


def grid_search_window(image_hu, target_mask, reference_mask=None, centres=None, widths=None) -> GridSearchResult:
    """The window of highest :func:`window_contrast` over a grid of centres and widths.

    Parameters
    ----------
    image_hu : array_like or Image
        The image, 2-D or 3-D.
    target_mask : array_like
        Boolean mask of the target tissue.
    reference_mask : array_like or None, optional
        Boolean mask of the reference tissue (``None``: the ring around the target, as
        :func:`window_contrast`).
    centres : array_like or None, optional
        Centres to try (``None``: 201 values evenly spaced over the 0.5-99.5 percentile range
        of the target and reference values, widened by a quarter on each side).
    widths : array_like or None, optional
        Widths to try, > 0 (``None``: 201 values evenly spaced in log from 1 to 4000).

    Returns
    -------
    GridSearchResult
        The best window, its score and the whole map.

    Raises
    ------
    InputError
        For empty grids or non-positive widths, and see :func:`window_contrast`.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((8, 8)); img[:, 4:] = 100.0
    >>> r = grid_search_window(img, img > 50, img < 50, centres=[0, 50, 100], widths=[50, 100, 200])
    >>> r.window, r.score
    ((50.0, 100.0), 1.0)
    """
    _, tv, rv = _masks(image_hu, target_mask, reference_mask)
    if centres is None:
        lo, hi = np.percentile(np.concatenate([tv, rv]), [0.5, 99.5])
        pad = max(hi - lo, 10.0) / 4.0
        centres = np.linspace(lo - pad, hi + pad, 201)
    if widths is None:
        widths = np.geomspace(1.0, 4000.0, 201)
    cs = np.asarray(centres, dtype=np.float64).ravel()
    ws = np.asarray(widths, dtype=np.float64).ravel()
    if cs.size == 0 or ws.size == 0:
        raise InputError(f"centres / widths: got {cs.size} centre(s) and {ws.size} width(s); expected at least one "
                         "of each")
    if not (np.isfinite(cs).all() and np.isfinite(ws).all()) or (ws <= 0).any():
        raise InputError("widths: got a non-positive or non-finite value (or centres non-finite); expected finite "
                         "centres and widths > 0")
    t, r = _Sorted(tv), _Sorted(rv)
    scores = _score(t, r, cs[None, :], ws[:, None])
    k = int(np.argmax(scores))
    iw, ic = divmod(k, cs.size)
    return GridSearchResult(float(cs[ic]), float(ws[iw]), float(scores[iw, ic]), scores, cs, ws)


# ----------------------------------------------------------------------------- environment
class WindowLevelEnv:
    """A CT window / level environment: one image, one target tissue, one reference.

    State (``n_features`` = 38 numbers, all of them relative to the current window except
    the first two): the centre / 1000 HU, ``log10(width / 400 HU)``, the current score,
    the fraction of steps left; for the target and for the reference: the fraction of
    their pixels below the window, in 8 equal grey-level bins of the window and above it
    (10 numbers), their mean position in the window (``(mean - c) / w``, log-compressed
    beyond the window) and ``log10(std / w)``; and the last action (one-hot, zeros at the
    start) with its score change times 10 (clipped to +-1), so the agent can undo a step
    that made things worse.  Actions (:data:`ACTIONS`): move the centre by +-5 % or +-25 %
    of the width, multiply or divide the width by 1.2 or 2, or stop.  Reward: the score's
    change by the action minus ``step_cost`` (0 for stop), so an episode's return is the
    final score minus the starting one, minus ``step_cost`` per window change (a small cost
    makes stopping at the optimum worth more than wandering round it).  The episode ends on
    stop or after ``max_steps`` steps.  Widths are kept in [1, 10000] and centres in
    [-5000, 5000].

    Parameters
    ----------
    image_hu : array_like or Image
        The image (HU), 2-D or 3-D.
    target_mask : array_like
        Boolean mask of the target tissue.
    reference_mask : array_like or None, optional
        Boolean mask of the reference tissue (``None``: the ring around the target).
    reward : "contrast" or callable, optional
        The score whose change is the reward: ``"contrast"`` for :func:`window_contrast`,
        or a function ``score(centre, width) -> float`` (e.g. a segmentation's Dice).
    start : "full", "random" or tuple of float, optional
        The first window: ``"full"`` spans the image's minimum to maximum; ``"random"``
        draws the centre uniformly over the 1-99 percentiles of the image and the width
        log-uniformly from 10 HU to the full range (seeded by ``seed`` / :meth:`reset`);
        or ``(centre, width)``.
    max_steps : int, optional
        Steps per episode (default 20).
    seed : int, optional
        Seed of the random starts.
    step_cost : float, optional
        Subtracted from the reward of every action but stop (default 0).

    Raises
    ------
    InputError
        For a bad reward, start, step count or cost, and see :func:`window_contrast`.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((8, 8)); img[:, 4:] = 100.0
    >>> env = WindowLevelEnv(img, img > 50, img < 50, start=(50, 400))
    >>> state = env.reset()
    >>> state.shape, env.score
    ((38,), 0.25)
    >>> state, reward, done, info = env.step(7)          # width / 2
    >>> info["window"], round(reward, 3), done
    ((50.0, 200.0), 0.25, False)
    """

    def __init__(self, image_hu, target_mask, reference_mask=None, reward="contrast", start="full",
                 max_steps: int = 20, seed: int = 0, step_cost: float = 0.0):
        a, tv, rv = _masks(image_hu, target_mask, reference_mask)
        self.step_cost = check_number(step_cost, "step_cost", nonneg=True)
        self._t, self._r = _Sorted(tv), _Sorted(rv)
        if isinstance(reward, str):
            if reward != "contrast":
                raise InputError(f"reward: got {reward!r}; expected 'contrast' or a callable score(centre, width)")
            self._score_fn = None
        elif callable(reward):
            self._score_fn = reward
        else:
            raise InputError(f"reward: got {type(reward).__name__}; expected 'contrast' or a callable")
        finite = a[np.isfinite(a)]
        self.value_range = (float(finite.min()), float(finite.max()))
        self._p1, self._p99 = (float(v) for v in np.percentile(finite, [1, 99]))
        if isinstance(start, str):
            if start not in ("full", "random"):
                raise InputError(f"start: got {start!r}; expected 'full', 'random' or (centre, width)")
            self._start = start
        else:
            self._start = self._clamp(*_window(start))
        self.max_steps = int(check_number(max_steps, "max_steps", integer=True, low=1))
        self._rng = np.random.default_rng(check_seed(seed))
        self.n_features = 4 + 2 * (_BINS + 4) + len(ACTIONS) + 1
        self.n_actions = len(ACTIONS)
        self.reset()

    # -- helpers
    @staticmethod
    def _clamp(c: float, w: float) -> tuple[float, float]:
        return float(np.clip(c, -MAX_CENTRE, MAX_CENTRE)), float(np.clip(w, MIN_WIDTH, MAX_WIDTH))

    def score_window(self, centre: float, width: float) -> float:
        """The score of a window (:func:`window_contrast`, or the ``reward`` callable).

        Parameters
        ----------
        centre : float
            Window centre.
        width : float
            Window width (> 0).

        Returns
        -------
        float
            The score.
        """
        if self._score_fn is not None:
            return float(self._score_fn(float(centre), float(width)))
        return float(_score(self._t, self._r, centre, width))

    def next_window(self, action: int) -> tuple[float, float]:
        """The window an action would lead to (nothing changes).

        Parameters
        ----------
        action : int
            Index into :data:`ACTIONS`.

        Returns
        -------
        tuple of float
            ``(centre, width)``.

        Raises
        ------
        InputError
            For an action outside ``0 .. n_actions - 1``.
        """
        if isinstance(action, bool) or not isinstance(action, (int, np.integer)) or not 0 <= action < len(ACTIONS):
            raise InputError(f"action: got {action!r}; expected an integer 0..{len(ACTIONS) - 1}")
        _, dc, fw = ACTIONS[int(action)]
        c, w = self.window
        return self._clamp(c + dc * w, w * fw)

    def _tissue_features(self, v: _Sorted, c: float, w: float) -> list:
        lo, hi = c - w / 2.0, c + w / 2.0
        pos = (v.mean - c) / w
        pos = float(np.sign(pos) * (min(abs(pos), 0.5) + math.log1p(max(abs(pos) - 0.5, 0.0))))
        spread = float(np.clip(math.log10(max(v.std, 1e-3) / w), -4.0, 2.0))
        return list(v.fractions(lo, hi)) + [pos, spread]

    def state(self) -> np.ndarray:
        """The current state vector (``n_features`` float32; see the class docstring).

        Returns
        -------
        numpy.ndarray
            The state.
        """
        c, w = self.window
        f = [np.clip(c / 1000.0, -5.0, 5.0), math.log10(w / 400.0), self.score,
             (self.max_steps - self.steps) / self.max_steps]
        f += self._tissue_features(self._t, c, w) + self._tissue_features(self._r, c, w)
        last = [0.0] * len(ACTIONS)
        if self._last is not None:
            last[self._last] = 1.0
        f += last + [float(np.clip(10.0 * self._delta, -1.0, 1.0))]
        return np.asarray(f, dtype=np.float32)

    # -- the gym-like interface
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode.

        Parameters
        ----------
        seed : int or None, optional
            Re-seed the random start.

        Returns
        -------
        numpy.ndarray
            The first state.
        """
        if seed is not None:
            self._rng = np.random.default_rng(check_seed(seed))
        if self._start == "full":
            lo, hi = self.value_range
            c, w = (lo + hi) / 2.0, max(hi - lo, MIN_WIDTH)
        elif self._start == "random":
            full = max(self.value_range[1] - self.value_range[0], 20.0)
            c = self._rng.uniform(self._p1, self._p99)
            w = math.exp(self._rng.uniform(math.log(10.0), math.log(full)))
        else:
            c, w = self._start
        self.window = self._clamp(c, w)
        self.steps = 0
        self.done = False
        self._last, self._delta = None, 0.0
        self.score = self.score_window(*self.window)
        self.trajectory = [self.window]
        self.scores = [self.score]
        return self.state()

    def step(self, action: int):
        """Apply an action.

        Parameters
        ----------
        action : int
            Index into :data:`ACTIONS`.

        Returns
        -------
        state : numpy.ndarray
            The next state.
        reward : float
            The score's change (minus ``step_cost``).
        done : bool
            Whether the episode has ended (stop or ``max_steps``).
        info : dict
            ``window`` (centre, width) and ``score``.

        Raises
        ------
        InputError
            For a bad action or a step after the end of the episode.
        """
        if self.done:
            raise InputError("action: the episode has ended; call reset() first")
        new = self.next_window(action)
        self.steps += 1
        if int(action) == STOP:
            reward = 0.0
            self.done = True
            self._delta = 0.0
        else:
            old = self.score
            self.window = new
            self.score = self.score_window(*new)
            self._delta = self.score - old
            reward = self._delta - self.step_cost
            self.done = self.steps >= self.max_steps
        self._last = int(action)
        self.trajectory.append(self.window)
        self.scores.append(self.score)
        return self.state(), float(reward), self.done, {"window": self.window, "score": self.score}


# ----------------------------------------------------------------------------- the agent
class QNetwork(SavedModule):
    """MLP Q-function: state -> one value per action.

    Parameters
    ----------
    n_features : int
        State size.
    n_actions : int
        Number of actions.
    hidden : sequence of int, optional
        Hidden layer widths (ReLU between layers).

    Examples
    --------
    >>> import torch
    >>> QNetwork(4, 3, hidden=(8,))(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    FORMAT, VERSION = "biomip.learn.QNetwork", 1

    def __init__(self, n_features: int, n_actions: int, hidden=(128, 128)):
        super().__init__()
        self.n_features = int(check_number(n_features, "n_features", integer=True, low=1))
        self.n_actions = int(check_number(n_actions, "n_actions", integer=True, low=1))
        self.hidden = tuple(int(check_number(h, "hidden", integer=True, low=1)) for h in hidden)
        self.meta = {}
        layers, k = [], self.n_features
        for h in self.hidden:
            layers += [nn.Linear(k, h), nn.ReLU()]
            k = h
        layers.append(nn.Linear(k, self.n_actions))
        self.net = nn.Sequential(*layers)

    def config(self) -> dict:
        """Constructor arguments.

        Returns
        -------
        dict
            ``n_features``, ``n_actions``, ``hidden``.
        """
        return {"n_features": self.n_features, "n_actions": self.n_actions, "hidden": list(self.hidden)}

    def forward(self, x):
        """Q-values ``(N, n_actions)`` of states ``(N, n_features)``.

        Parameters
        ----------
        x : torch.Tensor
            The states.

        Returns
        -------
        torch.Tensor
            The Q-values.
        """
        return self.net(x)


class _Replay:
    """A ring buffer of transitions in numpy arrays."""

    def __init__(self, size: int, n_features: int):
        self.s = np.zeros((size, n_features), np.float32)
        self.s2 = np.zeros((size, n_features), np.float32)
        self.a = np.zeros(size, np.int64)
        self.r = np.zeros(size, np.float32)
        self.d = np.zeros(size, np.float32)
        self.g = np.zeros(size, np.float32)
        self.size, self.n, self.i = size, 0, 0

    def push(self, s, a, r, s2, d, g):
        k = self.i
        self.s[k], self.a[k], self.r[k], self.s2[k], self.d[k], self.g[k] = s, a, r, s2, d, g
        self.i = (k + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def sample(self, rng, batch: int):
        idx = rng.integers(0, self.n, batch)
        return self.s[idx], self.a[idx], self.r[idx], self.s2[idx], self.d[idx], self.g[idx]


_AGENT_KEYS = ("hidden", "lr", "gamma", "batch_size", "buffer_size", "target_every", "epsilon", "double",
               "reward_scale", "seed")


class DQNAgent:
    """Deep Q-network agent (Mnih et al. 2015) with double-DQN targets (van Hasselt et al.
    2016): an MLP Q-function, a replay buffer, a target network copied every
    ``target_every`` updates, Huber loss, Adam, and epsilon-greedy exploration decaying
    linearly.  Everything random (weights, exploration, replay sampling) follows ``seed``.

    Parameters
    ----------
    n_features : int
        State size.
    n_actions : int
        Number of actions.
    hidden : sequence of int, optional
        Hidden widths of the Q-network.
    lr : float, optional
        Adam learning rate.
    gamma : float, optional
        Discount factor in [0, 1].
    batch_size : int, optional
        Transitions per update.
    buffer_size : int, optional
        Replay buffer capacity.
    target_every : int, optional
        Updates between copies of the Q-network into the target network.
    epsilon : tuple of float, optional
        ``(start, end, steps)``: exploration rate decaying linearly from ``start`` to ``end``
        over ``steps`` actions.
    double : bool, optional
        Double-DQN targets (the online network picks the next action, the target network
        values it).
    reward_scale : float, optional
        Rewards are multiplied by this before learning (Q-values in those units).
    seed : int, optional
        Seed of the weights, exploration and replay sampling.

    Raises
    ------
    InputError
        For bad hyper-parameters.

    Examples
    --------
    >>> agent = DQNAgent(4, 2, hidden=(8,), seed=0)
    >>> agent.act([0.0, 0.0, 0.0, 0.0], greedy=True) in (0, 1)
    True
    """

    def __init__(self, n_features: int, n_actions: int, hidden=(128, 128), lr: float = 1e-3, gamma: float = 0.9,
                 batch_size: int = 64, buffer_size: int = 20000, target_every: int = 200,
                 epsilon=(1.0, 0.05, 10000), double: bool = True, reward_scale: float = 10.0, seed: int = 0):
        self.seed = check_seed(seed)
        self.lr = check_number(lr, "lr", positive=True)
        self.gamma = check_number(gamma, "gamma", low=0.0, high=1.0)
        self.batch_size = int(check_number(batch_size, "batch_size", integer=True, low=1))
        self.buffer_size = int(check_number(buffer_size, "buffer_size", integer=True, low=1))
        self.target_every = int(check_number(target_every, "target_every", integer=True, low=1))
        try:
            e0, e1, en = epsilon
        except (TypeError, ValueError) as exc:
            raise InputError(f"epsilon: got {epsilon!r}; expected (start, end, steps)") from exc
        self.epsilon = (check_number(e0, "epsilon start", low=0.0, high=1.0),
                        check_number(e1, "epsilon end", low=0.0, high=1.0),
                        int(check_number(en, "epsilon steps", integer=True, low=1)))
        self.double = bool(double)
        self.reward_scale = check_number(reward_scale, "reward_scale", positive=True)
        with seeded(self.seed):                  # the global generator is restored on exit
            self.q = QNetwork(n_features, n_actions, hidden)
        self.hidden = self.q.hidden
        self.n_features, self.n_actions = self.q.n_features, self.q.n_actions
        self.target = QNetwork(n_features, n_actions, hidden)
        self.target.load_state_dict(self.q.state_dict())
        self.target.eval()
        self.opt = None                     # made on the first update (torch.optim imports torch._dynamo: seconds)
        self.buffer = _Replay(self.buffer_size, self.n_features)
        self.rng = np.random.default_rng(self.seed)
        self.n_acted = 0
        self.n_updates = 0

    @property
    def current_epsilon(self) -> float:
        """The exploration rate of the next non-greedy action."""
        e0, e1, en = self.epsilon
        return float(e1 + (e0 - e1) * max(0.0, 1.0 - self.n_acted / en))

    def _state(self, state) -> np.ndarray:
        s = np.asarray(state, dtype=np.float32).ravel()
        if s.size != self.n_features:
            raise ShapeError(f"state: got {s.size} values; expected {self.n_features}")
        return s

    def q_values(self, state) -> np.ndarray:
        """Q-values of one state.

        Parameters
        ----------
        state : array_like
            ``n_features`` numbers.

        Returns
        -------
        numpy.ndarray
            ``(n_actions,)``.
        """
        with torch.no_grad():
            return self.q(torch.from_numpy(self._state(state))[None])[0].numpy()

    def act(self, state, greedy: bool = False) -> int:
        """Choose an action: epsilon-greedy while learning, the best Q-value when ``greedy``.

        Parameters
        ----------
        state : array_like
            ``n_features`` numbers.
        greedy : bool, optional
            Never explore (and do not advance the exploration schedule).

        Returns
        -------
        int
            The action.
        """
        if not greedy:
            eps = self.current_epsilon
            self.n_acted += 1
            if self.rng.random() < eps:
                return int(self.rng.integers(self.n_actions))
        return int(np.argmax(self.q_values(state)))

    def remember(self, state, action: int, reward: float, next_state, done: bool, discount: float | None = None) -> None:
        """Store a transition in the replay buffer.

        Parameters
        ----------
        state : array_like
            State before the action.
        action : int
            The action.
        reward : float
            Its reward.
        next_state : array_like
            State after it.
        done : bool
            Whether it ended the episode.
        discount : float or None, optional
            Discount of the bootstrap value of ``next_state`` (``None``: ``gamma``; an
            n-step transition, whose ``reward`` sums n discounted rewards, has ``gamma**n``).
        """
        g = self.gamma if discount is None else float(discount)
        self.buffer.push(self._state(state), int(action), float(reward) * self.reward_scale,
                         self._state(next_state), float(bool(done)), g)

    def learn(self) -> float | None:
        """One gradient step on a replayed batch (nothing until the buffer holds a batch).

        Returns
        -------
        float or None
            The batch's Huber loss, or None.
        """
        if self.buffer.n < self.batch_size:
            return None
        s, a, r, s2, d, g = (torch.from_numpy(v) for v in self.buffer.sample(self.rng, self.batch_size))
        with torch.no_grad():
            if self.double:
                a2 = self.q(s2).argmax(1, keepdim=True)
                q2 = self.target(s2).gather(1, a2)[:, 0]
            else:
                q2 = self.target(s2).max(1).values
            y = r + g * (1.0 - d) * q2
        q = self.q(s).gather(1, a[:, None])[:, 0]
        loss = nn.functional.smooth_l1_loss(q, y)
        if self.opt is None:
            self.opt = torch.optim.Adam(self.q.parameters(), lr=self.lr)
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), 10.0)
        self.opt.step()
        self.n_updates += 1
        if self.n_updates % self.target_every == 0:
            self.target.load_state_dict(self.q.state_dict())
        return float(loss.detach())

    def config(self) -> dict:
        """The constructor arguments (JSON-ready).

        Returns
        -------
        dict
            ``n_features``, ``n_actions`` and the hyper-parameters.
        """
        d = {k: getattr(self, k) for k in _AGENT_KEYS}
        d["hidden"], d["epsilon"] = list(self.hidden), list(self.epsilon)
        return {"n_features": self.n_features, "n_actions": self.n_actions, **d}

    def save(self, path, meta: dict | None = None) -> Path:
        """Write the Q-network as ``model.safetensors`` + ``config.json`` in the folder ``path``
        (the agent's hyper-parameters and ``meta`` in the JSON; nothing is pickled).

        Parameters
        ----------
        path : str or pathlib.Path
            The folder (its parent must exist; replaced if present).
        meta : dict or None, optional
            Extra JSON-ready metadata (e.g. the training plan).

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        self.q.meta = {"agent": self.config(), "n_updates": self.n_updates, "extra": dict(meta or {})}
        return self.q.save(path)

    @classmethod
    def load(cls, path) -> DQNAgent:
        """Read an agent written by :meth:`save` (greedy use or further training; the replay
        buffer and optimiser state are not saved).

        Parameters
        ----------
        path : str or pathlib.Path
            The folder.

        Returns
        -------
        DQNAgent
            The agent, its Q- and target networks holding the saved weights.

        Raises
        ------
        FormatError
            When ``path`` is not a saved Q-network.
        """
        q = QNetwork.load(path, device="cpu")
        cfg = dict(q.meta.get("agent", {}))
        cfg.update(n_features=q.n_features, n_actions=q.n_actions, hidden=tuple(q.hidden))
        agent = cls(**cfg)
        agent.q.load_state_dict(q.state_dict())
        agent.target.load_state_dict(q.state_dict())
        agent.n_updates = int(q.meta.get("n_updates", 0))
        agent.meta = dict(q.meta.get("extra", {}))
        return agent


# ----------------------------------------------------------------------------- training / use
@dataclass
class TrainHistory:
    """What :func:`train_agent` recorded, one entry per episode.

    Parameters
    ----------
    returns : numpy.ndarray
        Sum of rewards (= final minus starting score for the contrast reward).
    start_scores : numpy.ndarray
        Score of the starting window.
    final_scores : numpy.ndarray
        Score of the last window.
    steps : numpy.ndarray
        Steps taken.
    epsilon : numpy.ndarray
        Exploration rate at the episode's end.
    losses : list of float, optional
        Mean Huber loss of the episode's updates (NaN before learning starts).
    validation : list of tuple, optional
        ``(episode, value)`` of every validation.
    best_episode : int or None, optional
        Episode whose weights were kept (None without validation).

    Examples
    --------
    >>> import numpy as np
    >>> h = TrainHistory(np.array([0.1, 0.4]), np.zeros(2), np.array([0.1, 0.4]), np.array([20, 12]),
    ...                  np.array([0.9, 0.8]))
    >>> float(h.final_scores.mean())
    0.25
    """

    returns: np.ndarray
    start_scores: np.ndarray
    final_scores: np.ndarray
    steps: np.ndarray
    epsilon: np.ndarray
    losses: list = field(default_factory=list)
    validation: list = field(default_factory=list)
    best_episode: int | None = None


def train_agent(envs_factory, episodes: int, seed: int = 0, progress: bool | None = None, agent=None,
                warmup: int = 256, learn_every: int = 1, n_step: int = 1, validate=None, validate_every: int = 100,
                **agent_kwargs):
    """Train a :class:`DQNAgent` on a stream of environments.

    Parameters
    ----------
    envs_factory : callable
        ``envs_factory(rng) -> WindowLevelEnv`` (or any environment with ``reset()``,
        ``step(a) -> (state, reward, done, info)``, ``score``, ``n_features``,
        ``n_actions``), called once per episode with a ``numpy.random.Generator`` seeded by
        ``seed``; randomising the image, tissues and start makes a general policy.
    episodes : int
        Number of episodes.
    seed : int, optional
        Seed of the environment stream and (unless ``agent`` is given) of the agent.
    progress : bool or None, optional
        Show a progress bar.
    agent : DQNAgent or None, optional
        Continue training this agent (``None``: a new one from ``agent_kwargs``).
    warmup : int, optional
        Transitions collected before the first update.
    learn_every : int, optional
        Environment steps per gradient update.
    n_step : int, optional
        Length of the multi-step returns stored in the replay buffer (1: one-step
        Q-learning; n: the discounted sum of n rewards, bootstrapped from the state n steps
        later).
    validate : callable or None, optional
        ``validate(agent) -> float`` (higher is better, e.g. the mean score of greedy runs on
        held-out simulated images): called every ``validate_every`` episodes and at the end;
        the weights of the best call are restored at the end (early stopping on a
        validation set).  ``None``: the last weights are kept.
    validate_every : int, optional
        Episodes between validations.
    **agent_kwargs
        Passed to :class:`DQNAgent`.

    Returns
    -------
    agent : DQNAgent
        The trained agent.
    history : TrainHistory
        Per-episode returns, scores, steps and exploration rate (and the validations).

    Raises
    ------
    InputError
        For a bad episode count or a factory that returns no environment.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((8, 8)); img[:, 4:] = 100.0
    >>> factory = lambda rng: WindowLevelEnv(img, img > 50, img < 50, start="random",
    ...                                      seed=int(rng.integers(1 << 31)), max_steps=5)
    >>> agent, hist = train_agent(factory, 3, seed=0, progress=False, hidden=(8,))
    >>> hist.returns.shape
    (3,)
    """
    episodes = int(check_number(episodes, "episodes", integer=True, low=1))
    seed = check_seed(seed)
    warmup = int(check_number(warmup, "warmup", integer=True, low=0))
    learn_every = int(check_number(learn_every, "learn_every", integer=True, low=1))
    n_step = int(check_number(n_step, "n_step", integer=True, low=1))
    validate_every = int(check_number(validate_every, "validate_every", integer=True, low=1))
    if validate is not None and not callable(validate):
        raise InputError(f"validate: got {type(validate).__name__}; expected a callable validate(agent) -> float")
    best, vals = None, []
    rng = np.random.default_rng(seed)
    rets, s0s, s1s, steps, eps, losses = [], [], [], [], [], []
    n_total = 0
    with progress_bar("training the window agent", total=episodes, progress=progress) as bar:
        for _ in range(episodes):
            env = envs_factory(rng)
            if not all(hasattr(env, k) for k in ("reset", "step", "n_features", "n_actions")):
                raise InputError(f"envs_factory: returned {type(env).__name__}; expected an environment with reset(), "
                                 "step(), n_features and n_actions")
            if agent is None:
                agent_kwargs.setdefault("seed", seed)
                agent = DQNAgent(env.n_features, env.n_actions, **agent_kwargs)
            s = env.reset()
            start, total, n, ep_loss = float(getattr(env, "score", np.nan)), 0.0, 0, []
            done, pending = False, []
            while not done:
                a = agent.act(s)
                s2, r, done, _ = env.step(a)
                pending.append((s, a, r))
                while pending and (len(pending) == n_step or done):
                    ret = sum(agent.gamma ** i * p[2] for i, p in enumerate(pending))
                    agent.remember(pending[0][0], pending[0][1], ret, s2, done, agent.gamma ** len(pending))
                    pending.pop(0)
                n_total += 1
                if agent.buffer.n >= max(warmup, agent.batch_size) and n_total % learn_every == 0:
                    ep_loss.append(agent.learn())
                s, total, n = s2, total + r, n + 1
            rets.append(total)
            s0s.append(start)
            s1s.append(float(getattr(env, "score", np.nan)))
            steps.append(n)
            eps.append(agent.current_epsilon)
            losses.append(float(np.mean(ep_loss)) if ep_loss else float("nan"))
            ep = len(rets)
            if validate is not None and (ep % validate_every == 0 or ep == episodes):
                v = float(validate(agent))
                vals.append((ep, v))
                if best is None or v > best[0]:
                    best = (v, ep, {k: t.detach().clone() for k, t in agent.q.state_dict().items()})
            bar.advance()
    if best is not None:
        agent.q.load_state_dict(best[2])
        agent.target.load_state_dict(best[2])
    hist = TrainHistory(np.asarray(rets), np.asarray(s0s), np.asarray(s1s), np.asarray(steps), np.asarray(eps),
                        losses, vals, None if best is None else best[1])
    return agent, hist


@dataclass
class AgentRun:
    """One greedy episode: what :func:`run_agent` and :func:`greedy_run` return (it unpacks
    as ``windows, scores``).

    Parameters
    ----------
    windows : numpy.ndarray
        ``(steps + 1, 2)`` (centre, width) from the start to the end.
    scores : numpy.ndarray
        ``(steps + 1,)`` score of each window.
    actions : list of int
        The actions taken.
    evaluations : int, optional
        Score evaluations spent choosing the actions (0 for the agent, which only sees
        the state).

    Examples
    --------
    >>> import numpy as np
    >>> run = AgentRun(np.array([[0.0, 400.0], [0.0, 200.0], [0.0, 200.0]]), np.array([0.2, 0.4, 0.4]), [7, 8])
    >>> windows, scores = run
    >>> run.window, run.score, run.steps
    ((0.0, 200.0), 0.4, 1)
    """

    windows: np.ndarray
    scores: np.ndarray
    actions: list
    evaluations: int = 0

    def __iter__(self):
        return iter((self.windows, self.scores))

    @property
    def window(self) -> tuple[float, float]:
        """The final (centre, width)."""
        return float(self.windows[-1, 0]), float(self.windows[-1, 1])

    @property
    def score(self) -> float:
        """The final score."""
        return float(self.scores[-1])

    @property
    def steps(self) -> int:
        """Window changes made (a final stop not counted)."""
        return sum(1 for a in self.actions if a != STOP)


def run_agent(agent: DQNAgent, env: WindowLevelEnv, seed: int | None = None) -> AgentRun:
    """Run a trained agent greedily for one episode (at most ``env.max_steps`` steps).

    Parameters
    ----------
    agent : DQNAgent
        The agent (or anything with ``act(state, greedy=True)``).
    env : WindowLevelEnv
        The environment; it is reset first.
    seed : int or None, optional
        Passed to ``env.reset`` (random starts).

    Returns
    -------
    AgentRun
        Window trajectory and scores (unpacks as ``windows, scores``).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((8, 8)); img[:, 4:] = 100.0
    >>> env = WindowLevelEnv(img, img > 50, img < 50, start=(50, 400), max_steps=4)
    >>> windows, scores = run_agent(DQNAgent(env.n_features, env.n_actions, hidden=(8,)), env)
    >>> windows.shape[1], len(scores) <= 5
    (2, True)
    """
    s = env.reset(seed=seed)
    actions, done = [], False
    while not done:
        a = agent.act(s, greedy=True)
        s, _, done, _ = env.step(a)
        actions.append(a)
    return AgentRun(np.asarray(env.trajectory, dtype=np.float64), np.asarray(env.scores, dtype=np.float64), actions)


def greedy_run(env: WindowLevelEnv, seed: int | None = None) -> AgentRun:
    """One-step-lookahead hill climbing over the same actions (the baseline an RL agent
    must be compared with): at each step evaluate the score after every action and take the
    best; stop when none improves it or after ``env.max_steps`` steps.

    Parameters
    ----------
    env : WindowLevelEnv
        The environment; it is reset first.
    seed : int or None, optional
        Passed to ``env.reset``.

    Returns
    -------
    AgentRun
        Trajectory, scores and the number of score evaluations spent.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((8, 8)); img[:, 4:] = 100.0
    >>> run = greedy_run(WindowLevelEnv(img, img > 50, img < 50, start=(50, 400)))
    >>> run.score
    1.0
    """
    env.reset(seed=seed)
    actions, done, n_eval = [], False, 0
    while not done:
        cand = [env.score_window(*env.next_window(a)) for a in range(STOP)]
        n_eval += len(cand)
        best = int(np.argmax(cand))
        a = best if cand[best] > env.score + 1e-12 else STOP
        _, _, done, _ = env.step(a)
        actions.append(a)
    return AgentRun(np.asarray(env.trajectory, dtype=np.float64), np.asarray(env.scores, dtype=np.float64), actions,
                    n_eval)
