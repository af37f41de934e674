"""Registration benchmark: biomip vs SimpleITK demons, elastix B-spline and ANTs SyN.

The case of issue 4: a smoothed 3-D Shepp-Logan volume (default 128^3, 1 mm voxels)
warped by a smooth random diffeomorphic field with a largest displacement of 4 voxels
(``biomip.data.random_deformation``, seed 0).  Every method registers ``moving`` onto
``fixed`` and returns a dense displacement field (fixed -> moving, mm, LPS); the metric
is the end-point error (EPE, voxels) inside the object (``fixed > 0.05``), its time is
wall clock including the dense-field output, all in this one process on this machine.

Peers (installed by ``make bench-peers``; each is skipped with a note if missing):

* SimpleITK ``DemonsRegistrationFilter``, 50 iterations, standard deviation 1.0;
* elastix (``itk-elastix``): default 3-resolution B-spline parameter map, plus the
  dense field from transformix (both timed);
* ANTs (``antspyx``): ``ants.registration(type_of_transform="SyN")`` with defaults,
  plus the composed dense field.

Ratios are peer time / biomip time (> 1: biomip faster).  Prints JSON.

    python benchmarks/bench_register.py [--size 128] [--device cpu|cuda] [--only demons bspline svf]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings

import numpy as np
import torch

import biomip
from biomip import register as R
from biomip.metrics import jacobian_stats


def make_case(n: int, max_disp: float = 4.0, seed: int = 0):
    fixed = biomip.ops.gaussian_smooth(biomip.data.shepp_logan((n, n, n)), 1.0)
    d = biomip.data.random_deformation(fixed, max_displacement=max_disp, seed=seed)
    moving = biomip.ops.warp(fixed, d.inverse)
    return fixed, moving, d.displacement.numpy(), fixed.numpy() > 0.05


def epe(u, gt, mask) -> float:
    return float(np.linalg.norm(np.asarray(u, np.float64) - gt, axis=0)[mask].mean())


def summary(name, seconds, u, gt, mask, spacing, **extra):
    u = np.asarray(u, dtype=np.float32)
    js = jacobian_stats(u, spacing=spacing)
    return {"method": name, "seconds": round(seconds, 3), "epe": round(epe(u, gt, mask), 4),
            "folding_fraction": float(js["folding_fraction"]), "jac_min": round(float(js["min"]), 4), **extra}


# ----------------------------------------------------------------------------- peers
def sitk_demons(fixed, moving, iterations=50):
    import SimpleITK as sitk

    f, m = fixed.to_sitk(), moving.to_sitk()
    f, m = sitk.Cast(f, sitk.sitkFloat32), sitk.Cast(m, sitk.sitkFloat32)
    t0 = time.perf_counter()
    flt = sitk.DemonsRegistrationFilter()
    flt.SetNumberOfIterations(iterations)
    flt.SetStandardDeviations(1.0)
    fld = flt.Execute(f, m)
    t = time.perf_counter() - t0
    u = np.moveaxis(sitk.GetArrayFromImage(fld), -1, 0)          # (3, z, y, x), x component first
    return t, u


def elastix_bspline(fixed, moving):
    import itk

    f = itk.image_from_array(np.ascontiguousarray(fixed.numpy(), dtype=np.float32))
    m = itk.image_from_array(np.ascontiguousarray(moving.numpy(), dtype=np.float32))
    for im, ref in ((f, fixed), (m, moving)):
        im.SetSpacing(tuple(float(s) for s in ref.spacing))
        im.SetOrigin(tuple(float(o) for o in ref.origin))
    params = itk.ParameterObject.New()
    params.AddParameterMap(params.GetDefaultParameterMap("bspline", 3))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _, tparams = itk.elastix_registration_method(f, m, parameter_object=params, log_to_console=False,
                                                     output_directory=tmp)
        t_reg = time.perf_counter() - t0
        t0 = time.perf_counter()
        fld = itk.transformix_deformation_field(m, tparams, log_to_console=False, output_directory=tmp)
        t_fld = time.perf_counter() - t0
    u = np.moveaxis(itk.array_from_image(fld), -1, 0)
    return t_reg, t_fld, u


def ants_syn(fixed, moving):
    import ants

    def to_ants(img):
        a = ants.from_numpy(np.ascontiguousarray(np.transpose(img.numpy(), (2, 1, 0)), dtype=np.float32))
        a.set_spacing(tuple(float(s) for s in img.spacing))
        a.set_origin(tuple(float(o) for o in img.origin))
        return a

    f, m = to_ants(fixed), to_ants(moving)
    t0 = time.perf_counter()
    reg = ants.registration(fixed=f, moving=m, type_of_transform="SyN")
    t_reg = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()        # antsApplyTransforms --output [field, 1]: the composed dense field
        path = ants.apply_transforms(f, m, reg["fwdtransforms"], compose=os.path.join(tmp, "comp"))
        fld = ants.image_read(path)
        t_fld = time.perf_counter() - t0
        u = np.transpose(fld.numpy(), (3, 2, 1, 0))           # (x, y, z, 3) -> (3, z, y, x)
    return t_reg, t_fld, u


# ----------------------------------------------------------------------------- runs
def run(n: int, device: str, only) -> dict:
    fixed, moving, gt, mask = make_case(n)
    sp = tuple(float(s) for s in fixed.spacing)
    out = {"size": n, "device": device, "identity_epe": round(epe(np.zeros_like(gt), gt, mask), 4),
           "max_displacement": round(float(np.linalg.norm(gt, axis=0).max()), 3), "results": [], "ratios": {}}
    fx, mv = (fixed.to(device), moving.to(device)) if device != "cpu" else (fixed, moving)
    res = out["results"]

    def add(entry):
        res.append(entry)
        print(json.dumps(entry), flush=True)

    def best_of(fn, repeat):
        best = None
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = fn()
            if device != "cpu":
                torch.cuda.synchronize()
            t = time.perf_counter() - t0
            if best is None or t < best[0]:
                best = (t, r)
        return best

    if "demons" in only:
        t, r = best_of(lambda: R.demons(fx, mv, iterations=50, variant="thirion", sigma_diffusion=1.0), 2)
        add(summary("biomip demons (thirion, 50 it)", t, r.displacement.numpy(), gt, mask, sp))
        t, r = best_of(lambda: R.demons(fx, mv, iterations=50, variant="diffeomorphic", sigma_diffusion=1.0), 2)
        add(summary("biomip demons (diffeomorphic, 50 it)", t, r.displacement.numpy(), gt, mask, sp))
        try:
            t, u = sitk_demons(fixed, moving)
            add(summary("SimpleITK DemonsRegistrationFilter (50 it)", t, u, gt, mask, sp))
            out["ratios"]["demons_vs_simpleitk"] = round(t / res[-3]["seconds"], 2)
        except ImportError as e:
            out["skipped_simpleitk"] = str(e)
    if "bspline" in only:
        t, r = best_of(lambda: R.bspline(fx, mv, metric="mse"), 1)
        add(summary("biomip B-spline FFD (MSE)", t, r.displacement.numpy(), gt, mask, sp))
        t, r = best_of(lambda: R.bspline(fx, mv, metric="lncc"), 1)                 # the defaults
        add(summary("biomip B-spline FFD (LNCC)", t, r.displacement.numpy(), gt, mask, sp))
        try:
            t_reg, t_fld, u = elastix_bspline(fixed, moving)
            add(summary("elastix B-spline (3 levels) + transformix field", t_reg + t_fld, u, gt, mask, sp,
                        registration_seconds=round(t_reg, 3), field_seconds=round(t_fld, 3)))
            out["ratios"]["bspline_vs_elastix"] = round((t_reg + t_fld) / res[-2]["seconds"], 2)
        except ImportError as e:
            out["skipped_elastix"] = str(e)
    if "svf" in only:
        t, r = best_of(lambda: R.svf(fx, mv), 1)
        add(summary("biomip SVF (LNCC)", t, r.displacement.numpy(), gt, mask, sp))
        try:
            t_reg, t_fld, u = ants_syn(fixed, moving)
            add(summary("ANTs SyN (defaults) + composed field", t_reg + t_fld, u, gt, mask, sp,
                        registration_seconds=round(t_reg, 3), field_seconds=round(t_fld, 3)))
            out["ratios"]["svf_vs_ants_syn"] = round((t_reg + t_fld) / res[-2]["seconds"], 2)
        except ImportError as e:
            out["skipped_ants"] = str(e)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="+", default=["demons", "bspline", "svf"])
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    print(json.dumps({"benchmark": "register", **info, **run(a.size, a.device, a.only)}, indent=1))


if __name__ == "__main__":
    main()
