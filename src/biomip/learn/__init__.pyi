from .archetypes import ArchetypeResult, archetypes, project_simplex
from .distributions import BetaTest, fit_beta
from .graph import knn_affinity, normalized_laplacian, prune_weak_edges, rbf_affinity
from .lloyd import KMeansResult, kmeans
from .mixture import GMMResult, gmm
from .spectral import (
    SOLVERS,
    FiedlerResult,
    SpectralResult,
    fiedler_bipartition,
    generalized_eigh,
    spectral_clustering,
    spectral_embedding,
)

__all__ = [
    "SOLVERS",
    "ArchetypeResult",
    "archetypes",
    "project_simplex",
    "BetaTest",
    "fit_beta",
    "FiedlerResult",
    "GMMResult",
    "KMeansResult",
    "SpectralResult",
    "fiedler_bipartition",
    "generalized_eigh",
    "gmm",
    "kmeans",
    "knn_affinity",
    "normalized_laplacian",
    "prune_weak_edges",
    "rbf_affinity",
    "spectral_clustering",
    "spectral_embedding",
]
