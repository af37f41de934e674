"""The machine-learning foundations of chapters 2-3 (textbook lines 363-1127), each shown
on real images that ship inside installed packages, with a ``report.json`` and a
``preview.png``: ``biomip learn study NAME --quick|--tiny|--full`` or
``biomip.pipelines.foundations.run("NAME", out=..., mode=...)``.

======================  ==========================================================================
study                   what it shows (module)
======================  ==========================================================================
``pixels``              ilastik-style pixel classifier from <= 200 scribbled pixels on the real
                        ``nuclei2d`` (:mod:`.pixels`)
``tissue``              voxel-wise CSF / GM / WM classification of the MNI152 T1 from features on
                        held-out slabs; pixel-level CV leaks, grouped CV does not (:mod:`.tissue`)
``clustering``          the book's K = 4 example: k-means, GMM, spectral (:mod:`.clustering`)
``selfsup``             autoencoder, denoising AE, MoCo contrastive, jigsaw; linear probes
                        (:mod:`.selfsup`)
``semisup``             teacher-student with pseudo-labels: the 1 / 5 / 20 / 100 % label-fraction
                        curve on MNI152 tissue segmentation (:mod:`.semisup`)
``window``              a reinforcement-learning CT window / level agent tested on real CT slices
                        (:mod:`.window`)
``optimisation``        GD, momentum, SGD, mini-batch, Newton, ISTA / FISTA against the scipy /
                        scikit-learn optimum; convexity checks (:mod:`.optimisation`)
``manifold``            PCA, Isomap, t-SNE, LLE, Laplacian eigenmaps scored by trustworthiness,
                        continuity and k-NN accuracy (:mod:`.manifold`)
``likelihood``          MLE of intensity distributions (Gaussian CT, Rician MR, Poisson-Gaussian
                        microscopy) with goodness of fit (:mod:`.likelihood`)
======================  ==========================================================================
"""

from __future__ import annotations

import importlib

from ...core.errors import InputError

STUDIES = ("pixels", "tissue", "clustering", "selfsup", "semisup", "window", "optimisation", "manifold",
           "likelihood")
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
    >>> rep = run("likelihood", mode="tiny")          # doctest: +SKIP
    """
    if not isinstance(name, str) or name not in STUDIES:
        raise InputError(f"name: got {name!r}; expected one of {', '.join(STUDIES)}")
    mod = importlib.import_module(f"{__name__}.{name}")
    return mod.run(out=out, mode=mode, seed=seed, progress=progress)
