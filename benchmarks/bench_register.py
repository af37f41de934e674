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

``--case mni152``: the real MNI152 T1 template at ``--spacing`` mm (default 2) warped by
a random smooth diffeomorphism (largest displacement 4 mm, length scale ``--smoothness``
mm, default 1/8 of the extent; ``biomip.data.random_deformation``, seed 0), the EPE in
mm inside the brain mask.  With ``--former-defaults`` biomip's B-spline and SVF also run
with the defaults they had before issue 14 (16-voxel control spacing; no iterations on
the full-resolution SVF level above 64^3 voxels), for a before / after comparison.

Ratios are peer time / biomip time (> 1: biomip faster).  Prints JSON (``--json FILE``
also writes it).

    python benchmarks/bench_register.py [--case phantom|mni152] [--size 128] [--spacing 2]
        [--smoothness MM] [--device cpu|cuda] [--only demons bspline svf] [--former-defaults]
        [--json FILE]
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


def make_mni(spacing: float = 2.0, smoothness=None, max_disp: float = 4.0, seed: int = 0):
    pair = biomip.data.mni152_pair("deformable", spacing=spacing)
    fixed = pair.fixed
    d = biomip.data.random_deformation(fixed, max_displacement=max_disp, smoothness=smoothness, seed=seed)
    moving = biomip.ops.warp(fixed, d.inverse)
    return fixed, moving, d.displacement.numpy(), np.asarray(pair.mask)


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
def run(n: int, device: str, only, case: str = "phantom", spacing: float = 2.0, smoothness=None,
        former: bool = False) -> dict:
    if case == "mni152":
        fixed, moving, gt, mask = make_mni(spacing, smoothness)
    else:
        fixed, moving, gt, mask = make_case(n)
    sp = tuple(float(s) for s in fixed.spacing)
    # the peers' wrappers below pass spacing and origin only: give them the images on an
    # identity-direction grid and turn their fields back to the world frame, u = D u_grid
    D = np.asarray(fixed.direction, dtype=np.float64)
    pfixed, pmoving = (biomip.Image(im.numpy(), spacing=im.spacing, origin=im.origin) for im in (fixed, moving))

    def world(u):
        return np.tensordot(D, np.asarray(u, np.float64), axes=(1, 0))

    out = {"case": case, "shape": list(fixed.shape), "spacing": list(sp), "smoothness": smoothness,
           "size": n, "device": device, "identity_epe": round(epe(np.zeros_like(gt), gt, mask), 4),
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
            t, u = sitk_demons(pfixed, pmoving)
            u = world(u)
            add(summary("SimpleITK DemonsRegistrationFilter (50 it)", t, u, gt, mask, sp))
            out["ratios"]["demons_vs_simpleitk"] = round(t / res[-3]["seconds"], 2)
        except ImportError as e:
            out["skipped_simpleitk"] = str(e)
    if "bspline" in only:
        t, r = best_of(lambda: R.bspline(fx, mv, metric="mse"), 1)
        add(summary("biomip B-spline FFD (MSE)", t, r.displacement.numpy(), gt, mask, sp))
        t, r = best_of(lambda: R.bspline(fx, mv, metric="lncc"), 1)                 # the defaults
        add(summary("biomip B-spline FFD (LNCC)", t, r.displacement.numpy(), gt, mask, sp,
                    control_spacing_mm=r.params["control_spacing"]))
        if former:
            t, r = best_of(lambda: R.bspline(fx, mv, metric="lncc", control_spacing_voxels=16), 1)
            add(summary("biomip B-spline FFD (LNCC, former default: 16 voxels)", t, r.displacement.numpy(), gt,
                        mask, sp, control_spacing_mm=r.params["control_spacing"]))
        try:
            t_reg, t_fld, u = elastix_bspline(pfixed, pmoving)
            u = world(u)
            add(summary("elastix B-spline (3 levels) + transformix field", t_reg + t_fld, u, gt, mask, sp,
                        registration_seconds=round(t_reg, 3), field_seconds=round(t_fld, 3)))
            b = next(e for e in res if e["method"] == "biomip B-spline FFD (LNCC)")
            out["ratios"]["bspline_vs_elastix"] = round((t_reg + t_fld) / b["seconds"], 2)
        except ImportError as e:
            out["skipped_elastix"] = str(e)
    if "svf" in only:
        t, r = best_of(lambda: R.svf(fx, mv), 1)
        add(summary("biomip SVF (LNCC)", t, r.displacement.numpy(), gt, mask, sp, iterations=r.params["iterations"]))
        if former:
            levels_its = (100, 60, 0) if int(np.prod(fixed.shape)) > 64 ** 3 else (100, 60, 20)
            t, r = best_of(lambda: R.svf(fx, mv, iterations=levels_its), 1)
            add(summary("biomip SVF (LNCC, former default schedule)", t, r.displacement.numpy(), gt, mask, sp,
                        iterations=list(levels_its)))
        try:
            t_reg, t_fld, u = ants_syn(pfixed, pmoving)
            u = world(u)
            add(summary("ANTs SyN (defaults) + composed field", t_reg + t_fld, u, gt, mask, sp,
                        registration_seconds=round(t_reg, 3), field_seconds=round(t_fld, 3)))
            b = next(e for e in res if e["method"] == "biomip SVF (LNCC)")
            out["ratios"]["svf_vs_ants_syn"] = round((t_reg + t_fld) / b["seconds"], 2)
        except ImportError as e:
            out["skipped_ants"] = str(e)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="+", default=["demons", "bspline", "svf"])
    p.add_argument("--case", default="phantom", choices=["phantom", "mni152"])
    p.add_argument("--spacing", type=float, default=2.0, help="mni152: voxel size, mm")
    p.add_argument("--smoothness", type=float, default=None, help="mni152: deformation length scale, mm")
    p.add_argument("--former-defaults", action="store_true", help="also run the pre-issue-14 defaults")
    p.add_argument("--json", default=None, help="also write the result to this file")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    out = {"benchmark": "register", **info,
           **run(a.size, a.device, a.only, a.case, a.spacing, a.smoothness, a.former_defaults)}
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
