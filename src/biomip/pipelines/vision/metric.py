"""Study: metric learning, transfer learning and domain shift on tissue and nuclei patches
(issue 26, item 7; textbook 5.4.7 "度量学习" and 5.5 "迁移学习", lines 2033-2135).

Data
----
* **H&E tissue types** -- 32 x 32 px (16 um) RGB patches of the seeded H&E tissue simulator
  :func:`biomip.data.histo.tissue_he` (nuclei with chromatin texture, epithelial cytoplasm,
  collagen stroma, lumen; Beer-Lambert composition with the AQuA / Macenko stain vectors,
  Poisson-Gaussian camera noise).  The repository ships no *labelled* real H&E (``he-histo``,
  ``skin-rgb`` and ``he-slide`` have no tissue labels), so the class of a patch is the
  simulator's truth: the class (``lumen``, ``stroma``, ``epithelium`` = cytoplasm class,
  ``nucleus``) that covers >= 80 % of its central 9 x 9 pixels.  Training and test patches
  come from different tissue fields (different seeds).
* **Nuclei shapes** -- 40 x 40 px crops of the real ``nuclei2d`` fluorescence image (stardist's
  DSB-2018-style sample, 125 nuclei) centred on each object of ``nuclei2d-labels``.  Shape
  classes from ``skimage.measure.regionprops``: ``small`` / ``large`` by the median area (440
  px) and ``round`` / ``elongated`` by the median eccentricity (0.78), i.e. four classes
  ``small-round``, ``small-elongated``, ``large-round``, ``large-elongated``.  Objects of the
  left half (centroid x < 256) train, those of the right half are the test gallery; every
  training batch gets a random flip / right-angle rotation (the classes are invariant; the
  H&E patches too).

1. Retrieval
------------
A :class:`biomip.nn.metric.SiameseNet` (a :class:`biomip.nn.selfsup.ConvEncoder` + a
projection to unit-length embeddings; one encoder for every branch) is trained with

* ``contrastive`` -- :func:`~biomip.nn.metric.contrastive_loss` (Hadsell et al. 2006) over all
  pairs of a class-balanced batch;
* ``triplet`` -- :func:`~biomip.nn.metric.batch_triplet_loss`, semi-hard mining (FaceNet);
* ``siamese`` -- the pair-classification siamese network of Koch et al. (2015): ``P(same) =
  sigmoid(w . |e1 - e2| + b)`` trained by binary cross-entropy over the pairs of the batch;

against the same network ``untrained`` (random initialisation) and the ``raw-pixels``
(standardised).  Every test patch queries the other test patches (Euclidean distance):
precision@k (k = 5) and mean average precision (mAP).

2. Transfer
-----------
Target task: the H&E tissue types above with 10 / 50 / 250 labels per class (several draws).
The *pretrained* encoder is the triplet network trained with all labels of a source domain:
the same tissue simulator with the Ruifrok-Johnston stain vectors (other colours, same
tissue classes).  Compared: ``frozen`` (pretrained encoder frozen + logistic regression),
``fine-tune`` (pretrained encoder + linear head, all trained by cross-entropy), ``scratch``
(the same network randomly initialised, trained by cross-entropy) and ``frozen-random`` (a
random frozen encoder + logistic regression).  Accuracy on the target test patches.

3. Domain shift
---------------
A logistic regression on the features of the triplet encoder trained on the AQuA-stained
training fields is tested on the AQuA test fields (in-domain) and on shifted versions of the
*same* test tissue: ``ruifrok-stain`` (other stain vectors), ``scanner`` (per-channel gain
and gamma of another scanner), ``stain-strength`` (haematoxylin x 0.6, eosin x 1.4, noise
free).  Reported per shift: the accuracy drop and two distances between the in-domain and
the shifted feature distributions (features standardised by the training features): the
Frechet distance of Gaussian fits (:func:`frechet_distance`) and the maximum mean
discrepancy (:func:`mmd2`, unbiased, Gaussian kernel with the median-distance bandwidth) --
(a) as is, (b) with Macenko stain normalisation (:func:`macenko_normalise`) of every field,
training and test alike (stain vectors estimated from the field's optical densities,
recomposed with the reference vectors and density scale of the training fields; the encoder
and classifier are trained on the normalised fields), and (c) with an encoder and
classifier trained with colour augmentation (random per-channel gain / gamma and
stain-strength jitter).

``run(out, mode, seed)`` writes ``report.json`` and ``preview.png``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ...core.errors import InputError
from ...core.progress import progress_bar
from ...core.rng import seeded
from ...data import load
from ...data.histo import AQUA_I0, AQUA_STAIN_VECTORS, compose_he, optical_density, tissue_he, unmix_he
from ...nn.metric import SiameseNet, batch_triplet_loss, contrastive_loss, pairwise_distances
from ...nn.selfsup import ConvEncoder
from ..foundations.base import check_mode, check_out, new_figure, write_study

__all__ = ["STUDY", "CONFIGS", "HE_CLASSES", "NUCLEUS_CLASSES", "run", "retrieval_scores", "mmd2",
           "frechet_distance", "macenko_normalise"]

STUDY = "metric"
HE_CLASSES = ("lumen", "stroma", "epithelium", "nucleus")
"""H&E patch classes: ids 0-3 of :data:`biomip.data.histo.TISSUE_CLASSES` (cytoplasm = epithelium)."""
NUCLEUS_CLASSES = ("small-round", "small-elongated", "large-round", "large-elongated")
"""Nuclei shape classes (median area / eccentricity splits of the ``nuclei2d`` objects)."""
METRIC_METHODS = ("contrastive", "triplet", "siamese")
BASELINES = ("untrained", "raw-pixels")

CONFIGS = {
    "tiny": dict(he_shape=(128, 128), he_train=2, he_test=2, per_class_train=30, per_class_test=20, patch=32,
                 steps=15, nuc_steps=15, batch_per_class=8, widths=(8, 16, 16), dim=32, emb=16, budgets=(5, 20),
                 draws=1, ft_steps=15, k=5, mmd_n=60, lr=2e-3),
    "quick": dict(he_shape=(256, 256), he_train=16, he_test=6, per_class_train=60, per_class_test=40, patch=32,
                  steps=300, nuc_steps=200, batch_per_class=16, widths=(16, 32, 64, 64), dim=64, emb=32,
                  budgets=(10, 50, 250), draws=3, ft_steps=200, k=5, mmd_n=300, lr=2e-3),
    "full": dict(he_shape=(512, 512), he_train=40, he_test=12, per_class_train=100, per_class_test=60, patch=32,
                 steps=3000, nuc_steps=1500, batch_per_class=32, widths=(32, 64, 128, 128), dim=128, emb=64,
                 budgets=(10, 50, 250, 1000), draws=5, ft_steps=800, k=5, mmd_n=600, lr=1e-3),
}
"""Per mode: tissue field size and counts (train / test fields), patches per class and field,
patch size, training steps (metric nets, nuclei nets, transfer heads), balanced batch size per
class, encoder widths, feature and embedding widths, label budgets per class, draws per
budget, k of precision@k, patches per domain for MMD, learning rate."""

_CENTRE = 9
_PURITY = 0.8
_NUC_CROP = 40
_SHIFTS = ("ruifrok-stain", "scanner", "stain-strength")
_SCANNER_GAIN = np.array([1.06, 0.94, 0.90], np.float32)
_SCANNER_GAMMA = np.array([0.85, 1.10, 1.20], np.float32)
_STRENGTH = np.array([0.6, 1.4], np.float32)


# ============================================================================ data
def _he_patches(p, per_class: int, size: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch corners and labels of one tissue field: centres whose central window is >= 80 % one class."""
    from scipy import ndimage as ndi

    cls = p.classes
    h = size // 2
    corners, labels = [], []
    for c in range(len(HE_CLASSES)):
        frac = ndi.uniform_filter((cls == c).astype(np.float32), _CENTRE, mode="constant")
        ok = frac >= _PURITY
        ok[:h] = ok[-h:] = False
        ok[:, :h] = ok[:, -h:] = False
        yy, xx = np.nonzero(ok)
        if yy.size == 0:
            continue
        pick = rng.choice(yy.size, size=min(per_class, yy.size), replace=False)
        corners.append(np.stack([yy[pick] - h, xx[pick] - h], 1))
        labels.append(np.full(pick.size, c))
    return np.concatenate(corners), np.concatenate(labels), cls


