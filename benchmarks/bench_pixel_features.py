"""biomip.features.pixel_features (torch) vs scipy.ndimage / scikit-image filter banks.

Two peers per case, on the same float32 image in the same process, median of ``--repeat``
runs after a warm-up:

* ``scipy``: the *same* feature set (Gaussian, LoG, gradient magnitude, DoG, structure-tensor
  and Hessian eigenvalues at the same scales) written with ``scipy.ndimage.gaussian_filter``
  (derivative orders), ``gaussian_laplace``, ``gaussian_gradient_magnitude`` and
  ``skimage.feature.hessian_matrix_eigvals`` / ``structure_tensor_eigenvalues``; the largest
  absolute difference to biomip's result is printed (they compute the same numbers);
* ``skimage_mbf``: ``skimage.feature.multiscale_basic_features`` (intensity, edges, texture)
  -- a smaller, cheaper bank (4 maps per scale in 2-D, 5 in 3-D, against 8 / 10; edges are
  Sobel of the smoothed image, texture the Hessian by finite differences), so the ratio per
  feature map is printed too.

Ratios are peer time / biomip time (> 1: biomip faster).  scipy is single-threaded;
biomip uses ``--threads`` torch threads and skimage ``workers=--threads`` (each count given
is run in turn); skimage spaces its scales geometrically between the smallest and largest
of ours (same count and range).  The 1-minute load average before and after each case is
recorded: on a shared machine the timings move with it.

    python benchmarks/bench_pixel_features.py [--threads 1 2] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from biomip.core.atomic import write_json
from biomip.features.pixel import DEFAULT_SIGMAS, DOG_RATIO, STRUCTURE_OUTER, pixel_feature_names, pixel_features

CASES = [(256, 256), (512, 512), (1024, 1024), (48, 96, 96), (64, 128, 128)]


def scipy_bank(img: np.ndarray, sigmas) -> np.ndarray:
    """The same feature set as pixel_features, with scipy.ndimage (float64)."""
    from skimage.feature import hessian_matrix_eigvals, structure_tensor_eigenvalues

    x = img.astype(np.float64)
    d = x.ndim
    unit = [tuple(int(a == b) for b in range(d)) for a in range(d)]
    maps = {f: [] for f in ("gaussian", "log", "gradient", "dog", "structure", "hessian")}
    for s in sigmas:
        g = ndi.gaussian_filter(x, s)
        maps["gaussian"].append([g])
        maps["log"].append([ndi.gaussian_laplace(x, s)])
        maps["gradient"].append([ndi.gaussian_gradient_magnitude(x, s)])
        maps["dog"].append([g - ndi.gaussian_filter(x, DOG_RATIO * s)])
        grad = [ndi.gaussian_filter(x, s, order=o) for o in unit]
        st = [ndi.gaussian_filter(grad[a] * grad[b], STRUCTURE_OUTER * s) for a in range(d) for b in range(a, d)]
        maps["structure"].append(list(structure_tensor_eigenvalues(st)))
        h = [ndi.gaussian_filter(x, s, order=tuple(u + v for u, v in zip(unit[a], unit[b])))
             for a in range(d) for b in range(a, d)]
        maps["hessian"].append(list(hessian_matrix_eigvals(h)))
    return np.stack([m for fam in maps.values() for per_s in fam for m in per_s])


def _median_s(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the JSON here")
    args = ap.parse_args()
    from skimage.feature import multiscale_basic_features

    sigmas = DEFAULT_SIGMAS
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rng = np.random.default_rng(0)
        for shape in CASES:
            img = ndi.gaussian_filter(rng.normal(size=shape), 2.0).astype(np.float32)
            ours = pixel_features(img, sigmas, device="cpu")
            ref = scipy_bank(img, sigmas)
            diff = float(np.abs(ours - ref).max())
            scale = float(np.abs(ref).max())
            load0 = os.getloadavg()[0]
            t_ours = _median_s(lambda: pixel_features(img, sigmas, device="cpu"), args.repeat)
            t_scipy = _median_s(lambda: scipy_bank(img, sigmas), args.repeat)
            mbf = lambda: multiscale_basic_features(img, sigma_min=min(sigmas), sigma_max=max(sigmas),  # noqa: E731
                                                    num_sigma=len(sigmas), workers=threads)
            n_mbf = mbf().shape[-1]
            t_mbf = _median_s(mbf, args.repeat)
            n_ours = len(pixel_feature_names(sigmas, ndim=len(shape)))
            rows.append({"threads": threads, "shape": list(shape), "n_features": n_ours,
                         "max_abs_diff_vs_scipy": diff, "max_abs_feature": scale,
                         "biomip_s": round(t_ours, 4), "scipy_s": round(t_scipy, 4),
                         "skimage_mbf_s": round(t_mbf, 4), "skimage_mbf_n_features": int(n_mbf),
                         "ratio_scipy_same_features": round(t_scipy / t_ours, 2),
                         "ratio_skimage_mbf": round(t_mbf / t_ours, 2),
                         "ratio_skimage_mbf_per_feature": round((t_mbf / n_mbf) / (t_ours / n_ours), 2),
                         "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]})
            print(json.dumps(rows[-1]), flush=True)
    out = {"benchmark": "pixel_features", "threads": args.threads, "sigmas": list(sigmas), "device": "cpu",
           "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(), "rows": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
