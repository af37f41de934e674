"""Speed of :meth:`biomip.reconstruct.GaussianVolume.voxelize` (forward and forward +
backward), the step that puts 3-D Gaussian splatting's Gaussians on a voxel grid (the TV
term and ``render="projector"`` of :func:`~biomip.reconstruct.gaussian_reconstruction`).

The Gaussians are drawn like the reconstruction's FDK start (``_init_from_volume``):
centres spread over the central half of the grid's volume, scales 0.55 x their mean
spacing, perturbed (log-normal, s.d. 0.2) into anisotropic, rotated ones as a fit leaves them.  The peer is biomip's previous
kernel, which gathered a 3 x 3 precision and a centre per (Gaussian, voxel) pair
(``--reference``: the pair-gather formulation kept in this file), timed in the same run;
both are checked equal first.  Prints JSON.

    python benchmarks/bench_voxelize.py --size 64 --gaussians 48000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np
import torch

from biomip.reconstruct.gaussians import GaussianVolume, _grid_frame, _voxel_windows, _window_chunks


def reference_voxelize(self, grid_shape, spacing=1.0, origin=None, direction=None, chunk_points=2_000_000,
                       average=False):
    """The previous kernel (biomip before this benchmark): the same windows and chunks, but
    one gathered 3 x 3 precision and centre per (Gaussian, voxel) pair."""
    shape, sizes, org, M = _grid_frame(grid_shape, spacing, origin, direction)
    dev, dt = self.means.device, self.means.dtype
    n_vox = int(np.prod(shape))
    out = torch.zeros(n_vox, device=dev, dtype=dt)
    Mt = torch.as_tensor(M, device=dev, dtype=dt)
    Minv = torch.as_tensor(np.linalg.inv(M), device=dev, dtype=dt)
    orgt = torch.as_tensor(org, device=dev, dtype=dt)
    rho, P, Sb = self._voxel_gaussians(Mt, average)
    mu_idx = (self.means - orgt) @ Minv.T
    c2 = self.cutoff ** 2
    with torch.no_grad():
        cov_idx = Minv @ (self.covariances() if Sb is None else Sb).detach() @ Minv.T
        half, ids, hmax, whole = _voxel_windows(mu_idx.detach(), cov_idx, sizes, self.cutoff)
        if average:
            v_vox = float(abs(np.linalg.det(M)))
            inside_cut = math.erf(self.cutoff / math.sqrt(2)) - math.sqrt(2 / math.pi) * self.cutoff * math.exp(-c2 / 2)
        size_t = torch.as_tensor(sizes, device=dev).to(torch.int64)
    for start, stop, H in _window_chunks(hmax, chunk_points):
        g = ids[start:stop]
        with torch.no_grad():
            r = torch.arange(-H, H + 1, device=dev)
            offs = torch.stack(torch.meshgrid(r, r, r, indexing="ij")[::-1], -1).reshape(-1, 3)
            base = torch.round(mu_idx[g].detach()).to(torch.int64)
            idx = base[:, None, :] + offs[None]
            ingrid = torch.all((idx >= 0) & (idx < size_t), dim=-1)
            ok = torch.all(offs[None].abs() <= torch.ceil(half[g])[:, None, :].to(torch.int64), dim=-1)
            if not average:
                ok &= ingrid
            b, w = torch.nonzero(ok, as_tuple=True)
            vi = idx[b, w]
            flat = (vi[:, 2] * shape[1] + vi[:, 1]) * shape[2] + vi[:, 0]
        gb = g[b]                                      # the per-pair gathers the new kernel avoids
        dx = (vi.to(dt) - mu_idx[gb]) @ Mt.T
        q = torch.einsum("ki,kij,kj->k", dx, P[gb], dx)
        shape_val = torch.exp(-0.5 * q) * (q <= c2).to(dt)
        val = rho[gb] * shape_val
        if average:
            tot = torch.zeros(len(g), device=dev, dtype=dt).index_add(0, b, shape_val)
            want = (2 * math.pi) ** 1.5 * torch.sqrt(torch.linalg.det(Sb[g])) * (inside_cut / v_vox)
            fac = torch.where(whole[g], want / tot.clamp_min(1e-30), torch.ones_like(tot))
            inside = ingrid[b, w]
            val, flat = (val * fac[b])[inside], flat[inside]
        out = out.index_add(0, flat, val)
    return out.reshape(shape)


def model(n: int, size: int, spacing: float, seed: int, occupancy: float = 0.5) -> GaussianVolume:
    """``n`` Gaussians spread over the central ``occupancy`` of the grid's volume (an
    object, not the air around it), sized like the reconstruction's start."""
    rng = np.random.default_rng(seed)
    half = 0.5 * size * spacing * occupancy ** (1 / 3)
    means = rng.uniform(-half, half, (n, 3))
    h = spacing * (occupancy * size ** 3 / n) ** (1 / 3)                         # mean spacing of the centres
    sigma = max(0.6 * spacing, 0.55 * h)
    scales = sigma * np.exp(rng.normal(0.0, 0.2, (n, 3)))
    quats = rng.normal(size=(n, 4))
    return GaussianVolume(means, scales, rng.uniform(0.05, 1.0, n), quats=quats)


def timed(fn, g, repeats):
    best_f = best_fb = float("inf")
    for _ in range(repeats):
        g.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        best_f = min(best_f, time.perf_counter() - t0)
        t0 = time.perf_counter()
        v = fn()
        (v * v).sum().backward()
        best_fb = min(best_fb, time.perf_counter() - t0)
    return best_f, best_fb


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64, help="grid size n (n^3 voxels)")
    ap.add_argument("--gaussians", type=int, default=48000)
    ap.add_argument("--spacing", type=float, default=1.0, help="voxel size in mm")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = model(args.gaussians, args.size, args.spacing, args.seed)
    shape = (args.size,) * 3
    out = {"benchmark": "voxelize", "size": args.size, "gaussians": args.gaussians, "spacing_mm": args.spacing,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
           "command": "python benchmarks/bench_voxelize.py " + " ".join(argv or __import__("sys").argv[1:]),
           "modes": {}}
    for average in (False, True):
        with torch.no_grad():
            a = g.voxelize(shape, spacing=args.spacing, average=average)
            b = reference_voxelize(g, shape, spacing=args.spacing, average=average)
        err = float((a - b).abs().max() / b.abs().max())
        tb = timed(lambda: g.voxelize(shape, spacing=args.spacing, average=average), g, args.repeats)
        tr = timed(lambda: reference_voxelize(g, shape, spacing=args.spacing, average=average), g, args.repeats)
        out["modes"]["average" if average else "centre"] = {
            "max_rel_difference": err,
            "biomip_s": {"forward": round(tb[0], 3), "forward_backward": round(tb[1], 3)},
            "reference_s": {"forward": round(tr[0], 3), "forward_backward": round(tr[1], 3)},
            "speedup": {"forward": round(tr[0] / tb[0], 2), "forward_backward": round(tr[1] / tb[1], 2)}}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