def _crop(img: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    return np.stack([img[y:y + size, x:x + size] for y, x in corners])


def _he_domain(seeds, cfg, rng) -> dict:
    """Patches of tissue fields in the reference stain and the shifted versions of the same tissue."""
    size = cfg["patch"]
    out = {k: [] for k in ("aqua", "ruifrok-stain", "scanner", "stain-strength", "normalised", "labels", "field")}
    fields = []
    for s in seeds:
        p = tissue_he(cfg["he_shape"], seed=int(s))
        corners, labels, _ = _he_patches(p, cfg["per_class"], size, rng)
        q = tissue_he(cfg["he_shape"], seed=int(s), vectors="ruifrok")
        scanner = np.clip(_SCANNER_GAIN * np.clip(p.rgb, 0, 1) ** _SCANNER_GAMMA, 0, 1)
        strength = compose_he(p.densities * _STRENGTH[:, None, None], channel_axis=0).transpose(1, 2, 0)
        for key, img in (("aqua", p.rgb), ("ruifrok-stain", q.rgb), ("scanner", scanner),
                         ("stain-strength", strength)):
            out[key].append(_crop(np.asarray(img, np.float32), corners, size))
        out["labels"].append(labels)
        out["field"].append(np.full(labels.size, int(s)))
        fields.append({"aqua": p.rgb, "ruifrok-stain": q.rgb, "scanner": scanner, "stain-strength": strength,
                       "corners": corners})
    res = {k: np.concatenate(v) for k, v in out.items() if v}
    res["fields"] = fields
    return res


def _nuclei(cfg) -> dict:
    from skimage.measure import regionprops

    img = load("nuclei2d").numpy().astype(np.float32)
    lab = load("nuclei2d-labels").numpy()
    props = regionprops(lab)
    area = np.array([r.area for r in props], float)
    ecc = np.array([r.eccentricity for r in props], float)
    a_med, e_med = float(np.median(area)), float(np.median(ecc))
    y = 2 * (area >= a_med) + (ecc >= e_med)
    h = _NUC_CROP // 2
    pad = np.pad(img, h, mode="reflect")
    crops = []
    cx = []
    for r in props:
        cy, cxx = (int(round(v)) for v in r.centroid)
        c = pad[cy:cy + 2 * h, cxx:cxx + 2 * h]
        crops.append((c - c.mean()) / (c.std() + 1e-6))
        cx.append(cxx)
    crops = np.stack(crops)[:, None]
    left = np.array(cx) < img.shape[1] // 2
    return {"x_train": crops[left], "y_train": y[left].astype(np.int64), "x_test": crops[~left],
            "y_test": y[~left].astype(np.int64), "area_median": a_med, "eccentricity_median": e_med,
            "n_objects": len(props), "counts": np.bincount(y, minlength=4).tolist(), "image": img, "labels": lab}


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    """Patches (n, H, W, 3) in [0, 1] -> (n, 3, H, W) centred; (n, 1, H, W) as they are."""
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if t.ndim == 4 and t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2) * 2.0 - 1.0
    return t.contiguous()


