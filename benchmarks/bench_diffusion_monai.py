"""Diffusion U-Net speed: biomip's :class:`~biomip.nn.diffusion.DiffusionUNet` against MONAI's
``DiffusionModelUNet`` + ``DDIMScheduler`` (issue 16), same process, same device, same data.

Models (both with about the same number of parameters, printed; within 10 %):

* MONAI ``DiffusionModelUNet(channels=(32, 64, 64), attention_levels=(False, False, True),
  num_res_blocks=1, norm_num_groups=32, num_head_channels=32)`` -- the guided-diffusion /
  LDM layout: per decoder level ``num_res_blocks + 1`` residual blocks, each on the
  concatenation of one encoder feature map (every encoder block's output is a skip), 3x3
  stride-2 convolutions down, nearest upsampling + 3x3 convolution up, an attention mid
  block, time embedding added after the first convolution of each block.
* biomip ``DiffusionUNet(features=(32, 64, 128), attention=(False, False, True),
  res_blocks=1, groups=8)`` -- one skip per level (one concatenation), one residual block
  per decoder level, 2x2(x2) stride-2 convolutions down / transposed convolutions up,
  FiLM scale-shift of the embedding after the second GroupNorm, a mid block with
  attention.  It spends its parameters at the coarse level (128 channels, where a
  convolution is cheap) instead of on extra full-resolution blocks: at the same parameter
  count it runs fewer multiply-adds at full resolution.  That is the architecture
  difference behind the speed figures; it is a design choice, not a like-for-like kernel
  comparison.  Attention is at the coarsest level (16x16 at 64x64 input) in both.

Timed (medians over runs of the two interleaved, so machine noise hits both alike):

(a) one training step: forward at random timesteps + MSE on the noise + backward + Adam;
(b) DDIM sampling, ``--steps`` (50) steps: biomip's :func:`~biomip.nn.diffusion.ddim_sample`
    (inference mode) against MONAI's ``DDIMScheduler.step`` loop under ``torch.no_grad``
    (as in MONAI's tutorials / ``DiffusionInferer.sample``).

2-D: batch 8 of 1 x 64 x 64.  3-D (``--no-3d`` skips it): batch 2 of 1 x 32 x 32 x 32 with
the same layouts, biomip with ``features=(32, 64, 136)`` there (parameter counts within 10 %;
biomip's 3-D convolutions are :class:`biomip.nn.layers.Conv3d`).
Both run on the same torch threads (``--threads``, default: torch's current count; biomip's
load-adaptive thread governor is switched off for the run).

MONAI's attention needs ``einops``; when it is not installed a minimal stand-in for the
three ``einops.layers.torch.Rearrange`` patterns MONAI uses (reshape + permute, as einops
does) is registered, and the JSON says so.

Output: JSON with the parameter counts, the median times (s), and ratios
``monai / biomip`` (biomip faster: ratio > 1).

    python benchmarks/bench_diffusion_monai.py [--quick] [--repeats 7] [--steps 50] [--no-3d]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types

import torch


# ---------------------------------------------------------------------------- einops stand-in
def _ensure_einops() -> bool:
    """Register a minimal ``einops.layers.torch.Rearrange`` when einops is missing; True if so."""
    try:
        import einops.layers.torch  # noqa: F401
        return False
    except ImportError:
        pass

    class Rearrange(torch.nn.Module):
        def __init__(self, pattern: str, **sizes):
            super().__init__()
            self.pattern, self.sizes = pattern, sizes

        def forward(self, x):
            p, s = self.pattern, self.sizes
            if p == "b h (qkv l d) -> qkv b l h d":
                b, h, c = x.shape
                return x.view(b, h, s["qkv"], s["l"], c // (s["qkv"] * s["l"])).permute(2, 0, 3, 1, 4)
            if p == "b h (l d) -> b l h d":
                b, h, c = x.shape
                return x.view(b, h, s["l"], c // s["l"]).permute(0, 2, 1, 3)
            if p == "b l h d -> b h (l d)":
                b, heads, h, d = x.shape
                return x.permute(0, 2, 1, 3).reshape(b, h, heads * d)
            raise NotImplementedError(p)

    pkg = types.ModuleType("einops")
    layers = types.ModuleType("einops.layers")
    lt = types.ModuleType("einops.layers.torch")
    lt.Rearrange = Rearrange
    pkg.layers, layers.torch = layers, lt
    sys.modules.update({"einops": pkg, "einops.layers": layers, "einops.layers.torch": lt})
    return True


# ---------------------------------------------------------------------------- models
def build(sdim: int):
    from monai.networks.nets import DiffusionModelUNet

    from biomip.core.rng import seeded
    from biomip.nn.diffusion import DiffusionUNet

    # the same layout in 3-D; 136 coarse channels there keep the parameter counts within 10 %
    ours = DiffusionUNet(sdim=sdim, in_channels=1, out_channels=1, features=(32, 64, 128 if sdim == 2 else 136),
                         attention=(False, False, True), res_blocks=1, groups=8, seed=0)
    with seeded(0):
        peer = DiffusionModelUNet(spatial_dims=sdim, in_channels=1, out_channels=1, num_res_blocks=1,
                                  channels=(32, 64, 64), attention_levels=(False, False, True), norm_num_groups=32,
                                  num_head_channels=32)
    return ours, peer


def n_params(m) -> int:
    return int(sum(p.numel() for p in m.parameters()))


def train_step_fn(model, shape, biomip: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        model.train()
        t = torch.randint(0, 1000, (shape[0],), generator=g)
        noise = torch.randn(shape, generator=g)
        xt = x0 + 0.1 * noise       # the noising formula costs the same for both; not what is timed
        out = model(xt, t) if biomip else model(x=xt, timesteps=t)
        loss = torch.nn.functional.mse_loss(out, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def sample_fn(model, shape, biomip: bool, steps: int):
    if biomip:
        from biomip.nn.diffusion import NoiseSchedule, ddim_sample

        sched = NoiseSchedule(1000, "linear")

        def run():
            model.eval()
            return ddim_sample(model, sched, shape, steps=steps, generator=torch.Generator().manual_seed(0),
                               progress=False)
    else:
        from monai.networks.schedulers import DDIMScheduler

        sched = DDIMScheduler(num_train_timesteps=1000, schedule="linear_beta", clip_sample=True)

        def run():
            model.eval()
            sched.set_timesteps(steps)
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                for t in sched.timesteps:
                    out = model(x, timesteps=torch.full((shape[0],), int(t), dtype=torch.long))
                    x, _ = sched.step(out, t, x)
            return x

    return run


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(name: str, f_ours, f_peer, repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        f_ours()
        f_peer()
    a, b = [], []
    for i in range(repeats):            # interleaved, alternating who goes first
        if i % 2:
            b.append(timed(f_peer))
            a.append(timed(f_ours))
        else:
            a.append(timed(f_ours))
            b.append(timed(f_peer))
    ma, mb = statistics.median(a), statistics.median(b)
    return {f"{name}_biomip_s": round(ma, 4), f"{name}_monai_s": round(mb, 4), f"{name}_ratio": round(mb / ma, 3)}


def case(sdim: int, shape, repeats: int, sample_repeats: int, steps: int) -> dict:
    ours, peer = build(sdim)
    na, nb = n_params(ours), n_params(peer)
    res = {"sdim": sdim, "shape": list(shape), "params_biomip": na, "params_monai": nb,
           "params_rel_diff": round(abs(na - nb) / nb, 4)}
    res.update(compare("train_step", train_step_fn(ours, shape, True), train_step_fn(peer, shape, False), repeats,
                       warmup=2))
    res.update(compare(f"ddim{steps}", sample_fn(ours, shape, True, steps), sample_fn(peer, shape, False, steps),
                       sample_repeats))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repeats, 10 DDIM steps, 2-D only")
    ap.add_argument("--repeats", type=int, default=9, help="timed training steps per model")
    ap.add_argument("--sample-repeats", type=int, default=3, help="timed DDIM runs per model")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-3d", action="store_true")
    ap.add_argument("--no-2d", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.sample_repeats, args.steps, args.no_3d = 5, 2, 10, True
    # biomip's loops shrink their thread pools to the cores free right now (core.threads.ThreadGovernor);
    # off here, so that both libraries run on the same number of threads
    os.environ["BIOMIP_ADAPTIVE_THREADS"] = "0"
    if args.threads:
        torch.set_num_threads(args.threads)
    shim = _ensure_einops()
    out = {"torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
           "einops_stand_in": shim, "device": "cpu", "cases": []}
    import monai

    out["monai"] = monai.__version__
    if not args.no_2d:
        out["cases"].append(case(2, (8, 1, 64, 64), args.repeats, args.sample_repeats, args.steps))
    if not args.no_3d:
        out["cases"].append(case(3, (2, 1, 32, 32, 32), args.repeats, args.sample_repeats, args.steps))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
