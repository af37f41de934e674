"""Reinforcement-learning CT window / level agent (textbook 2.1.2, issue 25 item 3).

A DQN agent (:mod:`biomip.learn.reinforce`) learns to set the display window of a CT slice
so that a target tissue is shown with the best contrast against a reference tissue
(:func:`~biomip.learn.reinforce.window_contrast`).  It is trained only on simulated slices
(:func:`biomip.data.ct_slices.ct_slice`: random heads and bodies, random HU per tissue,
noise 3-30 HU with a CT noise texture, random target / reference pair among the tissues
shown, random or full-range starting window; double DQN with 3-step returns and a cost of
0.002 per window change, so that stopping at the optimum pays more than wandering round it),
then tested, without any tuning, on the real slices that ship with pydicom / pydicom-data,
starting from the full-range window (and, as a second run, from the file's own window) and
taking at most 20 steps:

* ``ct-head`` (HU; GDCM 693, a head with a subdural collection): target brain
  parenchyma, reference CSF-density fluid, both inside the skull;
* ``ct-small`` (HU; a contrast-enhanced thoraco-abdominal slice): target soft tissue
  (muscle / organ), reference fat, both inside the body;
* ``ct-enhanced`` frames 0 and 1 (a CT perfusion rCBF map, ``RescaleType`` "US", not HU):
  target the high-flow tissue (cortex), reference the low-flow tissue (white matter), by
  Otsu's threshold inside the brain.

Masks are made automatically and the same way for every run (they are thresholds of a
smoothed image, so target and reference overlap little in raw HU: the task is the display,
not the segmentation): HU (or value) ranges applied
to the image smoothed by a Gaussian of 1.5 pixels (so a mask keeps the noise of the raw
pixels it selects), inside the skull (ct-head: the region enclosed by the largest
component above 300 HU, less 2 pixels next to the bone) or the body (values above -500,
holes filled), then eroded by one pixel.  Score of each window: the agent's final window,
the DICOM's own window (``WindowCenter`` / ``WindowWidth``, or the enhanced CT's Frame VOI
LUT; ct-small has none, so the soft-tissue preset 40 / 400 that :func:`biomip.core.preview.ct_window`
would show is used and named so), the full-range window, a one-step-lookahead hill climb
over the same actions (8 score evaluations per step, the agent needs none) and the best of
a 201 x 201 grid of (centre, width).  Target: agent score >= 90 % of the grid best on every
real slice, in <= 20 steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ...core.progress import progress_bar
from ...data.catalogue import load
from ...data.ct_slices import CT_TISSUES, ct_slice
from ...learn.reinforce import (
    ACTIONS,
    WindowLevelEnv,
    greedy_run,
    grid_search_window,
    run_agent,
    train_agent,
    window_contrast,
)
from .base import check_mode, check_out, new_figure, write_study

__all__ = ["CONFIGS", "SHIPPED_AGENT", "WindowAdvice", "advise_window", "range_masks", "real_tasks", "run",
           "sim_factory", "validator"]

CONFIGS = {
    "tiny": {"n_pool": 12, "shape": (64, 64), "episodes": 40, "hidden": (32, 32), "epsilon_steps": 300,
             "warmup": 64, "buffer_size": 5000, "eval_sim": 6, "grid": 61, "lr": 1e-3, "learn_every": 2,
             "n_step": 3, "step_cost": 0.002, "gamma": 0.9, "n_validate": 4, "validate_every": 20},
    "quick": {"n_pool": 300, "shape": (128, 128), "episodes": 1500, "hidden": (128, 128), "epsilon_steps": 8000,
              "warmup": 500, "buffer_size": 30000, "eval_sim": 100, "grid": 201, "lr": 1e-3, "learn_every": 2,
              "n_step": 3, "step_cost": 0.002, "gamma": 0.9, "n_validate": 40, "validate_every": 100},
    "full": {"n_pool": 2000, "shape": (192, 192), "episodes": 15000, "hidden": (256, 256), "epsilon_steps": 80000,
             "warmup": 1000, "buffer_size": 100000, "eval_sim": 400, "grid": 401, "lr": 5e-4, "learn_every": 1,
             "n_step": 3, "step_cost": 0.002, "gamma": 0.9, "n_validate": 100, "validate_every": 250},
}
"""Sizes and hyper-parameters of each mode."""

MAX_STEPS = 20
MIN_PIXELS = 30
MAX_GAP = 800.0
_PADDINGS = (None, None, -1024.0, -2048.0, -3024.0)
_SLICES = (("ct-head", 0), ("ct-small", 0), ("ct-enhanced", 0), ("ct-enhanced", 1))


# ----------------------------------------------------------------------------- simulated training data
def _pool(n: int, shape, seed: int) -> list:
    """Simulated slices and their usable tissue masks."""
    rng = np.random.default_rng(seed)
    pool = []
    for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32):
        pad = _PADDINGS[int(rng.integers(len(_PADDINGS)))]
        sl = ct_slice(shape, "random", int(s), padding=pad)
        masks = {}
        for name in sl.names:
            if name == "air":
                continue
            m = sl.mask(name, erode=1)
            if m.sum() >= MIN_PIXELS:
                masks[name] = m
        pool.append((sl, masks))
    return pool


def _sim_case(pool: list, rng, start_full: float):
    """A random (image, target, reference, start, seed) from the pool."""
    while True:
        sl, masks = pool[int(rng.integers(len(pool)))]
        names = list(masks)
        if len(names) < 2:
            continue
        t, r = rng.choice(len(names), 2, replace=False)
        t, r = names[int(t)], names[int(r)]
        if abs(sl.values[t] - sl.values[r]) <= MAX_GAP:
            break
    start = "full" if rng.random() < start_full else "random"
    return sl.image.array, masks[t], masks[r], start, int(rng.integers(1 << 31))


def sim_factory(pool: list, start_full: float = 0.5, step_cost: float = 0.0):
    """An ``envs_factory`` for :func:`~biomip.learn.reinforce.train_agent`: a random slice of
    ``pool``, a random (target, reference) pair of its tissues whose HU values differ by at most
    800, and a full-range (probability ``start_full``) or random starting window.

    Parameters
    ----------
    pool : list
        ``(CTSlice, {tissue: mask})`` pairs (from the study's pool).
    start_full : float, optional
        Probability of starting from the full-range window.
    step_cost : float, optional
        The environments' cost per window change.

    Returns
    -------
    callable
        ``factory(rng) -> WindowLevelEnv``.

    Examples
    --------
    >>> env = sim_factory(_pool(2, (48, 48), seed=0))(np.random.default_rng(0))
    >>> env.max_steps, env.n_actions
    (20, 9)
    """
    def factory(rng):
        a, t, r, start, env_seed = _sim_case(pool, rng, start_full)
        return WindowLevelEnv(a, t, r, start=start, max_steps=MAX_STEPS, seed=env_seed, step_cost=step_cost)
    return factory


def validator(pool: list, n: int, seed: int, grid: int = 101):
    """A ``validate(agent)`` for :func:`~biomip.learn.reinforce.train_agent`: the mean over
    ``n`` fixed simulated cases of ``min(1, agent's final score / grid-search best)``.

    Parameters
    ----------
    pool : list
        ``(CTSlice, {tissue: mask})`` pairs, disjoint from the training pool.
    n : int
        Number of cases (three in four start from the full-range window).
    seed : int
        Seed of the cases.
    grid : int, optional
        Grid size of the reference search.

    Returns
    -------
    callable
        ``validate(agent) -> float``.

    Examples
    --------
    >>> from biomip.learn.reinforce import DQNAgent
    >>> validate = validator(_pool(2, (48, 48), seed=1), 2, seed=0, grid=21)
    >>> 0.0 <= validate(DQNAgent(38, 9, hidden=(8,))) <= 1.0
    True
    """
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        a, tm, rm, start, env_seed = _sim_case(pool, rng, 0.75)
        best = max(_grid(a, tm, rm, grid).score, 1e-12)
        cases.append((WindowLevelEnv(a, tm, rm, start=start, max_steps=MAX_STEPS), env_seed, best))

    def validate(agent):
        return float(np.mean([min(1.0, run_agent(agent, env, seed=s).score / best) for env, s, best in cases]))
    return validate


# ----------------------------------------------------------------------------- real slices
def _smooth(a: np.ndarray, valid: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Gaussian smoothing normalised over ``valid`` pixels (outside pixels do not leak in)."""
    num = ndi.gaussian_filter(np.where(valid, a, 0.0), sigma)
    den = ndi.gaussian_filter(valid.astype(np.float64), sigma)
    return num / np.maximum(den, 1e-6)


def _largest(m: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(m)
    if n == 0:
        return m
    return lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)


def _dicom_window(img):
    """The file's own window: WindowCenter / WindowWidth, else the enhanced CT's Frame VOI LUT."""
    c, w = img.meta.get("window_center"), img.meta.get("window_width")
    if c is not None and w is not None:
        return float(c), float(w), "DICOM"
    src = img.meta.get("source")
    if src:
        import pydicom

        ds = pydicom.dcmread(src, stop_before_pixels=True)
        for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            for item in ds.get(seq, []) or []:
                for voi in item.get("FrameVOILUTSequence", []) or []:
                    c, w = voi.get("WindowCenter"), voi.get("WindowWidth")
                    if c is not None and w is not None:
                        c = c[0] if hasattr(c, "__len__") and not isinstance(c, str) else c
                        w = w[0] if hasattr(w, "__len__") and not isinstance(w, str) else w
                        return float(c), float(w), "DICOM (frame VOI LUT)"
    return None


def range_masks(image, target, reference=None, sigma: float = 1.5):
    """Target and reference masks of a CT slice from value ranges, as the study makes them.

    Values are taken from the image smoothed by a Gaussian of ``sigma`` pixels inside the
    body (the largest region above -500 HU, holes filled), then each mask is eroded by one
    pixel.  Without ``reference`` the reference is a 5-pixel ring around the target.

    Parameters
    ----------
    image : array_like
        One 2-D slice (HU, or the file's units).
    target : tuple of float
        ``(low, high)`` range of the target tissue.
    reference : tuple of float or None, optional
        ``(low, high)`` range of the reference tissue.
    sigma : float, optional
        Smoothing in pixels before the ranges are applied.

    Returns
    -------
    target_mask : numpy.ndarray
        bool.
    reference_mask : numpy.ndarray or None
        bool, or ``None`` (the environment then uses the ring).

    Raises
    ------
    InputError
        For a range that is not two increasing finite numbers, or a mask with fewer than
        ``MIN_PIXELS`` pixels.

    Examples
    --------
    >>> a = np.full((40, 40), -1000.0); a[5:35, 5:35] = 40.0; a[15:25, 15:25] = -100.0
    >>> t, r = range_masks(a, (20, 80), (-150, -50))
    >>> bool(t[8, 8]), bool(r[20, 20])
    (True, True)
    """
    from ...core.errors import InputError

    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"image: got {a.ndim} dimensions; expected one 2-D slice")
    ranges = {}
    for name, r in (("target", target), ("reference", reference)):
        if r is None:
            continue
        v = np.asarray(r, dtype=float).ravel()
        if v.size != 2 or not np.all(np.isfinite(v)) or v[0] >= v[1]:
            raise InputError(f"{name}: got {r!r}; expected a range low,high with low < high (HU)")
        ranges[name] = (float(v[0]), float(v[1]))
    if "target" not in ranges:
        raise InputError("target: got None; expected a range low,high (HU)")
    body = _largest(ndi.binary_fill_holes(a > -500))
    if not body.any():
        body = np.ones_like(a, dtype=bool)
    s = _smooth(a, body, sigma)
    out = []
    for name in ("target", "reference"):
        if name not in ranges:
            out.append(None)
            continue
        lo, hi = ranges[name]
        m = body & (s >= lo) & (s <= hi)
        m = ndi.binary_erosion(m) & m
        if int(m.sum()) < MIN_PIXELS:
            raise InputError(f"{name}: the range {lo:g}..{hi:g} holds {int(m.sum())} pixels of the slice (after "
                             f"smoothing and erosion); expected at least {MIN_PIXELS} -- check the range and units")
        out.append(m)
    return out[0], out[1]


SHIPPED_AGENT = "window-agent"
"""The agent that ships in ``biomip/pipelines/models/window-agent`` (regenerate it with
``biomip learn study window --quick --out RUN`` and copy ``RUN/agent``)."""


@dataclass
class WindowAdvice:
    """What :func:`advise_window` found for one slice.

    Parameters
    ----------
    centre : float
        The agent's final window centre.
    width : float
        Its width.
    score : float
        :func:`~biomip.learn.reinforce.window_contrast` of that window.
    steps : int
        Window changes the agent made (<= ``max_steps``; its final "stop" is not counted).
    trajectory : numpy.ndarray
        ``(steps + 1, 2)`` (centre, width) from the start.
    grid_centre : float
        Best centre of the grid search.
    grid_width : float
        Best width of the grid search.
    grid_score : float
        Its score.
    start : tuple of float
        The starting (centre, width).
    """

    centre: float
    width: float
    score: float
    steps: int
    trajectory: np.ndarray
    grid_centre: float
    grid_width: float
    grid_score: float
    start: tuple

    def to_dict(self) -> dict:
        """JSON-ready figures.

        Returns
        -------
        dict
            Every field, the trajectory as nested lists, and ``ratio_to_grid_best``.
        """
        return {"centre": self.centre, "width": self.width, "score": self.score, "steps": self.steps,
                "trajectory": np.asarray(self.trajectory).tolist(), "grid_centre": self.grid_centre,
                "grid_width": self.grid_width, "grid_score": self.grid_score, "start": list(self.start),
                "ratio_to_grid_best": self.score / self.grid_score if self.grid_score > 0 else float("nan")}


def advise_window(image, target_mask, reference_mask=None, agent=None, start="full", grid: int = 101) -> WindowAdvice:
    """Let a trained window / level agent choose the display window of one slice, and judge it
    against a grid search.

    Parameters
    ----------
    image : array_like
        One 2-D slice (HU).
    target_mask : array_like
        bool mask of the target tissue.
    reference_mask : array_like or None, optional
        bool mask of the reference (``None``: a ring around the target).
    agent : DQNAgent or str or pathlib.Path or None, optional
        The agent, or a folder written by ``DQNAgent.save``; ``None``: the shipped one
        (:data:`SHIPPED_AGENT`).
    start : "full" or tuple of float, optional
        The first window: the image's full range, or ``(centre, width)``.
    grid : int, optional
        Centres and widths of the reference grid search (``grid x grid`` windows).

    Returns
    -------
    WindowAdvice
        The agent's window, its score, steps and trajectory, and the grid's best.

    Raises
    ------
    InputError
        For masks that do not match the image, and the errors of the environment.
    FormatError
        When ``agent`` names a folder that is not a saved agent.

    Examples
    --------
    >>> a = np.random.default_rng(0).normal(0, 5, (64, 64)); a[16:48, 16:48] += 60
    >>> t = np.zeros((64, 64), bool); t[20:44, 20:44] = True
    >>> adv = advise_window(a, t, ~np.pad(np.ones((40, 40), bool), 12))      # doctest: +SKIP
    """
    from pathlib import Path

    from ...learn.reinforce import DQNAgent

    if agent is None:
        agent = Path(__file__).resolve().parents[1] / "models" / SHIPPED_AGENT
    if not isinstance(agent, DQNAgent):
        agent = DQNAgent.load(agent)
    a = np.asarray(image, dtype=np.float64)
    tm = np.asarray(target_mask, dtype=bool)
    if reference_mask is None:                     # the environment's own default: a 5-pixel ring
        rm = ndi.binary_dilation(tm, iterations=5) & ~tm
    else:
        rm = np.asarray(reference_mask, dtype=bool)
    env = WindowLevelEnv(a, tm, rm, start=start, max_steps=MAX_STEPS)
    r = run_agent(agent, env)
    g = _grid(a, tm, rm, grid)
    w = np.asarray(r.windows)
    return WindowAdvice(float(w[-1, 0]), float(w[-1, 1]), float(r.scores[-1]), int(r.steps), w,
                        float(g.centre), float(g.width), float(g.score), (float(w[0, 0]), float(w[0, 1])))


def real_tasks() -> list:
    """The real test slices with their target / reference masks (see the module docstring).

    Returns
    -------
    list of dict
        ``name``, ``image`` (2-D float64), ``target``, ``reference`` (bool masks),
        ``target_name``, ``reference_name``, ``unit``, ``dicom`` ((centre, width, source) or the
        preset), ``rule`` (how the masks were made).

    Examples
    --------
    >>> [t["name"] for t in real_tasks()]                    # doctest: +SKIP
    ['ct-head', 'ct-small', 'ct-enhanced[0]', 'ct-enhanced[1]']
    """
    tasks = []
    cache = {}
    for name, frame in _SLICES:
        if name not in cache:
            cache[name] = load(name)
        img = cache[name]
        a = img.numpy()[frame].astype(np.float64)
        dic = _dicom_window(img)
        if name == "ct-head":
            skull = _largest(a > 300)
            inside = ndi.binary_fill_holes(skull) & ~ndi.binary_dilation(skull, iterations=2)
            s = _smooth(a, inside)
            tgt = inside & (s >= 20) & (s <= 45)
            ref = inside & (s >= -5) & (s <= 15)
            names = ("brain parenchyma", "CSF-density fluid")
            rule = "inside the skull; smoothed HU 20..45 (target) vs -5..15 (reference)"
            unit = "HU"
        elif name == "ct-small":
            body = _largest(ndi.binary_fill_holes(a > -500))
            s = _smooth(a, body)
            tgt = body & (s >= 20) & (s <= 80)
            ref = body & (s >= -150) & (s <= -50)
            names = ("soft tissue", "fat")
            rule = "inside the body; smoothed HU 20..80 (target) vs -150..-50 (reference)"
            unit = "HU"
        else:
            from skimage.filters import threshold_otsu

            brain = ndi.binary_erosion(_largest(ndi.binary_fill_holes(a > -500)), iterations=3)
            tissue = brain & (a > 2)
            s = _smooth(a, tissue)
            thr = float(threshold_otsu(s[tissue]))
            tgt = tissue & (s > thr)
            ref = tissue & (s <= thr)
            names = ("high rCBF (cortex)", "low rCBF (white matter)")
            rule = f"inside the brain, values > 2; smoothed value > Otsu {thr:.1f} (target) vs <= (reference)"
            unit = "rCBF (file units)"
        tgt = ndi.binary_erosion(tgt) & tgt
        ref = ndi.binary_erosion(ref) & ref
        if dic is None:
            dic = (40.0, 400.0, "preset soft tissue (no DICOM window)")
        tasks.append({"name": f"{name}[{frame}]" if name == "ct-enhanced" else name, "image": a, "target": tgt,
                      "reference": ref, "target_name": names[0], "reference_name": names[1], "unit": unit,
                      "dicom": dic, "rule": rule, "spacing": img.spacing[:2]})
    return tasks


# ----------------------------------------------------------------------------- the study
def _grid(a, tm, rm, n: int):
    """Grid search over ``n`` centres (the tissues' 0.5-99.5 percentile range, widened by a
    quarter each side) and ``n`` widths (1 to 4000, log-spaced)."""
    lo, hi = np.percentile(np.concatenate([a[tm], a[rm]]), [0.5, 99.5])
    pad = max(hi - lo, 10.0) / 4
    return grid_search_window(a, tm, rm, np.linspace(lo - pad, hi + pad, n), np.geomspace(1.0, 4000.0, n))


def _moving(x: np.ndarray, k: int) -> np.ndarray:
    k = max(1, min(k, x.size))
    c = np.cumsum(np.r_[0.0, x])
    out = (c[k:] - c[:-k]) / k
    return np.r_[np.full(k - 1, np.nan), out]


def _crop(*masks, pad: int = 10):
    m = np.zeros_like(masks[0])
    for x in masks:
        m |= x
    ys, xs = np.nonzero(m)
    return (slice(max(ys.min() - pad, 0), ys.max() + pad + 1), slice(max(xs.min() - pad, 0), xs.max() + pad + 1))


def _figure(results, hist):
    n = len(results)
    fig = new_figure((17.0, 3.6 * n + 3.8))
    gs = fig.add_gridspec(n + 1, 4, height_ratios=[1.0] * n + [0.95])
    for i, res in enumerate(results):
        task = res["task"]
        crop = _crop(task["target"], task["reference"])
        img = task["image"][crop]
        for j, key in enumerate(("dicom", "agent", "grid")):
            ax = fig.add_subplot(gs[i, j])
            c, w = res["windows"][key]
            ax.imshow(img, cmap="gray", vmin=c - w / 2, vmax=c + w / 2, interpolation="nearest")
            if key == "grid":                             # mask outlines as one RGBA layer (fast)
                over = np.zeros(img.shape + (4,))
                for m, rgb in ((task["target"][crop], (1.0, 0.5, 0.05)), (task["reference"][crop], (0.1, 0.5, 1.0))):
                    edge = m & ~ndi.binary_erosion(m)
                    over[edge] = (*rgb, 1.0)
                ax.imshow(over, interpolation="nearest")
            label = {"dicom": res["dicom_label"], "agent": f"DQN agent ({res['agent_steps']} steps)",
                     "grid": "grid-search best (orange target, blue reference)"}[key]
            ax.set_title(f"{task['name']}: {label}\nL {c:.0f} W {w:.0f} -> score {res['scores'][key]:.3f}",
                         fontsize=8.5)
            ax.set_xlabel("x (pixels)", fontsize=7)
            ax.set_ylabel("y (pixels)", fontsize=7)
            ax.tick_params(labelsize=6)
        ax = fig.add_subplot(gs[i, 3])
        g = res["grid_result"]
        im = ax.pcolormesh(g.centres, g.widths, g.scores, shading="auto", cmap="viridis")
        ax.set_yscale("log")
        tr = res["trajectory"]
        lo, hi = g.centres[0], g.centres[-1]
        ax.plot(np.clip(tr[:, 0], lo, hi), tr[:, 1], "-o", color="w", ms=2.5, lw=1)
        ax.plot(*res["windows"]["grid"], "r*", ms=11, label="grid best")
        ax.plot(np.clip(tr[-1, 0], lo, hi), tr[-1, 1], "s", color="orange", ms=6, label="agent end")
        cd, wd = res["windows"]["dicom"]
        if lo <= cd <= hi:
            ax.plot(cd, wd, "D", color="c", ms=5, label="DICOM")
        ax.set_ylim(g.widths[0], max(g.widths[-1], float(tr[:, 1].max())) * 1.15)
        ax.set_xlabel(f"window centre ({task['unit']})", fontsize=7)
        ax.set_ylabel(f"window width ({task['unit']}, log)", fontsize=7)
        ax.set_title(f"score map; agent path from full range ({res['ratio'] * 100:.0f} % of best)\n"
                     "(centres beyond the map drawn on its edge)", fontsize=8.5)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, loc="lower right")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    ax = fig.add_subplot(gs[n, 0:2])
    ep = np.arange(1, hist.returns.size + 1)
    k = max(1, hist.returns.size // 25)
    ax.plot(ep, hist.final_scores, ".", ms=1.5, color="0.75", label="final score (each episode)")
    ax.plot(ep, _moving(hist.final_scores, k), color="C0", label=f"final score, moving mean ({k})")
    ax.plot(ep, _moving(hist.returns, k), color="C1", label=f"return = final - start score ({k})")
    ax.plot(ep, hist.epsilon, "--", color="C2", label="exploration epsilon")
    if hist.validation:
        ve, vv = np.asarray(hist.validation).T
        ax.plot(ve, vv, "o-", color="C3", ms=3, label="validation: agent / grid best (held-out sim.)")
        if hist.best_episode is not None:
            ax.axvline(hist.best_episode, color="C3", lw=0.8, ls=":", label=f"weights kept (episode {hist.best_episode})")
    ax.set_xlabel("training episode (simulated slices)")
    ax.set_ylabel("score / return")
    ax.set_title("training on simulated CT slices")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(gs[n, 2:4])
    keys = ("full", "dicom", "greedy", "agent", "grid")
    names = ("full range", "DICOM / preset", "hill climb", "DQN agent", "grid best")
    x = np.arange(n)
    for j, key in enumerate(keys):
        ax.bar(x + (j - 2) * 0.16, [r["scores"][key] for r in results], 0.16, label=names[j])
    ax.set_xticks(x, [r["task"]["name"] for r in results], fontsize=8)
    ax.set_ylabel("target contrast score (0..1)")
    ax.set_title("real slices: score of each window (agent <= 20 steps)")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.suptitle("RL window / level agent (DQN) trained on simulated CT, tested on real DICOM slices; "
                 "score = |mean display(target) - mean display(reference)| x (1 - target clipped fraction)",
                 fontsize=10)
    return fig


def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Train the window / level agent on simulated CT and test it on the real CT slices.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Run folder for ``report.json``, ``preview.png`` and ``agent/`` (the Q-network as
        safetensors + JSON); ``None`` writes nothing.
    mode : {"tiny", "quick", "full"}, optional
        Sizes (:data:`CONFIGS`): ``tiny`` seconds (tests), ``quick`` the closing-note figures.
    seed : int, optional
        Seed of the simulated slices, the agent and its exploration.
    progress : bool or None, optional
        Show progress bars.

    Returns
    -------
    dict
        The report (``study``, ``mode``, ``config``, ``seeds``, ``methods``, ``slices``,
        ``simulated``, ``targets``, ``warnings``, ``files``, ``seconds``).

    Raises
    ------
    InputError
        For a bad mode, seed or ``out``.

    Examples
    --------
    >>> report = run(mode="tiny")                                         # doctest: +SKIP
    >>> report["targets"]["agent_steps"]["value"] <= 20                  # doctest: +SKIP
    True
    """
    from ...core.arrays import check_number

    t0 = time.perf_counter()
    mode = check_mode(mode)
    seed = int(check_number(seed, "seed", integer=True, low=0))
    o = check_out(out)
    cfg = dict(CONFIGS[mode])
    pool = _pool(cfg["n_pool"], cfg["shape"], seed)
    val_pool = _pool(cfg["n_validate"], cfg["shape"], seed + 30_000)
    validate = validator(val_pool, cfg["n_validate"], seed + 40_000)
    agent, hist = train_agent(sim_factory(pool, step_cost=cfg["step_cost"]), cfg["episodes"], seed=seed,
                              progress=progress, validate=validate, validate_every=cfg["validate_every"], warmup=cfg["warmup"], learn_every=cfg["learn_every"],
                              n_step=cfg["n_step"], hidden=cfg["hidden"], lr=cfg["lr"], gamma=cfg["gamma"],
                              buffer_size=cfg["buffer_size"], epsilon=(1.0, 0.05, cfg["epsilon_steps"]))
    t_train = time.perf_counter() - t0
    # held-out simulated slices (new seeds), full-range start
    test_pool = _pool(max(cfg["eval_sim"] // 2, 2), cfg["shape"], seed + 10_000)
    rng = np.random.default_rng(seed + 20_000)
    sim_ratios, sim_greedy = [], []
    for _ in range(cfg["eval_sim"]):
        a, tm, rm, _, _ = _sim_case(test_pool, rng, 1.0)
        env = WindowLevelEnv(a, tm, rm, start="full", max_steps=MAX_STEPS)
        best = _grid(a, tm, rm, cfg["grid"]).score
        sim_ratios.append(run_agent(agent, env).score / max(best, 1e-12))
        sim_greedy.append(greedy_run(env).score / max(best, 1e-12))
    sim_ratios, sim_greedy = np.asarray(sim_ratios), np.asarray(sim_greedy)
    # real slices
    results = []
    with progress_bar("testing on real CT", total=len(_SLICES), progress=progress) as bar:
        for task in real_tasks():
            a, tm, rm = task["image"], task["target"], task["reference"]
            grid = _grid(a, tm, rm, cfg["grid"])
            env = WindowLevelEnv(a, tm, rm, start="full", max_steps=MAX_STEPS)
            ra = run_agent(agent, env)
            rg = greedy_run(env)
            full = (env.trajectory[0][0], env.trajectory[0][1])
            dc, dw, dsrc = task["dicom"]
            rd = run_agent(agent, WindowLevelEnv(a, tm, rm, start=(dc, dw), max_steps=MAX_STEPS))
            windows = {"full": full, "dicom": (dc, dw), "agent": ra.window, "greedy": rg.window,
                       "grid": grid.window, "agent_from_dicom": rd.window}
            scores = {k: window_contrast(a, w, tm, rm) for k, w in windows.items()}
            results.append({"task": task, "windows": windows, "scores": scores, "grid_result": grid,
                            "trajectory": ra.windows, "agent_steps": ra.steps, "greedy_steps": rg.steps,
                            "agent_from_dicom_steps": rd.steps,
                            "greedy_evaluations": rg.evaluations, "dicom_label": dsrc,
                            "ratio": scores["agent"] / max(scores["grid"], 1e-12)})
            bar.advance()
    ratios = np.array([r["ratio"] for r in results])
    steps = np.array([r["agent_steps"] for r in results])
    slices = {}
    for r in results:
        t = r["task"]
        slices[t["name"]] = {
            "target": t["target_name"], "reference": t["reference_name"], "unit": t["unit"], "masks": t["rule"],
            "target_pixels": int(t["target"].sum()), "reference_pixels": int(t["reference"].sum()),
            "target_mean": float(t["image"][t["target"]].mean()), "reference_mean": float(t["image"][t["reference"]].mean()),
            "dicom_source": r["dicom_label"],
            "windows": {k: {"centre": float(c), "width": float(w), "score": float(r["scores"][k])}
                        for k, (c, w) in r["windows"].items()},
            "agent_steps": int(r["agent_steps"]), "agent_over_grid": float(r["ratio"]),
            "dicom_over_grid": float(r["scores"]["dicom"] / max(r["scores"]["grid"], 1e-12)),
            "greedy_over_grid": float(r["scores"]["greedy"] / max(r["scores"]["grid"], 1e-12)),
            "greedy_steps": int(r["greedy_steps"]), "greedy_score_evaluations": int(r["greedy_evaluations"]),
            "agent_from_dicom_over_grid": float(r["scores"]["agent_from_dicom"] / max(r["scores"]["grid"], 1e-12)),
            "agent_from_dicom_steps": int(r["agent_from_dicom_steps"]),
            "agent_trajectory": [[float(c), float(w)] for c, w in r["trajectory"]],
        }

    def rel(key):
        return [float(r["scores"][key] / max(r["scores"]["grid"], 1e-12)) for r in results]

    k_tail = max(1, cfg["episodes"] // 10)
    methods = {
        "dqn-agent": {"mean_score": float(np.mean([r["scores"]["agent"] for r in results])),
                      "mean_over_grid": float(ratios.mean()), "min_over_grid": float(ratios.min()),
                      "max_steps_used": int(steps.max()), "score_evaluations_per_step": 0,
                      "sim_mean_over_grid": float(sim_ratios.mean()), "sim_min_over_grid": float(sim_ratios.min()),
                      "sim_fraction_within_10pct": float((sim_ratios >= 0.9).mean()),
                      "train_seconds": t_train,
                      "train_final_score_last10pct": float(hist.final_scores[-k_tail:].mean()),
                      "train_return_last10pct": float(hist.returns[-k_tail:].mean())},
        "dqn-agent-from-dicom-window": {"mean_over_grid": float(np.mean(rel("agent_from_dicom"))),
                                        "min_over_grid": float(np.min(rel("agent_from_dicom")))},
        "dicom-window": {"mean_score": float(np.mean([r["scores"]["dicom"] for r in results])),
                         "mean_over_grid": float(np.mean(rel("dicom"))), "min_over_grid": float(np.min(rel("dicom")))},
        "full-range-window": {"mean_score": float(np.mean([r["scores"]["full"] for r in results])),
                              "mean_over_grid": float(np.mean(rel("full")))},
        "hill-climb": {"mean_score": float(np.mean([r["scores"]["greedy"] for r in results])),
                       "mean_over_grid": float(np.mean(rel("greedy"))), "min_over_grid": float(np.min(rel("greedy"))),
                       "score_evaluations_per_step": len(ACTIONS) - 1,
                       "sim_mean_over_grid": float(sim_greedy.mean())},
        "grid-search": {"mean_score": float(np.mean([r["scores"]["grid"] for r in results])),
                        "score_evaluations": int(cfg["grid"] ** 2)},
    }
    warnings = []
    if mode == "tiny":
        warnings.append("tiny mode: a few training episodes only; the figures test the plumbing, not the agent")
    warnings.append("ct-enhanced is a CT perfusion rCBF map (RescaleType 'US'), not HU; its window is the frame VOI "
                    "LUT of the file")
    if "preset" in slices.get("ct-small", {}).get("dicom_source", ""):
        warnings.append("ct-small has no WindowCenter / WindowWidth; the soft-tissue preset 40 / 400 stands in")
    report = {
        "study": "window", "mode": mode,
        "config": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                   "max_steps": MAX_STEPS, "actions": [a[0] for a in ACTIONS], "n_features": agent.n_features,
                   "agent": agent.config(), "tissues": list(CT_TISSUES), "max_hu_gap": MAX_GAP,
                   "score": "|mean display(target) - mean display(reference)| * (1 - fraction of target clipped)"},
        "seeds": {"seed": seed, "simulated_test_seed": seed + 10_000, "validation_seed": seed + 30_000},
        "training": {"validation": [[int(e), float(v)] for e, v in hist.validation],
                     "kept_episode": hist.best_episode, "episodes": int(hist.returns.size),
                     "transitions": int(hist.steps.sum())},
        "methods": methods,
        "slices": slices,
        "simulated": {"n_episodes": int(sim_ratios.size), "agent_over_grid_mean": float(sim_ratios.mean()),
                      "agent_over_grid_median": float(np.median(sim_ratios)),
                      "hill_climb_over_grid_mean": float(sim_greedy.mean())},
        "targets": {"agent_within_10pct_of_grid_best": {"value": float(ratios.min()), "bound": 0.9,
                                                         "met": bool(ratios.min() >= 0.9)},
                    "agent_steps": {"value": int(steps.max()), "bound": MAX_STEPS,
                                    "met": bool(steps.max() <= MAX_STEPS)}},
        "warnings": warnings,
    }
    fig = None
    if o is not None:
        fig = _figure(results, hist)
        o.mkdir(parents=True, exist_ok=True)
        agent.save(o / "agent", meta={"study": "window", "mode": mode, "seed": seed})
        report["agent_folder"] = "agent"
    rep = write_study(o, report, fig, t0)
    return rep

