"""Archetypal analysis: simplex projection against a brute-force optimum, recovery of the
corners of a simplex, clusters of extreme points, kinds and errors."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from biomip.core.errors import InputError
from biomip.learn.archetypes import archetypes, project_simplex


def test_project_simplex_matches_a_constrained_solver():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 4)) * 2
    w = project_simplex(torch.as_tensor(v)).numpy()
    assert np.allclose(w.sum(1), 1) and (w >= 0).all()
    for row, got in zip(v, w):
        res = minimize(lambda z: ((z - row) ** 2).sum(), np.full(4, 0.25), method="SLSQP",
                       bounds=[(0, 1)] * 4, constraints=({"type": "eq", "fun": lambda z: z.sum() - 1},))
        assert np.allclose(got, res.x, atol=1e-5)


def test_recovers_the_corners_of_a_simplex():
    rng = np.random.default_rng(1)
    corners = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0], [0.0, 3.0, -1.0], [1.0, 1.0, 5.0]])
    w = rng.dirichlet([0.3] * 4, 400)
    x = w @ corners
    r = archetypes(x, 4, seed=0)
    assert r.explained > 0.995
    # every true corner has a found archetype close to it
    d = np.linalg.norm(corners[:, None] - r.archetypes[None], axis=2)
    assert d.min(1).max() < 0.15
    assert np.allclose(r.weights.sum(1), 1, atol=1e-6) and np.allclose(r.coefficients.sum(1), 1, atol=1e-6)
    # samples near a corner are labelled with that corner's archetype
    near = w.max(1) > 0.9
    corner_of = d.argmin(1)
    assert np.mean(corner_of[w[near].argmax(1)] == r.labels[near]) > 0.95


def test_more_archetypes_explain_more_and_labels_separate_clusters():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 8)) * 4
    x = np.concatenate([c + 0.2 * rng.normal(size=(40, 8)) for c in centres])
    y = np.repeat(np.arange(5), 40)
    r2, r5 = archetypes(x, 2, seed=0), archetypes(x, 5, seed=0)
    assert r5.explained > r2.explained
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(y, r5.labels) > 0.95


def test_kinds_and_errors():
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    r = archetypes(x, 3, max_iter=20)
    assert torch.is_tensor(r.archetypes) and r.archetypes.dtype == torch.float32 and r.labels.shape == (30,)
    assert set(r.to_dict()) == {"explained", "n_iter", "archetypes"}
    with pytest.raises(InputError, match="k: got 31"):
        archetypes(x, 31)
    with pytest.raises(InputError, match="x"):
        archetypes(np.full((4, 2), np.nan), 2)
