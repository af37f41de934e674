"""Preview figures (matplotlib, headless) that a clinician or a biologist can read.

Every command, pipeline and the demo write a ``preview.png`` through this module:

* **Anatomy in the radiological convention.**  3-D volumes are shown as axial, coronal
  and sagittal planes, reoriented by :attr:`Image.direction` (ITK / LPS world: +x = L,
  +y = P, +z = S) so that a flipped or permuted volume looks the same as a canonical one:
  the patient's right on the screen's left, anterior up in axial views, superior up in
  coronal and sagittal views, with orientation letters at the panel edges
  (:func:`orientation_letters`) and the physical aspect ratio from the spacing.  An
  oblique volume is shown in its nearest anatomical plane, the obliquity in the title.
* **Units.**  Axes in mm, in micrometres for microscopy (:func:`display_unit`), in pixels
  when the spacing is unknown; colour bars with units on quantitative maps (HU, Gy,
  det J, mm, 1/mm, ...): the ``"colorbar"`` key of a panel.
* **CT windows.**  Hounsfield images are shown through a window (:func:`ct_window`): the
  DICOM window when the file has one, else a preset (:data:`WINDOW_PRESETS`: brain, soft
  tissue, bone, lung, ...), named in the title.
* **Overlays, labels, checkerboards.**  Label overlays drawn as outlines over a light
  fill and labelled as overlays; instance maps on black; :func:`checkerboard` with its
  tile grid drawn; diverging colour maps for differences (:func:`difference_style`) and
  Jacobians (:func:`jacobian_style`).
* **Readable layout.**  Constrained layout, titles wrapped to their panel's width.

Figures are built by :func:`image_figure` / :func:`panels_figure` (matplotlib ``Figure``
without pyplot: the caller's backend and pyplot state are untouched) and written by
:func:`render` / :func:`render_panels`.  Large arrays are strided before drawing, so a
512^3 volume previews in well under a second.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_path
from .image import Image

__all__ = [
    "WINDOW_PRESETS", "Window", "View", "ct_window", "display_unit", "orientation_code", "orientation_letters",
    "image_views", "checkerboard", "difference_style", "magnitude_style", "jacobian_style", "sinogram_panel",
    "label_colormap", "image_figure", "panels_figure", "render", "render_panels",
]

# ------------------------------------------------------------------ CT windows
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "soft tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "liver": (30.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
"""CT window presets, name -> (level / centre, width) in HU (common radiology values)."""

_ALIASES = {"soft": "soft tissue", "soft-tissue": "soft tissue", "soft_tissue": "soft tissue", "tissue": "soft tissue",
            "abdomen": "soft tissue", "head": "brain", "lungs": "lung"}

_HEAD_WORDS = ("head", "brain", "skull", "cranium", "neuro")


@dataclass(frozen=True)
class Window:
    """A display window: grey values ``center +- width / 2`` map to black..white.

    Parameters
    ----------
    center : float
        Window level (centre).
    width : float
        Window width (> 0).
    name : str, optional
        Where it came from (a preset name, ``"DICOM"``, ``"custom"``).
    unit : str, optional
        Unit of the grey values (``"HU"`` for CT).

    Examples
    --------
    >>> w = Window(40, 400, "soft tissue", "HU")
    >>> w.vmin, w.vmax, w.label
    (-160.0, 240.0, 'W 400 L 40 (soft tissue)')
    """

    center: float
    width: float
    name: str = "custom"
    unit: str = ""

    @property
    def vmin(self) -> float:
        """Lower end of the window (black)."""
        return float(self.center - self.width / 2)

    @property
    def vmax(self) -> float:
        """Upper end of the window (white)."""
        return float(self.center + self.width / 2)

    @property
    def label(self) -> str:
        """``"W <width> L <center> (<name>)"`` as radiologists write it."""
        return f"W {self.width:g} L {self.center:g}" + (f" ({self.name})" if self.name else "")


def _first_float(v):
    """First number of a DICOM multi-value (list, ``"40\\400"`` string, number), else None."""
    if v is None:
        return None
    if isinstance(v, str):
        v = v.replace("\\", " ").replace(",", " ").split()
    if isinstance(v, (list, tuple, np.ndarray)):
        v = v[0] if len(v) else None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _meta_window(meta: dict):
    for c_key, w_key in (("window_center", "window_width"), ("WindowCenter", "WindowWidth"),
                         ("window_level", "window_width")):
        c, w = _first_float(meta.get(c_key)), _first_float(meta.get(w_key))
        if c is not None and w is not None and w > 0:
            return c, w
    return None


def _sample(arr: np.ndarray, n: int = 1 << 20) -> np.ndarray:
    """At most about ``n`` values of ``arr`` on a regular stride (no full copy)."""
    if arr.size <= n:
        return np.asarray(arr).ravel()
    step = max(1, int(np.ceil((arr.size / n) ** (1.0 / arr.ndim))))
    return np.asarray(arr[(slice(None, None, step),) * arr.ndim]).ravel()


def _looks_like_hu(image: Image, arr: np.ndarray | None = None) -> bool:
    meta = image.meta
    unit = str(meta.get("unit", "")).upper()
    if unit == "HU":
        return True
    if unit and unit not in ("", "HU"):
        return False
    a = _sample(image.numpy() if arr is None else arr)
    if a.dtype.kind == "f":
        a = a[np.isfinite(a)]
    if a.size == 0 or a.dtype.kind not in "iuf":
        return False
    lo, hi = float(a.min()), float(a.max())
    if str(meta.get("modality", "")).upper() == "CT":
        return lo <= -500 and hi >= 200
    return -4096 <= lo <= -900 and hi >= 1000


def ct_window(image: Image, window=None) -> Window | None:
    """The display window of a CT image, or ``None`` when ``image`` is not in HU.

    Parameters
    ----------
    image : Image
        The image; its ``meta`` is read for a DICOM window (``window_center`` /
        ``window_width`` or ``WindowCenter`` / ``WindowWidth``; the first of several
        values), the unit (``"HU"``), the modality and the body part.
    window : str or tuple of float or None, optional
        ``None`` / ``"auto"``: the DICOM window if the metadata has one, else for images
        in HU (``meta["unit"] == "HU"``, modality CT, or values spanning about -1000 to
        more than 1000) the ``"brain"`` preset for heads (body part, description or
        sample name mention head / brain) and ``"soft tissue"`` otherwise.  A preset
        name from :data:`WINDOW_PRESETS` (``"brain"``, ``"bone"``, ``"lung"``, ...), or
        ``(center, width)``.

    Returns
    -------
    Window or None
        The window (``name`` says which), or ``None`` when ``window`` is automatic and
        the image is not a CT in HU.

    Raises
    ------
    InputError
        When ``window`` is an unknown preset name or not ``(center, width)`` with
        ``width > 0``.

    Examples
    --------
    >>> ct = Image(np.full((4, 4), -1000, np.int16), meta={"modality": "CT", "unit": "HU"})
    >>> ct_window(ct).label
    'W 400 L 40 (soft tissue)'
    >>> ct_window(ct, "lung").label
    'W 1500 L -600 (lung)'
    >>> ct.meta.update(window_center="40\\\\400", window_width="80\\\\1500")
    >>> ct_window(ct).label
    'W 80 L 40 (DICOM)'
    """
    from .errors import InputError

    unit = "HU" if _looks_like_hu(image) else str(image.meta.get("unit", "") or "")
    if isinstance(window, str) and window.lower() != "auto":
        key = _ALIASES.get(window.lower(), window.lower())
        if key not in WINDOW_PRESETS:
            raise InputError(f"window: got {window!r}; expected 'auto', one of {', '.join(WINDOW_PRESETS)}, or "
                             "(center, width)")
        c, w = WINDOW_PRESETS[key]
        return Window(c, w, key, unit or "HU")
    if window is not None and not isinstance(window, str):
        try:
            c, w = (float(v) for v in window)
        except (TypeError, ValueError) as exc:
            raise InputError(f"window: got {window!r}; expected a preset name or (center, width)") from exc
        if not (math.isfinite(c) and math.isfinite(w) and w > 0):
            raise InputError(f"window: got (center {c}, width {w}); expected finite numbers, width > 0")
        return Window(c, w, "custom", unit)
    dic = _meta_window(image.meta)
    if dic is not None:
        return Window(dic[0], dic[1], "DICOM", unit)
    if unit != "HU":
        return None
    text = " ".join(str(image.meta.get(k, "")) for k in ("body_part", "series_description", "description",
                                                         "sample", "name")).lower()
    key = "brain" if any(w in text for w in _HEAD_WORDS) else "soft tissue"
    c, w = WINDOW_PRESETS[key]
    return Window(c, w, key, "HU")


def _percentile_window(arr: np.ndarray, lo_q: float = 0.5, hi_q: float = 99.5) -> tuple[float, float]:
    a = _sample(arr)
    if a.dtype.kind in "fc":
        a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(a, [lo_q, hi_q])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
        if hi <= lo:
            hi = lo + 1.0
    return float(lo), float(hi)


# ------------------------------------------------------------------ units
_MICRO_WORDS = ("microscop", "confocal", "fluorescen", "histolog", "h&e", "ihc", "cryo", "light-field",
                "light field", "electron", "brightfield", "phase contrast")


def display_unit(image: Image) -> tuple[str, float]:
    """The length unit to label a preview's axes with, and mm -> that unit.

    Parameters
    ----------
    image : Image
        The image (spacing in mm, as everywhere in biomip).

    Returns
    -------
    (str, float)
        ``("µm", 1000.0)`` for microscopy (largest spacing below 0.01 mm, or
        ``meta["unit"]`` in micrometres, with the spacing known); ``("px", 1.0)`` when
        ``meta["spacing_known"]`` is False; ``("mm", 1.0)`` otherwise.

    Examples
    --------
    >>> display_unit(Image(np.zeros((4, 4)), spacing=0.0002))
    ('µm', 1000.0)
    >>> display_unit(Image(np.zeros((4, 4)), spacing=0.5))
    ('mm', 1.0)
    """
    if image.meta.get("spacing_known", True) is False:
        return "px", 1.0
    unit = str(image.meta.get("unit", "")).lower()
    if unit in ("um", "µm", "μm", "micron", "micrometer", "micrometre") or max(image.spacing) < 0.01:
        return "µm", 1000.0
    return "mm", 1.0


def _is_microscopy(image: Image) -> bool:
    mod = str(image.meta.get("modality", "")).lower()
    return display_unit(image)[0] == "µm" or any(w in mod for w in _MICRO_WORDS)


def _value_unit(image: Image) -> str | None:
    """The unit of the grey values from ``meta`` (HU, Gy, ...), for a colour bar."""
    u = str(image.meta.get("unit", "") or "")
    if not u:
        return None
    return {"GY": "Gy", "CGY": "cGy", "RELATIVE": "relative dose", "HU": "HU"}.get(u.upper(), u)


# ------------------------------------------------------------------ orientation
_POS, _NEG = "LPS", "RAI"
_PLANES = ("axial", "coronal", "sagittal")


def _letters(v, tol: float = 0.3) -> str:
    """Orientation letters of a world (LPS) vector: dominant axis first, then any
    component above ``tol`` of the vector's length (oblique: e.g. ``"PL"``)."""
    v = np.asarray(v, dtype=float)
    n = float(np.linalg.norm(v)) or 1.0
    order = np.argsort(-np.abs(v), kind="stable")
    out = ""
    for i, w in enumerate(order):
        if i == 0 or abs(v[w]) / n > tol:
            out += (_POS if v[w] > 0 else _NEG)[w]
    return out


