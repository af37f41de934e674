"""Manifold learning: biomip's torch PCA and trustworthiness vs scikit-learn, on real data.

1. PCA (10 components) of real patch matrices: H&E patches of ``he-slide`` (n = 2,000,
   f = 3,072 RGB values) and MNI152 T1 patches (n = 5,000, f = 49), plus the H&E patches
   downsampled to 16 x 16 (n = 2,000, f = 768).  ``biomip.learn.pca`` with each solver
   (``full``: torch.linalg.svd; ``randomized``: torch.svd_lowrank; ``covariance``: eigh of
   the covariance, for f <= 1000; ``auto``) against ``sklearn.decomposition.PCA`` with the
   matching solver (``full``, ``randomized``, ``covariance_eigh``, ``auto``).  Agreement:
   max |component difference| (up to sign) and max relative difference of the explained
   variance ratio, each against scikit-learn's ``full`` (exact) solution.
2. Trustworthiness (k = 10) of 2-D embeddings: ``biomip.learn.trustworthiness`` vs
   ``sklearn.manifold.trustworthiness`` on the MNI patches at n = 2,000 and 5,000 and the
   H&E patches at n = 2,000, for the PCA embedding (a fair one) and a random 2-D
   projection (a poor one: more rank comparisons); agreement |difference| (the T1 patches
   are quantised: ~8 % of their distances tie, and ties are ranked differently -- ours
   gives tied points the smallest rank, scikit-learn's argsort an arbitrary one -- so
   ``abs_diff`` there is ~1e-6, 0 once the ties are broken); continuity (ours) alongside.  Memory: scikit-learn's peak of Python-tracked allocations
   (tracemalloc: its n x n distance, argsort and inverted-index arrays) vs the size of our
   blocks (``biomip.learn.base.BLOCK`` elements per pass).

Runs are interleaved (ours, sklearn, ours, ...), after one warm-up each (a warm-up over
2 s counts as one of the runs); median of ``--repeat``; ratio = sklearn seconds / ours seconds (> 1: ours faster).  CPU, float64,
torch's thread count as found; with a CUDA device the torch side is also timed there
(``*_cuda`` rows, synchronised).  The load of the (shared) machine is recorded before and
after (``runnable`` threads).  Prints JSON and writes it to ``--json`` (default
``benchmarks/results/manifold-cpu2.json``; ``--quick``: only with ``--json``).

    python benchmarks/bench_manifold.py [--quick] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np

from biomip.core.atomic import write_json
from biomip.core.threads import available_cores, runnable

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "manifold-cpu2.json")
K_PCA = 10
K_TRUST = 10


def _interleaved(fns: dict, repeat: int) -> dict:
    """Median seconds of each function, runs interleaved, after one warm-up each (a warm-up
    over 2 s counts as a run: such a call has nothing left to warm up)."""
    times = {name: [] for name in fns}
    for name, f in fns.items():
        t0 = time.perf_counter()
        f()
        if time.perf_counter() - t0 > 2.0:
            times[name].append(time.perf_counter() - t0)
    for _ in range(repeat):
        for name, f in fns.items():
            if len(times[name]) >= repeat:
                continue
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _data(quick: bool) -> dict:
    from biomip.pipelines.foundations.manifold import he_patches, mni_patches

    n_he, n_mni = (1000, 2000) if quick else (2000, 5000)
    he = he_patches(n_he, seed=0)["x"]
    he16 = he.reshape(-1, 16, 2, 16, 2, 3).mean((2, 4)).reshape(he.shape[0], -1)
    mni = mni_patches(n_mni, seed=0)["x"]
    return {"he-32px": he, "he-16px": he16, "mni-7mm": mni}


def _cuda_sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_pca(data: dict, repeat: int) -> list[dict]:
    import torch
    from sklearn.decomposition import PCA

    from biomip.learn import manifold

    rows = []
    for name, x in data.items():
        n, f = x.shape
        ref = PCA(K_PCA, svd_solver="full").fit(x)
        solvers = [("full", "full"), ("randomized", "randomized"), ("auto", "auto")]
        if f <= 1000:
            solvers.insert(2, ("covariance", "covariance_eigh"))
        for ours_s, sk_s in solvers:
            fns = {"ours": lambda s=ours_s: manifold.pca(x, K_PCA, solver=s, seed=0),
                   "sklearn": lambda s=sk_s: PCA(K_PCA, svd_solver=s, random_state=0).fit_transform(x)}
            if torch.cuda.is_available():
                xc = torch.from_numpy(x).cuda()

                def on_cuda(s=ours_s, xc=xc):
                    manifold.pca(xc, K_PCA, solver=s, seed=0)
                    _cuda_sync()
                fns["ours_cuda"] = on_cuda
            t = _interleaved(fns, repeat)
            r = manifold.pca(x, K_PCA, solver=ours_s, seed=0)
            sk = PCA(K_PCA, svd_solver=sk_s, random_state=0).fit(x)
            sign = np.sign((r.components * ref.components_).sum(1))
            sign_sk = np.sign((sk.components_ * ref.components_).sum(1))
            row = {"data": name, "n": n, "f": f, "k": K_PCA, "solver": ours_s, "sklearn_solver": sk_s,
                   "ours_solver_used": r.solver,
                   "ours_ms": round(1e3 * t["ours"], 2), "sklearn_ms": round(1e3 * t["sklearn"], 2),
                   "ratio": round(t["sklearn"] / t["ours"], 2),
                   "ours_vs_exact_max_abs_diff_components": float(np.abs(r.components * sign[:, None]
                                                                         - ref.components_).max()),
                   "sklearn_vs_exact_max_abs_diff_components": float(np.abs(sk.components_ * sign_sk[:, None]
                                                                            - ref.components_).max()),
                   "ours_vs_exact_max_rel_diff_evr": float(np.abs(r.explained_variance_ratio
                                                                  / ref.explained_variance_ratio_ - 1).max()),
                   "same_signs_as_sklearn": bool(np.all(sign > 0))}
            if "ours_cuda" in t:
                row["ours_cuda_ms"] = round(1e3 * t["ours_cuda"], 2)
                row["ratio_cuda"] = round(t["sklearn"] / t["ours_cuda"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def bench_trust(data: dict, repeat: int, quick: bool) -> list[dict]:
    import torch
    from sklearn.manifold import trustworthiness as sk_trust

    from biomip.learn import base, manifold

    rows = []
    cases = [("mni-7mm", 1000 if quick else 2000), ("mni-7mm", 2000 if quick else 5000), ("he-32px", None)]
    for name, n in cases:
        x = data[name] if n is None else data[name][np.random.default_rng(1).permutation(data[name].shape[0])[:n]]
        n, f = x.shape
        embeddings = {"pca": np.asarray(manifold.pca(x, 2).embedding),
                      "random-projection": x @ np.random.default_rng(2).normal(size=(f, 2))}
        for emb_name, y in embeddings.items():
            fns = {"ours": lambda x=x, y=y: manifold.trustworthiness(x, y, K_TRUST),
                   "sklearn": lambda x=x, y=y: sk_trust(x, y, n_neighbors=K_TRUST)}
            if torch.cuda.is_available():
                xc, yc = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
                fns["ours_cuda"] = lambda xc=xc, yc=yc: manifold.trustworthiness(xc, yc, K_TRUST)
            t = _interleaved(fns, repeat)
            ours, sk = manifold.trustworthiness(x, y, K_TRUST), float(sk_trust(x, y, n_neighbors=K_TRUST))
            tracemalloc.start()
            sk_trust(x, y, n_neighbors=K_TRUST)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rows_per_block = max(1, min(n, base.BLOCK // n))
            row = {"data": name, "n": n, "f": f, "k": K_TRUST, "embedding": emb_name,
                   "trustworthiness": ours, "sklearn": sk, "abs_diff": abs(ours - sk),
                   "continuity": manifold.continuity(x, y, K_TRUST),
                   "ours_ms": round(1e3 * t["ours"], 1), "sklearn_ms": round(1e3 * t["sklearn"], 1),
                   "ratio": round(t["sklearn"] / t["ours"], 2),
                   "sklearn_peak_tracemalloc_mb": round(peak / 2 ** 20, 1),
                   "ours_block_mb": round(rows_per_block * n * 8 / 2 ** 20, 1)}
            if "ours_cuda" in t:
                row["ours_cuda_ms"] = round(1e3 * t["ours_cuda"], 1)
                row["ratio_cuda"] = round(t["sklearn"] / t["ours_cuda"], 2)
                row["cuda_abs_diff"] = abs(manifold.trustworthiness(torch.from_numpy(x).cuda(),
                                                                    torch.from_numpy(y).cuda(), K_TRUST) - sk)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller n, for a smoke run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import sklearn
    import torch

    load_before = runnable()
    t0 = time.perf_counter()
    data = _data(args.quick)
    out = {"benchmark": "manifold", "machine": platform.machine(), "cpus": available_cores(),
           "torch": torch.__version__, "sklearn": sklearn.__version__, "torch_threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "quick": args.quick, "repeat": args.repeat, "dtype": "float64",
           "ratio": "sklearn seconds / biomip seconds (> 1: biomip faster), median of interleaved runs",
           "pca": bench_pca(data, args.repeat), "trustworthiness": bench_trust(data, args.repeat, args.quick)}
    out["runnable_before_after"] = [load_before, runnable()]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))
    path = args.json or (None if args.quick else DEFAULT_JSON)
    if path:
        write_json(out, path)


if __name__ == "__main__":
    main()
