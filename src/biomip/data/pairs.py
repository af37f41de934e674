"""Registration pairs with a known answer, from a simulator or from shipped real images.

* :func:`phantom_pair` -- a smoothed Shepp-Logan (2-D or 3-D) warped by a random smooth
  diffeomorphism (the case of the registration benchmark);
* :func:`mni152_pair` -- the real MNI152 T1 template (nilearn's copy, see the catalogue)
  warped by a known smooth field, with its grey- and white-matter maps warped alike
  (``kind="deformable"``), or moved by a known rigid pose and intensity-remapped
  non-monotonically, a CT-MRI-like multimodal pair only mutual information can align
  (``kind="multimodal"``).

Fields follow biomip's convention: ``truth`` maps fixed points to moving points (mm,
LPS), so ``warp(moving, truth) ~= fixed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import InputError
from ..core.image import Image


@dataclass
class RegistrationPair:
    """A fixed / moving pair with its ground truth.

    ``truth`` is the displacement field (Image, mm, fixed -> moving) for deformable
    pairs, ``transform`` the true linear transform (fixed -> moving points) for linear
    ones; ``labels`` maps a name to ``(fixed_label, moving_label)`` Images; ``mask`` the
    evaluation region (bool array on the fixed grid).
    """

    fixed: Image
    moving: Image
    truth: Image | None = None
    transform: object | None = None
    labels: dict = field(default_factory=dict)
    mask: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def epe(self, displacement) -> float:
        """Mean end-point error (mm) of an estimated field inside ``mask``."""
        u = np.asarray(displacement.numpy() if isinstance(displacement, Image) else displacement, np.float64)
        if self.truth is None:
            raise InputError("displacement: this pair has no ground-truth field (a linear pair: use .transform)")
        if u.shape != self.truth.shape:
            raise InputError(f"displacement: got shape {u.shape}; expected {self.truth.shape}")
        return float(np.linalg.norm(u - self.truth.numpy(), axis=0)[self.mask].mean())

    def label_dice(self, displacement) -> dict:
        """Dice of every moving label map warped by ``displacement`` against the fixed one
        (probabilistic maps are thresholded at half their maximum)."""
        from ..metrics import dice
        from ..ops.spatial import warp

        out = {}
        for name, (fl, ml) in self.labels.items():
            thr = 0.5 * float(np.max(fl.numpy()))
            warped = warp(ml.with_array(ml.numpy().astype(np.float32)), displacement)
            out[name] = float(dice(warped.numpy() > thr, fl.numpy() > thr))
        return out


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed: got {seed!r}; expected an integer")


def phantom_pair(shape=(128, 128, 128), max_displacement: float = 4.0, seed: int = 0) -> RegistrationPair:
    """Smoothed Shepp-Logan warped by ``random_deformation(max_displacement, seed)``.

    >>> pair = phantom_pair((64, 64), max_displacement=3.0)
    >>> pair.fixed.shape, round(pair.epe(np.zeros(pair.truth.shape)), 2) > 0
    ((64, 64), True)
    """
    from ..ops.filters import gaussian_smooth
    from ..ops.spatial import warp
    from .deformation import random_deformation
    from .phantoms import shepp_logan

    _check_seed(seed)
    fixed = gaussian_smooth(shepp_logan(tuple(shape)), 1.0)
    d = random_deformation(fixed, max_displacement=max_displacement, seed=seed)
    return RegistrationPair(fixed, warp(fixed, d.inverse), truth=d.displacement, mask=fixed.numpy() > 0.05,
                            meta={"source": "shepp_logan", "max_displacement": max_displacement, "seed": seed})


def _mni(spacing: float):
    from ..ops.spatial import resample
    from .catalogue import load

    out = []
    for name in ("mni152-t1", "mni152-gm", "mni152-wm"):
        img = load(name)
        img = img.with_array(img.numpy().astype(np.float32) / 255.0)
        if spacing != 1.0:
            img = resample(img, spacing=(spacing,) * 3)
        out.append(img)
    return out


def mni152_pair(kind: str = "deformable", spacing: float = 2.0, max_displacement: float = 4.0,
                rotation_deg=(6.0, -4.0, 5.0), translation_mm=(5.0, -4.0, 3.0), seed: int = 0) -> RegistrationPair:
    """A pair made from the real MNI152 T1 template (nilearn's 1 mm copy, resampled to
    ``spacing`` mm; needs the sample packages).

    ``kind="deformable"``: moving = T1 warped by a random smooth diffeomorphism with a
    largest displacement of ``max_displacement`` mm; ``labels`` holds the grey- and
    white-matter probability maps (fixed, and warped alike as moving) for the Dice of
    warped labels.  ``kind="multimodal"``: moving = T1 moved by the rigid pose
    (``rotation_deg`` about x, y, z, ``translation_mm``, about the volume centre) with
    its intensities remapped by ``sin(6 x)`` (non-monotonic: grey and white matter
    swap order), ``transform`` the true pose.

    >>> pair = mni152_pair("deformable")                              # doctest: +SKIP
    >>> pair.epe(biomip.register.svf(pair.fixed, pair.moving).displacement)  # doctest: +SKIP
    """
    from ..ops.spatial import warp
    from .deformation import random_deformation

    if kind not in ("deformable", "multimodal"):
        raise InputError(f"kind: got {kind!r}; expected 'deformable' or 'multimodal'")
    if not np.isfinite(spacing) or spacing <= 0:
        raise InputError(f"spacing: got {spacing!r}; expected a positive number of mm")
    _check_seed(seed)
    t1, gm, wm = _mni(float(spacing))
    mask = t1.numpy() > 0.1
    if kind == "deformable":
        d = random_deformation(t1, max_displacement=max_displacement, seed=seed)
        moving = warp(t1, d.inverse)
        labels = {"grey_matter": (gm, warp(gm, d.inverse)), "white_matter": (wm, warp(wm, d.inverse))}
        return RegistrationPair(t1, moving, truth=d.displacement, labels=labels, mask=mask,
                                meta={"source": "mni152-t1", "kind": kind, "spacing": spacing,
                                      "max_displacement": max_displacement, "seed": seed})
    from ..register.transforms import RigidTransform

    rot = np.radians(np.asarray(rotation_deg, dtype=float))
    tr = np.asarray(translation_mm, dtype=float)
    if rot.shape != (3,) or tr.shape != (3,):
        raise InputError(f"rotation_deg, translation_mm: got {rotation_deg!r}, {translation_mm!r}; expected 3 numbers each")
    from ..register.transforms import rotation_matrix, rotation_vector

    R = rotation_matrix([rot[0], 0, 0]) @ rotation_matrix([0, rot[1], 0]) @ rotation_matrix([0, 0, rot[2]])
    true = RigidTransform(rotation_vector(R), tr, t1.bounds().mean(0))
    moved = true.inverse().warp(t1)
    moving = moved.with_array(np.sin(6.0 * moved.numpy()).astype(np.float32))
    return RegistrationPair(t1, moving, transform=true, mask=mask,
                            meta={"source": "mni152-t1", "kind": kind, "spacing": spacing,
                                  "rotation_deg": list(map(float, rotation_deg)),
                                  "translation_mm": list(map(float, translation_mm)), "remap": "sin(6 x)"})
