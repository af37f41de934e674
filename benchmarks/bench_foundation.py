"""Foundation benchmark: biomip's shared kernels and readers against the library a user
would otherwise call, same process, same data.  Prints JSON (times in seconds, ratio =
peer time / biomip time, so > 1 means biomip is faster, and the largest difference).

    python benchmarks/bench_foundation.py [--size 128] [--repeat 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk
import torch

import biomip
from biomip import Image, ops


def best(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        if isinstance(out, torch.Tensor) and out.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), out


def row(name, peer, t_biomip, t_peer, diff, **extra):
    return {"case": name, "peer": peer, "biomip_s": round(t_biomip, 4), "peer_s": round(t_peer, 4),
            "ratio": round(t_peer / t_biomip, 2), "max_abs_diff": float(diff), **extra}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    n, rep, dev = args.size, args.repeat, args.device
    rng = np.random.default_rng(0)
    spacing = (1.0, 1.0, 1.5)
    vol = biomip.data.shepp_logan((n, n, n), spacing=spacing).numpy().astype(np.float32)
    vol += rng.normal(0, 0.01, vol.shape).astype(np.float32)
    vol_t = torch.from_numpy(vol).to(dev)
    img_sitk = sitk.GetImageFromArray(vol)
    img_sitk.SetSpacing(spacing)
    rows = []

    # Gaussian smoothing, sigma 2 mm, reflect borders
    sig = (2.0, 2.0, 2.0)
    tb, ob = best(lambda: ops.gaussian_smooth(vol_t, sig, spacing=spacing), rep)
    tp, op = best(lambda: ndi.gaussian_filter(vol, [s / sp for s, sp in zip(sig[::-1], spacing[::-1])],
                                              mode="reflect", truncate=4.0), rep)
    rows.append(row(f"gaussian_smooth {n}^3 sigma 2 mm", "scipy.ndimage.gaussian_filter", tb, tp,
                    np.abs(ob.cpu().numpy() - op).max()))

    # Warp with a smooth random displacement field (linear interpolation)
    deform = biomip.data.random_deformation(Image(vol, spacing=spacing), max_displacement=4.0, seed=0)
    u = deform.displacement.numpy()
    u_t = torch.from_numpy(u).to(dev)
    tb, ob = best(lambda: ops.warp(vol_t, u_t, spacing=spacing), rep)
    field = sitk.GetImageFromArray(np.moveaxis(u, 0, -1).astype(np.float64), isVector=True)
    field.SetSpacing(spacing)
    tp, op = best(lambda: sitk.GetArrayFromImage(sitk.Warp(img_sitk, field, sitk.sitkLinear, img_sitk.GetSize(),
                                                            img_sitk.GetOrigin(), img_sitk.GetSpacing(),
                                                            img_sitk.GetDirection())), rep)
    inner = (slice(4, -4),) * 3
    rows.append(row(f"warp {n}^3 linear", "SimpleITK.Warp", tb, tp, np.abs(ob.cpu().numpy()[inner] - op[inner]).max()))
    coords = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in vol.shape], indexing="ij"))
    coords = coords + np.stack([u[2] / spacing[2], u[1] / spacing[1], u[0] / spacing[0]])
    tp2, op2 = best(lambda: ndi.map_coordinates(vol, coords, order=1, mode="nearest"), rep)
    rows.append(row(f"warp {n}^3 linear", "scipy.ndimage.map_coordinates", tb, tp2,
                    np.abs(ob.cpu().numpy()[inner] - op2[inner]).max()))

    # Jacobian determinant of the field
    tb, ob = best(lambda: ops.jacobian_determinant(u_t, spacing=spacing), rep)
    jf = sitk.DisplacementFieldJacobianDeterminantFilter()
    tp, op = best(lambda: sitk.GetArrayFromImage(jf.Execute(field)), rep)
    rows.append(row(f"jacobian_determinant {n}^3", "SimpleITK.DisplacementFieldJacobianDeterminant", tb, tp,
                    np.abs(ob.cpu().numpy()[inner] - op[inner]).max()))

    # Resampling onto a rotated grid
    rot = sitk.Euler3DTransform((0, 0, 0), 0.1, -0.2, 0.3)
    ref_dir = np.asarray(rot.GetMatrix()).reshape(3, 3)
    ref = Image(np.zeros_like(vol), spacing=spacing, origin=(5.0, -3.0, 2.0), direction=ref_dir)
    src = Image(vol_t, spacing=spacing)
    tb, ob = best(lambda: ops.resample(src, ref).array, rep)
    tp, op = best(lambda: sitk.GetArrayFromImage(sitk.Resample(img_sitk, ref.to_sitk(), sitk.Transform(),
                                                               sitk.sitkLinear, 0.0)), rep)
    rows.append(row(f"resample {n}^3 onto a rotated grid", "SimpleITK.Resample", tb, tp,
                    np.abs(ob.cpu().numpy()[inner] - op[inner]).max()))

    # I/O: a DICOM series of n slices and the same volume as NIfTI
    with tempfile.TemporaryDirectory() as tmp:
        ct = Image((vol * 1000).astype(np.int16), spacing=(0.7, 0.7, 1.5), meta={"modality": "CT"})
        biomip.write(ct, Path(tmp) / "series", format="dicom")
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(Path(tmp) / "series"))
        tb, ob = best(lambda: biomip.read(Path(tmp) / "series", progress=False).array, rep)
        tp, op = best(lambda: sitk.GetArrayFromImage(sitk.ReadImage(files)), rep)
        rows.append(row(f"read DICOM series {n} x {n}^2", "SimpleITK.ReadImage(series)", tb, tp,
                        np.abs(ob.astype(float) - op).max(), note="SimpleITK given the sorted file list"))
        biomip.write(ct, Path(tmp) / "v.nii.gz")
        tb, ob = best(lambda: biomip.read(Path(tmp) / "v.nii.gz").array, rep)
        tp, op = best(lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(Path(tmp) / "v.nii.gz"))), rep)
        rows.append(row(f"read NIfTI .nii.gz {n}^3", "SimpleITK.ReadImage", tb, tp, np.abs(ob.astype(float) - op).max()))

    print(json.dumps({"benchmark": "foundation", "device": str(dev), "torch_threads": torch.get_num_threads(),
                      "sitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
                      "machine": platform.processor() or platform.machine(), "size": n, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