def _axis_map(direction) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """For each index axis k (x, y, z): the world axis it is nearest to and the sign,
    chosen as the permutation that best matches ``direction`` (like nibabel's
    ``io_orientation``)."""
    d = np.asarray(direction, dtype=float)
    n = d.shape[0]
    best = max(itertools.permutations(range(n)), key=lambda p: sum(abs(d[p[k], k]) for k in range(n)))
    signs = tuple(1 if d[best[k], k] >= 0 else -1 for k in range(n))
    return tuple(best), signs


def orientation_code(direction) -> str:
    """The orientation letter toward which each index axis (x, y[, z]) increases.

    Parameters
    ----------
    direction : array_like
        A 2x2 or 3x3 direction matrix (ITK / LPS; column ``k`` is the world direction of
        index axis ``k``).

    Returns
    -------
    str
        One letter per index axis from L/R, P/A, S/I (nearest world axis), e.g.
        ``"LPS"`` for the identity; ``"LAS"`` for a NIfTI RAS file read into LPS.

    Examples
    --------
    >>> orientation_code(np.eye(3))
    'LPS'
    >>> orientation_code(np.diag([-1.0, 1, 1]))
    'RPS'
    >>> orientation_code([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    'PLS'
    """
    d = np.asarray(direction, dtype=float)
    wk, sk = _axis_map(d)
    return "".join((_POS if s > 0 else _NEG)[w] for w, s in zip(wk, sk))


def _screen_vectors(direction, plane: str):
    """World vectors of the screen's +right and +up directions of ``plane`` after the
    radiological reorientation."""
    d = np.asarray(direction, dtype=float)
    wk, sk = _axis_map(d)
    canon = {wk[k]: sk[k] * d[:, k] for k in range(3)}          # world axis -> true world vector of its index axis
    if plane == "axial":
        return canon[0], -canon[1]          # right: L, up: A (= -P)
    if plane == "coronal":
        return canon[0], canon[2]           # right: L, up: S
    if plane == "sagittal":
        return canon[1], canon[2]           # right: P, up: S
    from .errors import InputError

    raise InputError(f"plane: got {plane!r}; expected 'axial', 'coronal' or 'sagittal'")


