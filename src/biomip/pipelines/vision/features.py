"""Study: classic features on real images -- edges, corners, texture, keypoints, keypoint
registration and bag of visual words against deep features (issue 26, items 1 and 3;
textbook 5.4 and 5.4.6, lines 1840-1990).

1. Panels.  Canny edges of the real ``nuclei2d`` image and, in 3-D, of the real ``nuclei3d``
   volume, scored against the boundaries of its instance labels (precision / recall
   within one voxel); Harris corners of the real H&E image ``he-histo`` and uniform LBP
   of a crop of it and of the texture classes of item 4; GLCM properties (2-D: 4 angles; 3-D on ``nuclei3d``:
   13 directions) of the texture classes of item 4.
2. Keypoints under a known similarity.  The fundus photograph ``retina`` (grey, 1/4 size)
   is turned by 30 degrees and scaled by 0.8 about its centre; SIFT and ORB keypoints of
   both images are compared with the true map: *repeatability* (share of the keypoints of
   the original, inside the field of the transformed image, with a keypoint of the
   transformed image within 2.5 px of their true position) and *matching precision*
   (share of the ratio-test + cross-check matches that land within 3 px of the truth).
3. Registration.  A real CT head slice (``ct-head``, 0.479 mm pixels, window -100 to 200
   HU) is moved by a rigid transform of 35 or 120 degrees + (6, -4) mm; the target
   registration error (TRE, mm; RMS over the head's pixels) of keypoint + RANSAC
   registration (:func:`biomip.register.keypoints.keypoint_registration`, SIFT and ORB),
   of :func:`biomip.register.linear` alone, and of ``linear`` started from the keypoint
   transform.
4. Bag of words vs deep features.  A texture task on real images: 32 x 32 patches cut
   from seven shipped real images of different modalities (the class is the source: nuclei
   fluorescence, H&E, skin histology, phase contrast, cryo-ET, confocal, time-lapse),
   each patch standardised (mean 0, std 1) and randomly turned / flipped, training patches
   from the left half of every image and test patches from the right half.  Features:
   BoVW histograms (:class:`biomip.features.bovw.BagOfWords`: dense DAISY and dense raw
   patches, 64 words), a :class:`biomip.nn.ConvEncoder` trained self-supervised (MoCo,
   :func:`biomip.learn.train_contrastive`) on the unlabelled training patches -- its
   output and its globally pooled feature map -- the same encoder untrained, and the raw
   pixels (their first 64 principal components, as a floor); every
   feature set gets the same classifier (standardised, linear SVM, C = 0.1) at several
   label budgets per class, mean over label draws.

``run(out, mode, seed)`` writes ``report.json`` and ``preview.png``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ...core.errors import InputError
from ...core.image import Image
from ...core.progress import progress_bar
from ...data import load
from ...features.bovw import BagOfWords
from ...features.classic import canny, glcm_properties, harris, keypoints, lbp, match_keypoints
from ...ops.transforms import AffineTransform, RigidTransform
from ...register.keypoints import keypoint_registration
from ...register.linear import linear
from ..foundations.base import check_mode, check_out, new_figure, write_study

__all__ = ["CONFIGS", "STUDY", "TEXTURE_SOURCES", "run", "texture_patches"]

STUDY = "features"

TEXTURE_SOURCES = ("nuclei2d", "he-histo", "skin-rgb", "cell", "cryoet-tomogram", "confocal-nuclei", "timelapse-2d")
"""The shipped real images whose patches make the texture classes (the class is the source)."""

CONFIGS = {
    "tiny": {"classes": 4, "train": 40, "test": 25, "budgets": (5, 20), "draws": 2, "moco_steps": 15,
             "moco_batch": 32, "retina_scale": 0.125, "ct_angles": (35.0,), "ct_methods": ("orb",),
             "descriptors": ("patch",), "kp_methods": ("orb",)},
    "quick": {"classes": 7, "train": 200, "test": 100, "budgets": (5, 20, 80), "draws": 5, "moco_steps": 500,
              "moco_batch": 64, "retina_scale": 0.25, "ct_angles": (35.0, 120.0), "ct_methods": ("sift", "orb"),
              "descriptors": ("daisy", "patch"), "kp_methods": ("sift", "orb")},
    "full": {"classes": 7, "train": 400, "test": 200, "budgets": (5, 20, 80, 200), "draws": 10,
             "moco_steps": 1500, "moco_batch": 128, "retina_scale": 0.5, "ct_angles": (15.0, 35.0, 90.0, 120.0),
             "ct_methods": ("sift", "orb"), "descriptors": ("daisy", "patch", "sift"), "kp_methods": ("sift", "orb")},
}
"""Per mode: texture classes used, training / test patches per class, label budgets per
class, label draws, MoCo steps and batch, the retina scale of the keypoint test, the CT
rotation angles and keypoint methods of the registration test, BoVW descriptors and the
keypoint methods of the repeatability test."""

PATCH = 32
N_WORDS = 64
SVM_C = 0.1
CT_WINDOW = (-100.0, 200.0)
CT_SHIFT_MM = (6.0, -4.0)
KP_ANGLE, KP_SCALE = 30.0, 0.8
REPEAT_PX, MATCH_PX = 2.5, 3.0


# ----------------------------------------------------------------------------- data
def _grey(name: str) -> np.ndarray:
    im = load(name)
    a = im.numpy().astype(np.float32)
    if name == "timelapse-2d":
        return a[0]
    if im.axes == "cyx":
        return a[:3].mean(0)
    if im.axes == "zyx":
        return a[a.shape[0] // 2]
    return a


def texture_patches(sources=TEXTURE_SOURCES, n_train: int = 200, n_test: int = 100, size: int = PATCH,
                    seed: int = 0):
    """Patches of real shipped images, the class being the source image.

    Training patches come from the left half of each image, test patches from the right
    half (no overlap); a patch is kept when its standard deviation is at least a quarter
    of the image's (no empty background), then turned by a random multiple of 90 degrees,
    maybe mirrored, and standardised to mean 0, std 1.

    Parameters
    ----------
    sources : sequence of str, optional
        Names of real images in the catalogue (:data:`TEXTURE_SOURCES`).
    n_train : int, optional
        Training patches per class (fewer when the half image runs out).
    n_test : int, optional
        Test patches per class.
    size : int, optional
        Patch side, pixels.
    seed : int, optional
        Seed of the positions and turns.

    Returns
    -------
    tuple
        ``(X_train, y_train, X_test, y_test)``: float32 ``(n, size, size)`` patches and
        int64 labels (the index in ``sources``).

    Raises
    ------
    InputError
        For an unknown source.

    Examples
    --------
    >>> Xtr, ytr, Xte, yte = texture_patches(("nuclei2d", "cell"), 4, 2, seed=0)
    >>> Xtr.shape, sorted(set(ytr.tolist()))
    ((8, 32, 32), [0, 1])
    """
    bad = [s for s in sources if s not in TEXTURE_SOURCES]
    if bad:
        raise InputError(f"sources: got {bad}; expected names from {', '.join(TEXTURE_SOURCES)}")
    rng = np.random.default_rng(seed)
    out = {0: ([], []), 1: ([], [])}
    for c, name in enumerate(sources):
        a = _grey(name)
        H, W = a.shape
        s = float(a.std())
        for half, n in ((0, n_train), (1, n_test)):
            x0, x1 = (0, W // 2 - size) if half == 0 else (W // 2, W - size)
            got, tries = 0, 0
            while got < n and tries < 100 * n:
                tries += 1
                y, x = int(rng.integers(0, H - size + 1)), int(rng.integers(x0, x1 + 1))
                p = a[y:y + size, x:x + size]
                if p.std() < 0.25 * s:
                    continue
                p = np.rot90(p, int(rng.integers(4)))
                if rng.random() < 0.5:
                    p = p[:, ::-1]
                out[half][0].append(((p - p.mean()) / p.std()).astype(np.float32))
                out[half][1].append(c)
                got += 1
    return (np.stack(out[0][0]), np.asarray(out[0][1], np.int64), np.stack(out[1][0]),
            np.asarray(out[1][1], np.int64))


# ----------------------------------------------------------------------------- 1. panels
def _boundaries(labels: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    fp = np.ones((3,) * labels.ndim, bool)
    return (ndi.grey_dilation(labels, footprint=fp) != ndi.grey_erosion(labels, footprint=fp))


def _panels(cfg) -> tuple[dict, dict]:
    from scipy import ndimage as ndi

    fig_data, figures = {}, {}
    nuc = load("nuclei2d")
    crop = nuc[0:192, 0:192]
    t0 = time.perf_counter()
    e2 = canny(crop, sigma_mm=2.0).numpy()
    figures["canny_2d"] = {"image": "nuclei2d[0:192, 0:192]", "sigma_px": 2.0, "edge_fraction": float(e2.mean()),
                           "seconds": time.perf_counter() - t0}
    fig_data["canny_2d"] = (crop.numpy(), e2)
    vol = load("nuclei3d")
    lab = load("nuclei3d-labels").numpy()
    t0 = time.perf_counter()
    e3 = canny(vol, sigma_mm=1.0).numpy()
    sec = time.perf_counter() - t0
    bnd = _boundaries(lab)
    near_b = ndi.binary_dilation(bnd, np.ones((3, 3, 3), bool))
    near_e = ndi.binary_dilation(e3, np.ones((3, 3, 3), bool))
    prec = float(near_b[e3].mean()) if e3.any() else 0.0
    rec = float(near_e[bnd].mean()) if bnd.any() else 0.0
    figures["canny_3d"] = {"image": "nuclei3d", "shape": list(vol.shape), "sigma_px": 1.0,
                           "precision_1vox": prec, "recall_1vox": rec, "seconds": sec}
    fig_data["canny_3d"] = (vol.numpy(), e3, bnd)
    fig_data["labels"] = lab
    he = load("he-histo")
    he_grey = he.numpy().astype(np.float32)[:3].mean(0)
    t0 = time.perf_counter()
    cs = harris(he_grey, sigma_mm=2.0, k=0.05, min_distance=6, threshold_rel=0.05, num_peaks=150)
    figures["harris"] = {"image": "he-histo (grey)", "sigma_px": 2.0, "k": 0.05, "corners": len(cs),
                         "seconds": time.perf_counter() - t0}
    fig_data["harris"] = (he_grey, cs)
    crop = he_grey[100:228, 150:278]
    t0 = time.perf_counter()
    codes, hist = lbp(crop.astype(np.uint8), P=8, R=1.0)
    figures["lbp"] = {"image": "he-histo[100:228, 150:278] (grey)", "P": 8, "R": 1.0, "method": "uniform",
                      "histogram": [round(float(h), 4) for h in hist], "seconds": time.perf_counter() - t0}
    fig_data["lbp"] = (crop, codes, hist)
    t0 = time.perf_counter()
    g3 = glcm_properties(vol, distances=[1], levels=16)
    figures["glcm_3d"] = {"image": "nuclei3d", "levels": 16, "directions": 13,
                          **{k: [round(float(x), 4) for x in v[0]] for k, v in g3.items()},
                          "seconds": time.perf_counter() - t0}
    return figures, fig_data


# ----------------------------------------------------------------------------- 2. keypoints
def _keypoint_study(cfg) -> tuple[dict, dict]:
    from skimage.transform import rescale

    grey = load("retina").numpy().astype(np.float32).mean(0)
    small = rescale(grey, cfg["retina_scale"], anti_aliasing=True).astype(np.float32)
    fixed = Image(small)
    c = fixed.bounds().mean(0)
    th = np.deg2rad(KP_ANGLE)
    A = KP_SCALE * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    t_true = AffineTransform(A, (0.0, 0.0), c)           # moving(p) = fixed(T p): content grows by 1 / 0.8
    moving = t_true.warp(fixed)
    inv = t_true.inverse()
    inside = small > 0.05 * small.max()                   # the fundus disc, not the black surround
    res, keep = {}, {}
    for m in cfg["kp_methods"]:
        t0 = time.perf_counter()
        ka = keypoints(fixed, m)
        kb = keypoints(moving, m)
        sec = time.perf_counter() - t0
        exp = inv.apply(ka.positions_mm) if len(ka) else np.zeros((0, 2))  # where each fixed keypoint should show
        shape = np.array(small.shape[::-1]) - 1
        ok = np.all((exp >= 0) & (exp <= shape), axis=1)
        if len(ka):
            ok &= inside[tuple(np.round(ka.positions).astype(int).T)]
        if ok.any() and len(kb):
            d = np.linalg.norm(exp[ok][:, None] - kb.positions_mm[None], axis=-1).min(1)
            rep = float(np.mean(d <= REPEAT_PX))
        else:
            rep = 0.0
        mt = match_keypoints(ka, kb, ratio=0.8)
        if len(mt):
            err = np.linalg.norm(exp[mt[:, 0]] - kb.positions_mm[mt[:, 1]], axis=1)
            prec = float(np.mean(err <= MATCH_PX))
            correct = int(np.sum(err <= MATCH_PX))
        else:
            prec, correct, err = 0.0, 0, np.zeros(0)
        res[m] = {"keypoints": [len(ka), len(kb)], "repeatability": rep, "matches": int(len(mt)),
                  "correct_matches": correct, "precision": prec, "seconds": sec}
        keep[m] = (ka, kb, mt, err)
    info = {"image": f"retina (grey, x{cfg['retina_scale']})", "shape": list(small.shape),
            "rotation_deg": KP_ANGLE, "scale": KP_SCALE, "repeat_px": REPEAT_PX, "match_px": MATCH_PX}
    return {"config": info, "methods": res}, {"fixed": small, "moving": moving.numpy(), "keep": keep}


# ----------------------------------------------------------------------------- 3. registration
def _tre(T, truth_inv, pts) -> float:
    return float(np.sqrt(np.mean(np.sum((T.apply(pts) - truth_inv.apply(pts)) ** 2, axis=1))))


def _registration_study(cfg, seed) -> tuple[dict, dict]:
    ct = load("ct-head")[0]
    a = ct.numpy().astype(np.float32)
    lo, hi = CT_WINDOW
    img = ct.with_array(np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32))
    head = a > -500
    yy, xx = np.nonzero(head[::8, ::8])
    pts = img.index_to_world(np.stack([xx * 8, yy * 8], 1).astype(np.float64))
    c = img.bounds().mean(0)
    out, keep = {}, {}
    for ang in cfg["ct_angles"]:
        t_true = RigidTransform(np.deg2rad(ang), CT_SHIFT_MM, c)
        moving = t_true.warp(img)
        inv = t_true.inverse()
        row = {"initial": {"tre_mm": _tre(AffineTransform(np.eye(2)), inv, pts)}}
        t0 = time.perf_counter()
        lin = linear(img, moving, transform="rigid")
        row["linear"] = {"tre_mm": _tre(lin.transform, inv, pts), "seconds": time.perf_counter() - t0}
        for m in cfg["ct_methods"]:
            try:
                kr = keypoint_registration(img, moving, transform="rigid", method=m, seed=seed)
            except InputError as exc:
                row[f"keypoints-{m}"] = {"tre_mm": float("nan"), "error": str(exc)}
                continue
            row[f"keypoints-{m}"] = {"tre_mm": _tre(kr.transform, inv, pts), "seconds": kr.seconds,
                                     "matches": kr.n_matches, "inliers": kr.n_inliers,
                                     "residual_mm": kr.residual_mm}
            t0 = time.perf_counter()
            li = linear(img, moving, transform="rigid", initial=kr.transform)
            row[f"keypoints-{m}+linear"] = {"tre_mm": _tre(li.transform, inv, pts),
                                            "seconds": kr.seconds + time.perf_counter() - t0}
            if ang == max(cfg["ct_angles"]) and m == cfg["ct_methods"][-1]:
                keep = {"fixed": img.numpy(), "moving": moving.numpy(), "angle": ang,
                        "kp": li.warped.numpy(), "plain": lin.warped.numpy(), "kr": kr}
        out[f"{ang:g}deg"] = row
    info = {"image": "ct-head (slice 0)", "spacing_mm": list(img.spacing), "window_hu": list(CT_WINDOW),
            "shift_mm": list(CT_SHIFT_MM), "angles_deg": list(cfg["ct_angles"]),
            "tre_points": int(len(pts)), "tre": "RMS over head pixels (HU > -500) on an 8-pixel grid"}
    return {"config": info, "results": out}, keep


# ----------------------------------------------------------------------------- 4. BoVW vs deep
def _svm_accuracy(Ftr, ytr, Fte, yte, budget, draws, seed, caught) -> list[float]:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    accs = []
    classes = np.unique(ytr)
    for d in range(draws):
        r = np.random.default_rng(seed + 1000 * d + budget)
        idx = np.concatenate([r.choice(np.nonzero(ytr == c)[0], min(budget, int(np.sum(ytr == c))), replace=False)
                              for c in classes])
        model = make_pipeline(StandardScaler(), LinearSVC(C=SVM_C, max_iter=20000, random_state=seed))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            model.fit(Ftr[idx], ytr[idx])
        caught.extend(f"{m.category.__name__}: {m.message}" for m in w)
        accs.append(float(np.mean(model.predict(Fte) == yte)))
    return accs


def _bovw_study(cfg, seed, caught, bar) -> tuple[dict, dict]:
    import torch

    from ...learn import encode_images, train_contrastive
    from ...nn import ConvEncoder

    sources = TEXTURE_SOURCES[:cfg["classes"]]
    Xtr, ytr, Xte, yte = texture_patches(sources, cfg["train"], cfg["test"], PATCH, seed)
    feats, secs = {}, {}
    for desc in cfg["descriptors"]:
        t0 = time.perf_counter()
        bow = BagOfWords(n_words=N_WORDS, descriptor=desc, step=4, patch_size=8, radius=7, seed=seed).fit(Xtr)
        feats[f"bovw-{desc}"] = (bow.transform(Xtr), bow.transform(Xte))
        secs[f"bovw-{desc}"] = time.perf_counter() - t0
        bar.advance()
    t0 = time.perf_counter()
    enc0 = ConvEncoder(size=PATCH, dim=64, seed=seed)
    feats["random-encoder"] = (encode_images(enc0, Xtr[:, None]), encode_images(enc0, Xte[:, None]))
    secs["random-encoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc, hist = train_contrastive(Xtr[:, None], encoder=ConvEncoder(size=PATCH, dim=64, seed=seed),
                                  steps=cfg["moco_steps"], batch_size=cfg["moco_batch"], seed=seed, device="cpu",
                                  progress=False)
    train_s = time.perf_counter() - t0
    bar.advance()

    def pooled(x):
        with torch.no_grad():
            return enc.convs(torch.as_tensor(x)).mean((-2, -1))

    t0 = time.perf_counter()
    feats["moco-encoder"] = (encode_images(enc, Xtr[:, None]), encode_images(enc, Xte[:, None]))
    secs["moco-encoder"] = train_s + time.perf_counter() - t0
    t0 = time.perf_counter()
    feats["moco-encoder-pooled"] = (encode_images(pooled, Xtr[:, None]), encode_images(pooled, Xte[:, None]))
    secs["moco-encoder-pooled"] = train_s + time.perf_counter() - t0
    from sklearn.decomposition import PCA

    t0 = time.perf_counter()
    pca = PCA(n_components=64, random_state=seed).fit(Xtr.reshape(len(Xtr), -1))   # unlabelled training pool
    feats["raw-pixels-pca64"] = (pca.transform(Xtr.reshape(len(Xtr), -1)), pca.transform(Xte.reshape(len(Xte), -1)))
    secs["raw-pixels-pca64"] = time.perf_counter() - t0
    res = {}
    for name, (Ftr, Fte) in feats.items():
        by = {}
        for b in cfg["budgets"]:
            accs = _svm_accuracy(Ftr, ytr, Fte, yte, b, cfg["draws"], seed, caught)
            by[str(b)] = {"mean": float(np.mean(accs)), "std": float(np.std(accs))}
        top = str(max(cfg["budgets"]))
        res[name] = {"accuracy": by[top]["mean"], "labels_per_class": int(top), "accuracy_by_budget": by,
                     "dim": int(Ftr.shape[1]), "seconds": float(secs[name])}
    info = {"sources": list(sources), "patch": PATCH, "train_per_class": cfg["train"],
            "test_per_class": cfg["test"], "n_train": int(len(Xtr)), "n_test": int(len(Xte)),
            "budgets": list(cfg["budgets"]), "draws": cfg["draws"], "n_words": N_WORDS, "svm_C": SVM_C,
            "moco_steps": cfg["moco_steps"], "moco_batch": cfg["moco_batch"],
            "moco_final_loss": float(hist[-1]["loss"]) if hist else None,
            "chance": 1.0 / len(sources), "split": "train: left half of each image; test: right half"}
    return {"config": info, "methods": res}, {"Xte": Xte, "yte": yte, "sources": sources}


# ----------------------------------------------------------------------------- run
def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Classic features on real images: panels, keypoints, registration, BoVW vs deep features.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: nothing is written).
    mode : {"tiny", "quick", "full"}, optional
        Size of the run (:data:`CONFIGS`): ``"tiny"`` (ORB only, one CT angle, four texture
        classes, raw-patch BoVW, 15 MoCo steps: a smoke test), ``"quick"`` (the figures of
        the closing note, a few minutes on 2 cores), ``"full"``.
    seed : int, optional
        Seed of the patches, label draws, RANSAC, k-means and MoCo.
    progress : bool or None, optional
        Show a progress bar (``None``: on a terminal).

    Returns
    -------
    dict
        The report: ``study``, ``mode``, ``config``, ``seeds``, ``methods`` (``canny_2d``,
        ``canny_3d``, ``harris``, ``lbp``, ``glcm_3d``; ``sift`` / ``orb`` (repeatability,
        matching precision); registration methods (TRE in mm at the largest angle); the
        texture classifiers (accuracy at the largest budget)), ``keypoints``,
        ``registration``, ``texture`` (all figures), ``targets``, ``warnings``,
        ``seconds`` and ``files``.

    Raises
    ------
    InputError
        For an unknown mode, a bad ``seed`` or an ``out`` that is a file.

    Examples
    --------
    >>> sorted(CONFIGS)
    ['full', 'quick', 'tiny']
    >>> r = run(None, "tiny")                                  # doctest: +SKIP
    >>> r["registration"]["results"]["35deg"]["keypoints-orb"]["tre_mm"] < 1.0   # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    mode = check_mode(mode)
    check_out(out)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: got {seed!r}; expected a non-negative integer")
    seed = int(seed)
    cfg = CONFIGS[mode]
    caught: list[str] = []
    steps = 4 + len(cfg["descriptors"]) + 1
    with progress_bar("classic features", steps, progress) as bar:
        panels, pdata = _panels(cfg)
        bar.advance()
        kp, kdata = _keypoint_study(cfg)
        bar.advance()
        reg, rdata = _registration_study(cfg, seed)
        bar.advance()
        tex, tdata = _bovw_study(cfg, seed, caught, bar)
        bar.advance()
    methods = dict(panels)
    methods.update(kp["methods"])
    top = f"{max(cfg['ct_angles']):g}deg"
    for name, v in reg["results"][top].items():
        if name != "initial":
            methods[f"register-{name}"] = {"tre_mm": v["tre_mm"], "angle_deg": max(cfg["ct_angles"]),
                                           **({"seconds": v["seconds"]} if "seconds" in v else {})}
    for name, v in tex["methods"].items():
        methods[f"texture-{name}"] = {"accuracy": v["accuracy"], "labels_per_class": v["labels_per_class"],
                                      "seconds": v["seconds"]}
    sp = reg["config"]["spacing_mm"][0]
    targets = {}
    for ang, row in reg["results"].items():
        for name, v in row.items():
            if name.startswith("keypoints-") and not name.endswith("+linear"):
                tre = v["tre_mm"]
                targets[f"{name}_subpixel_{ang}"] = {"value": tre, "bound": sp, "met": bool(tre < sp),
                                                     "unit": "mm (one pixel)"}
    warns = sorted(set(caught))
    warns.append("nuclei2d, nuclei3d, he-histo, skin-rgb, retina and the texture sources have no known pixel "
                 "size: their scales are in pixels")
    if mode == "tiny":
        warns.append("tiny: ORB only, one CT angle, four texture classes, 15 MoCo steps; figures in quick mode")
    report = {
        "study": STUDY, "mode": mode,
        "config": {"mode": mode, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                   "patch": PATCH, "n_words": N_WORDS, "svm_C": SVM_C, "ct_window_hu": list(CT_WINDOW),
                   "keypoint_rotation_deg": KP_ANGLE, "keypoint_scale": KP_SCALE},
        "seeds": [seed], "methods": methods, "keypoints": kp, "registration": reg, "texture": tex,
        "targets": targets, "warnings": warns,
    }
    fig = None if out is None else _figure(pdata, kdata, rdata, reg, tex, tdata, panels, kp)
    return write_study(out, report, fig, t0)


# ----------------------------------------------------------------------------- figure
def _figure(pdata, kdata, rdata, reg, tex, tdata, panels, kp):
    from matplotlib.colors import ListedColormap
    from matplotlib.ticker import NullLocator

    fig = new_figure((20.0, 14.0))
    axs = fig.subplots(3, 4)
    # row 1: edges, corners, LBP
    img, e2 = pdata["canny_2d"]
    ax = axs[0, 0]
    ax.imshow(img, cmap="gray")
    ax.imshow(np.ma.masked_where(~e2, e2), cmap=ListedColormap(["red"]), vmin=0, vmax=1, interpolation="nearest")
    ax.set_title("Canny 2-D on nuclei2d (sigma 2 px): edges in red")
    vol, e3, bnd = pdata["canny_3d"]
    z = vol.shape[0] // 2
    ax = axs[0, 1]
    ax.imshow(vol[z], cmap="gray")
    ax.imshow(np.ma.masked_where(~e3[z], e3[z]), cmap="autumn", vmin=0, vmax=1, interpolation="nearest")
    ax.contour(pdata["labels"][z] > 0, levels=[0.5], colors="lime", linewidths=0.8)
    ax.plot([], [], color="lime", label="label boundary (truth)")
    ax.plot([], [], color="yellow", marker="s", ls="", label="3-D Canny edge voxels")
    c3 = panels["canny_3d"]
    ax.set_title(f"3-D Canny on nuclei3d, slice z={z}\nprecision {c3['precision_1vox']:.2f}, "
                 f"recall {c3['recall_1vox']:.2f} (within 1 voxel)")
    ax.legend(fontsize=7, loc="lower right")
    he, cs = pdata["harris"]
    ax = axs[0, 2]
    ax.imshow(he, cmap="gray")
    ax.scatter(cs.points[:, 1], cs.points[:, 0], s=14, facecolors="none", edgecolors="yellow", linewidths=0.8)
    ax.set_title(f"Harris corners on he-histo (sigma 2 px, k 0.05): {len(cs)} strongest")
    skin, codes, hist = pdata["lbp"]
    ax = axs[0, 3]
    im = ax.imshow(codes, cmap="nipy_spectral", vmin=0, vmax=9)
    fig.colorbar(im, ax=ax, shrink=0.7, label="uniform LBP code (9: non-uniform)")
    ax.set_title("uniform LBP (P 8, R 1 px) of an he-histo crop")
    for a in list(axs[0]):
        a.set_xlabel("x (pixels)")
        a.set_ylabel("y (pixels)")
    # row 2: GLCM per class, keypoints
    ax = axs[1, 0]
    Xte, yte, sources = tdata["Xte"], tdata["yte"], tdata["sources"]
    names = ("contrast", "energy", "correlation", "homogeneity")
    per = np.zeros((len(sources), len(names)))
    for c in range(len(sources)):
        vals = [glcm_properties(p, distances=[1], levels=8, properties=names) for p in Xte[yte == c][:20]]
        per[c] = [np.mean([v[n].mean() for v in vals]) for n in names]
    norm = per / np.maximum(per.max(0, keepdims=True), 1e-12)
    im = ax.imshow(norm, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_yticks(range(len(sources)))
    ax.set_yticklabels(sources, fontsize=8)
    for (i, j), v in np.ndenumerate(per):
        ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7, color="white" if norm[i, j] < 0.6 else "k")
    ax.set_title("GLCM properties per texture class (8 levels, d 1,\nmean of 4 angles; colour: / column max)")
    m0 = "sift" if "sift" in kdata["keep"] else "orb"
    ka, kb, mt, err = kdata["keep"][m0]
    fa, fb = kdata["fixed"], kdata["moving"]
    ax = axs[1, 1]
    W = fa.shape[1]
    ax.imshow(np.hstack([fa, fb]), cmap="gray")
    good = err <= MATCH_PX
    for (i, j), g in zip(mt[:150], good[:150]):
        ax.plot([ka.positions[i, 1], kb.positions[j, 1] + W], [ka.positions[i, 0], kb.positions[j, 0]],
                color="lime" if g else "red", lw=0.5)
    ax.set_title(f"{m0.upper()} matches, retina vs turned {KP_ANGLE:g} deg and scaled {KP_SCALE}\n"
                 f"green: within {MATCH_PX:g} px of the truth, red: wrong")
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    ax = axs[1, 2]
    ms = list(kp["methods"])
    xs = np.arange(len(ms))
    ax.bar(xs - 0.2, [kp["methods"][m]["repeatability"] for m in ms], 0.4, label="repeatability")
    ax.bar(xs + 0.2, [kp["methods"][m]["precision"] for m in ms], 0.4, label="matching precision")
    for x, m in zip(xs, ms):
        v = kp["methods"][m]
        ax.text(x, 1.02, f"{v['keypoints'][0]} kp, {v['matches']} matches, {v['seconds']:.1f} s", ha="center",
                fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels([m.upper() for m in ms])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("fraction")
    ax.set_title(f"keypoints under rotation {KP_ANGLE:g} deg + scale {KP_SCALE} (retina)")
    ax.legend(fontsize=8, loc="lower right")
    ax = axs[1, 3]
    if rdata:
        f = rdata["fixed"]
        ck = (np.indices(f.shape) // 64).sum(0) % 2 == 0
        ax.imshow(np.where(ck, f, rdata["kp"]), cmap="gray")
        ax.set_title(f"CT head turned {rdata['angle']:g} deg: checkerboard of fixed and\n"
                     "moving after keypoints + linear (edges continue = aligned)")
        ax.set_xlabel("x (pixels, 0.479 mm)")
        ax.set_ylabel("y (pixels)")
    else:
        ax.axis("off")
    # row 3: TRE, texture accuracy, sample patches
    ax = axs[2, 0]
    res = reg["results"]
    angs = list(res)
    meths = [m for m in res[angs[0]] if m != "initial"]
    xs = np.arange(len(angs))
    wdt = 0.8 / max(len(meths), 1)
    for k, m in enumerate(meths):
        vals = [max(res[a][m]["tre_mm"], 1e-3) for a in angs]
        ax.bar(xs + (k - (len(meths) - 1) / 2) * wdt, vals, wdt, label=m)
    ax.axhline(reg["config"]["spacing_mm"][0], color="k", ls=":", label="one pixel (0.479 mm)")
    ax.set_yscale("log")
    allv = [max(res[a][m]["tre_mm"], 1e-3) for a in angs for m in meths if np.isfinite(res[a][m]["tre_mm"])]
    ax.set_ylim(min(allv + [0.1]) / 3, max(allv + [1.0]) * 3)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{a} rotation\n(start TRE {res[a]['initial']['tre_mm']:.0f} mm)" for a in angs])
    ax.set_ylabel("TRE (mm, RMS over the head)")
    ax.set_title("rigid registration of the CT head slice")
    ax.legend(fontsize=7)
    ax = axs[2, 1]
    budgets = tex["config"]["budgets"]
    for name, v in tex["methods"].items():
        mu = [v["accuracy_by_budget"][str(b)]["mean"] for b in budgets]
        sd = [v["accuracy_by_budget"][str(b)]["std"] for b in budgets]
        ax.errorbar(budgets, mu, yerr=sd, marker="o", capsize=3, label=name)
    ax.axhline(tex["config"]["chance"], color="gray", ls="--", label="chance")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("labelled patches per class")
    ax.set_ylabel("test accuracy (right halves)")
    ax.set_title("texture of 32 px patches: BoVW vs deep features\n(same linear SVM on every feature set)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axs[2, 2]
    k = min(6, int(np.min(np.bincount(yte))))
    tiles = np.vstack([np.hstack([Xte[yte == c][i] for i in range(k)]) for c in range(len(sources))])
    ax.imshow(tiles, cmap="gray", vmin=-2.5, vmax=2.5)
    ax.set_yticks([PATCH * (c + 0.5) for c in range(len(sources))])
    ax.set_yticklabels(sources, fontsize=8)
    ax.set_xticks([])
    ax.set_title("test patches per class (standardised, turned)")
    ax = axs[2, 3]
    bins = np.arange(10)
    for c, name in enumerate(sources):
        hs = np.mean([lbp(p, P=8, R=1.0).histogram for p in Xte[yte == c][:20]], axis=0)
        ax.plot(bins, hs, marker="o", label=name)
    ax.set_xticks(bins)
    ax.set_xlabel("uniform LBP code (0-8: ones in the pattern; 9: non-uniform)")
    ax.set_ylabel("fraction of pixels (mean of 20 test patches)")
    ax.set_title("LBP histograms per texture class: a hand-made texture descriptor")
    ax.legend(fontsize=7)
    return fig
