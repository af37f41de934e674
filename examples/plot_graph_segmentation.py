"""
Graph neural networks on a superpixel graph, and over-smoothing
===============================================================

A slice of the real MNI152 T1 template (nilearn) has tens of thousands of pixels; its SLIC
superpixels make a graph of a few hundred nodes that keeps the anatomy (textbook 4.5.2,
"超像素图").  :func:`biomip.segment.graphnet.region_graph` builds it: touching superpixels
are linked, each node carries the multi-scale filter bank averaged over its pixels.

A simulated user scribbles 300 pixels (:func:`biomip.data.scribbles_from_labels`) on the
template's CSF / grey / white-matter labels; the scribbled superpixels are the only
labelled nodes.  :class:`biomip.segment.graphnet.GraphSegmenter` trains a GCN (and, for
comparison, an MLP that ignores the graph) and paints the node classes back onto pixels.

The last part shows the book's over-smoothing (4.5.2 (1)): the linear GCN
``X_k = A_hat^k X`` (:func:`biomip.nn.graph.linear_gcn`) drives every node's feature
vector towards the same direction -- the mean average distance (MAD) between nodes falls
to 0 -- unless the dominant eigenvector is deflated at every step or the input is fed
back (initial residual).
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from biomip.data import mni152_slices, scribbles_from_labels
from biomip.metrics import dice
from biomip.nn.graph import linear_gcn, mean_average_distance
from biomip.segment.graphnet import GraphSegmenter, region_graph

s = mni152_slices("axial", tissues=True)
i = int(np.argmax((s.train_tissue > 0).sum((1, 2))))
image, truth = s.train[i], s.train_tissue[i].astype(int)       # 0 background, 1 CSF, 2 GM, 3 WM

graph = region_graph(image, superpixels=600, features="pixel", compactness=0.1)
print(f"{image.size} pixels -> {graph.n_nodes} nodes, {graph.edge_index.shape[1] // 2} edges, "
      f"{graph.features.shape[1]} features per node")

scribbles = scribbles_from_labels(truth, n_pixels=300, seed=0)  # values 1..4 = class + 1
print("labelled nodes:", int((graph.vote(scribbles, ignore=0) > 0).sum()))

# %%
# GCN versus an MLP on the same node features
# -------------------------------------------
# Both have the same encoder, two hidden layers and decoder; only the GCN mixes each node
# with its neighbours.  On this slice the graph does not pay off: the node features
# already carry the filter bank at three scales, and averaging a node with its neighbours
# across the thin grey-matter ribbon blurs the boundaries the Dice is measured on (the
# study ``biomip.pipelines.vision.run("graph")`` finds the same over three seeds, with a
# random forest on the node features ahead of both).
results = {}
for kind in ("gcn", "mlp"):
    seg = GraphSegmenter(kind, depth=2, hidden=64, epochs=100, seed=0).fit(image, scribbles, graph=graph)
    pred = seg.predict().astype(int) - 1
    results[kind] = pred
    d = [dice(pred == c, truth == c) for c in (1, 2, 3)]
    print(f"{kind}: Dice CSF {d[0]:.3f}  GM {d[1]:.3f}  WM {d[2]:.3f}   ({seg.seconds_:.1f} s)")
oracle = graph.paint(graph.vote(truth))
print("superpixel ceiling (majority truth per node): Dice",
      " ".join(f"{dice(oracle == c, truth == c):.3f}" for c in (1, 2, 3)))

# %%
# Over-smoothing and the deflation fix
# ------------------------------------
x = torch.from_numpy(graph.features).double()
depths = [0, 1, 4, 16, 64, 256, 1024]
curves = {}
for fix in (None, "residual", "deflation"):
    xs = linear_gcn(x, graph.edge_index, max(depths), fix=fix)
    curves[fix or "plain"] = [float(mean_average_distance(xs[k])) for k in depths]
    print(f"{fix or 'plain':10s} MAD at depth {depths}: {np.round(curves[fix or 'plain'], 3).tolist()}")

fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
cmap = plt.get_cmap("viridis", 4)
axes[0].imshow(image, cmap="gray")
c = graph.centroids
ei = graph.edge_index.numpy()
for a, b in ei.T[ei[0] < ei[1]]:
    axes[0].plot([c[a, 1], c[b, 1]], [c[a, 0], c[b, 0]], color="deepskyblue", lw=0.3)
axes[0].set_title(f"T1 slice and its graph ({graph.n_nodes} nodes)")
axes[1].imshow(truth, cmap=cmap, vmin=-0.5, vmax=3.5)
axes[1].set_title("template tissues")
axes[2].imshow(results["gcn"], cmap=cmap, vmin=-0.5, vmax=3.5)
axes[2].set_title("GCN from 300 scribbled pixels")
for ax in axes[:3]:
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
for name, v in curves.items():
    axes[3].plot(np.maximum(depths, 0.5), v, "-o", label=name)
axes[3].set_xscale("log")
axes[3].set_xlabel("propagation steps k (0 at 0.5)")
axes[3].set_ylabel("MAD of the node features")
axes[3].set_title("linear GCN: over-smoothing")
axes[3].legend()
fig.tight_layout()
plt.show()
