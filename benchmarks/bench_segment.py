"""Unsupervised segmentation benchmark: biomip k-means / GMM / spectral clustering vs
scikit-learn, same data, same process (issue 5, "Unsupervised").

Cases:

* ``kmeans``: 10^6 x 8 overlapping Gaussian blobs (``make_blobs``, 4 centres in a box of
  +-5, cluster_std 3.2, seed 0, float32), k = 4.  biomip ``kmeans`` (k-means++, n_init 1)
  vs ``sklearn.cluster.KMeans(4, n_init=1)`` (scikit-learn's ``n_init="auto"`` is 1 run for
  k-means++); the same data also through ``gmm`` vs ``GaussianMixture(4)``.
* ``spectral``: 5,000 points of two moons (noise 0.05, seed 0), k = 2.  biomip
  ``spectral_clustering`` vs ``SpectralClustering``: sparse kNN graphs (10 neighbours) on
  both sides, dense RBF kernels (gamma 30) on both sides, and scikit-learn's default
  (dense RBF, gamma 1).
* ``pixels``: a 256 x 256 image with four regions (disc, disc, rectangle, background) plus
  Gaussian noise (sigma 0.1 for steps of 1): biomip ``spectral_segment`` (4-neighbour
  Shi-Malik pixel graph, 65,536 nodes, graph construction included) vs
  ``sklearn.cluster.spectral_clustering`` (ARPACK) on the very same graph (its time
  excludes the graph); also the superpixel-graph variant and ``kmeans_segment``.

Times are the best of ``--repeat`` runs, wall clock.  Ratios are peer time / biomip time
(> 1: biomip faster).  ARI is against the generating labels.  Prints JSON.

    python benchmarks/bench_segment.py [--device cpu|cuda] [--only kmeans spectral pixels] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
import torch

import biomip
from biomip.metrics import adjusted_rand_index as ari
from biomip.segment import cluster as C


def timed(fn, repeat: int, device: str = "cpu"):
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter() - t0
        if best is None or t < best[0]:
            best = (t, r)
    return best


def entry(method, seconds, score, **extra):
    return {"method": method, "seconds": round(seconds, 4), "ari": None if score is None else round(float(score), 4),
            **extra}


def four_regions(n=256, noise=0.1, seed=0):
    yy, xx = np.mgrid[:n, :n] * (256.0 / n)
    truth = np.zeros((n, n), np.int32)
    truth[(yy - 100) ** 2 + (xx - 90) ** 2 < 50 ** 2] = 1
    truth[(yy - 180) ** 2 + (xx - 170) ** 2 < 40 ** 2] = 2
    truth[(yy >= 20) & (yy < 60) & (xx >= 150) & (xx < 230)] = 3
    img = truth + np.random.default_rng(seed).normal(0, noise, truth.shape)
    return biomip.Image(img.astype(np.float32)), truth


# ----------------------------------------------------------------------------- cases
def bench_kmeans(device, repeat, add, ratios):
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    from sklearn.mixture import GaussianMixture

    x, y = make_blobs(n_samples=1_000_000, n_features=8, centers=4, cluster_std=3.2, center_box=(-5, 5),
                      random_state=0)
    x = x.astype(np.float32)
    xd = torch.from_numpy(x).to(device) if device != "cpu" else x
    t, r = timed(lambda: C.kmeans(xd, 4, seed=0), repeat, device)
    lab = r.labels.cpu().numpy() if torch.is_tensor(r.labels) else r.labels
    b = add(entry(f"biomip kmeans (k-means++, n_init 1, {device})", t, ari(lab, y), inertia=round(r.inertia, 1),
                  n_iter=r.n_iter))
    t, km = timed(lambda: KMeans(4, n_init=1, random_state=0).fit(x), repeat)
    s = add(entry("sklearn KMeans (k-means++, n_init 1 = 'auto')", t, ari(km.labels_, y),
                  inertia=round(float(km.inertia_), 1), n_iter=int(km.n_iter_)))
    ratios["kmeans_1e6x8_vs_sklearn"] = round(s["seconds"] / b["seconds"], 2)
    t, g = timed(lambda: C.gmm(xd, 4, covariance="full", seed=0), max(1, repeat - 1), device)
    lab = g.labels.cpu().numpy() if torch.is_tensor(g.labels) else g.labels
    b = add(entry(f"biomip gmm (full, {device})", t, ari(lab, y), log_likelihood=round(g.log_likelihood, 4),
                  n_iter=g.n_iter))
    t, gm = timed(lambda: GaussianMixture(4, covariance_type="full", random_state=0).fit(x), max(1, repeat - 1))
    s = add(entry("sklearn GaussianMixture (full)", t, ari(gm.predict(x), y),
                  log_likelihood=round(float(gm.score(x)), 4), n_iter=int(gm.n_iter_)))
    ratios["gmm_1e6x8_vs_sklearn"] = round(s["seconds"] / b["seconds"], 2)


def bench_spectral(device, repeat, add, ratios):
    from sklearn.cluster import SpectralClustering
    from sklearn.datasets import make_moons

    x, y = make_moons(5000, noise=0.05, random_state=0)
    xd = torch.from_numpy(x).float().to(device) if device != "cpu" else x

    def lab_of(r):
        return r.labels.cpu().numpy() if torch.is_tensor(r.labels) else r.labels

    t, r = timed(lambda: C.spectral_clustering(xd, 2, affinity="knn", n_neighbors=10), repeat, device)
    knn = add(entry("biomip spectral_clustering (kNN 10, shift-invert)", t, ari(lab_of(r), y)))
    t, r = timed(lambda: C.spectral_clustering(xd, 2, affinity="rbf", gamma=30.0), repeat, device)
    rbf = add(entry(f"biomip spectral_clustering (dense RBF gamma 30, {device})", t, ari(lab_of(r), y)))
    t, sc = timed(lambda: SpectralClustering(2, affinity="nearest_neighbors", n_neighbors=10,
                                             random_state=0).fit(x), repeat)
    s_knn = add(entry("sklearn SpectralClustering (nearest_neighbors 10)", t, ari(sc.labels_, y)))
    t, sc = timed(lambda: SpectralClustering(2, affinity="rbf", gamma=30.0, random_state=0).fit(x), repeat)
    s_rbf = add(entry("sklearn SpectralClustering (rbf gamma 30)", t, ari(sc.labels_, y)))
    t, sc = timed(lambda: SpectralClustering(2, random_state=0).fit(x), max(1, repeat - 1))
    s_def = add(entry("sklearn SpectralClustering (defaults: rbf gamma 1)", t, ari(sc.labels_, y)))
    ratios["spectral_5000_knn_vs_sklearn_knn"] = round(s_knn["seconds"] / knn["seconds"], 2)
    ratios["spectral_5000_rbf_vs_sklearn_rbf"] = round(s_rbf["seconds"] / rbf["seconds"], 2)
    ratios["spectral_5000_knn_vs_sklearn_default"] = round(s_def["seconds"] / knn["seconds"], 2)


def bench_pixels(device, repeat, add, ratios):
    from sklearn.cluster import KMeans, spectral_clustering

    image, truth = four_regions()
    t, lab = timed(lambda: C.spectral_segment(image, 4), repeat)
    b = add(entry("biomip spectral_segment (256^2 pixel graph, 4-nbr, k 4, graph included)", t, ari(lab, truth),
                  nodes=int(truth.size), eigenvalues=lab.meta["segmentation"]["eigenvalues"]))
    t_graph, W = timed(lambda: C.pixel_affinity(image), repeat)
    add(entry("biomip pixel_affinity alone", t_graph, None, edges=int(W.nnz // 2)))
    t, sl = timed(lambda: spectral_clustering(W, n_clusters=4, eigen_solver="arpack", random_state=0), repeat)
    s = add(entry("sklearn spectral_clustering (same graph, arpack; graph not timed)", t, ari(sl, truth.ravel())))
    ratios["pixel_spectral_256_vs_sklearn_same_graph"] = round(s["seconds"] / b["seconds"], 2)
    t, lab = timed(lambda: C.spectral_segment(image, 4, graph="superpixels", n_segments=1000), repeat)
    add(entry("biomip spectral_segment (1000 SLIC superpixels, RAG)", t, ari(lab, truth),
              superpixels=lab.meta["segmentation"]["superpixels"]))
    img_d = image.to(device) if device != "cpu" else image
    t, lab = timed(lambda: C.kmeans_segment(img_d, 4), repeat, device)
    b = add(entry(f"biomip kmeans_segment (intensity, k 4, {device})", t, ari(lab.numpy(), truth)))
    v = image.numpy().reshape(-1, 1)
    t, km = timed(lambda: KMeans(4, n_init=1, random_state=0).fit(v), repeat)
    s = add(entry("sklearn KMeans on the same intensities", t, ari(km.labels_.reshape(truth.shape), truth)))
    ratios["kmeans_segment_256_vs_sklearn"] = round(s["seconds"] / b["seconds"], 2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="+", default=["kmeans", "spectral", "pixels"],
                   choices=["kmeans", "spectral", "pixels"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2),
            "device": a.device}
    if a.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    results, ratios = [], {}

    def add(e):
        results.append(e)
        print(json.dumps(e), flush=True)
        return e

    for case in a.only:
        {"kmeans": bench_kmeans, "spectral": bench_spectral, "pixels": bench_pixels}[case](a.device, a.repeat, add,
                                                                                          ratios)
    out = {"benchmark": "segment", **info, "results": results, "ratios": ratios}
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
