"""The computer-vision catalogue of chapters 4-5 (textbook lines 1128-2302), each shown on
real images that ship inside installed packages, with a ``report.json`` and a
``preview.png``: ``biomip vision study NAME --quick|--tiny|--full`` or
``biomip.pipelines.vision.run("NAME", out=..., mode=...)``.

======================  ==========================================================================
study                   what it shows (module)
======================  ==========================================================================
``features``            Canny / Harris / LBP / GLCM, SIFT / ORB repeatability, keypoint
                        registration of a turned CT slice, bag of words vs deep features
                        (:mod:`.features`)
``shapedna``            sphere spectrum, isospectral drums, retrieval of real nuclei by Shape DNA
                        vs volume moments, multi-view back-projection (:mod:`.shapedna`)
``augment``             every augmentation with its recorded parameters, round trips, label
                        preservation (:mod:`.augment`)
``detection``           one-stage and detect-then-segment on nuclei2d vs flows and HOG + SVM
                        (:mod:`.detection`)
``flow``                optical flow on simulated motion and on the time-lapse tracks
                        (:mod:`.flow`)
``metric``              contrastive / triplet / siamese retrieval, transfer at label budgets,
                        stain and scanner shift (:mod:`.metric`)
``graph``               GCN / GAT / GraphSAGE segmentation from scribbles, over-smoothing
                        (:mod:`.graph`)
``splatting``           few-view cone-beam CT by 3-D Gaussians vs FDK, FISTA-TV and the INR
                        (:mod:`.splatting`)
======================  ==========================================================================
"""

from __future__ import annotations

import importlib

from ...core.errors import InputError

STUDIES = ("features", "shapedna", "augment", "detection", "flow", "metric", "graph", "splatting")
"""The studies, in the book's order of topics."""

__all__ = ["STUDIES", "run"]


def run(name: str, out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Run one study by name.

    Parameters
    ----------
    name : str
        One of :data:`STUDIES`.
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: write nothing).
    mode : {"tiny", "quick", "full"}, optional
        Size of the run (``tiny`` for CI, ``quick`` for the documented figures).
    seed : int, optional
        Seed of the data and models.
    progress : bool or None, optional
        Progress bars (``None``: when stderr is a terminal).

    Returns
    -------
    dict
        The report.

    Raises
    ------
    InputError
        For an unknown ``name``, and the errors of the study.

    Examples
    --------
    >>> rep = run("augment", mode="tiny")             # doctest: +SKIP
    """
    if not isinstance(name, str) or name not in STUDIES:
        raise InputError(f"name: got {name!r}; expected one of {', '.join(STUDIES)}")
    mod = importlib.import_module(f"{__name__}.{name}")
    return mod.run(out=out, mode=mode, seed=seed, progress=progress)
