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

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.arrays import check_number, check_spacing
from ..core.errors import InputError
from ..core.image import Image


@dataclass
class RegistrationPair:
    """A fixed / moving pair with its ground truth.

    Fields follow biomip's convention: ``truth`` maps fixed points to moving points (mm,
    LPS), so ``warp(moving, truth) ~= fixed``.

    Parameters
    ----------
    fixed : Image
        The fixed image.
    moving : Image
        The moving image, on the same grid.
    truth : Image or None, optional
        The displacement field (Image, mm, fixed -> moving) for deformable pairs.
    transform : Transform or None, optional
        The true linear transform (fixed -> moving points) for linear ones.
    labels : dict, optional
        Maps a name to ``(fixed_label, moving_label)`` Images.
    mask : numpy.ndarray or None, optional
        The evaluation region (bool array on the fixed grid).
    meta : dict, optional
        How the pair was made (source, kind, parameters, seed).
    """

    fixed: Image
    moving: Image
    truth: Image | None = None
    transform: object | None = None
    labels: dict = field(default_factory=dict)
    mask: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def epe(self, displacement) -> float:
        """Mean end-point error (mm) of an estimated field inside ``mask``.

        Parameters
        ----------
        displacement : Image or array_like
            Estimated field ``(d, *S)`` in mm (fixed -> moving, component 0 = x), the shape of
            ``truth``.

        Returns
        -------
        float
            Mean ``|u - truth|`` over ``mask``, in mm.

        Raises
        ------
        InputError
            For a linear pair (no ``truth``) or a field of another shape.

        Examples
        --------
        >>> pair = phantom_pair((32, 32), max_displacement=2.0)
        >>> pair.epe(pair.truth)
        0.0
        """
        u = np.asarray(displacement.numpy() if isinstance(displacement, Image) else displacement, np.float64)
        if self.truth is None:
            raise InputError("displacement: this pair has no ground-truth field (a linear pair: use .transform)")
        if u.shape != self.truth.shape:
            raise InputError(f"displacement: got shape {u.shape}; expected {self.truth.shape}")
        return float(np.linalg.norm(u - self.truth.numpy(), axis=0)[self.mask].mean())

    def label_dice(self, displacement) -> dict:
        """Dice of every moving label map warped by ``displacement`` against the fixed one.

        Probabilistic maps are thresholded at half their maximum.

        Parameters
        ----------
        displacement : Image
            Estimated field ``(d, *S)`` in mm (fixed -> moving) on the fixed grid.

        Returns
        -------
        dict
            Label name -> Dice (empty for pairs without labels).
        """
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

    A smoothed Shepp-Logan (2-D or 3-D) warped by a random smooth diffeomorphism (the case
    of the registration benchmark).

    Parameters
    ----------
    shape : sequence of int, optional
        Spatial shape, array order ([z,] y, x), 1 mm voxels.
    max_displacement : float, optional
        Largest displacement of the true field, in mm.
    seed : int, optional
        Seed of the deformation.

    Returns
    -------
    RegistrationPair
        With ``truth`` (fixed -> moving, mm) and ``mask`` (phantom > 0.05).

    Raises
    ------
    InputError
        When ``seed`` is not an integer.

    Examples
    --------
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
    """A pair made from the real MNI152 T1 template.

    Nilearn's 1 mm copy, resampled to ``spacing`` mm; needs the sample packages.
    ``kind="deformable"``: moving = T1 warped by a random smooth diffeomorphism with a
    largest displacement of ``max_displacement`` mm; ``labels`` holds the grey- and
    white-matter probability maps (fixed, and warped alike as moving) for the Dice of
    warped labels.  ``kind="multimodal"``: moving = T1 moved by the rigid pose
    (``rotation_deg`` about x, y, z, ``translation_mm``, about the volume centre) with
    its intensities remapped by ``sin(6 x)`` (non-monotonic: grey and white matter
    swap order, a CT-MRI-like multimodal pair only mutual information can align),
    ``transform`` the true pose.

    Parameters
    ----------
    kind : {"deformable", "multimodal"}, optional
        Which pair.
    spacing : float, optional
        Isotropic voxel size of the pair, in mm.
    max_displacement : float, optional
        Largest displacement of the true field in mm (``"deformable"``).
    rotation_deg : sequence of float, optional
        Rotation angles about x, y, z in degrees (``"multimodal"``).
    translation_mm : sequence of float, optional
        Translation (x, y, z) in mm (``"multimodal"``).
    seed : int, optional
        Seed of the deformation.

    Returns
    -------
    RegistrationPair
        ``truth`` and ``labels`` (deformable) or ``transform`` (multimodal), and a brain
        ``mask``.

    Raises
    ------
    InputError
        For an unknown ``kind``, a non-positive ``spacing``, a non-integer ``seed`` or a
        pose that is not 3 numbers each.

    Examples
    --------
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
    from ..ops.transforms import RigidTransform

    rot = np.radians(np.asarray(rotation_deg, dtype=float))
    tr = np.asarray(translation_mm, dtype=float)
    if rot.shape != (3,) or tr.shape != (3,):
        raise InputError(f"rotation_deg, translation_mm: got {rotation_deg!r}, {translation_mm!r}; expected 3 numbers each")
    from ..ops.transforms import rotation_matrix, rotation_vector

    R = rotation_matrix([rot[0], 0, 0]) @ rotation_matrix([0, rot[1], 0]) @ rotation_matrix([0, 0, rot[2]])
    true = RigidTransform(rotation_vector(R), tr, t1.bounds().mean(0))
    moved = true.inverse().warp(t1)
    moving = moved.with_array(np.sin(6.0 * moved.numpy()).astype(np.float32))
    return RegistrationPair(t1, moving, transform=true, mask=mask,
                            meta={"source": "mni152-t1", "kind": kind, "spacing": spacing,
                                  "rotation_deg": list(map(float, rotation_deg)),
                                  "translation_mm": list(map(float, translation_mm)), "remap": "sin(6 x)"})


# ============================================================================ learning pairs
@dataclass(eq=False)
class RegistrationPairs(Sequence):
    """Stacked training / test pairs.

    A sequence of dicts for :func:`biomip.register.train_registration`: item ``i`` is a dict
    with the array keys below (those that are not ``None``); a slice gives a
    ``RegistrationPairs``.

    Parameters
    ----------
    fixed : numpy.ndarray
        ``(n, *S)`` float32 fixed images, ``S`` in array order ([z,] y, x).
    moving : numpy.ndarray
        ``(n, *S)`` float32 moving images.
    displacement : numpy.ndarray or None, optional
        ``(n, d, *S)`` the true field (mm, fixed -> moving: ``moving(p + u(p)) ~
        fixed(p)``), component 0 = x.
    fixed_labels : numpy.ndarray or None, optional
        ``(n, *S)`` integer label maps of the fixed images.
    moving_labels : numpy.ndarray or None, optional
        ``(n, *S)`` integer label maps of the moving images.
    fixed_landmarks : numpy.ndarray or None, optional
        ``(n, k, d)`` world points of the fixed images (mm, x first, origin 0).
    moving_landmarks : numpy.ndarray or None, optional
        ``(n, k, d)`` the corresponding points of the moving images (mm, x first).
    spacing : tuple of float, optional
        Voxel size (x, y[, z]) mm.
    label_names : dict, optional
        Label value -> tissue name.
    """

    fixed: np.ndarray
    moving: np.ndarray
    displacement: np.ndarray | None = None
    fixed_labels: np.ndarray | None = None
    moving_labels: np.ndarray | None = None
    fixed_landmarks: np.ndarray | None = None
    moving_landmarks: np.ndarray | None = None
    spacing: tuple = ()
    label_names: dict = field(default_factory=dict)

    _KEYS = ("fixed", "moving", "displacement", "fixed_labels", "moving_labels", "fixed_landmarks",
             "moving_landmarks")

    def __len__(self) -> int:
        return int(self.fixed.shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return RegistrationPairs(*[None if getattr(self, k) is None else getattr(self, k)[i] for k in self._KEYS],
                                     spacing=self.spacing, label_names=dict(self.label_names))
        return {k: getattr(self, k)[i] for k in self._KEYS if getattr(self, k) is not None}

    def images(self, i: int) -> tuple[Image, Image]:
        """Pair ``i`` as ``(fixed, moving)`` Images (origin 0, identity direction).

        Parameters
        ----------
        i : int
            Index of the pair.

        Returns
        -------
        fixed : Image
            The fixed image, with ``spacing``.
        moving : Image
            The moving image, with ``spacing``.
        """
        return Image(self.fixed[i], spacing=self.spacing), Image(self.moving[i], spacing=self.spacing)

    def mask(self, i: int) -> np.ndarray:
        """Foreground of the fixed image of pair ``i`` (labels > 0), for EPE statistics.

        Parameters
        ----------
        i : int
            Index of the pair.

        Returns
        -------
        numpy.ndarray
            Boolean ``(*S)`` mask (all True without labels).
        """
        if self.fixed_labels is None:
            return np.ones(self.fixed.shape[1:], dtype=bool)
        return self.fixed_labels[i] > 0


_LABEL_NAMES = {1: "skull", 2: "brain", 3: "ventricles", 4: "bright structures"}


def _phantom_labels(shape, spacing) -> np.ndarray:
    """Tissue classes of the (modified) Shepp-Logan phantom: 1 skull, 2 brain,
    3 ventricles / dark, 4 bright structures, 0 background."""
    from scipy.ndimage import binary_fill_holes

    from .phantoms import shepp_logan

    v = shepp_logan(shape, spacing=spacing).numpy()
    head = binary_fill_holes(v > 0.5) | (v > 0.1)
    lab = np.zeros(v.shape, dtype=np.uint8)
    lab[head & (v < 0.15)] = 3
    lab[head & (v >= 0.15) & (v < 0.25)] = 2
    lab[head & (v >= 0.25) & (v < 0.5)] = 4
    lab[v >= 0.5] = 1
    return lab


def synthetic_pairs(n: int, shape=(32, 32), max_displacement: float = 3.0, seed: int = 0, spacing=None,
                    anatomy: float | None = None, n_landmarks: int = 8, noise: float = 0.02,
                    smoothness: float | None = None) -> RegistrationPairs:
    """Simulated mono-modal pairs with known fields, labels and landmarks.

    Each pair: a "subject" made from the Shepp-Logan tissue classes deformed by
    :func:`biomip.data.random_deformation` (``anatomy`` mm, default ``max_displacement
    / 2``) with random tissue intensities (fixed), and the same subject warped by an
    independent random diffeomorphism of ``max_displacement`` mm (moving:
    ``moving = fixed o phi^-1``, so the true fixed -> moving field is ``phi``'s
    displacement).  Labels are warped with nearest neighbour; ``n_landmarks`` random
    foreground points of the fixed image and their true images in the moving one.
    Independent Gaussian noise (``noise`` times the brightest tissue) on each image.
    2-D or 3-D by ``shape``; deterministic in ``seed``.

    Parameters
    ----------
    n : int
        Number of pairs (>= 1).
    shape : sequence of int, optional
        Spatial shape, array order ([z,] y, x), at least 8 per axis.
    max_displacement : float, optional
        Largest displacement of the true fixed -> moving field, in mm.
    seed : int, optional
        Seed of everything random.
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order (x, y[, z]) (default 1).
    anatomy : float or None, optional
        Largest displacement (mm) of the subject's anatomical variation (default
        ``max_displacement / 2``).
    n_landmarks : int, optional
        Landmarks per pair (0: none).
    noise : float, optional
        Gaussian noise sigma as a fraction of the brightest tissue intensity.
    smoothness : float or None, optional
        Length scale (mm) of the random deformations (see
        :func:`biomip.data.random_deformation`).

    Returns
    -------
    RegistrationPairs
        The pairs, with fields, labels (1 skull, 2 brain, 3 ventricles, 4 bright
        structures) and landmarks.

    Raises
    ------
    InputError
        For invalid counts, sizes or magnitudes.

    Examples
    --------
    >>> pairs = synthetic_pairs(2, shape=(32, 32), seed=0)
    >>> len(pairs), pairs.fixed.shape, pairs.displacement.shape, pairs.fixed_landmarks.shape
    (2, (2, 32, 32), (2, 2, 32, 32), (2, 8, 2))
    """
    import torch

    from ..core.arrays import check_memory, check_shape
    from ..ops.filters import gaussian_smooth
    from ..ops.spatial import sample_field, warp
    from .deformation import random_deformation

    n = check_number(n, "n", low=1, integer=True)
    shp = check_shape(shape, min_size=8)
    d = len(shp)
    sp = tuple(float(s) for s in check_spacing(spacing, d))
    max_displacement = check_number(max_displacement, "max_displacement", low=0)
    anatomy = max_displacement / 2 if anatomy is None else check_number(anatomy, "anatomy", low=0)
    n_landmarks = check_number(n_landmarks, "n_landmarks", low=0, integer=True)
    noise = check_number(noise, "noise", low=0)
    seed = check_number(seed, "seed", integer=True)
    # fixed, moving (float32), labels x 2 (int64), displacement (d float32) per pair; landmarks
    check_memory(float(n) * np.prod(shp) * (4 * (2 + d) + 16) + float(n) * n_landmarks * d * 16, "n",
                 f"{n} pairs of shape {shp}")
    if smoothness is not None:
        extent = max(s * k for s, k in zip(sp, shp))
        smoothness = check_number(smoothness, "smoothness", positive=True, high=10 * extent)
    template = _phantom_labels(shp, sp)
    rng = np.random.default_rng(seed)
    lo = np.array([0.0, 0.8, 0.15, 0.0, 0.35])
    hi = np.array([0.0, 1.2, 0.30, 0.08, 0.6])
    fixed, moving, disp, flab, mlab, fpts, mpts = [], [], [], [], [], [], []
    for i in range(n):
        s_anat, s_pair = (int(s) for s in rng.integers(0, 2 ** 31 - 1, size=2))
        lut = rng.uniform(lo, hi)
        clean = gaussian_smooth(lut[template], 0.6, spacing=(1.0,) * d, sdim=d)      # partial-volume edges
        subj = random_deformation(shp, max_displacement=anatomy, spacing=sp, seed=s_anat, smoothness=smoothness)
        f_clean = warp(np.asarray(clean, np.float64), subj.displacement.numpy(), spacing=sp, padding="border")
        f_lab = warp(template, subj.displacement.numpy(), spacing=sp, mode="nearest", padding="border")
        pair = random_deformation(shp, max_displacement=max_displacement, spacing=sp, seed=s_pair,
                                  smoothness=smoothness)
        inv = pair.inverse.numpy()
        m_clean = warp(f_clean, inv, spacing=sp, padding="border")
        m_lab = warp(f_lab, inv, spacing=sp, mode="nearest", padding="border")
        sigma = noise * float(lut.max())
        fixed.append(f_clean + sigma * rng.standard_normal(shp))
        moving.append(m_clean + sigma * rng.standard_normal(shp))
        u = pair.displacement.numpy()
        disp.append(u)
        flab.append(f_lab)
        mlab.append(m_lab)
        fg = np.argwhere(f_lab > 0)                                   # array order
        if len(fg) == 0:
            fg = np.argwhere(np.ones(shp, dtype=bool))
        pick = fg[rng.choice(len(fg), size=n_landmarks, replace=len(fg) < n_landmarks)]
        idx = pick[:, ::-1].astype(np.float64) + rng.uniform(-0.4, 0.4, size=pick.shape)   # (k, d) x first
        p = idx * np.asarray(sp)
        ut = torch.as_tensor(u, dtype=torch.float64)
        q = p + sample_field(ut, torch.as_tensor(idx)).numpy()
        fpts.append(p)
        mpts.append(q)
    return RegistrationPairs(
        fixed=np.stack(fixed).astype(np.float32), moving=np.stack(moving).astype(np.float32),
        displacement=np.stack(disp).astype(np.float32), fixed_labels=np.stack(flab).astype(np.uint8),
        moving_labels=np.stack(mlab).astype(np.uint8),
        fixed_landmarks=np.stack(fpts) if n_landmarks else None,
        moving_landmarks=np.stack(mpts) if n_landmarks else None,
        spacing=sp, label_names=dict(_LABEL_NAMES))
