"""Segmentation by node classification on a superpixel graph (textbook 4.5.2, "超像素/超体素图").

The book's reason for graphs in image processing is scale: a slice of tens of thousands
of pixels becomes a graph of a few hundred superpixels ("将百万像素的图像聚合成5000个节点")
that still carries the image's structure.  :func:`region_graph` builds it --
SLIC superpixels (:func:`biomip.segment.superpixels`) as nodes, touching superpixels as
edges weighted by the similarity of their mean intensities
(:func:`biomip.segment.superpixel_affinity`), node features from the multi-scale filter
bank (:func:`biomip.features.pixel_features`) averaged per superpixel
(:func:`biomip.segment.region_features`) or from :func:`biomip.features.object_features`
(intensity, shape and texture of every superpixel).

:class:`GraphSegmenter` then does semi-supervised node classification: the few scribbled
pixels (:func:`biomip.data.scribbles_from_labels` simulates a user) label the superpixels
they fall in (majority vote), a graph neural network of :mod:`biomip.nn.graph` (GCN, GAT,
GraphSAGE with sampled neighbourhoods, or an MLP on the same features) is trained on those
nodes with the whole graph as context, and the predicted class of every node is painted
back onto its pixels.  :func:`graph_segment` is the one-call form.  The result can be no
finer than the superpixels: :meth:`RegionGraph.vote` of the truth gives that ceiling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.arrays import as_numpy, check_count, check_number, is_tensor
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image
from ..features.objects import object_features
from ..features.pixel import pixel_feature_names, pixel_features
from ..nn.graph import GNN, GNN_KINDS, sample_blocks, to_edge_index
from .base import labels_out
from .cluster import region_features, superpixel_affinity
from .cluster import superpixels as slic_superpixels

__all__ = ["GRAPH_FEATURES", "GraphSegmenter", "RegionGraph", "graph_segment", "region_graph"]

GRAPH_FEATURES = ("pixel", "intensity", "objects")
"""Node features of :func:`region_graph`."""

_SIGMAS = (1.0, 2.0, 4.0)


@dataclass
class RegionGraph:
    """A superpixel graph of an image (built by :func:`region_graph`).

    Parameters
    ----------
    superpixels : numpy.ndarray
        int32 node id (``0..m-1``) of every pixel, the image's spatial shape.
    edge_index : torch.Tensor
        ``(2, E)`` int64 (source, target) pairs, both directions of every adjacency.
    edge_weight : torch.Tensor
        ``(E,)`` float32 similarity of the two nodes' mean intensities (1 when unweighted).
    features : numpy.ndarray
        ``(m, F)`` float32 node features, every column standardised (zero mean, unit sd).
    feature_names : list of str
        The ``F`` column names.
    sizes : numpy.ndarray
        ``(m,)`` pixels per node.
    centroids : numpy.ndarray
        ``(m, d)`` node centres in pixels, array order (``[z,] y, x``).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.repeat([[0.0] * 4 + [1.0] * 4], 8, axis=0)
    >>> g = region_graph(img, superpixels=(img > 0).astype(int), features="intensity")
    >>> g.n_nodes, g.edge_index.tolist(), g.centroids.tolist()
    (2, [[1, 0], [0, 1]], [[3.5, 1.5], [3.5, 5.5]])
    """

    superpixels: np.ndarray
    edge_index: torch.Tensor
    edge_weight: torch.Tensor
    features: np.ndarray
    feature_names: list = field(default_factory=list)
    sizes: np.ndarray = None
    centroids: np.ndarray = None

    @property
    def n_nodes(self) -> int:
        """Number of nodes ``m``.

        Examples
        --------
        >>> import numpy as np
        >>> region_graph(np.eye(8), superpixels=np.eye(8, dtype=int), features="intensity").n_nodes
        2
        """
        return int(self.features.shape[0])

    def vote(self, labels, ignore: int | None = None) -> np.ndarray:
        """The most frequent label of every node's pixels (ties: the smaller label).

        Parameters
        ----------
        labels : array_like or torch.Tensor or Image
            Non-negative integer labels on the image's grid (scribbles, a truth).
        ignore : int or None, optional
            A value not counted (``0`` for scribbles: unlabelled); a node with no other
            value gets ``ignore``.

        Returns
        -------
        numpy.ndarray
            ``(m,)`` int64 label per node.

        Raises
        ------
        InputError
            For non-integer or negative labels.
        ShapeError
            When ``labels`` does not have the superpixels' shape.

        Examples
        --------
        >>> import numpy as np
        >>> img = np.repeat([[0.0] * 4 + [1.0] * 4], 8, axis=0)
        >>> g = region_graph(img, superpixels=(img > 0).astype(int), features="intensity")
        >>> s = np.zeros((8, 8), int); s[2, 1] = 1; s[5, 6] = 2
        >>> g.vote(s, ignore=0).tolist()
        [1, 2]
        """
        lab = _label_array(labels, self.superpixels.shape, "labels")
        sp = self.superpixels.reshape(-1)
        v = lab.reshape(-1)
        keep = np.ones(v.size, bool) if ignore is None else v != ignore
        k = int(v.max()) + 1 if v.size else 1
        counts = np.bincount(sp[keep] * k + v[keep], minlength=self.n_nodes * k).reshape(self.n_nodes, k)
        out = counts.argmax(1).astype(np.int64)
        if ignore is not None:
            out[counts.sum(1) == 0] = ignore
        return out

    def paint(self, node_values) -> np.ndarray:
        """Node values spread onto the pixels: ``node_values[superpixels]``.

        Parameters
        ----------
        node_values : array_like
            ``(m,)`` or ``(m, c)`` values.

        Returns
        -------
        numpy.ndarray
            The image's spatial shape (plus ``c``).

        Raises
        ------
        ShapeError
            When there is not one value per node.

        Examples
        --------
        >>> import numpy as np
        >>> img = np.repeat([[0.0] * 4 + [1.0] * 4], 8, axis=0)
        >>> g = region_graph(img, superpixels=(img > 0).astype(int), features="intensity")
        >>> g.paint(np.array([5, 7]))[0].tolist()
        [5, 5, 5, 5, 7, 7, 7, 7]
        """
        v = as_numpy(node_values, name="node_values")
        if v.ndim not in (1, 2) or v.shape[0] != self.n_nodes:
            raise ShapeError(f"node_values: got shape {v.shape}; expected ({self.n_nodes},) or ({self.n_nodes}, c)")
        return v[self.superpixels]


def _label_array(labels, shape, name: str) -> np.ndarray:
    arr = as_numpy(labels.array if isinstance(labels, Image) else labels, name=name)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer) or (arr.size and arr.min() < 0):
        raise InputError(f"{name}: got {describe(arr)}; expected non-negative integer labels")
    if arr.shape != tuple(shape):
        raise ShapeError(f"{name}: got shape {arr.shape}; expected the image's spatial shape {tuple(shape)}")
    return arr.astype(np.int64)


def _as_image(image) -> Image:
    img = image if isinstance(image, Image) else None
    if img is None:
        try:
            img = Image(image)
        except InputError as exc:
            raise InputError(f"image: got {describe(image)}; expected a biomip Image or a 2-D / 3-D array") from exc
    if "t" in img.axes or img.sdim not in (2, 3):
        raise InputError(f"image: got axes {img.axes!r}; expected a 2-D or 3-D image ('yx', 'zyx', 'cyx', 'czyx')")
    return img


def _standardise(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    mu, sd = f.mean(0), f.std(0)
    return ((f - mu) / np.where(sd > 1e-12, sd, 1.0)).astype(np.float32)


def region_graph(image, superpixels=400, features: str = "pixel", compactness: float = 0.3,
                 sigmas=_SIGMAS, weighted: bool = True, device=None) -> RegionGraph:
    """The superpixel graph of an image: nodes, edges and node features.

    Parameters
    ----------
    image : Image or array_like or torch.Tensor
        2-D / 3-D image, grey or with a channel axis (an Image's spacing is used).
    superpixels : int or array_like, optional
        A number of SLIC superpixels (:func:`biomip.segment.superpixels`) or a non-negative
        integer label array of the spatial shape (relabelled ``0..m-1``).
    features : {"pixel", "intensity", "objects"}, optional
        Node features (:data:`GRAPH_FEATURES`), each column standardised:

        * ``"pixel"``: the superpixel means of the multi-scale filter bank
          (:func:`biomip.features.pixel_features` at ``sigmas``), plus the standard
          deviation of the intensities and the centre position;
        * ``"intensity"``: mean and standard deviation of the intensities (per channel);
        * ``"objects"``: :func:`biomip.features.object_features` of every superpixel
          (intensity, shape, and texture in 2-D; grey images only).
    compactness : float, optional
        SLIC compactness.
    sigmas : sequence of float, optional
        Filter scales in mm (``"pixel"`` features).
    weighted : bool, optional
        Weight the edges by intensity similarity (:func:`biomip.segment.superpixel_affinity`);
        else every edge weighs 1.
    device : str or torch.device or None, optional
        Where the filter bank runs.

    Returns
    -------
    RegionGraph
        Superpixels, edges (both directions), standardised features.

    Raises
    ------
    InputError
        For a constant image, an unknown ``features``, or bad superpixels.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((32, 32)); img[8:24, 8:24] = 1
    >>> g = region_graph(img, superpixels=16, features="intensity")
    >>> g.features.shape[1], int(g.edge_index.shape[0]), g.superpixels.shape
    (2, 2, (32, 32))
    """
    img = _as_image(image)
    if features not in GRAPH_FEATURES:
        raise InputError(f"features: got {features!r}; expected one of {GRAPH_FEATURES}")
    compactness = check_number(compactness, "compactness", positive=True)
    if isinstance(superpixels, (int, np.integer)) and not isinstance(superpixels, bool):
        sp = slic_superpixels(img, check_count(superpixels, "superpixels", minimum=2), compactness=compactness)
    elif superpixels is None or isinstance(superpixels, bool):
        raise InputError(f"superpixels: got {superpixels!r}; expected a number of superpixels or a label array")
    else:
        sp = _label_array(superpixels, img.spatial_shape, "superpixels")
        _, inv = np.unique(sp, return_inverse=True)
        sp = inv.reshape(sp.shape).astype(np.int32)
    W, sp = superpixel_affinity(img, sp, compactness=compactness)
    ei, w = to_edge_index(W)
    if not weighted:
        w = torch.ones_like(w)
    m = int(sp.max()) + 1
    grey = img.numpy().astype(np.float32)
    grey = grey.reshape(img.channels, *img.spatial_shape) if "c" in img.axes else grey[None]
    mean_i, sizes = region_features(grey, sp)
    sq, _ = region_features(grey * grey, sp)
    std_i = np.sqrt(np.clip(sq - mean_i**2, 0, None))
    grids = np.indices(sp.shape).reshape(sp.ndim, -1).astype(np.float64)
    flat = sp.reshape(-1)
    cent = np.stack([np.bincount(flat, g, minlength=m) for g in grids], 1) / np.maximum(sizes, 1)[:, None]
    chan = [""] if grey.shape[0] == 1 else [f"_c{c}" for c in range(grey.shape[0])]
    if features == "intensity":
        f = np.concatenate([mean_i, std_i], 1)
        names = [f"mean{c}" for c in chan] + [f"std{c}" for c in chan]
    elif features == "pixel":
        fm = pixel_features(img, sigmas=sigmas, device=device)
        fm = fm.detach().cpu().numpy() if is_tensor(fm) else np.asarray(fm)
        means, _ = region_features(fm, sp)
        pos = [f"centre_{a}" for a in "zyx"[3 - sp.ndim:]]
        f = np.concatenate([means, std_i, cent], 1)
        names = list(pixel_feature_names(tuple(sigmas), ndim=sp.ndim, channels=grey.shape[0])) + \
            [f"std{c}" for c in chan] + pos
    else:
        if grey.shape[0] != 1:
            raise InputError("features: 'objects' takes a grey image; got one with channels (use 'pixel')")
        r = object_features(sp, grey[0], spacing=tuple(img.spacing)[:sp.ndim], background=None)
        f = np.nan_to_num(np.asarray(r.values, dtype=np.float64))
        names = list(r.names)
    return RegionGraph(superpixels=sp.astype(np.int32), edge_index=ei, edge_weight=w.float(),
                       features=_standardise(f), feature_names=names, sizes=np.asarray(sizes),
                       centroids=cent.astype(np.float32))


class GraphSegmenter:
    """Semi-supervised segmentation: a graph neural network classifies superpixels from scribbles.

    Parameters
    ----------
    kind : {"gcn", "gat", "sage", "mlp"}, optional
        Network (:class:`biomip.nn.GNN`); ``"mlp"`` ignores the graph (the baseline).
    depth : int, optional
        Graph layers.
    hidden : int, optional
        Hidden width.
    heads : int, optional
        GAT heads.
    residual : {None, "skip", "initial"}, optional
        Residual connections (see :class:`biomip.nn.GNN`).
    deflation : bool, optional
        The book's deflation against over-smoothing.
    dropout : float, optional
        Dropout rate.
    epochs : int, optional
        Training steps (full batch; GraphSAGE: one sampled mini-batch of the labelled
        nodes per step).
    lr : float, optional
        Adam learning rate.
    weight_decay : float, optional
        Adam weight decay.
    fanout : int, optional
        Neighbours sampled per node and layer for ``"sage"`` (prediction uses them all).
    superpixels : int, optional
        SLIC superpixels of the region graph.
    features : {"pixel", "intensity", "objects"}, optional
        Node features (:func:`region_graph`).
    compactness : float, optional
        SLIC compactness.
    seed : int, optional
        Seed of the initialisation, dropout and sampling.
    device : str or torch.device or None, optional
        Where the network trains (``None``: the CPU).

    Attributes
    ----------
    graph_ : RegionGraph
        The region graph of the fitted image.
    net_ : biomip.nn.GNN
        The trained network.
    classes_ : numpy.ndarray
        The scribble values (classes), ascending.
    node_labels_ : numpy.ndarray
        ``(m,)`` class of every scribbled node (0: unlabelled).
    losses_ : list of float
        Training loss per epoch.
    seconds_ : float
        Training time.

    Raises
    ------
    InputError
        For bad arguments.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((40, 40), np.float32); img[10:30, 10:30] = 1
    >>> s = np.zeros((40, 40), int); s[2, 2:8] = 1; s[20, 15:22] = 2
    >>> seg = GraphSegmenter("gcn", superpixels=36, features="intensity", epochs=50).fit(img, s)
    >>> lab = seg.predict()
    >>> int(lab[20, 20]), int(lab[2, 30])
    (2, 1)
    """

    def __init__(self, kind: str = "gcn", depth: int = 2, hidden: int = 64, heads: int = 4,
                 residual: str | None = None, deflation: bool = False, dropout: float = 0.5, epochs: int = 200,
                 lr: float = 0.01, weight_decay: float = 5e-4, fanout: int = 10, superpixels: int = 400,
                 features: str = "pixel", compactness: float = 0.3, seed: int = 0, device=None):
        if kind not in GNN_KINDS:
            raise InputError(f"kind: got {kind!r}; expected one of {GNN_KINDS}")
        if features not in GRAPH_FEATURES:
            raise InputError(f"features: got {features!r}; expected one of {GRAPH_FEATURES}")
        self.kind = kind
        self.depth = check_count(depth, "depth")
        self.hidden = check_count(hidden, "hidden")
        self.heads = check_count(heads, "heads")
        self.residual = residual
        self.deflation = deflation
        self.dropout = check_number(dropout, "dropout", low=0.0, high=0.999)
        self.epochs = check_count(epochs, "epochs")
        self.lr = check_number(lr, "lr", positive=True)
        self.weight_decay = check_number(weight_decay, "weight_decay", nonneg=True)
        self.fanout = check_count(fanout, "fanout")
        self.superpixels = check_count(superpixels, "superpixels", minimum=2)
        self.features = features
        self.compactness = check_number(compactness, "compactness", positive=True)
        self.seed = check_number(seed, "seed", integer=True)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        GNN(1, 2, hidden=self.hidden, depth=self.depth, kind=kind, heads=self.heads, residual=residual,
            deflation=deflation, dropout=self.dropout)               # checks the network arguments now
        self.net_ = None
        self.graph_ = None
        self._image = None

    def _graph(self, image) -> RegionGraph:
        return region_graph(image, self.superpixels, self.features, self.compactness, device=self.device)

    def fit(self, image, scribbles, graph: RegionGraph | None = None) -> GraphSegmenter:
        """Train on the scribbled superpixels of one image.

        Parameters
        ----------
        image : Image or array_like or torch.Tensor
            2-D / 3-D image.
        scribbles : array_like or torch.Tensor or Image
            Labels on the image's grid: 0 unlabelled, ``> 0`` the class.
        graph : RegionGraph or None, optional
            The image's region graph when already built (:func:`region_graph`), e.g. to
            compare several networks on the same graph.

        Returns
        -------
        GraphSegmenter
            ``self``, fitted.

        Raises
        ------
        InputError
            For scribbles of fewer than two classes (after the vote per superpixel).
        ShapeError
            When the scribbles do not have the image's spatial shape.

        Examples
        --------
        >>> import numpy as np
        >>> img = np.zeros((24, 24), np.float32); img[6:18, 6:18] = 1
        >>> s = np.zeros((24, 24), int); s[1, 1:5] = 1; s[12, 10:14] = 2
        >>> seg = GraphSegmenter("mlp", superpixels=16, features="intensity", epochs=5).fit(img, s)
        >>> seg.classes_.tolist(), len(seg.losses_)
        ([1, 2], 5)
        """
        img = _as_image(image)
        scribbles = _label_array(scribbles, tuple(img.spatial_shape), "scribbles")
        g = graph if graph is not None else self._graph(img)
        if not isinstance(g, RegionGraph):
            raise InputError(f"graph: got {describe(g)}; expected a RegionGraph from region_graph(image)")
        if g.superpixels.shape != tuple(img.spatial_shape):
            raise ShapeError(f"graph: has superpixels of shape {g.superpixels.shape}; expected the image's "
                             f"{tuple(img.spatial_shape)}")
        node = g.vote(scribbles, ignore=0)
        classes = np.unique(node[node > 0])
        if classes.size < 2:
            raise InputError(f"scribbles: mark {classes.size} class(es) {classes.tolist()} after the vote per "
                             "superpixel; expected at least two classes")
        t0 = time.perf_counter()
        dev = self.device
        x = torch.from_numpy(g.features).to(dev)
        ei, ew = g.edge_index.to(dev), g.edge_weight.to(dev)
        train = torch.from_numpy(np.flatnonzero(node > 0)).to(dev)
        y = torch.from_numpy(np.searchsorted(classes, node[node > 0])).to(dev)
        counts = torch.bincount(y, minlength=classes.size).float()
        weight = (counts.sum() / (classes.size * counts.clamp_min(1))).to(dev)
        net = GNN(x.shape[1], int(classes.size), hidden=self.hidden, depth=self.depth, kind=self.kind,
                  heads=self.heads, residual=self.residual, deflation=self.deflation, dropout=self.dropout,
                  seed=self.seed).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        losses = []
        net.train()
        from ..core.rng import seeded

        with seeded(self.seed, dev):
            for _ in range(self.epochs):
                graph_arg = sample_blocks(ei, train, [self.fanout] * self.depth, gen) if self.kind == "sage" else ei
                logits = net(x, graph_arg, edge_weight=None if self.kind == "sage" else ew)
                loss = torch.nn.functional.cross_entropy(logits[train], y, weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        net.eval()
        self.net_, self.graph_, self.classes_, self.node_labels_ = net, g, classes.astype(np.int64), node
        self.losses_, self.seconds_ = losses, time.perf_counter() - t0
        self._image = image
        return self

    def _check_fitted(self):
        if self.net_ is None:
            raise InputError("GraphSegmenter: not fitted; call fit(image, scribbles) first")

    def predict_nodes(self, graph: RegionGraph | None = None) -> np.ndarray:
        """Class probabilities of every node.

        Parameters
        ----------
        graph : RegionGraph or None, optional
            A region graph (``None``: the fitted image's) with the same features.

        Returns
        -------
        numpy.ndarray
            ``(m, n_classes)`` float32, columns in the order of ``classes_``.

        Raises
        ------
        InputError
            When not fitted.
        ShapeError
            For a graph with other features.

        Examples
        --------
        >>> import numpy as np
        >>> img = np.zeros((24, 24), np.float32); img[6:18, 6:18] = 1
        >>> s = np.zeros((24, 24), int); s[1, 1:5] = 1; s[12, 10:14] = 2
        >>> seg = GraphSegmenter("gcn", superpixels=16, features="intensity", epochs=5).fit(img, s)
        >>> p = seg.predict_nodes()
        >>> p.shape == (seg.graph_.n_nodes, 2), bool(np.allclose(p.sum(1), 1))
        (True, True)
        """
        self._check_fitted()
        g = self.graph_ if graph is None else graph
        if g.features.shape[1] != self.net_.in_features:
            raise ShapeError(f"graph: has {g.features.shape[1]} node features; the network was trained on "
                             f"{self.net_.in_features}")
        dev = self.device
        with torch.no_grad():
            ew = None if self.kind == "sage" else g.edge_weight.to(dev)     # SAGE trains on unweighted samples
            logits = self.net_(torch.from_numpy(g.features).to(dev), g.edge_index.to(dev), edge_weight=ew)
        return torch.softmax(logits, 1).cpu().numpy().astype(np.float32)

    def predict(self, image=None):
        """The class of every pixel: its superpixel's most probable class.

        Parameters
        ----------
        image : Image or array_like or torch.Tensor or None, optional
            ``None``: the fitted image (transductive); another image of the kind gets its
            own region graph (inductive: the network's weights do not depend on the graph).

        Returns
        -------
        Image or numpy.ndarray or torch.Tensor
            Labels (the scribble values; uint8 below 256, else int32) of the spatial shape,
            in the kind of the image (an Image keeps its geometry).

        Raises
        ------
        InputError
            When not fitted.

        Examples
        --------
        >>> import numpy as np
        >>> img = np.zeros((24, 24), np.float32); img[6:18, 6:18] = 1
        >>> s = np.zeros((24, 24), int); s[1, 1:5] = 1; s[12, 10:14] = 2
        >>> seg = GraphSegmenter("gcn", superpixels=16, features="intensity", epochs=40).fit(img, s)
        >>> lab = seg.predict()
        >>> lab.shape, lab.dtype.name, int(lab[12, 12]), int(lab[0, 0])
        ((24, 24), 'uint8', 2, 1)
        """
        self._check_fitted()
        g = self.graph_ if image is None else self._graph(image)
        p = self.predict_nodes(g)
        lab = g.paint(self.classes_[p.argmax(1)])
        lab = lab.astype(np.uint8 if self.classes_.max() < 256 else np.int32)
        ref = self._image if image is None else image
        return labels_out(lab, ref, f"graph-{self.kind}", classes=self.classes_.tolist(),
                          superpixels=int(g.n_nodes))


def graph_segment(image, scribbles, kind: str = "gcn", **kwargs):
    """Segment an image from scribbles with a graph neural network on its superpixels.

    ``GraphSegmenter(kind, **kwargs).fit(image, scribbles).predict()``.

    Parameters
    ----------
    image : Image or array_like or torch.Tensor
        2-D / 3-D image.
    scribbles : array_like or torch.Tensor or Image
        0 unlabelled, ``> 0`` the class.
    kind : {"gcn", "gat", "sage", "mlp"}, optional
        Network.
    **kwargs : dict
        Further :class:`GraphSegmenter` arguments.

    Returns
    -------
    Image or numpy.ndarray or torch.Tensor
        The label image (scribble values), in the kind of ``image``.

    Raises
    ------
    InputError
        See :class:`GraphSegmenter`.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((40, 40), np.float32); img[10:30, 10:30] = 1
    >>> s = np.zeros((40, 40), int); s[2, 2:8] = 1; s[20, 15:22] = 2
    >>> lab = graph_segment(img, s, "sage", superpixels=36, features="intensity", epochs=50)
    >>> int(lab[20, 20]), int(lab[2, 30])
    (2, 1)
    """
    return GraphSegmenter(kind, **kwargs).fit(image, scribbles).predict()