def orientation_letters(direction, plane: str = "axial") -> dict[str, str]:
    """Orientation letters at the edges of an anatomical plane as biomip displays it.

    Previews reorient a volume by its direction (nearest anatomical axes), in the
    radiological convention: axial and coronal views have the patient's right on the
    screen's left; axial views have anterior up, coronal and sagittal views superior up,
    sagittal views anterior on the left.  For a volume aligned with the world axes the
    letters are therefore always the same, whatever the storage order; an oblique volume
    shows two letters on an edge (e.g. ``"PL"``: mostly posterior, partly left).

    Parameters
    ----------
    direction : array_like
        3x3 direction matrix (ITK / LPS; column ``k`` the world direction of index axis
        ``k``).
    plane : {"axial", "coronal", "sagittal"}, optional
        The displayed plane.

    Returns
    -------
    dict
        Keys ``"left"``, ``"right"``, ``"top"``, ``"bottom"``: the letters at those edges.

    Examples
    --------
    >>> orientation_letters(np.eye(3), "axial")
    {'left': 'R', 'right': 'L', 'top': 'A', 'bottom': 'P'}
    >>> orientation_letters(np.eye(3), "sagittal")
    {'left': 'A', 'right': 'P', 'top': 'S', 'bottom': 'I'}
    """
    right, up = _screen_vectors(direction, plane)
    return {"left": _letters(-right), "right": _letters(right), "top": _letters(up), "bottom": _letters(-up)}


@dataclass
class View:
    """One displayed plane of an image: how to cut it and how to label it.

    Attributes
    ----------
    plane : str
        ``"axial"``, ``"coronal"``, ``"sagittal"`` (medical volumes), ``"XY"``, ``"XZ"``,
        ``"YZ"`` (microscopy and volumes of unknown spacing), ``"slice"`` or ``""`` (2-D).
    title : str
        Panel title (plane, slice, obliquity).
    extent : tuple of float
        ``(left, right, bottom, top)`` for ``imshow`` in :attr:`unit` (row 0 on top).
    unit : str
        Axis unit (``"mm"``, ``"µm"``, ``"px"``).
    letters : dict or None
        Orientation letters at the edges (``None`` when not anatomical).
    oblique_deg : float
        Angle between the plane and the anatomical plane it is shown as.

    Examples
    --------
    >>> v = image_views(Image(np.zeros((4, 6, 8)), spacing=(1, 1, 2)))[0]
    >>> v.plane, v.take(np.zeros((4, 6, 8))).shape
    ('axial', (6, 8))
    """

    plane: str
    title: str
    extent: tuple
    unit: str
    letters: dict | None = None
    oblique_deg: float = 0.0
    _cut: object = field(default=None, repr=False)

    def take(self, array) -> np.ndarray:
        """This plane of ``array`` (an array on the image's grid: spatial axes last,
        leading axes kept), oriented for display (row 0 on top).

        Parameters
        ----------
        array : array_like
            Array whose last 2 or 3 axes are the image's spatial axes.

        Returns
        -------
        numpy.ndarray
            The 2-D plane (plus any leading axes).

        Examples
        --------
        >>> img = Image(np.arange(24.0).reshape(2, 3, 4))
        >>> image_views(img)[0].take(img.numpy()).shape
        (3, 4)
        """
        from .arrays import as_numpy

        return self._cut(np.asarray(as_numpy(array)))


def _oblique_deg(direction) -> float:
    d = np.asarray(direction, dtype=float)
    wk, _ = _axis_map(d)
    c = min(abs(d[wk[k], k]) for k in range(d.shape[0]))
    return float(np.degrees(np.arccos(min(1.0, c))))


