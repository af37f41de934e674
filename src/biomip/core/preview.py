"""Preview figures (matplotlib, headless) that a person can look at.

Every pipeline and the demo write a ``preview.png``: 2-D images as they are, 3-D
volumes as three orthogonal mid-slices drawn with their physical aspect ratio (mm),
label images with distinct colours, optional label overlay.
"""

from __future__ import annotations

import numpy as np

from .atomic import atomic_path
from .image import Image


def _figure(figsize):
    """A matplotlib Figure drawn by the Agg canvas, outside pyplot: the caller's backend
    (``matplotlib.use``) and pyplot's figure list are left as they were."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def label_colormap(n: int = 256, seed: int = 3):
    """A colormap for instance labels: 0 transparent black, then distinct random hues.

    Parameters
    ----------
    n : int, optional
        Number of colours (label 0 included).
    seed : int, optional
        Seed of the random hues.

    Returns
    -------
    matplotlib.colors.ListedColormap
        The colormap.
    """
    from matplotlib.colors import ListedColormap, hsv_to_rgb

    rng = np.random.default_rng(seed)
    hsv = np.stack([rng.random(n), 0.55 + 0.45 * rng.random(n), 0.7 + 0.3 * rng.random(n)], axis=1)
    rgba = np.concatenate([hsv_to_rgb(hsv), np.ones((n, 1))], axis=1)
    rgba[0] = (0, 0, 0, 0)
    return ListedColormap(rgba)


def _display_array(image: Image) -> tuple[np.ndarray, str]:
    """Reduce to something drawable: first time point, RGB kept, other channels -> first."""
    arr = image.numpy()
    axes = image.axes
    if "t" in axes:
        arr = np.take(arr, 0, axis=axes.index("t"))
        axes = axes.replace("t", "")
    if "c" in axes:
        c = axes.index("c")
        if arr.shape[c] in (3, 4) and image.sdim == 2 and arr.dtype == np.uint8:
            return np.moveaxis(arr, c, -1)[..., :3], "rgb"
        arr = np.take(arr, 0, axis=c)
    return arr, "grey"


def _window(arr: np.ndarray) -> tuple[float, float]:
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    if finite.size == 0:
        return 0.0, 1.0
    sample = finite.ravel()[:: max(1, finite.size // 200000)]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max()) + 1e-6
    return float(lo), float(hi)


def _views(image: Image, arr: np.ndarray):
    """(title, 2-D array, extent) for each panel; 3-D -> axial, coronal, sagittal mid-slices."""
    if image.sdim == 2 or arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3 and image.sdim == 2):
        ny, nx = arr.shape[:2]
        sx, sy = image.spacing[:2]
        return [("", arr, (0, nx * sx, ny * sy, 0))]
    nz, ny, nx = arr.shape[-3:]
    sx, sy, sz = image.spacing
    if nz == 1:  # a lone slice (e.g. one DICOM file): only the slice is worth drawing
        return [("slice", arr[0], (0, nx * sx, ny * sy, 0))]
    # planes of the array's index axes (their anatomical names depend on the direction)
    return [
        (f"z = {nz // 2} (index)", arr[nz // 2], (0, nx * sx, ny * sy, 0)),
        (f"y = {ny // 2} (index)", arr[:, ny // 2, :][::-1], (0, nx * sx, 0, nz * sz)),
        (f"x = {nx // 2} (index)", arr[:, :, nx // 2][::-1], (0, ny * sy, 0, nz * sz)),
    ]


def _stride(a: np.ndarray, max_px: int = 1024) -> tuple[np.ndarray, int]:
    step = int(np.ceil(max(a.shape[:2]) / max_px))
    return (a[::step, ::step], step) if step > 1 else (a, 1)


def render(image: Image, path, title: str | None = None, labels: Image | None = None,
           is_labels: bool | None = None, dpi: int = 110) -> str:
    """Write a preview PNG of ``image`` (optionally with a label overlay) to ``path``.

    2-D images are drawn as they are, 3-D volumes as three orthogonal mid-slices with
    their physical aspect ratio (axes in mm; in pixels when the spacing is unknown).

    Parameters
    ----------
    image : Image
        The image to draw.
    path : str or pathlib.Path
        The PNG file to write (atomically).
    title : str or None, optional
        Figure title (``None``: the image's sample or name from ``meta``).
    labels : Image or None, optional
        A label image drawn over ``image`` with distinct colours.
    is_labels : bool or None, optional
        Draw ``image`` itself as labels (``None``: when ``image.meta["kind"] ==
        "labels"``).
    dpi : int, optional
        Resolution of the PNG.

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> render(biomip.data.load("ct-small"), "ct.png", title="CT")   # doctest: +SKIP
    """
    arr, mode = _display_array(image)
    if is_labels is None:
        is_labels = image.meta.get("kind") == "labels"
    views = _views(image, arr)
    lab_views = _views(labels, _display_array(labels)[0]) if labels is not None else [None] * len(views)
    fig = _figure((max(5.0, 4.2 * len(views)), 4.8))
    axs = fig.subplots(1, len(views), squeeze=False)
    lo, hi = _window(arr) if mode == "grey" and not is_labels else (0, 1)
    n_labels = int(np.unique(arr[arr > 0]).size) if is_labels else 0
    for ax, (name, a, ext), lv in zip(axs[0], views, lab_views):
        a, _ = _stride(a)
        if is_labels:
            ax.set_facecolor("black")
            ax.imshow(np.where(a > 0, (a.astype(np.int64) - 1) % 255 + 1, 0), cmap=label_colormap(),
                      vmin=0, vmax=255, extent=ext, interpolation="nearest")
            name = f"{name} ({n_labels} labels in the image)".strip()
        elif mode == "rgb":
            ax.imshow(a, extent=ext)
        else:
            ax.imshow(a, cmap="gray", vmin=lo, vmax=hi, extent=ext, interpolation="nearest")
        if lv is not None:
            la, _ = _stride(lv[1])
            ax.imshow(np.where(la > 0, (la.astype(np.int64) - 1) % 255 + 1, 0), cmap=label_colormap(),
                      vmin=0, vmax=255, alpha=0.45, extent=ext, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        unit = "mm" if image.meta.get("spacing_known", True) else "px"
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
    import textwrap

    if image.meta.get("spacing_known", True) is False:
        sp = "spacing unknown (pixel units)"
    else:
        sp = "spacing (" + ", ".join(f"{s:.3g}" for s in image.spacing) + ") mm"
    head = title or str(image.meta.get("sample", image.meta.get("name", "image")))
    width = 48 * len(views)
    fig.suptitle(textwrap.fill(head, width) + "\n" + textwrap.fill(f"shape {image.shape} {image.axes}, {sp}, {image.dtype}", width),
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return str(path)


def render_panels(panels, path, title: str | None = None, dpi: int = 110, cols: int = 4) -> str:
    """Write a grid of 2-D arrays: ``panels`` is a list of ``(title, array, kwargs)``.

    Parameters
    ----------
    panels : list of tuple
        ``(title, array, kwargs)`` per panel; ``kwargs`` (or ``None``) go to ``imshow``
        (default colormap ``"gray"``).
    path : str or pathlib.Path
        The PNG file to write (atomically).
    title : str or None, optional
        Figure title.
    dpi : int, optional
        Resolution of the PNG.
    cols : int, optional
        Number of columns of the grid.

    Returns
    -------
    str
        ``path``.
    """
    n = len(panels)
    cols = min(cols, n)
    rows = int(np.ceil(n / cols))
    fig = _figure((3.6 * cols, 3.6 * rows))
    axs = fig.subplots(rows, cols, squeeze=False)
    for ax in axs.ravel():
        ax.axis("off")
    for ax, (name, a, kw) in zip(axs.ravel(), panels):
        ax.imshow(a, **({"cmap": "gray"} | dict(kw or {})))
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return str(path)
