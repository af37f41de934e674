"""Speed on a busy machine: biomip and its peer, quiet and beside CPU-bound processes.

Every workload runs in its own fresh process (so biomip's thread policy and the peer's
defaults are each what a user gets), first quiet, then with ``--hogs`` CPU-bound Python
processes (``while True: pass``) running on the same cores.  The figure of merit is the
slowdown factor ``loaded / quiet`` of each side, and their ratio ``biomip slowdown / peer
slowdown`` (target: at most 1.5).  Times are medians of ``--repeat`` runs after one
untimed warm-up (numba compile, caches).

Workloads (biomip / peer):

* ``demons``  -- diffeomorphic demons, 50 iterations, on the real MNI152 T1 pair (2 mm,
  random smooth field) / SimpleITK ``DiffeomorphicDemonsRegistrationFilter``, same settings;
* ``svf``     -- ``register.svf`` with its defaults on the same pair / the same SimpleITK
  demons (the dense registration a user would otherwise run);
* ``rigid``   -- ``register.linear(..., "rigid", metric="mi")`` on the real MR pair
  (nibabel's ``anatomical.nii`` and its moved copy) / SimpleITK Mattes-MI rigid,
  3 levels (shrink 4, 2, 1; smoothing 2, 1, 0 voxels), regular-step gradient descent;
* ``fbp``     -- parallel-beam FBP of a 256^2 Shepp-Logan, 180 views / ``skimage.transform.iradon``;
* ``rl``      -- 30 Richardson-Lucy iterations on the SeReNet quick light field / 30
  iterations of ``skimage.restoration.richardson_lucy`` on a 32 x 128 x 128 volume (serial);
* ``rl-sitk`` -- the same biomip run / SimpleITK's multi-threaded
  ``RichardsonLucyDeconvolutionImageFilter``, 30 iterations, same volume and PSF;
* ``serenet`` -- 30 SeReNet training steps (quick configuration) / 30 training steps of
  MONAI's ``BasicUNet`` (2-D, features 8-64, 4 x 1 x 64 x 64, Adam), plain PyTorch defaults.

    python benchmarks/bench_under_load.py [--hogs 2] [--repeat 3] [--only demons rigid] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

WORKLOADS = ("demons", "svf", "rigid", "fbp", "rl", "rl-sitk", "serenet")
HOG = "while True: pass"


# ----------------------------------------------------------------------------- workloads
def _mni_pair():
    import biomip

    p = biomip.data.mni152_pair("deformable")
    return p.fixed, p.moving


def _sitk_demons(fixed, moving, iterations=50):
    import SimpleITK as sitk

    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    flt = sitk.DiffeomorphicDemonsRegistrationFilter()
    flt.SetNumberOfIterations(iterations)
    flt.SetStandardDeviations(1.0)
    return lambda: flt.Execute(f, m)


def setup(name: str, side: str):
    """Build the work (untimed) and return a zero-argument callable that does it."""
    if side == "biomip":
        import biomip  # noqa: F401  -- first, as a user would: its thread policy applies
    if name in ("demons", "svf"):
        import biomip

        fixed, moving = _mni_pair()
        if side == "peer":
            return _sitk_demons(fixed, moving)
        if name == "demons":
            return lambda: biomip.register.demons(fixed, moving, iterations=50)
        return lambda: biomip.register.svf(fixed, moving)
    if name == "rigid":
        import biomip

        fixed = biomip.data.load("t1-anatomical")
        moving = biomip.data.load("t1-anatomical-moved")
        if side == "biomip":
            return lambda: biomip.register.linear(fixed, moving, "rigid", metric="mi")
        import SimpleITK as sitk

        f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
        m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)

        def peer():
            reg = sitk.ImageRegistrationMethod()
            reg.SetMetricAsMattesMutualInformation(32)
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(0.2, seed=0)
            reg.SetInterpolator(sitk.sitkLinear)
            reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200)
            reg.SetOptimizerScalesFromPhysicalShift()
            reg.SetShrinkFactorsPerLevel([4, 2, 1])
            reg.SetSmoothingSigmasPerLevel([2, 1, 0])
            init = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                                     sitk.CenteredTransformInitializerFilter.GEOMETRY)
            reg.SetInitialTransform(init, inPlace=False)
            return reg.Execute(f, m)
        return peer
    if name == "fbp":
        import numpy as np
        from skimage.data import shepp_logan_phantom
        from skimage.transform import iradon, radon, rescale

        ph = rescale(shepp_logan_phantom(), 256 / 400, anti_aliasing=True)
        theta = np.linspace(0.0, 180.0, 180, endpoint=False)
        sino = radon(ph, theta, circle=True)
        if side == "peer":
            return lambda: iradon(sino, theta, circle=True)
        import torch

        from biomip import reconstruct as R

        op = R.ParallelProjector(R.ParallelBeam.like_skimage(theta, ph.shape, circle=True), ph.shape)
        y = torch.as_tensor(sino.T.astype(np.float32).copy())
        return lambda: R.fbp(y, op, circle=True)
    if name in ("rl", "rl-sitk"):
        import numpy as np

        if side == "peer" and name == "rl-sitk":
            import SimpleITK as sitk

            rng = np.random.default_rng(0)
            z, yy, xx = np.mgrid[-3:4, -3:4, -3:4]
            psf = np.exp(-(xx ** 2 + yy ** 2 + z ** 2) / 4.0)
            vol = sitk.GetImageFromArray((rng.random((32, 128, 128)) + 0.1).astype(np.float32))
            kernel = sitk.GetImageFromArray((psf / psf.sum()).astype(np.float32))
            flt = sitk.RichardsonLucyDeconvolutionImageFilter()
            flt.SetNumberOfIterations(30)
            return lambda: flt.Execute(vol, kernel)
        if side == "peer":
            from skimage.restoration import richardson_lucy

            rng = np.random.default_rng(0)
            z, yy, xx = np.mgrid[-3:4, -3:4, -3:4]
            psf = np.exp(-(xx ** 2 + yy ** 2 + z ** 2) / 4.0)
            psf /= psf.sum()
            vol = rng.random((32, 128, 128)) + 0.1
            return lambda: richardson_lucy(vol, psf, num_iter=30, clip=False)
        from biomip.pipelines.serenet import SeReNetConfig, simulate
        from biomip.reconstruct.iterative import richardson_lucy

        sim = simulate(SeReNetConfig.quick())
        y = sim.test_measurements[0]
        return lambda: richardson_lucy(y, sim.projector, iterations=30)
    if name == "serenet":
        if side == "peer":
            import torch
            from monai.networks.nets import BasicUNet

            torch.manual_seed(0)
            net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(8, 8, 16, 32, 64, 8))
            opt = torch.optim.Adam(net.parameters(), 1e-3)
            x = torch.rand(4, 1, 64, 64)

            def peer():
                for _ in range(30):
                    opt.zero_grad()
                    loss = (net(x) - x).abs().mean()
                    loss.backward()
                    opt.step()
            return peer
        from biomip.pipelines.serenet import SeReNetConfig, simulate, train

        cfg = SeReNetConfig.quick(steps=30)
        sim = simulate(cfg)
        return lambda: train(cfg, sim, progress=False)
    raise SystemExit(f"unknown workload {name!r}")


def worker(name: str, side: str, repeat: int) -> None:
    fn = setup(name, side)
    fn()                                                           # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    info = {"seconds": statistics.median(times), "all": [round(t, 4) for t in times]}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    print("RESULT " + json.dumps(info), flush=True)


# ----------------------------------------------------------------------------- driver
def measure(name: str, side: str, repeat: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, side, "--repeat", str(repeat)]
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (out.stderr or out.stdout)[-600:]}


class Hogs:
    """``n`` CPU-bound processes for the duration of a ``with`` block."""

    def __init__(self, n: int):
        self.n = n
        self.procs = []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hogs", type=int, default=2, help="CPU-bound processes beside the work (default 2)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    ap.add_argument("--json", help="also write the JSON here")
    ap.add_argument("--worker", nargs=2, metavar=("NAME", "SIDE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker[0], a.worker[1], a.repeat)
        return {}
    out = {"machine": platform.platform(), "cores": len(os.sched_getaffinity(0)), "hogs": a.hogs,
           "repeat": a.repeat, "loadavg_start": open("/proc/loadavg").read().split()[:3], "workloads": {}}
    for name in a.only:
        rec = {}
        for side in ("biomip", "peer"):                            # quiet, then loaded, side by side
            rec[side] = {"quiet": measure(name, side, a.repeat, a.timeout)}
        with Hogs(a.hogs):
            for side in ("biomip", "peer"):
                rec[side]["loaded"] = measure(name, side, a.repeat, a.timeout)
        for side in ("biomip", "peer"):
            q, ld = rec[side]["quiet"].get("seconds"), rec[side]["loaded"].get("seconds")
            rec[side]["slowdown"] = round(ld / q, 2) if q and ld else None
        b, p = rec["biomip"]["slowdown"], rec["peer"]["slowdown"]
        rec["slowdown_ratio"] = round(b / p, 2) if b and p else None
        rec["target_met"] = rec["slowdown_ratio"] is not None and rec["slowdown_ratio"] <= 1.5
        out["workloads"][name] = rec
        print(json.dumps({name: rec}), flush=True)
    out["all_targets_met"] = all(r["target_met"] for r in out["workloads"].values())
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return out


if __name__ == "__main__":
    main()