def image_views(image: Image, planes=None) -> list[View]:
    """The planes a preview shows of ``image``.

    2-D images: the image as it is (row 0 on top).  Medical 3-D volumes: axial, coronal
    and sagittal mid-planes reoriented by the direction matrix into the radiological
    convention (see :func:`orientation_letters`), with their letters; a volume of one
    slice shows only its own plane.  Microscopy volumes and volumes of unknown spacing:
    XY, XZ and YZ mid-planes of the array (z up).  Extents are physical (mm, µm for
    microscopy, px when the spacing is unknown).

    Parameters
    ----------
    image : Image
        The image (its spatial shape, spacing, direction and ``meta`` are used).
    planes : sequence of str or None, optional
        Keep only these planes (e.g. ``("axial",)``); ``None``: all.

    Returns
    -------
    list of View
        One :class:`View` per panel.

    Examples
    --------
    >>> vol = Image(np.zeros((20, 30, 40)), spacing=(0.5, 0.5, 2.0))
    >>> [v.plane for v in image_views(vol)]
    ['axial', 'coronal', 'sagittal']
    >>> image_views(vol)[1].extent     # coronal: 40 x 0.5 mm wide, 20 x 2 mm high
    (0.0, 20.0, 40.0, 0.0)
    """
    unit, scale = display_unit(image)
    shape = tuple(image.spatial_shape)
    sp = tuple(float(s) * scale for s in image.spacing)
    views: list[View] = []
    if image.sdim == 2:
        ny, nx = shape
        views = [View("", "", (0.0, nx * sp[0], ny * sp[1], 0.0), unit, _cut=lambda a: a)]
    elif image.sdim == 3 and not _is_microscopy(image) and image.meta.get("spacing_known", True) is not False:
        d = image.direction
        wk, sk = _axis_map(d)
        k_of_w = {wk[k]: k for k in range(3)}
        # canonical array axes (S, P, L): array axis of index axis k is 2 - k
        order = tuple(2 - k_of_w[w] for w in (2, 1, 0))
        flips = tuple(sk[k_of_w[w]] < 0 for w in (2, 1, 0))
        n_s, n_p, n_l = (shape[a] for a in order)
        s_s, s_p, s_l = (sp[2 - a] for a in order)
        obl = _oblique_deg(d)

        def canon(a, order=order, flips=flips):
            lead = a.ndim - 3
            a = np.transpose(a, tuple(range(lead)) + tuple(lead + o for o in order))
            idx = tuple(slice(None, None, -1) if f else slice(None) for f in flips)
            return a[(Ellipsis,) + idx]

        sizes = {"axial": n_s, "coronal": n_p, "sagittal": n_l}
        single = [p for p in _PLANES if sizes[p] == 1]
        wanted = single[:1] if single else list(_PLANES)
        for p in wanted:
            k = sizes[p] // 2
            if p == "axial":
                cut = (lambda a, k=k: canon(a)[..., k, :, :])
                ext = (0.0, n_l * s_l, n_p * s_p, 0.0)
            elif p == "coronal":
                cut = (lambda a, k=k: canon(a)[..., ::-1, k, :])
                ext = (0.0, n_l * s_l, n_s * s_s, 0.0)
            else:
                cut = (lambda a, k=k: canon(a)[..., ::-1, :, k])
                ext = (0.0, n_p * s_p, n_s * s_s, 0.0)
            title = p if sizes[p] == 1 else f"{p}, slice {k + 1} of {sizes[p]}"
            if obl > 1.0:
                title += f" (oblique {obl:.0f}°, nearest plane)"
            views.append(View(p, title, ext, unit, orientation_letters(d, p), obl, _cut=cut))
    else:
        nz, ny, nx = shape[-3:]
        sx, sy, sz = sp
        if nz == 1:
            views = [View("slice", "slice", (0.0, nx * sx, ny * sy, 0.0), unit, _cut=lambda a: a[..., 0, :, :])]
        else:
            views = [
                View("XY", f"XY, z slice {nz // 2 + 1} of {nz}", (0.0, nx * sx, ny * sy, 0.0), unit,
                     _cut=lambda a, k=nz // 2: a[..., k, :, :]),
                View("XZ", f"XZ, y slice {ny // 2 + 1} of {ny}", (0.0, nx * sx, nz * sz, 0.0), unit,
                     _cut=lambda a, k=ny // 2: a[..., ::-1, k, :]),
                View("YZ", f"YZ, x slice {nx // 2 + 1} of {nx}", (0.0, ny * sy, nz * sz, 0.0), unit,
                     _cut=lambda a, k=nx // 2: a[..., ::-1, :, k]),
            ]
    if planes is not None:
        keep = [v for v in views if v.plane in planes]
        views = keep or views[:1]
    return views


# ------------------------------------------------------------------ panel styles
def checkerboard(a, b, tiles: int = 8, normalize: bool = False) -> np.ndarray:
    """Interleave two images in a checkerboard of ``tiles`` x ``tiles`` squares.

    Edges that continue across tile borders show good alignment; breaks show
    misregistration.  Draw it with ``{"grid": tiles}`` in :func:`render_panels` to
    outline the tiles.

    Parameters
    ----------
    a, b : array_like
        2-D arrays of the same shape (``a`` in the tile at the top left).
    tiles : int, optional
        Tiles along each axis (the tile borders are ``np.linspace(0, n, tiles + 1)``).
    normalize : bool, optional
        Scale each image to [0, 1] by its own 0.5-99.5 percentiles first (for images of
        different modalities or intensity ranges).

    Returns
    -------
    numpy.ndarray
        The checkerboard, float32.

    Raises
    ------
    ShapeError
        When ``a`` and ``b`` differ in shape or are not 2-D.

    Examples
    --------
    >>> cb = checkerboard(np.zeros((8, 8)), np.ones((8, 8)), tiles=4)
    >>> cb[:2, :6].astype(int).tolist()
    [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]]
    """
    from .arrays import as_numpy
    from .errors import ShapeError

    a, b = np.asarray(as_numpy(a), dtype=np.float32), np.asarray(as_numpy(b), dtype=np.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ShapeError(f"checkerboard: got shapes {a.shape} and {b.shape}; expected two 2-D arrays of one shape")
    tiles = max(1, int(tiles))
    if normalize:
        def norm(x):
            lo, hi = _percentile_window(x)
            return np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else x
        a, b = norm(a), norm(b)
    ti = [np.searchsorted(np.linspace(0, n, tiles + 1)[1:-1], np.arange(n), side="right") for n in a.shape]
    mask = (ti[0][:, None] + ti[1][None, :]) % 2 == 0
    return np.where(mask, a, b).astype(np.float32)


def _robust_abs_max(arrays, percentile: float) -> float:
    m = 0.0
    for x in arrays:
        x = _sample(np.asarray(x))
        x = np.abs(x[np.isfinite(x)]) if x.dtype.kind in "fc" else np.abs(x)
        if x.size:
            m = max(m, float(np.percentile(x, percentile)))
    return m or 1.0


def difference_style(*arrays, unit: str = "", percentile: float = 99.5, group: str = "difference") -> dict:
    """Panel keywords for signed difference maps: a diverging colour map symmetric
    about 0, one scale (and one colour bar) for all ``arrays``.

    Parameters
    ----------
    *arrays : array_like
        The difference maps that share the scale.
    unit : str, optional
        Unit of the differences (colour-bar label, e.g. ``"HU"``, ``"mm"``).
    percentile : float, optional
        The scale is +- this percentile of ``|arrays|`` (robust to outliers).
    group : str, optional
        Colour-bar group: panels of one group share one colour bar.

    Returns
    -------
    dict
        ``imshow`` and panel keywords (``cmap``, ``vmin``, ``vmax``, ``colorbar``,
        ``colorbar_group``).

    Examples
    --------
    >>> kw = difference_style(np.array([[-2.0, 1.0]]), unit="HU", percentile=100)
    >>> kw["vmin"], kw["vmax"], kw["colorbar"]
    (-2.0, 2.0, 'difference (HU)')
    """
    m = _robust_abs_max(arrays, percentile)
    label = f"difference ({unit})" if unit else "difference"
    return {"cmap": "RdBu_r", "vmin": -m, "vmax": m, "colorbar": label, "colorbar_group": group}


def magnitude_style(*arrays, unit: str = "", label: str | None = None, percentile: float = 99.5,
                    cmap: str = "magma", group: str | None = "magnitude") -> dict:
    """Panel keywords for non-negative maps (absolute differences, end-point error,
    displacement magnitude): ``[0, max]`` on a sequential colour map, one scale for all
    ``arrays``.

    Parameters
    ----------
    *arrays : array_like
        The maps that share the scale.
    unit : str, optional
        Unit (colour-bar label, e.g. ``"mm"``).
    label : str or None, optional
        Colour-bar label (default: ``unit``).
    percentile : float, optional
        Upper end of the scale: this percentile of the values.
    cmap : str, optional
        Colour map.
    group : str or None, optional
        Colour-bar group (``None``: one colour bar per panel).

    Returns
    -------
    dict
        ``imshow`` and panel keywords.

    Examples
    --------
    >>> magnitude_style(np.array([0.0, 3.0]), unit="mm", percentile=100)["vmax"]
    3.0
    """
    m = _robust_abs_max(arrays, percentile)
    out = {"cmap": cmap, "vmin": 0.0, "vmax": m, "colorbar": label if label is not None else (unit or True)}
    if group is not None:
        out["colorbar_group"] = group
    return out


def jacobian_style(*jacobians, label: str = "det J", percentile: float = 99.5,
                   sane: tuple[float, float] = (0.0, 3.0)) -> dict:
    """Panel keywords for Jacobian-determinant maps: diverging about 1 (blue: volume
    shrinks, red: grows), symmetric range, colour bar labelled ``det J``.

    The range covers the true smallest and largest determinant when they lie within
    ``sane`` (so a panel titled "min 0.62" never gets a 0.8 - 1.2 colour bar), and it
    always reaches down to the smallest determinant when that is <= 0 (folding stays
    visible).  Only a maximum beyond ``sane`` falls back to the robust ``percentile``;
    :func:`panels_figure` then marks the clipped end of the colour bar with an arrow.

    Parameters
    ----------
    *jacobians : array_like
        Jacobian-determinant maps that share the scale.
    label : str, optional
        Colour-bar label.
    percentile : float, optional
        At least 1 +- this percentile of ``|det J - 1|`` (and at least 1 +- 0.05).
    sane : tuple of float, optional
        ``(low, high)``: extremes within this interval are always inside the range;
        a maximum above ``high`` (a few extreme voxels) does not wash out the map.

    Returns
    -------
    dict
        ``imshow`` and panel keywords.

    Examples
    --------
    >>> kw = jacobian_style(np.array([0.8, 1.1]), percentile=100)
    >>> round(kw["vmin"], 3), round(kw["vmax"], 3), kw["colorbar"]
    (0.8, 1.2, 'det J')
    >>> kw = jacobian_style(np.r_[np.ones(999), 0.62, 2.85])    # true extremes in [0, 3]: both shown
    >>> round(kw["vmin"], 2), round(kw["vmax"], 2)
    (-0.85, 2.85)
    """
    half = 0.05
    lo, hi = np.inf, -np.inf
    for j in jacobians:
        j = np.asarray(j)
        j = j[np.isfinite(j)] if j.dtype.kind in "fc" else j.ravel()
        if j.size:
            half = max(half, float(np.percentile(np.abs(_sample(j) - 1.0), percentile)))
            lo, hi = min(lo, float(j.min())), max(hi, float(j.max()))
    if lo < 1.0:                                   # in [sane low, 1): shown; <= 0 (folding): always shown
        if lo >= sane[0] or lo <= 0:
            half = max(half, 1.0 - lo)
    if 1.0 < hi <= sane[1]:
        half = max(half, hi - 1.0)
    return {"cmap": "RdBu_r", "vmin": 1.0 - half, "vmax": 1.0 + half, "colorbar": label,
            "colorbar_group": "jacobian"}


def sinogram_panel(measurement, geometry: dict | None = None, title: str = "sinogram"):
    """A ``(title, array, kwargs)`` panel of a CT measurement with physical axes.

    Parameters
    ----------
    measurement : array_like
        ``(views, detector)`` (2-D parallel / fan), ``(slices, views, detector)`` (3-D
        parallel: the middle slice is shown) or ``(views, rows, columns)`` (cone: the
        sinogram of the central detector row).
    geometry : dict or None, optional
        The scan geometry (``to_dict()`` of the beam; ``kind``, ``angles``, detector
        spacing); without it the axes are in views and detector pixels.
    title : str, optional
        Panel title.

    Returns
    -------
    tuple
        ``(title, 2-D array, kwargs)`` for :func:`render_panels`: angle (degrees) down,
        detector position (mm) across, colour bar "line integral" (dimensionless).

    Examples
    --------
    >>> t, a, kw = sinogram_panel(np.zeros((90, 64)), {"kind": "parallel", "angles": list(np.linspace(0, 3.1, 90)),
    ...                                                 "n_det": 64, "det_spacing": 0.5, "det_offset": 0.0})
    >>> a.shape, kw["xlabel"], kw["ylabel"]
    ((90, 64), 'detector (mm)', 'view angle (°)')
    """
    from .arrays import as_numpy

    a = np.asarray(as_numpy(measurement))
    g = geometry or {}
    kind = g.get("kind", "")
    if a.ndim == 3:
        a = a[:, a.shape[1] // 2, :] if kind == "cone" else a[a.shape[0] // 2]
    n_views, n_det = a.shape
    kw = {"cmap": "gray", "aspect": "auto", "colorbar": "line integral ∫μ dl"}
    angles = g.get("angles")
    if angles is not None and len(angles) == n_views and n_views > 1:
        ang = np.degrees(np.asarray(angles, dtype=float))
        step = (ang[-1] - ang[0]) / (n_views - 1)
        top, bottom = ang[0] - step / 2, ang[-1] + step / 2
        ylabel = "view angle (°)"
    else:
        top, bottom, ylabel = -0.5, n_views - 0.5, "view"
    ds = None
    if kind == "parallel" and g.get("det_spacing"):
        ds, off = float(g["det_spacing"]), float(g.get("det_offset") or 0.0)
    elif g.get("det_u") is not None:
        du = np.asarray(g["det_u"], dtype=float)
        du = du[0] if du.ndim > 1 else du
        ds, off = float(np.linalg.norm(du)), 0.0
    if ds:
        half = n_det * ds / 2
        left, right, xlabel = off - half, off + half, "detector (mm)"
    else:
        left, right, xlabel = -0.5, n_det - 0.5, "detector pixel"
    kw.update(extent=(left, right, bottom, top), xlabel=xlabel, ylabel=ylabel)
    return title, a, kw


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

    Examples
    --------
    >>> label_colormap(16).N
    16
    """
    from matplotlib.colors import ListedColormap, hsv_to_rgb

    rng = np.random.default_rng(seed)
    hsv = np.stack([rng.random(n), 0.55 + 0.45 * rng.random(n), 0.7 + 0.3 * rng.random(n)], axis=1)
    rgba = np.concatenate([hsv_to_rgb(hsv), np.ones((n, 1))], axis=1)
    rgba[0] = (0, 0, 0, 0)
    return ListedColormap(rgba)


# ------------------------------------------------------------------ drawing
_PANEL_KEYS = ("colorbar", "colorbar_group", "labels", "overlay", "overlay_label", "grid", "letters", "unit",
               "xlabel", "ylabel")


def _figure(figsize):
    """A matplotlib Figure drawn by the Agg canvas, outside pyplot, with constrained
    layout: the caller's backend (``matplotlib.use``) and pyplot's figure list are left
    as they were."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04, wspace=0.03, hspace=0.03)
    return fig


def _stride(a: np.ndarray, max_px: int = 1024) -> tuple[np.ndarray, int]:
    step = int(np.ceil(max(a.shape[:2]) / max_px))
    return (a[::step, ::step], step) if step > 1 else (a, 1)


def _label_index(a: np.ndarray) -> np.ndarray:
    """Label ids -> colour index 1..255 (0 stays 0; NaN and negatives -> 0)."""
    if a.dtype.kind == "f":
        a = np.where(np.isfinite(a), a, 0)
    a = a.astype(np.int64)
    return np.where(a > 0, (a - 1) % 255 + 1, 0)


def _boundaries(lab: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds another label (inner outlines of each label)."""
    b = np.zeros(lab.shape, bool)
    b[1:, :] |= lab[1:, :] != lab[:-1, :]
    b[:-1, :] |= lab[:-1, :] != lab[1:, :]
    b[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    b[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    return b & (lab > 0)


def _count_labels(arr: np.ndarray) -> int:
    a = np.asarray(arr).ravel()
    if a.dtype.kind in "iub" and a.size:
        mx = int(a.max())
        if 0 < mx < (1 << 24) and int(a.min()) >= 0:
            return int(np.count_nonzero(np.bincount(a.astype(np.int64, copy=False))[1:]))
    if a.dtype.kind == "f":
        a = a[np.isfinite(a)]
    return int(np.unique(a[a > 0]).size)


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    chars = max(12, int(width_in * 72 / (fontsize * 0.56)))
    return "\n".join(textwrap.fill(line, chars) if line else "" for line in str(text).split("\n"))


def _draw_letters(ax, letters: dict, extent=None):
    """Orientation letters inside the panel edges (yellow on a black outline); on a very
    flat panel (e.g. the coronal view of two thick slices) only left and right."""
    import matplotlib.patheffects as pe

    fx = [pe.withStroke(linewidth=2.2, foreground="black")]
    kw = {"transform": ax.transAxes, "color": "#ffd21f", "fontsize": 9, "fontweight": "bold", "path_effects": fx,
          "clip_on": False, "zorder": 5}
    ax.text(0.02, 0.5, letters["left"], ha="left", va="center", **kw)
    ax.text(0.98, 0.5, letters["right"], ha="right", va="center", **kw)
    flat = extent is not None and abs(extent[2] - extent[3]) < 0.25 * abs(extent[1] - extent[0])
    if not flat:
        ax.text(0.5, 0.98, letters["top"], ha="center", va="top", **kw)
        ax.text(0.5, 0.02, letters["bottom"], ha="center", va="bottom", **kw)


def _draw_grid(ax, shape, extent, tiles: int):
    x0, x1, y0, y1 = extent
    ny, nx = shape
    kw = {"color": "#00e5ff", "lw": 0.7, "alpha": 0.85, "zorder": 4}
    for t in np.linspace(0, nx, tiles + 1)[1:-1]:
        ax.axvline(x0 + (x1 - x0) * t / nx, **kw)
    for t in np.linspace(0, ny, tiles + 1)[1:-1]:
        ax.axhline(y1 + (y0 - y1) * t / ny, **kw)


def _overlay_handle(ids: np.ndarray, counts: np.ndarray, cm):
    """The legend swatch of an overlay in the colours actually drawn: one label -> its
    colour (light fill, solid outline, as on the panel); several -> a strip of the
    colours of the (up to 4) largest labels in view; none -> an empty grey box."""
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    if ids.size == 0:
        return Patch(facecolor="none", edgecolor="0.6")
    top = ids[np.argsort(-counts, kind="stable")[:4]]
    patches = tuple(Patch(facecolor=to_rgba(cm(int(i)), 0.45), edgecolor=cm(int(i)), linewidth=1.2) for i in top)
    return patches[0] if len(patches) == 1 else patches


def _overlay_legend(fig, overlays: dict):
    """One figure legend under all panels (outside every image and its orientation
    letters) naming each overlay with a swatch of the colours drawn."""
    from matplotlib.legend_handler import HandlerTuple

    cm = label_colormap()
    handles, texts = [], []
    for name, (per_panel, k) in overlays.items():
        ids = np.array(sorted(per_panel), dtype=np.int64)
        counts = np.array([per_panel[i] for i in ids], dtype=np.int64)
        handles.append(_overlay_handle(ids, counts, cm))
        texts.append(f"overlay: {name} ({ids.size} in view)" if k == 1 else
                     f"overlay: {name} ({ids.size} in the {k} views)")
    wide = any(isinstance(h, tuple) for h in handles)
    fig.legend(handles=handles, labels=texts, handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)},
               loc="outside lower center", ncols=len(handles), fontsize=8, framealpha=0.9,
               handlelength=2.4 if wide else 1.2, borderpad=0.3)


def _draw_panel(fig, ax, name, a, kw, width_in):
    """Draw one panel; returns the image artist (or None)."""
    kw = dict(kw or {})
    extra = {k: kw.pop(k) for k in _PANEL_KEYS if k in kw}
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] not in (3, 4):
        a = a[a.shape[0] // 2]
    shape = a.shape[:2]
    if "extent" not in kw and (extra.get("unit") or extra.get("grid") or a.shape[0] > 1024 or a.shape[1] > 1024):
        kw["extent"] = (-0.5, shape[1] - 0.5, shape[0] - 0.5, -0.5)
    a, _ = _stride(a)
    im = None
    if extra.get("labels"):
        ax.set_facecolor("black")
        im = ax.imshow(_label_index(a), cmap=label_colormap(), vmin=0, vmax=255,
                       interpolation="nearest", **{k: v for k, v in kw.items() if k not in ("cmap", "vmin", "vmax", "norm", "interpolation")})
    else:
        if a.ndim == 2:
            kw.setdefault("cmap", "gray")
            kw.setdefault("interpolation", "nearest")
        im = ax.imshow(a, **kw)
    ov = extra.get("overlay")
    if ov is not None:
        lab, _ = _stride(np.asarray(ov))
        idx = _label_index(lab)
        cm = label_colormap()
        okw = {k: v for k, v in kw.items() if k in ("extent", "aspect", "origin")}
        ax.imshow(idx, cmap=cm, vmin=0, vmax=255, alpha=0.28, interpolation="nearest", **okw)
        ax.imshow(np.where(_boundaries(idx), idx, 0), cmap=cm, vmin=0, vmax=255, interpolation="nearest", **okw)
        ids, counts = np.unique(idx[idx > 0], return_counts=True)
        extra["_overlay_ids"] = dict(zip(ids.tolist(), counts.tolist()))
    if extra.get("grid"):
        ext = kw.get("extent", (-0.5, shape[1] - 0.5, shape[0] - 0.5, -0.5))
        _draw_grid(ax, shape, ext, int(extra["grid"]))
    if extra.get("letters"):
        _draw_letters(ax, extra["letters"], None if kw.get("aspect") == "auto" else kw.get("extent"))
    unit = extra.get("unit")
    if unit or extra.get("xlabel") or extra.get("ylabel"):
        ax.tick_params(labelsize=7, length=2)
        ax.set_xlabel(extra.get("xlabel") or unit, fontsize=8, labelpad=1)
        if extra.get("ylabel") or unit:
            ax.set_ylabel(extra.get("ylabel") or unit, fontsize=8, labelpad=1)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    if name:
        ax.set_title(_wrap(name, width_in, 9), fontsize=9)
    return im, extra


def _shared_bars(kws, cols: int) -> dict:
    """Colour-bar groups drawn as one bar under the group: two or more panels with a
    colour bar that are neighbours in one row of the grid."""
    idx: dict = {}
    for i, kw in enumerate(kws):
        if kw.get("colorbar") and kw.get("colorbar_group") is not None and not kw.get("labels"):
            idx.setdefault(kw["colorbar_group"], []).append(i)
    return {g: v for g, v in idx.items()
            if len(v) > 1 and len({i // cols for i in v}) == 1 and v == list(range(v[0], v[0] + len(v)))}


def _extend(arrays, lo: float, hi: float) -> str:
    """``"neither"``, ``"min"``, ``"max"`` or ``"both"``: which ends of the colour range
    clip data (values below ``lo`` / above ``hi``), for the colour bar's arrows."""
    below = above = False
    tol = 1e-6 * max(abs(hi - lo), 1e-30)
    for a in arrays:
        a = np.ma.asarray(a)
        a = np.asarray(a.compressed() if np.ma.is_masked(a) else a.data, dtype=np.float64).ravel()
        a = a[np.isfinite(a)]
        if a.size:
            below |= bool(a.min() < lo - tol)
            above |= bool(a.max() > hi + tol)
    return {(False, False): "neither", (True, False): "min", (False, True): "max"}.get((below, above), "both")


def panels_figure(panels, title: str | None = None, cols: int = 4, panel_size: float = 3.6):
    """Build (without saving) the figure of :func:`render_panels`.

    Parameters
    ----------
    panels : list of tuple
        ``(title, array, kwargs)`` per panel; see :func:`render_panels`.
    title : str or None, optional
        Figure title (wrapped to the figure's width).
    cols : int, optional
        Number of columns of the grid.
    panel_size : float, optional
        Height (and width, colour bar excluded) of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (constrained layout, Agg canvas, not registered with pyplot).

    Examples
    --------
    >>> fig = panels_figure([("a", np.zeros((8, 8)), {"colorbar": "mm"})])
    >>> len(fig.axes)       # the panel and its colour bar
    2
    """
    panels = list(panels)
    n = len(panels)
    if n == 0:
        from .errors import InputError

        raise InputError("panels: got an empty list; expected at least one (title, array, kwargs)")
    cols = max(1, min(int(cols), n))
    rows = int(np.ceil(n / cols))
    kws = [kw if isinstance(kw, dict) else {} for _, _, kw in panels]
    shared = _shared_bars(kws, cols)
    in_shared = {i for idx in shared.values() for i in idx}
    has_cb = any(kw.get("colorbar") and i not in in_shared for i, kw in enumerate(kws))    # a bar on the right
    has_ax = any(kw.get("unit") or kw.get("xlabel") for kw in kws)
    has_ov = any(kw.get("overlay") is not None for kw in kws)
    below = 0.55 if shared else 0.0                                     # shared colour bars under the panels
    panel_w = panel_size + (0.75 if has_cb else 0.0) + (0.35 if has_ax else 0.0)
    lines = max((len(_wrap(p[0] or "", panel_w, 9).split("\n")) for p in panels), default=1)
    top = 0.0
    if title:
        top = 0.22 * len(_wrap(title, cols * panel_w, 11).split("\n")) + 0.1
    fig = _figure((panel_w * cols, (panel_size + 0.17 * lines + (0.3 if has_ax else 0) + below) * rows + top
                   + (0.35 if has_ov else 0.0)))                          # the overlay legend under all
    axs = fig.subplots(rows, cols, squeeze=False)
    for ax in axs.ravel()[n:]:
        ax.set_visible(False)

    def bar(ims, ax, label, shared_by: int = 1):
        lo, hi = ims[0].get_clim()
        kw = {"extend": _extend([im.get_array() for im in ims], lo, hi)}
        if shared_by > 1:                      # one horizontal bar under the whole group: visibly shared
            kw.update(location="bottom", shrink=0.6, pad=0.03, fraction=0.05, aspect=30 * shared_by)
        else:
            kw.update(shrink=0.85, pad=0.02, fraction=0.06)
        c = fig.colorbar(ims[-1], ax=ax, **kw)
        if isinstance(label, str):
            c.set_label(label + (f" (shared by the {shared_by} panels above)" if shared_by > 1 else ""), fontsize=8)
        elif shared_by > 1:
            c.set_label(f"shared by the {shared_by} panels above", fontsize=8)
        c.ax.tick_params(labelsize=7)

    groups: dict = {}
    overlays: dict = {}
    for i, (ax, (name, a, kw)) in enumerate(zip(axs.ravel(), panels)):
        im, extra = _draw_panel(fig, ax, name, a, kw, panel_w)
        if "_overlay_ids" in extra:
            ids, k = overlays.setdefault(str(extra.get("overlay_label", "labels")), ({}, 0))
            for j, c in extra["_overlay_ids"].items():
                ids[j] = ids.get(j, 0) + c
            overlays[str(extra.get("overlay_label", "labels"))] = (ids, k + 1)
        cb = extra.get("colorbar")
        if cb and im is not None:
            g = extra.get("colorbar_group")
            if g is None:
                bar([im], ax, cb)
            else:
                groups.setdefault(g, []).append((i, ax, im, cb))
    for g, members in groups.items():
        lo = min(im.get_clim()[0] for _, _, im, _ in members)
        hi = max(im.get_clim()[1] for _, _, im, _ in members)
        for _, _, im, _ in members:
            im.set_clim(lo, hi)                                       # one scale for the group
        if g in shared and len(members) > 1:                          # neighbours in a row: one bar under them
            bar([m[2] for m in members], [m[1] for m in members], members[0][3], shared_by=len(members))
        else:                                                         # alone or spread over the grid: each its bar
            for _, ax, im, cb in members:
                bar([m[2] for m in members], ax, cb)
    if overlays:
        _overlay_legend(fig, overlays)
    if title:
        fig.suptitle(_wrap(title, cols * panel_w, 11), fontsize=11)
    return fig


def _save(fig, path, dpi) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return str(path)


def render_panels(panels, path, title: str | None = None, dpi: int = 110, cols: int = 4, *,
                  panel_size: float = 3.6) -> str:
    """Write a grid of 2-D arrays: ``panels`` is a list of ``(title, array, kwargs)``.

    Parameters
    ----------
    panels : list of tuple
        ``(title, array, kwargs)`` per panel.  ``kwargs`` (or ``None``) go to
        ``imshow`` (default colormap ``"gray"``), except these panel keys:

        ``"colorbar"``
            ``str`` (the label, with its unit: ``"mm"``, ``"Gy"``, ``"det J"``,
            ``"HU"``, ``"1/mm"``) or ``True``: draw a colour bar.
        ``"colorbar_group"``
            Panels with the same value share one scale.  Neighbours in one row get
            one horizontal colour bar under all of them, labelled "shared by the n
            panels above"; members spread over the grid each get the same bar.
            A colour bar whose range clips the data (a robust window) shows it with
            end arrows (``extend="min"`` / ``"max"`` / ``"both"``).
        ``"labels"``
            ``True``: the array is an instance / label map, drawn in distinct colours on
            black.
        ``"overlay"``, ``"overlay_label"``
            A label array drawn over the panel (outlines on a light fill) and one
            legend under all panels naming it as an overlay, with a swatch in the
            colours drawn (the label's colour; for several labels those of the
            largest ones in view).
        ``"grid"``
            ``n``: outline an ``n`` x ``n`` tile grid (see :func:`checkerboard`).
        ``"letters"``
            Orientation letters at the edges (``{"left", "right", "top", "bottom"}``,
            see :func:`orientation_letters`).
        ``"unit"``, ``"xlabel"``, ``"ylabel"``
            Show the axes with these labels (with ``"extent"`` in that unit); without
            them the axes are hidden.

        :func:`image_views`, :func:`difference_style`, :func:`magnitude_style`,
        :func:`jacobian_style` and :func:`sinogram_panel` make these keywords.
    path : str or pathlib.Path
        The PNG file to write (atomically).
    title : str or None, optional
        Figure title.
    dpi : int, optional
        Resolution of the PNG.
    cols : int, optional
        Number of columns of the grid.
    panel_size : float, optional
        Size of one panel in inches.

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> d = np.random.default_rng(0).normal(size=(32, 32))
    >>> render_panels([("fixed", d, None),
    ...                ("fixed - moving", d, difference_style(d, unit="HU"))],
    ...               "reg.png", title="registration")        # doctest: +SKIP
    'reg.png'
    """
    return _save(panels_figure(panels, title=title, cols=cols, panel_size=panel_size), path, dpi)


INSTANCE_MAP_MIN_LABELS = 21
"""Label images with at least this many labels are titled "instance map" (many
objects, e.g. nuclei); fewer (organs, tissue classes, a one-label mask) "label map"."""


def _labels_title(n: int) -> str:
    """``"1 label (label map)"``, ``"3 labels (label map)"``, ``"40 labels (instance map)"``."""
    kind = "instance map" if n >= INSTANCE_MAP_MIN_LABELS else "label map"
    return f"{n} label{'' if n == 1 else 's'} ({kind})"


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


def image_figure(image: Image, title: str | None = None, labels: Image | None = None,
                 is_labels: bool | None = None, *, window=None, colorbar=None, cmap: str | None = None,
                 panel_size: float = 4.2):
    """Build (without saving) the figure of :func:`render`.

    Parameters
    ----------
    image, title, labels, is_labels, window, colorbar, cmap
        As in :func:`render`.
    panel_size : float, optional
        Size of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.

    Examples
    --------
    >>> ct = Image(np.full((8, 16, 16), -1000, np.int16), meta={"modality": "CT", "unit": "HU"})
    >>> fig = image_figure(ct)
    >>> [ax.get_title() for ax in fig.axes][:3]
    ['axial, slice 5 of 8', 'coronal, slice 9 of 16', 'sagittal, slice 9 of 16']
    """
    arr, mode = _display_array(image)
    if is_labels is None:
        is_labels = image.meta.get("kind") == "labels"
    views = image_views(image)
    win = None
    vmin = vmax = None
    cb_label = colorbar
    if mode == "grey" and not is_labels:
        win = ct_window(image, window) if not (isinstance(window, str) and window in ("percentile", "full")) else None
        if win is not None:
            vmin, vmax = win.vmin, win.vmax
            if cb_label is None:
                cb_label = win.unit or True
        elif window == "full":
            a = _sample(arr)
            vmin, vmax = float(np.nanmin(a)), float(np.nanmax(a))
        else:
            vmin, vmax = _percentile_window(arr)
        if cb_label is None:
            cb_label = _value_unit(image)
    dose = str(image.meta.get("modality", "")).upper() == "RTDOSE" or (_value_unit(image) or "").endswith("Gy")
    cmap = cmap or ("turbo" if dose else "gray")
    lab_arr = None
    if labels is not None:
        lab_arr = _display_array(labels)[0]
        lab_views = views if tuple(labels.spatial_shape) == tuple(image.spatial_shape) else image_views(labels)
    n_labels = _count_labels(arr) if is_labels else 0
    unit = views[0].unit
    panels = []
    for i, v in enumerate(views):
        a = v.take(arr) if mode == "grey" else np.moveaxis(v.take(np.moveaxis(arr, -1, 0)), 0, -1)
        kw = {"extent": v.extent, "unit": unit}
        if v.letters:
            kw["letters"] = v.letters
        name = v.title
        if is_labels:
            kw["labels"] = True
            what = _labels_title(n_labels)
            name = f"{name}: {what}" if name else what
        elif mode == "grey":
            kw.update(cmap=cmap, vmin=vmin, vmax=vmax)
            if cb_label:
                kw["colorbar"] = cb_label
                kw["colorbar_group"] = "image"
        if lab_arr is not None:
            lv = lab_views[min(i, len(lab_views) - 1)]
            if labels is not None and len(views) == 1 and not is_labels:
                panels.append((name or "image", a, dict(kw)))       # the image alone, then with the overlay
                name = "image + label overlay"
            else:
                name = f"{name} + label overlay" if name else "image + label overlay"
            kw["overlay"] = lv.take(lab_arr)
            kw["overlay_label"] = "labels"
        panels.append((name, a, kw))
    if image.meta.get("spacing_known", True) is False:
        sp = "spacing unknown (pixel units)"
    else:
        s = display_unit(image)[1]
        sp = "spacing (" + ", ".join(f"{v * s:.3g}" for v in image.spacing) + f") {unit}"
    head = title or str(image.meta.get("sample", image.meta.get("name", "image")))
    info = f"shape {image.shape} {image.axes}, {sp}, {image.dtype}"
    if image.sdim == 3 and views and views[0].letters:
        info += f", orientation {orientation_code(image.direction)}"
    if win is not None:
        info += f"; window {win.label}"
    ncols = len(panels)
    fig = panels_figure(panels, title=head + "\n" + info, cols=ncols, panel_size=panel_size)
    return fig


def render(image: Image, path, title: str | None = None, labels: Image | None = None,
           is_labels: bool | None = None, dpi: int = 110, *, window=None, colorbar=None,
           cmap: str | None = None) -> str:
    """Write a preview PNG of ``image`` (optionally with a label overlay) to ``path``.

    2-D images are drawn as they are.  3-D medical volumes are drawn as axial, coronal
    and sagittal mid-planes in the radiological convention (reoriented by the direction
    matrix, orientation letters at the edges, physical aspect ratio); microscopy volumes
    as XY / XZ / YZ planes with axes in µm.  CT images in HU are windowed
    (:func:`ct_window`) and the window is named in the title; images with a value unit
    in ``meta`` (HU, Gy, ...) get a colour bar with it; dose maps a colour map.  Label
    images are drawn in distinct colours on black; a label overlay is drawn as outlines
    over a light fill, next to the plain image for 2-D images.

    Parameters
    ----------
    image : Image
        The image to draw.
    path : str or pathlib.Path
        The PNG file to write (atomically).
    title : str or None, optional
        Figure title (``None``: the image's sample or name from ``meta``).
    labels : Image or None, optional
        A label image drawn over ``image`` as an overlay.
    is_labels : bool or None, optional
        Draw ``image`` itself as labels (``None``: when ``image.meta["kind"] ==
        "labels"``).
    dpi : int, optional
        Resolution of the PNG.
    window : str or tuple or None, optional
        Grey window: ``None`` / ``"auto"`` (CT: DICOM window or preset; others: 0.5-99.5
        percentiles), a preset name (``"brain"``, ``"bone"``, ``"lung"``, ``"soft
        tissue"``, ...), ``(center, width)``, ``"percentile"`` or ``"full"`` (min-max).
    colorbar : str or bool or None, optional
        Colour-bar label (with its unit) or ``True``; ``None``: a colour bar when the
        value unit is known (HU for CT, ``meta["unit"]``); ``False``: none.
    cmap : str or None, optional
        Colour map of grey images (default grey; ``"turbo"`` for dose).

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> render(biomip.data.load("ct-small"), "ct.png", title="CT")   # doctest: +SKIP
    'ct.png'
    >>> render(biomip.data.load("ct-small"), "ct-bone.png", window="bone")   # doctest: +SKIP
    'ct-bone.png'
    """
    fig = image_figure(image, title=title, labels=labels, is_labels=is_labels, window=window, colorbar=colorbar,
                       cmap=cmap)
    return _save(fig, path, dpi)