# ============================================================================ stain normalisation / metrics
def macenko_normalise(rgb: np.ndarray, ref_max, i0: float = AQUA_I0, beta: float = 0.15,
                      alpha: float = 1.0) -> np.ndarray:
    """Macenko et al. (2009) stain normalisation of one H&E image onto the AQuA stain vectors.

    The stain plane is spanned by the two main directions (SVD) of the optical densities
    above ``beta``; the stain vectors are the directions at the ``alpha`` and ``100 -
    alpha`` percentiles of the angle in that plane (haematoxylin: the larger red
    component).  Densities by least squares on them are rescaled so that their 99th
    percentiles equal ``ref_max`` and recomposed with :data:`AQUA_STAIN_VECTORS`.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` in [0, 1].
    ref_max : sequence of float
        Reference 99th-percentile H and E densities.
    i0 : float, optional
        Background intensity.
    beta : float, optional
        Optical-density threshold of the pixels used.
    alpha : float, optional
        Angle percentile.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` float32 in [0, 1].

    Examples
    --------
    >>> p = tissue_he((64, 64), seed=0)
    >>> d = unmix_he(p.rgb).reshape(-1, 2)
    >>> out = macenko_normalise(p.rgb, np.percentile(d, 99, axis=0))
    >>> out.shape, bool(np.abs(out - p.rgb).mean() < 0.05)
    ((64, 64, 3), True)
    """
    od = optical_density(np.clip(rgb, 0, 1), i0).reshape(-1, 3).astype(np.float64)
    sel = od[(od > beta).all(1)]
    if sel.shape[0] < 10:
        return np.asarray(rgb, np.float32)
    _, vec = np.linalg.eigh(np.cov(sel.T))
    plane = vec[:, [2, 1]]
    plane *= np.where(plane.sum(0) < 0, -1.0, 1.0)
    proj = sel @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v = np.stack([v1, v2], 1) if v1[0] > v2[0] else np.stack([v2, v1], 1)
    v = np.abs(v) / np.linalg.norm(v, axis=0)
    d = np.maximum(od @ np.linalg.pinv(v).T, 0.0)
    dmax = np.percentile(d, 99, axis=0)
    d *= np.asarray(ref_max, float) / np.maximum(dmax, 1e-6)
    out = compose_he(d.reshape(*rgb.shape[:2], 2), vectors=AQUA_STAIN_VECTORS, i0=i0)
    return np.asarray(out, np.float32)


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel (Gretton et al. 2012).

    Parameters
    ----------
    x : numpy.ndarray
        ``(n, d)`` samples of one distribution.
    y : numpy.ndarray
        ``(m, d)`` samples of the other.
    bandwidth : float or None, optional
        Kernel sigma (default: the median pairwise distance of the pooled samples).

    Returns
    -------
    float
        ``MMD^2`` (can be slightly negative when the distributions agree).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    >>> abs(mmd2(a, b)) < 0.02, mmd2(a, b + 2.0) > 0.3
    (True, True)
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    z = np.concatenate([x, y])
    d2 = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None] - 2 * z @ z.T, 0.0)
    if bandwidth is None:
        bandwidth = float(np.sqrt(np.median(d2[np.triu_indices(len(z), 1)])))
    k = np.exp(-d2 / (2.0 * max(bandwidth, 1e-12) ** 2))
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2.0 * kxy.mean())


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance of two Gaussian fits (the FID formula): ``|mu_x - mu_y|^2 + Tr(S_x + S_y - 2 (S_x S_y)^1/2)``.

    Parameters
    ----------
    x : numpy.ndarray
        ``(n, d)`` samples.
    y : numpy.ndarray
        ``(m, d)`` samples.

    Returns
    -------
    float
        The distance (>= 0 up to rounding).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(4000, 2))
    >>> round(frechet_distance(a, a + np.array([3.0, 4.0])), 6)       # a pure shift: |mu_x - mu_y|^2
    25.0
    """
    from scipy import linalg

    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x.T), np.cov(y.T)
    root = linalg.sqrtm(sx @ sy)
    root = np.real(root)
    return float(max(((mx - my) ** 2).sum() + np.trace(sx + sy - 2.0 * root), 0.0))


def retrieval_scores(emb: np.ndarray, labels: np.ndarray, k: int = 5) -> dict:
    """Leave-one-out retrieval: every item queries all others by Euclidean distance.

    Parameters
    ----------
    emb : numpy.ndarray
        ``(n, d)`` embeddings.
    labels : numpy.ndarray
        ``(n,)`` classes.
    k : int, optional
        Cut-off of precision@k.

    Returns
    -------
    dict
        ``precision_at_k`` (mean fraction of the ``k`` nearest of the query's class),
        ``map`` (mean average precision over the queries with at least one relevant item),
        ``k``.

    Examples
    --------
    >>> e = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> retrieval_scores(e, np.array([0, 0, 1, 1]), k=1)
    {'precision_at_k': 1.0, 'map': 1.0, 'k': 1}
    """
    emb = np.asarray(emb, np.float64)
    labels = np.asarray(labels)
    d = pairwise_distances(torch.from_numpy(emb)).numpy()
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :-1]
    rel = labels[order] == labels[:, None]
    p_at_k = float(rel[:, :k].mean())
    hits = np.cumsum(rel, 1)
    prec = hits / np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(1)
    ok = n_rel > 0
    ap = (prec * rel).sum(1)[ok] / n_rel[ok]
    return {"precision_at_k": p_at_k, "map": float(ap.mean()), "k": int(k)}


# ============================================================================ training
def _augment(x: torch.Tensor, g: torch.Generator, colour: bool) -> torch.Tensor:
    k = int(torch.randint(0, 4, (1,), generator=g))
    x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(0, 2, (1,), generator=g)):
        x = x.flip(3)
    if colour and x.shape[1] == 3:
        n = x.shape[0]
        rgb = (x + 1.0) / 2.0
        gain = 1.0 + 0.15 * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1)
        gamma = torch.exp(0.3 * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1))
        od_scale = torch.exp(0.4 * (2 * torch.rand(n, 1, 1, 1, generator=g) - 1))
        rgb = (rgb.clamp(1e-4, 1) ** od_scale) ** gamma * gain
        x = rgb.clamp(0, 1) * 2.0 - 1.0
    return x


def _balanced_batch(y: np.ndarray, per_class: int, rng) -> np.ndarray:
    idx = []
    for c in np.unique(y):
        pool = np.nonzero(y == c)[0]
        idx.append(rng.choice(pool, size=per_class, replace=pool.size < per_class))
    return np.concatenate(idx)


def _network(cfg, channels: int, size: int, seed: int) -> SiameseNet:
    enc = ConvEncoder(in_channels=channels, size=size, widths=cfg["widths"], dim=cfg["dim"], seed=seed)
    return SiameseNet(enc, dim=cfg["emb"], hidden=2 * cfg["dim"], seed=seed + 1)


def _pairs(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.triu_indices(n, n, 1, device=device)
    return i, j


def _train_metric(method: str, x: torch.Tensor, y: np.ndarray, cfg, seed: int, steps: int,
                  colour: bool = False) -> tuple[SiameseNet, list[float]]:
    net = _network(cfg, x.shape[1], x.shape[2], seed)
    params = list(net.parameters())
    pair_head = None
    if method == "siamese":
        with seeded(seed):
            pair_head = torch.nn.Linear(cfg["emb"], 1)
        params += list(pair_head.parameters())
    opt = torch.optim.Adam(params, lr=cfg["lr"])
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    yt = torch.from_numpy(y)
    history = []
    net.train()
    for _ in range(steps):
        idx = _balanced_batch(y, cfg["batch_per_class"], rng)
        xb = _augment(x[idx], g, colour)
        yb = yt[idx]
        e = net(xb)
        if method == "triplet":
            loss = batch_triplet_loss(e, yb, margin=0.2, mining="semihard")
        else:
            i, j = _pairs(e.shape[0], e.device)
            same = (yb[i] == yb[j]).float()
            if method == "contrastive":
                loss = contrastive_loss(e[i], e[j], same, margin=1.0)
            else:
                logit = pair_head((e[i] - e[j]).abs())[:, 0]
                w = torch.where(same > 0, (1 - same).sum() / same.sum().clamp_min(1), torch.ones_like(same))
                loss = F.binary_cross_entropy_with_logits(logit, same, weight=w / w.mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return net.eval(), history


@torch.no_grad()
def _embed(net: SiameseNet, x: torch.Tensor, features: bool = False) -> np.ndarray:
    net.eval()
    out = []
    for i in range(0, x.shape[0], 256):
        xb = x[i:i + 256]
        out.append(net.encoder(xb) if features else net(xb))
    return torch.cat(out).numpy()


def _probe(ftr, ytr, fte, yte, seed) -> tuple[float, object]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
        clf.fit(ftr, ytr)
    return float((clf.predict(fte) == yte).mean()), clf


def _train_ce(x, y, cfg, seed: int, init: SiameseNet | None, classes: int) -> SiameseNet:
    net = _network(cfg, x.shape[1], x.shape[2], seed)
    if init is not None:
        net.load_state_dict(init.state_dict())
    with seeded(seed):
        head = torch.nn.Linear(cfg["dim"], classes)
    lr = cfg["lr"]
    groups = [{"params": net.encoder.parameters(), "lr": lr * (0.3 if init is not None else 1.0)},
              {"params": head.parameters(), "lr": lr}]
    opt = torch.optim.Adam(groups)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    yt = torch.from_numpy(y)
    net.train()
    bs = min(64, len(y))
    for _ in range(cfg["ft_steps"]):
        idx = rng.choice(len(y), size=bs, replace=len(y) < bs)
        logits = head(net.encoder(_augment(x[idx], g, False)))
        loss = F.cross_entropy(logits, yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    net.ce_head = head
    return net


@torch.no_grad()
def _ce_accuracy(net, x, y) -> float:
    pred = torch.cat([net.ce_head(net.encoder(x[i:i + 256])).argmax(1) for i in range(0, x.shape[0], 256)])
    return float((pred.numpy() == y).mean())


def _budget_draw(y: np.ndarray, n: int, rng) -> np.ndarray:
    return np.concatenate([rng.choice(np.nonzero(y == c)[0], size=min(n, int((y == c).sum())), replace=False)
                           for c in np.unique(y)])


# ============================================================================ run
def run(out=None, mode: str = "quick", seed: int = 0, progress=None) -> dict:
    """Metric learning (retrieval), transfer at label budgets and domain shift on H&E / nuclei patches.

    Parameters
    ----------
    out : str or pathlib.Path or None, optional
        Folder for ``report.json`` and ``preview.png`` (``None``: nothing is written).
    mode : {"tiny", "quick", "full"}, optional
        Size of the run (:data:`CONFIGS`); ``"tiny"`` is a smoke test (seconds), the figures
        of the closing note come from ``"quick"``.
    seed : int, optional
        Base seed of the tissue fields, patch sampling, initialisation and training.
    progress : bool or None, optional
        Show a progress bar (``None``: on a terminal).

    Returns
    -------
    dict
        ``study``, ``mode``, ``config``, ``seeds``, ``methods`` (retrieval per method:
        ``he`` / ``nuclei`` precision@k and mAP, training seconds), ``transfer`` (accuracy
        per method and budget), ``shift`` (accuracy and MMD^2 per shift and correction),
        ``findings``, ``targets`` (none stated by the issue), ``warnings``, ``seconds``,
        ``files``.

    Raises
    ------
    InputError
        For an unknown mode, a bad ``seed`` or an ``out`` that is a file.

    Examples
    --------
    >>> CONFIGS["quick"]["budgets"]
    (10, 50, 250)
    >>> r = run(None, "tiny")                       # doctest: +SKIP
    >>> sorted(r["methods"])                        # doctest: +SKIP
    ['contrastive', 'raw-pixels', 'siamese', 'triplet', 'untrained']
    """
    t0 = time.perf_counter()
    mode = check_mode(mode)
    check_out(out)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: got {seed!r}; expected a non-negative integer")
    seed = int(seed)
    cfg = dict(CONFIGS[mode])
    rng = np.random.default_rng(seed)
    train_seeds = [1000 * seed + i for i in range(cfg["he_train"])]
    test_seeds = [1000 * seed + 500 + i for i in range(cfg["he_test"])]
    src_seeds = [1000 * seed + 800 + i for i in range(cfg["he_train"])]
    n_steps = 2 * len(METRIC_METHODS) + 3 + len(cfg["budgets"]) + 2
    warns: list[str] = []
    with progress_bar("metric / transfer / shift", n_steps, progress) as bar:
        cfg_tr = dict(cfg, per_class=cfg["per_class_train"])
        cfg_te = dict(cfg, per_class=cfg["per_class_test"])
        he_tr = _he_domain(train_seeds, cfg_tr, rng)
        he_te = _he_domain(test_seeds, cfg_te, rng)
        src = _he_domain(src_seeds, cfg_tr, rng)
        ytr, yte = he_tr["labels"].astype(np.int64), he_te["labels"].astype(np.int64)
        xtr, xte = _to_tensor(he_tr["aqua"]), _to_tensor(he_te["aqua"])
        nuc = _nuclei(cfg)
        xn_tr = torch.from_numpy(nuc["x_train"])
        xn_te = torch.from_numpy(nuc["x_test"])
        bar.advance()

        # ---------------------------------------------------------------- 1. retrieval
        methods: dict = {}
        nets: dict = {}
        histories: dict = {}
        for m in METRIC_METHODS:
            t1 = time.perf_counter()
            net, hist = _train_metric(m, xtr, ytr, cfg, seed, cfg["steps"])
            t_he = time.perf_counter() - t1
            bar.advance()
            t1 = time.perf_counter()
            nnet, nhist = _train_metric(m, xn_tr, nuc["y_train"], cfg, seed, cfg["nuc_steps"])
            t_nuc = time.perf_counter() - t1
            bar.advance()
            nets[m] = (net, nnet)
            histories[m] = (hist, nhist)
            methods[m] = {"he": retrieval_scores(_embed(net, xte), yte, cfg["k"]),
                          "nuclei": retrieval_scores(_embed(nnet, xn_te), nuc["y_test"], cfg["k"]),
                          "train_seconds": {"he": t_he, "nuclei": t_nuc},
                          "final_loss": {"he": float(np.mean(hist[-10:])), "nuclei": float(np.mean(nhist[-10:]))}}
        untrained = (_network(cfg, 3, cfg["patch"], seed).eval(), _network(cfg, 1, _NUC_CROP, seed).eval())
        methods["untrained"] = {"he": retrieval_scores(_embed(untrained[0], xte), yte, cfg["k"]),
                                "nuclei": retrieval_scores(_embed(untrained[1], xn_te), nuc["y_test"], cfg["k"])}

        def raw(x):
            f = x.reshape(x.shape[0], -1).numpy().astype(np.float64)
            return (f - f.mean(0)) / (f.std(0) + 1e-6)

        methods["raw-pixels"] = {"he": retrieval_scores(raw(xte), yte, cfg["k"]),
                                 "nuclei": retrieval_scores(raw(xn_te), nuc["y_test"], cfg["k"])}
        bar.advance()

        # ---------------------------------------------------------------- 2. transfer
        t1 = time.perf_counter()
        xsrc = _to_tensor(src["ruifrok-stain"])
        pre, _ = _train_metric("triplet", xsrc, src["labels"].astype(np.int64), cfg, seed + 7, cfg["steps"])
        pre_seconds = time.perf_counter() - t1
        src_test = retrieval_scores(_embed(pre, _to_tensor(he_te["ruifrok-stain"])), yte, cfg["k"])
        f_pre_tr, f_pre_te = _embed(pre, xtr, True), _embed(pre, xte, True)
        f_rnd_tr, f_rnd_te = _embed(untrained[0], xtr, True), _embed(untrained[0], xte, True)
        bar.advance()
        transfer = {m: {} for m in ("frozen", "fine-tune", "scratch", "frozen-random")}
        for n in cfg["budgets"]:
            acc = {m: [] for m in transfer}
            for d in range(cfg["draws"]):
                r = np.random.default_rng(seed * 7919 + 31 * n + d)
                idx = _budget_draw(ytr, n, r)
                acc["frozen"].append(_probe(f_pre_tr[idx], ytr[idx], f_pre_te, yte, seed)[0])
                acc["frozen-random"].append(_probe(f_rnd_tr[idx], ytr[idx], f_rnd_te, yte, seed)[0])
                ft = _train_ce(xtr[idx], ytr[idx], cfg, seed + d, pre, len(HE_CLASSES))
                acc["fine-tune"].append(_ce_accuracy(ft, xte, yte))
                sc = _train_ce(xtr[idx], ytr[idx], cfg, seed + d, None, len(HE_CLASSES))
                acc["scratch"].append(_ce_accuracy(sc, xte, yte))
            for m in transfer:
                transfer[m][str(n)] = {"mean": float(np.mean(acc[m])), "std": float(np.std(acc[m])),
                                       "per_draw": [round(v, 4) for v in acc[m]],
                                       "labels_per_class": int(n)}
            bar.advance()

        # ---------------------------------------------------------------- 3. domain shift
        ref = unmix_he(np.concatenate([f["aqua"].reshape(-1, 3) for f in he_tr["fields"]]))
        ref_max = np.percentile(ref, 99, axis=0)
        normed = {}
        for key in ("aqua",) + _SHIFTS:
            normed[key] = np.concatenate([_crop(macenko_normalise(f[key], ref_max), f["corners"], cfg["patch"])
                                          for f in he_te["fields"]])
        xtr_norm = _to_tensor(np.concatenate([_crop(macenko_normalise(f["aqua"], ref_max), f["corners"],
                                                    cfg["patch"]) for f in he_tr["fields"]]))
        norm_net, _ = _train_metric("triplet", xtr_norm, ytr, cfg, seed, cfg["steps"])
        aug_net, _ = _train_metric("triplet", xtr, ytr, cfg, seed, cfg["steps"], colour=True)
        bar.advance()
        n_mmd = min(cfg["mmd_n"], len(yte))
        sub = np.random.default_rng(seed + 3).choice(len(yte), size=n_mmd, replace=False)
        shift: dict = {}
        for corr, net, x_fit, getx in (("none", nets["triplet"][0], xtr, lambda k: he_te[k]),
                                       ("stain-normalised", norm_net, xtr_norm, lambda k: normed[k]),
                                       ("augmented", aug_net, xtr, lambda k: he_te[k])):
            ftr = _embed(net, x_fit, True)
            f_in = _embed(net, _to_tensor(getx("aqua")), True)
            acc_in, clf = _probe(ftr, ytr, f_in, yte, seed)
            sd = ftr.std(0) + 1e-6
            row = {"aqua (in-domain)": {"accuracy": acc_in, "mmd2": 0.0, "frechet": 0.0}}
            for k in _SHIFTS:
                f_sh = _embed(net, _to_tensor(getx(k)), True)
                a = float((clf.predict(f_sh) == yte).mean())
                row[k] = {"accuracy": a, "drop": acc_in - a, "mmd2": mmd2(f_in[sub] / sd, f_sh[sub] / sd),
                          "frechet": frechet_distance(f_in / sd, f_sh / sd)}
            shift[corr] = row
        bar.advance()

    findings = []
    best = max(METRIC_METHODS, key=lambda m: methods[m]["he"]["map"])
    for task in ("he", "nuclei"):
        for m in METRIC_METHODS:
            for b in BASELINES:
                if methods[m][task]["map"] <= methods[b][task]["map"]:
                    findings.append(f"{task}: {m} mAP {methods[m][task]['map']:.3f} does not beat {b} "
                                    f"({methods[b][task]['map']:.3f})")
    for n in cfg["budgets"]:
        fz, sc, ft = (transfer[m][str(n)]["mean"] for m in ("frozen", "scratch", "fine-tune"))
        for name, v in (("frozen pretrained encoder + logistic head", fz), ("fine-tuned pretrained encoder", ft)):
            verdict = "beats" if v > sc else "does not beat"
            findings.append(f"{n} labels/class: {name} ({v:.3f}) {verdict} training from scratch ({sc:.3f})")
    for k in _SHIFTS:
        a0, a1, a2 = (shift[c][k]["accuracy"] for c in ("none", "stain-normalised", "augmented"))
        findings.append(f"{k}: accuracy {a0:.3f} as is, {a1:.3f} after stain normalisation, {a2:.3f} with "
                        "colour augmentation")
    warns.append("H&E tissue-type labels are the simulator's truth (tissue_he): the shipped real H&E images "
                 "(he-histo, skin-rgb, he-slide) carry no tissue labels")
    warns.append(f"nuclei2d has {nuc['n_objects']} nuclei: ~{len(nuc['y_test'])} test queries, retrieval figures "
                 "are noisy (a few percent)")
    if mode == "tiny":
        warns.append("tiny: a few dozen training steps; a smoke test, the figures come from quick mode")

    report = {
        "study": STUDY, "mode": mode,
        "config": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                   "he_classes": list(HE_CLASSES), "nucleus_classes": list(NUCLEUS_CLASSES),
                   "purity": _PURITY, "centre_window": _CENTRE, "nucleus_crop": _NUC_CROP,
                   "nucleus_area_median_px": nuc["area_median"],
                   "nucleus_eccentricity_median": nuc["eccentricity_median"],
                   "nucleus_class_counts": nuc["counts"], "n_nuclei_train": int(len(nuc["y_train"])),
                   "n_nuclei_test": int(len(nuc["y_test"])), "n_he_train": int(len(ytr)),
                   "n_he_test": int(len(yte)), "he_class_counts_test": np.bincount(yte, minlength=4).tolist(),
                   "triplet_mining": "semihard", "triplet_margin": 0.2, "contrastive_margin": 1.0,
                   "scanner_gain": _SCANNER_GAIN.tolist(), "scanner_gamma": _SCANNER_GAMMA.tolist(),
                   "stain_strength": _STRENGTH.tolist(), "pretraining": "triplet on ruifrok-stained fields",
                   "finetune_encoder_lr_factor": 0.3},
        "seeds": {"base": seed, "train_fields": train_seeds, "test_fields": test_seeds, "source_fields": src_seeds},
        "methods": methods,
        "transfer": {"accuracy": transfer, "pretraining_seconds": pre_seconds,
                     "source_domain_retrieval": src_test},
        "shift": shift,
        "findings": findings, "best_he_method": best,
        "targets": {},
        "warnings": warns,
    }
    fig = None
    if out is not None:
        fig = _figure(he_te, yte, nets, nuc, methods, transfer, shift, cfg, normed)
    return write_study(out, report, fig, t0)


# ============================================================================ figure
def _mosaic(query_imgs, rows_imgs, ok, tile, gap=3):
    """Rows: query | gap | retrieved...; a coloured frame per retrieved tile (green ok / red wrong)."""
    n, k = ok.shape
    h = n * (tile + gap)
    w = (k + 1) * (tile + gap) + gap
    canvas = np.ones((h, w, 3), np.float32)
    for r in range(n):
        y = r * (tile + gap)
        canvas[y:y + tile, :tile] = query_imgs[r]
        for j in range(k):
            x = (j + 1) * (tile + gap) + gap
            colour = np.array([0.1, 0.8, 0.1] if ok[r, j] else [0.9, 0.1, 0.1], np.float32)
            canvas[max(y - 1, 0):y + tile + 1, x - 1:x + tile + 1] = colour
            canvas[y:y + tile, x:x + tile] = rows_imgs[r][j]
    return canvas


def _examples(emb, y, imgs, k, rng, n_per=1):
    d = pairwise_distances(torch.from_numpy(np.asarray(emb, np.float64))).numpy()
    np.fill_diagonal(d, np.inf)
    queries = [int(rng.choice(np.nonzero(y == c)[0])) for c in np.unique(y) for _ in range(n_per)]
    nn_idx = np.argsort(d[queries], axis=1)[:, :k]
    ok = y[nn_idx] == y[queries][:, None]
    return _mosaic([imgs[q] for q in queries], [[imgs[j] for j in row] for row in nn_idx], ok, imgs.shape[1]), \
        [y[q] for q in queries]


def _grey_rgb(x):
    x = np.asarray(x)[:, 0]
    lo, hi = np.percentile(x, (1, 99))
    g = np.clip((x - lo) / (hi - lo + 1e-9), 0, 1)
    return np.repeat(g[..., None], 3, axis=-1)


def _figure(he_te, yte, nets, nuc, methods, transfer, shift, cfg, normed):
    fig = new_figure((18.0, 10.5))
    axs = fig.subplots(2, 3)
    rng = np.random.default_rng(0)
    k = cfg["k"]
    emb = _embed(nets["triplet"][0], _to_tensor(he_te["aqua"]))
    img, qcls = _examples(emb, yte, he_te["aqua"], k, rng)
    ax = axs[0, 0]
    ax.imshow(img)
    ax.set_title(f"H&E retrieval (triplet): query | {k} nearest\n(green: same tissue type, red: other)")
    ax.set_yticks([(i + 0.5) * (cfg["patch"] + 3) for i in range(len(qcls))])
    ax.set_yticklabels([HE_CLASSES[c] for c in qcls])
    ax.set_xticks([])
    emb = _embed(nets["triplet"][1], torch.from_numpy(nuc["x_test"]))
    img, qcls = _examples(emb, nuc["y_test"], _grey_rgb(nuc["x_test"]), k, rng)
    ax = axs[0, 1]
    ax.imshow(img)
    ax.set_title(f"real nuclei2d shape retrieval (triplet): query | {k} nearest")
    ax.set_yticks([(i + 0.5) * (_NUC_CROP + 3) for i in range(len(qcls))])
    ax.set_yticklabels([NUCLEUS_CLASSES[c] for c in qcls], fontsize=8)
    ax.set_xticks([])
    ax = axs[0, 2]
    names = list(METRIC_METHODS) + list(BASELINES)
    xpos = np.arange(len(names))
    for j, (task, lbl) in enumerate((("he", "H&E tissue types"), ("nuclei", "nuclei shapes"))):
        ax.bar(xpos + (j - 0.5) * 0.38, [methods[m][task]["map"] for m in names], 0.36, label=f"{lbl}: mAP")
        ax.scatter(xpos + (j - 0.5) * 0.38, [methods[m][task]["precision_at_k"] for m in names], color="k",
                   marker="_", s=150, zorder=3, label=f"precision@{k}" if j == 0 else None)
    ax.set_xticks(xpos)
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylabel("mAP (bars) / precision@k (ticks)")
    ax.set_ylim(0, 1.05)
    ax.set_title("retrieval on held-out patches")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    ax = axs[1, 0]
    budgets = list(cfg["budgets"])
    for m, style in (("frozen", "o-"), ("fine-tune", "s-"), ("scratch", "^-"), ("frozen-random", "x--")):
        mu = [transfer[m][str(n)]["mean"] for n in budgets]
        sd = [transfer[m][str(n)]["std"] for n in budgets]
        ax.errorbar(budgets, mu, yerr=sd, fmt=style, capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("labelled patches per class (target: AQuA-stained H&E)")
    ax.set_ylabel("test accuracy")
    ax.set_title("transfer from a Ruifrok-stained source (triplet-pretrained)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    cols = ["aqua (in-domain)"] + list(_SHIFTS)
    corrs = ("none", "stain-normalised", "augmented")
    xpos = np.arange(len(cols))
    for ax, key, lbl in ((axs[1, 1], "accuracy", "test accuracy"),
                         (axs[1, 2], "frechet", "Frechet distance to in-domain features (standardised)")):
        for j, c in enumerate(corrs):
            ax.bar(xpos + (j - 1) * 0.27, [shift[c][s][key] for s in cols], 0.26, label=c)
        ax.set_xticks(xpos)
        ax.set_xticklabels(cols, rotation=15)
        ax.set_ylabel(lbl)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper left", ncol=3 if key == "accuracy" else 1)
    axs[1, 1].set_title("domain shift: tissue-type accuracy")
    axs[1, 1].set_ylim(0, 1.2)
    top = max(shift[c][s]["frechet"] for c in corrs for s in cols)
    axs[1, 2].set_ylim(0, 1.75 * max(top, 1e-6))
    axs[1, 2].set_title("domain shift: feature-distribution distance")
    # small insets: one test patch under each shift
    ins = axs[1, 2].inset_axes([0.42, 0.66, 0.56, 0.26])
    i0 = int(np.nonzero(yte == 3)[0][0]) if (yte == 3).any() else 0
    strip = np.concatenate([he_te[c][i0] if c != "aqua (in-domain)" else he_te["aqua"][i0] for c in cols], 1)
    ins.imshow(strip)
    ins.set_xticks([])
    ins.set_yticks([])
    ins.set_title("one test patch: in-domain | ruifrok | scanner | strength", fontsize=7)
    return fig
