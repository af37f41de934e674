"""Shape DNA: the Laplace-Beltrami spectrum of a surface as a shape descriptor (textbook
section 5.4.2; Reuter, Wolter & Peinecke, Computer-Aided Design 38, 2006).

A label volume becomes a triangle surface (:func:`label_mesh`: marching cubes at the
voxel spacing, optional Gaussian pre-smoothing of the mask and Taubin smoothing of the
mesh).  On that surface the linear finite-element discretisation of the Laplace-Beltrami
operator is the pair (:func:`laplace_beltrami`)

    L_ij = -(cot a_ij + cot b_ij) / 2     (stiffness; a, b the angles opposite edge ij),
    M    = lumped (area / 3 per vertex) or consistent (A / 12 (1 + delta_ij)) mass,

and the generalised eigenproblem ``L phi = lambda M phi`` has eigenvalues that depend
only on the intrinsic metric of the surface: they do not change under rotation or
translation, and under a uniform scale ``s`` they scale as ``1 / s**2`` -- so
``lambda * area`` is scale free (:func:`shape_dna`, ``normalize="area"``).  The first
``k`` non-zero eigenvalues are found by shift-invert Lanczos
(:func:`scipy.sparse.linalg.eigsh` with a slightly negative shift, so ``L - sigma M`` is
positive definite although ``L`` is singular).

The book's limit, "isospectral but not isometric" (one cannot hear the shape of a drum):
:func:`isospectral_drums` builds the two seven-half-square planar domains of Gordon, Webb
& Wolpert (1992) in the form of Buser, Conway, Doyle & Semmler (1994), triangulated so
that the same FEM gives their Dirichlet spectra; they agree although the domains are not
congruent (their :func:`moment_invariants` differ).

Retrieval: :func:`shape_distance` and :func:`retrieve` compare descriptor vectors (shape
DNA or the volume-moment baseline :func:`moment_invariants`) by Euclidean,
standardised-Euclidean or relative distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse

from ..core.arrays import as_numpy, check_count, check_number, check_spacing, integer_labels
from ..core.errors import BiomipError, InputError, ShapeError
from ..core.image import Image

__all__ = ["Mesh", "icosphere", "label_mesh", "taubin_smooth", "laplace_beltrami", "shape_dna",
           "moment_invariants", "shape_distance", "retrieve", "isospectral_drums", "DRUMS"]

DRUMS = {
    "A": ((2, 0), (3, 1), (3, 2), (1, 2), (1, 3), (0, 2), (1, 1), (2, 1)),
    "B": ((2, 0), (2, 1), (3, 1), (2, 2), (1, 2), (1, 3), (0, 3), (0, 2)),
}
"""The corners (x, y) of the two isospectral drums, each the union of seven right
isosceles triangles with unit legs (area 3.5, perimeter 6 + 3 sqrt 2)."""


# ----------------------------------------------------------------------------- the mesh
@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: a surface in 3-D or a planar domain in 2-D.

    Parameters
    ----------
    vertices : numpy.ndarray
        ``(V, 3)`` (or ``(V, 2)`` for a planar domain) float64 positions in mm, world order
        ``x, y[, z]``.
    faces : numpy.ndarray
        ``(F, 3)`` int64 vertex indices of the triangles.

    Raises
    ------
    ShapeError
        Arrays of the wrong shape.
    InputError
        Non-finite positions, or face indices outside ``0 .. V - 1``.

    Examples
    --------
    >>> m = Mesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])
    >>> m.n_vertices, m.n_faces, m.area
    (3, 1, 0.5)
    """

    vertices: np.ndarray
    faces: np.ndarray

    def __post_init__(self):
        v = as_numpy(self.vertices, dtype=np.float64, name="vertices")
        f = as_numpy(self.faces, name="faces")
        if v.ndim != 2 or v.shape[1] not in (2, 3) or v.shape[0] < 3:
            raise ShapeError(f"vertices: got shape {v.shape}; expected (V, 3) or (V, 2) with V >= 3")
        if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] < 1:
            raise ShapeError(f"faces: got shape {f.shape}; expected (F, 3) with F >= 1")
        if f.dtype.kind not in "iu":
            raise InputError(f"faces: got dtype {f.dtype}; expected integer vertex indices")
        if not np.isfinite(v).all():
            raise InputError("vertices: hold NaN or infinite values; expected finite positions in mm")
        f = f.astype(np.int64)
        if f.min() < 0 or f.max() >= v.shape[0]:
            raise InputError(f"faces: got indices in [{f.min()}, {f.max()}]; expected 0 .. {v.shape[0] - 1}")
        object.__setattr__(self, "vertices", np.ascontiguousarray(v))
        object.__setattr__(self, "faces", np.ascontiguousarray(f))

    @property
    def n_vertices(self) -> int:
        """Number of vertices."""
        return int(self.vertices.shape[0])

    @property
    def n_faces(self) -> int:
        """Number of triangles."""
        return int(self.faces.shape[0])

    @property
    def dim(self) -> int:
        """2 (planar domain) or 3 (surface in space)."""
        return int(self.vertices.shape[1])

    @property
    def face_areas(self) -> np.ndarray:
        """``(F,)`` triangle areas in mm^2."""
        return _geometry(self.vertices, self.faces)[1]

    @property
    def area(self) -> float:
        """Total area in mm^2."""
        return float(self.face_areas.sum())

    def transformed(self, rotation=None, translation=None, scale: float = 1.0) -> Mesh:
        """The mesh moved rigidly and scaled: ``x -> scale * R x + t``.

        Parameters
        ----------
        rotation : array_like or None, optional
            ``(D, D)`` orthogonal matrix (``None``: identity).
        translation : array_like or None, optional
            ``(D,)`` shift in mm (``None``: zero).
        scale : float, optional
            Uniform scale factor (> 0).

        Returns
        -------
        Mesh
            The new mesh (same faces).

        Raises
        ------
        ShapeError
            A rotation or translation of the wrong size.
        InputError
            A matrix that is not orthogonal, or a scale <= 0.

        Examples
        --------
        >>> m = icosphere(1).transformed(scale=2.0, translation=[1, 0, 0])
        >>> round(m.area / icosphere(1).area, 6)
        4.0
        """
        d = self.dim
        r = np.eye(d) if rotation is None else as_numpy(rotation, dtype=np.float64, name="rotation")
        if r.shape != (d, d):
            raise ShapeError(f"rotation: got shape {r.shape}; expected ({d}, {d})")
        if not np.allclose(r @ r.T, np.eye(d), atol=1e-9):
            raise InputError("rotation: got a matrix that is not orthogonal; expected R @ R.T == I")
        t = np.zeros(d) if translation is None else np.ravel(as_numpy(translation, dtype=np.float64,
                                                                       name="translation"))
        if t.shape != (d,):
            raise ShapeError(f"translation: got shape {t.shape}; expected ({d},)")
        s = check_number(scale, "scale", positive=True)
        return Mesh(s * self.vertices @ r.T + t, self.faces)


def _geometry(v: np.ndarray, f: np.ndarray):
    """Per face: the three cotangents (of the angles at corners 0, 1, 2) and the area."""
    p0, p1, p2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cots = []
    for a, b, c in ((p0, p1, p2), (p1, p2, p0), (p2, p0, p1)):
        e1, e2 = b - a, c - a
        dot = np.einsum("ij,ij->i", e1, e2)
        n1, n2 = np.einsum("ij,ij->i", e1, e1), np.einsum("ij,ij->i", e2, e2)
        cross = np.sqrt(np.maximum(n1 * n2 - dot * dot, 0.0))     # |e1 x e2| in any dimension
        cots.append((dot, cross))
    cross = cots[0][1]
    area = 0.5 * cross
    with np.errstate(divide="ignore", invalid="ignore"):
        cot = np.stack([d / np.where(c > 0, c, np.inf) for d, c in cots], axis=1)
    return cot, area


def _as_mesh(mesh, name: str = "mesh") -> Mesh:
    if not isinstance(mesh, Mesh):
        raise InputError(f"{name}: got {type(mesh).__name__}; expected a biomip.represent.Mesh")
    return mesh


def _clean(mesh: Mesh) -> Mesh:
    """Drop degenerate (zero-area) faces and vertices no face uses."""
    area = mesh.face_areas
    keep = area > 1e-12 * max(float(area.max()), 1e-300)
    f = mesh.faces[keep]
    if f.shape[0] == 0:
        raise InputError("mesh: every triangle has zero area; expected a surface")
    used = np.zeros(mesh.n_vertices, dtype=bool)
    used[f.ravel()] = True
    if used.all() and keep.all():
        return mesh
    new = np.cumsum(used) - 1
    return Mesh(mesh.vertices[used], new[f])


def _adjacency(n: int, f: np.ndarray) -> sparse.csr_matrix:
    i = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    j = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    a = sparse.csr_matrix((np.ones(i.size), (i, j)), shape=(n, n))
    a.data[:] = 1.0
    return a


def _components(mesh: Mesh) -> tuple[int, np.ndarray]:
    from scipy.sparse.csgraph import connected_components

    return connected_components(_adjacency(mesh.n_vertices, mesh.faces), directed=False)


def _largest_component(mesh: Mesh) -> Mesh:
    n, lab = _components(mesh)
    if n == 1:
        return mesh
    area = np.bincount(lab[mesh.faces[:, 0]], weights=mesh.face_areas, minlength=n)
    keep = lab == int(np.argmax(area))
    new = np.cumsum(keep) - 1
    f = mesh.faces[keep[mesh.faces[:, 0]]]
    return Mesh(mesh.vertices[keep], new[f])


def _boundary_vertices(mesh: Mesh) -> np.ndarray:
    """Vertices on edges that only one triangle uses."""
    f = mesh.faces
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    uniq, count = np.unique(e, axis=0, return_counts=True)
    out = np.zeros(mesh.n_vertices, dtype=bool)
    out[uniq[count == 1].ravel()] = True
    return out


# ----------------------------------------------------------------------------- meshes
def icosphere(subdivisions: int = 3, radius: float = 1.0) -> Mesh:
    """A geodesic sphere: the icosahedron with each triangle split into four
    ``subdivisions`` times, the new vertices pushed onto the sphere.

    Parameters
    ----------
    subdivisions : int, optional
        Number of 1-to-4 splits (``10 * 4**s + 2`` vertices).
    radius : float, optional
        Radius in mm.

    Returns
    -------
    Mesh
        A closed genus-0 surface, outward-oriented triangles.

    Raises
    ------
    InputError
        A negative ``subdivisions``, more than 9 (10 x 4^s + 2 vertices: 2.6 million at
        9, each further level four times more), or a radius <= 0.

    Examples
    --------
    >>> icosphere(2).n_vertices
    162
    """
    s = check_count(subdivisions, "subdivisions", minimum=0)
    if s > 9:
        raise InputError(f"subdivisions: got {s}, which makes {10 * 4 ** s + 2:,} vertices; expected at most 9 "
                         f"({10 * 4 ** 9 + 2:,} vertices)")
    r = check_number(radius, "radius", positive=True)
    t = (1.0 + 5 ** 0.5) / 2.0
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                  [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=np.float64)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                  [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                  [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=np.int64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for _ in range(s):
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        uniq, inv = np.unique(e, axis=0, return_inverse=True)
        inv = inv.ravel()
        mid = v[uniq[:, 0]] + v[uniq[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        m = inv.reshape(3, -1).T + v.shape[0]                     # midpoints of edges 01, 12, 20
        v = np.concatenate([v, mid])
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        f = np.concatenate([np.stack([a, m[:, 0], m[:, 2]], 1), np.stack([b, m[:, 1], m[:, 0]], 1),
                            np.stack([c, m[:, 2], m[:, 1]], 1), m])
    return Mesh(r * v, f)


def taubin_smooth(mesh: Mesh, iterations: int = 10, lam: float = 0.5, mu: float = -0.53) -> Mesh:
    """Taubin's (1995) shrink-free smoothing: alternate umbrella-Laplacian steps of
    ``lam`` and ``mu`` (``mu < -lam``), a low-pass filter on the vertex positions.

    Parameters
    ----------
    mesh : Mesh
        The mesh.
    iterations : int, optional
        Number of ``lam`` / ``mu`` pairs (0: unchanged).
    lam : float, optional
        The positive (smoothing) factor, in (0, 1).
    mu : float, optional
        The negative (inflating) factor, ``mu < -lam``.

    Returns
    -------
    Mesh
        The smoothed mesh (same faces).

    Raises
    ------
    InputError
        Factors outside those ranges, a negative ``iterations``, or not a Mesh.

    Examples
    --------
    >>> m = icosphere(2)
    >>> s = taubin_smooth(m, 5)
    >>> bool(abs(s.area / m.area - 1) < 0.05)
    True
    """
    mesh = _as_mesh(mesh)
    it = check_count(iterations, "iterations", minimum=0)
    lam = check_number(lam, "lam", low=0, high=1, low_open=True)
    mu = check_number(mu, "mu", high=0)
    if mu >= -lam:
        raise InputError(f"mu: got {mu}; expected mu < -lam = {-lam}")
    a = _adjacency(mesh.n_vertices, mesh.faces)
    deg = np.asarray(a.sum(axis=1)).ravel()
    w = sparse.diags(1.0 / np.maximum(deg, 1)) @ a
    x = mesh.vertices.copy()
    for _ in range(it):
        x = x + lam * (w @ x - x)
        x = x + mu * (w @ x - x)
    return Mesh(x, mesh.faces)


def _labels(labels, spacing, name: str = "labels"):
    if isinstance(labels, Image):
        sp = tuple(float(s) for s in labels.spacing) if spacing is None else spacing
        arr = labels.numpy()
    else:
        sp = spacing
        arr = as_numpy(labels, name=name)
    if arr.ndim not in (2, 3):
        raise ShapeError(f"{name}: got shape {arr.shape}; expected a 2-D (Y, X) or 3-D (Z, Y, X) label image")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: got dtype {arr.dtype}; expected integer labels or a binary mask")
    integer_labels(arr, name, "integer labels or a binary mask", nonneg=False)
    return arr, check_spacing(sp, arr.ndim, name="spacing")


def _blur_peak(extent: np.ndarray, sig: float) -> float:
    """Upper bound of the largest value of a mask inside a box of ``extent`` (mm per axis) after a
    Gaussian blur of ``sig`` mm: the blurred box's value at its centre, ``prod erf(L / (2 sqrt 2 sig))``."""
    from scipy.special import erf

    return float(np.prod(erf(extent / (2.0 * np.sqrt(2.0) * sig))))


def _largest_sigma(extent: np.ndarray) -> float:
    """The blur (mm) at which :func:`_blur_peak` of the box reaches 0.5 (bisection)."""
    lo, hi = 0.0, float(extent.max())
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _blur_peak(extent, mid) > 0.5 else (lo, mid)
    return lo


def _mask(arr: np.ndarray, label, name: str = "label") -> np.ndarray:
    if label is None:
        m = arr != 0
    else:
        lab = check_number(label, name, integer=True)
        m = arr == lab
    if not m.any():
        raise InputError(f"{name}: got {label!r}, which marks no voxel; expected a label present in the image")
    return m


def label_mesh(labels, label=None, spacing=None, step_size: int = 1, smooth: int = 0, sigma: float = 0.0,
               largest: bool = True) -> Mesh:
    """The surface of one label (or of all foreground) as a triangle mesh in mm, by
    marching cubes (:func:`skimage.measure.marching_cubes`) at the voxel spacing.

    The mask is padded by one voxel (so the surface is closed), optionally blurred by a
    Gaussian of ``sigma`` mm (which rounds the voxel staircase), contoured at 0.5, and the
    mesh optionally Taubin-smoothed (:func:`taubin_smooth`).  Positions are world ``x, y, z``
    in mm from the centre of the array's first voxel.

    Parameters
    ----------
    labels : array_like or Image
        ``(Z, Y, X)`` label image (or binary mask).
    label : int or None, optional
        The label to mesh (``None``: every non-zero voxel).
    spacing : float or sequence of float or None, optional
        Voxel size in mm, world order x, y, z (``None``: the Image's, else 1).
    step_size : int, optional
        Marching-cubes step in voxels (larger: coarser mesh).
    smooth : int, optional
        Taubin smoothing iterations (0: none).
    sigma : float, optional
        Gaussian blur of the mask in mm before contouring (0: none).
    largest : bool, optional
        Keep only the connected surface of largest area (the outer surface of the largest
        piece; cavities and specks dropped).

    Returns
    -------
    Mesh
        The surface.

    Raises
    ------
    InputError
        An absent label, a bad ``step_size`` / ``smooth`` / ``sigma``.
    ShapeError
        Not a 3-D volume.

    Examples
    --------
    >>> import numpy as np
    >>> z, y, x = np.mgrid[:12, :12, :12]
    >>> ball = ((x - 5.5) ** 2 + (y - 5.5) ** 2 + (z - 5.5) ** 2) < 16
    >>> m = label_mesh(ball, spacing=0.5)
    >>> bool(abs(m.area - 4 * np.pi * 2.0 ** 2) < 6)
    True
    """
    from skimage.measure import marching_cubes

    arr, sp = _labels(labels, spacing)
    if arr.ndim != 3:
        raise ShapeError(f"labels: got shape {arr.shape}; expected a 3-D (Z, Y, X) volume")
    step = check_count(step_size, "step_size", minimum=1)
    it = check_count(smooth, "smooth", minimum=0)
    sig = check_number(sigma, "sigma", nonneg=True)
    m = _mask(arr, label)
    box = ndimage.find_objects(m.astype(np.uint8))[0]
    lo = np.array([b.start for b in box])
    spz = np.array(sp[::-1])                                      # array order z, y, x
    if sig > 0:                                                   # cheap bound first: no padding / blurring in vain
        extent = (np.array([b.stop - b.start for b in box]) + 2) * spz      # the box plus one voxel each side
        if _blur_peak(extent, sig) <= 0.5:
            size = " x ".join(f"{e:g}" for e in ((extent - 2 * spz)[::-1]))
            raise InputError(f"sigma: got {sig:g} mm, which blurs the object (bounding box {size} mm, x y z) below "
                             f"0.5 everywhere; expected sigma < {_largest_sigma(extent):.3g} mm (a few voxels "
                             "round the staircase)")
    pad = 1 + int(np.ceil(3 * sig / spz.min())) if sig > 0 else 1
    vol = np.pad(m[box].astype(np.float32), pad)
    if sig > 0:
        vol = ndimage.gaussian_filter(vol, sig / spz, mode="constant")
    if vol.max() <= 0.5 or vol.min() >= 0.5:
        raise InputError(f"sigma: got {sig}, which blurs the mask below 0.5 everywhere; expected a smaller blur")
    verts, faces, _, _ = marching_cubes(vol, level=0.5, spacing=tuple(spz), step_size=step,
                                        allow_degenerate=False)
    verts = verts + (lo - pad) * spz
    mesh = Mesh(verts[:, ::-1].astype(np.float64), faces[:, ::-1].astype(np.int64))   # x, y, z; keep orientation
    mesh = _clean(mesh)
    if largest:
        mesh = _largest_component(mesh)
    if it:
        mesh = taubin_smooth(mesh, it)
    return mesh


# ----------------------------------------------------------------------------- the operator
def laplace_beltrami(mesh: Mesh, mass: str = "lumped"):
    """The cotangent Laplace-Beltrami operator of a triangle mesh: the linear-FEM
    stiffness ``L`` and mass ``M`` with ``L phi = lambda M phi`` the eigenproblem.

    ``L_ij = -(cot a_ij + cot b_ij) / 2`` for an edge ``ij`` (``a``, ``b`` the angles
    opposite it; one of them on a boundary edge), ``L_ii = -sum_j L_ij``; ``L`` is
    symmetric positive semi-definite with ``L @ 1 = 0``.  ``M`` is the consistent mass
    (``A / 6`` on the diagonal and ``A / 12`` off it, per triangle of area ``A``) or its
    row sums (``"lumped"``, a third of the area of the triangles around each vertex).
    Boundary edges (planar domains, open surfaces) give the natural (Neumann) condition.

    Parameters
    ----------
    mesh : Mesh
        A 3-D surface or a 2-D planar domain.
    mass : {"lumped", "consistent"}, optional
        Which mass matrix.

    Returns
    -------
    L : scipy.sparse.csr_matrix
        ``(V, V)`` stiffness.
    M : scipy.sparse.csr_matrix
        ``(V, V)`` mass (diagonal for ``"lumped"``).

    Raises
    ------
    InputError
        An unknown ``mass`` or not a Mesh.

    Examples
    --------
    >>> L, M = laplace_beltrami(icosphere(1))
    >>> import numpy as np
    >>> bool(np.allclose(L @ np.ones(42), 0)), round(float(M.sum()), 4) == round(icosphere(1).area, 4)
    (True, True)
    """
    mesh = _as_mesh(mesh)
    if mass not in ("lumped", "consistent"):
        raise InputError(f"mass: got {mass!r}; expected 'lumped' or 'consistent'")
    n, f = mesh.n_vertices, mesh.faces
    cot, area = _geometry(mesh.vertices, f)
    cot = np.nan_to_num(cot, nan=0.0, posinf=0.0, neginf=0.0)
    # the edge opposite corner c joins the other two corners
    i = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    j = np.concatenate([f[:, 2], f[:, 0], f[:, 1]])
    w = 0.5 * np.concatenate([cot[:, 0], cot[:, 1], cot[:, 2]])
    off = sparse.coo_matrix((-w, (i, j)), shape=(n, n))
    off = (off + off.T).tocsr()
    diag = -np.asarray(off.sum(axis=1)).ravel()
    lap = (off + sparse.diags(diag)).tocsr()
    if mass == "lumped":
        m = np.bincount(f.ravel(), weights=np.repeat(area / 3.0, 3), minlength=n)
        mm = sparse.diags(m).tocsr()
    else:
        ii = np.concatenate([f[:, a] for a in range(3) for _ in range(3)])
        jj = np.concatenate([f[:, b] for _ in range(3) for b in range(3)])
        vals = np.concatenate([area / (6.0 if a == b else 12.0) for a in range(3) for b in range(3)])
        mm = sparse.coo_matrix((vals, (ii, jj)), shape=(n, n)).tocsr()
    return lap, mm


def _serial_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                                             # pragma: no cover - sklearn brings it
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _eigen(lap, mm, n_eig: int, sigma: float) -> np.ndarray:
    n = lap.shape[0]
    if n_eig > n - 1:
        raise InputError(f"k: asks for {n_eig} eigenvalues of a mesh with {n} free vertices; expected fewer "
                         "(a finer mesh or a smaller k)")
    if n <= 300:
        from scipy.linalg import eigh

        vals = eigh(lap.toarray(), mm.toarray(), eigvals_only=True, subset_by_index=[0, n_eig - 1])
    else:
        from scipy.sparse.linalg import eigsh

        v0 = np.random.default_rng(0).standard_normal(n)
        with _serial_blas():                                       # vector-sized BLAS calls: threads only cost
            vals = eigsh(lap.tocsc(), k=n_eig, M=mm.tocsc(), sigma=sigma, which="LM", v0=v0,
                         return_eigenvectors=False)
    return np.sort(np.asarray(vals, dtype=np.float64))


def shape_dna(shape, k: int = 20, normalize: str = "area", mass: str = "lumped", boundary: str = "neumann",
              label=None, spacing=None, mesh_options=None) -> np.ndarray:
    """Shape DNA: the first ``k`` non-zero eigenvalues of the Laplace-Beltrami operator,
    scale-normalised (Reuter et al. 2006).

    Solves ``L phi = lambda M phi`` (:func:`laplace_beltrami`) by shift-invert Lanczos
    around a slightly negative shift (dense :func:`scipy.linalg.eigh` for meshes of at
    most 300 vertices).  With ``boundary="neumann"`` (and on closed surfaces) the
    ``c`` zero eigenvalues of a mesh with ``c`` connected pieces are dropped; with
    ``"dirichlet"`` the boundary vertices are fixed to 0 and every eigenvalue counts.

    Parameters
    ----------
    shape : Mesh or array_like or Image
        A mesh, or a label volume (meshed with :func:`label_mesh`).
    k : int, optional
        Number of eigenvalues.
    normalize : {"area", "first", "none"}, optional
        ``lambda * area`` (scale free for surfaces and planar domains), ``lambda /
        lambda_1`` or the raw eigenvalues (1 / mm^2).
    mass : {"lumped", "consistent"}, optional
        The mass matrix (:func:`laplace_beltrami`).
    boundary : {"neumann", "dirichlet"}, optional
        The condition on boundary edges (no effect on closed surfaces).
    label : int or None, optional
        With a label volume: which label (``None``: all foreground).
    spacing : float or sequence of float or None, optional
        With a label volume: voxel size in mm, world order x, y, z.
    mesh_options : dict or None, optional
        Further keyword arguments of :func:`label_mesh` (``step_size``, ``smooth``,
        ``sigma``, ``largest``).

    Returns
    -------
    numpy.ndarray
        ``(k,)`` float64, ascending.

    Raises
    ------
    InputError
        Bad ``k`` / ``normalize`` / ``boundary``, a mesh too small for ``k``, a Dirichlet
        problem on a mesh with no boundary.

    Examples
    --------
    >>> ev = shape_dna(icosphere(3), k=3, normalize="none")   # unit sphere: l(l+1) = 2, 2, 2
    >>> [round(float(e), 2) for e in ev]
    [2.0, 2.0, 2.0]
    """
    n_k = check_count(k, "k", minimum=1)
    if normalize not in ("area", "first", "none"):
        raise InputError(f"normalize: got {normalize!r}; expected 'area', 'first' or 'none'")
    if boundary not in ("neumann", "dirichlet"):
        raise InputError(f"boundary: got {boundary!r}; expected 'neumann' or 'dirichlet'")
    if isinstance(shape, Mesh):
        mesh = shape
    else:
        opts = dict(mesh_options or {})
        try:
            mesh = label_mesh(shape, label=label, spacing=spacing, **opts)
        except BiomipError as exc:              # label_mesh names its input `labels`; here it is `shape`
            msg = str(exc)
            raise type(exc)("shape: " + msg[len("labels: "):] if msg.startswith("labels: ") else msg) from exc
    mesh = _clean(mesh)
    lap, mm = laplace_beltrami(mesh, mass)
    area = mesh.area
    sigma = -1e-2 * 4.0 * np.pi / area                            # ~1 % of a sphere's first eigenvalue
    if boundary == "dirichlet":
        free = ~_boundary_vertices(mesh)
        if free.all():
            raise InputError("boundary: got 'dirichlet' for a mesh without boundary; expected an open surface "
                             "or a planar domain")
        lap, mm = lap[free][:, free], mm[free][:, free]
        vals = _eigen(lap, mm, n_k, sigma)
    else:
        n_comp, _ = _components(mesh)
        vals = _eigen(lap, mm, n_k + n_comp, sigma)[n_comp:]
    if normalize == "area":
        vals = vals * area
    elif normalize == "first":
        vals = vals / vals[0]
    return vals


# ----------------------------------------------------------------------------- the baseline
def _tensor_invariants(pts: np.ndarray, w: np.ndarray) -> np.ndarray:
    d = pts.shape[1]
    vol = float(w.sum())
    c = pts - (w[:, None] * pts).sum(0) / vol
    m2 = np.einsum("n,ni,nj->ij", w, c, c) / vol ** (1 + 2 / d)
    m3 = np.einsum("n,ni,nj,nk->ijk", w, c, c, c) / vol ** (1 + 3 / d)
    m4 = np.einsum("n,ni,nj,nk,nl->ijkl", w, c, c, c, c) / vol ** (1 + 4 / d)
    ev = np.sort(np.linalg.eigvalsh(m2))[::-1]
    v3 = np.einsum("ijj->i", m3)
    q = np.einsum("iikl->kl", m4)
    return np.concatenate([ev, [np.sqrt((m3 ** 2).sum()), np.linalg.norm(v3), np.sqrt((m4 ** 2).sum()),
                                np.trace(q), np.sqrt((q ** 2).sum())]])


def moment_invariants(labels, label=None, spacing=None) -> np.ndarray:
    """Volume-moment shape descriptor (the baseline of Shape DNA): rotation, translation
    and scale invariants of the central moments of a mask.

    With the central moment tensors ``mu_n`` (order ``n``, voxel centres in mm as point
    masses of the voxel volume) divided by ``V ** (1 + n / d)`` (``V`` the volume, ``d``
    the dimension) so they are scale free, the descriptor is: the eigenvalues of ``mu_2``
    (the normalised inertia / covariance tensor, largest first), then the Frobenius norm
    of ``mu_3``, the norm of its contraction ``mu_3[i, j, j]``, the Frobenius norm of
    ``mu_4``, its full trace ``mu_4[i, i, j, j]`` and the norm of ``mu_4[i, i, k, l]`` --
    tensor contractions, hence rotation invariant.

    Parameters
    ----------
    labels : array_like or Image
        2-D or 3-D label image (or binary mask).
    label : int or None, optional
        Which label (``None``: every non-zero pixel).
    spacing : float or sequence of float or None, optional
        Pixel / voxel size in mm, world order (``None``: the Image's, else 1).

    Returns
    -------
    numpy.ndarray
        ``(d + 5,)`` float64 (8 for a volume, 7 for a 2-D image).

    Raises
    ------
    InputError
        An absent label, or fewer than 2 voxels.
    ShapeError
        Not 2-D or 3-D.

    Examples
    --------
    >>> import numpy as np
    >>> sq = np.zeros((40, 40), bool); sq[10:30, 10:30] = True
    >>> inv = moment_invariants(sq)
    >>> round(float(inv[0]), 4), round(float(inv[1]), 4)           # (1/12)(1 - 1/400) for a 20 x 20 square
    (0.0831, 0.0831)
    """
    arr, sp = _labels(labels, spacing)
    m = _mask(arr, label)
    idx = np.argwhere(m)
    if idx.shape[0] < 2:
        raise InputError(f"label: got {label!r} with {idx.shape[0]} voxel; expected at least 2")
    pts = idx[:, ::-1].astype(np.float64) * np.asarray(sp)         # world order x, y[, z] in mm
    w = np.full(idx.shape[0], float(np.prod(sp)))
    return _tensor_invariants(pts, w)


# ----------------------------------------------------------------------------- retrieval
_METRICS = ("euclidean", "standardized", "relative")


def shape_distance(a, b, metric: str = "euclidean", scale=None) -> np.ndarray:
    """Distance between descriptor vectors (shape DNA, moment invariants), broadcasting
    over leading axes.

    ``"euclidean"``: ``|a - b|``; ``"standardized"``: ``|(a - b) / scale|`` with ``scale``
    the per-component spread (e.g. the database's standard deviation); ``"relative"``: the
    root mean square of ``2 |a - b| / (|a| + |b|)`` (0 where both are 0).

    Parameters
    ----------
    a : array_like
        ``(..., D)`` descriptors.
    b : array_like
        ``(..., D)`` descriptors (broadcast against ``a``).
    metric : {"euclidean", "standardized", "relative"}, optional
        The distance.
    scale : array_like or None, optional
        ``(D,)`` positive spreads for ``"standardized"``.

    Returns
    -------
    numpy.ndarray
        The distances, shape of the broadcast leading axes (a 0-d array for two vectors).

    Raises
    ------
    InputError
        An unknown metric, a missing or non-positive ``scale``, non-finite descriptors.
    ShapeError
        Descriptors of different lengths.

    Examples
    --------
    >>> float(shape_distance([1.0, 2.0], [1.0, 4.0]))
    2.0
    >>> round(float(shape_distance([1.0, 2.0], [1.0, 4.0], "relative")), 4)
    0.4714
    """
    x = as_numpy(a, dtype=np.float64, name="a")
    y = as_numpy(b, dtype=np.float64, name="b")
    if x.ndim == 0 or y.ndim == 0 or x.shape[-1] != y.shape[-1]:
        raise ShapeError(f"a, b: got shapes {x.shape} and {y.shape}; expected (..., D) with the same D")
    for v, nm in ((x, "a"), (y, "b")):
        if not np.isfinite(v).all():
            raise InputError(f"{nm}: holds NaN or infinite values; expected finite descriptors")
    if metric not in _METRICS:
        raise InputError(f"metric: got {metric!r}; expected one of {', '.join(map(repr, _METRICS))}")
    d = x - y
    if metric == "standardized":
        if scale is None:
            raise InputError("scale: got None; expected the (D,) per-component spread for metric='standardized'")
        s = np.ravel(as_numpy(scale, dtype=np.float64, name="scale"))
        if s.shape != (x.shape[-1],) or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise InputError(f"scale: got {s.shape} values; expected {x.shape[-1]} finite positive spreads")
        d = d / s
    elif metric == "relative":
        den = np.abs(x) + np.abs(y)
        d = np.where(den > 0, 2.0 * np.abs(d) / np.where(den > 0, den, 1.0), 0.0)
        return np.sqrt(np.mean(d * d, axis=-1))
    return np.sqrt(np.sum(d * d, axis=-1))


def retrieve(query, database, k: int = 5, metric: str = "standardized"):
    """The ``k`` nearest database descriptors of each query descriptor.

    Parameters
    ----------
    query : array_like
        ``(Q, D)`` (or ``(D,)``) query descriptors.
    database : array_like
        ``(N, D)`` database descriptors.
    k : int, optional
        How many neighbours (at most ``N``).
    metric : {"standardized", "euclidean", "relative"}, optional
        :func:`shape_distance`; ``"standardized"`` divides each component by its standard
        deviation over the database (so components of different size weigh alike).

    Returns
    -------
    indices : numpy.ndarray
        ``(Q, k)`` int64 database rows, nearest first.
    distances : numpy.ndarray
        ``(Q, k)`` float64.

    Raises
    ------
    InputError
        A bad ``k`` or metric, non-finite descriptors.
    ShapeError
        Descriptors of different lengths.

    Examples
    --------
    >>> import numpy as np
    >>> db = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    >>> retrieve([[0.9, 0.1]], db, k=2, metric="euclidean")[0].tolist()
    [[1, 0]]
    """
    q = as_numpy(query, dtype=np.float64, name="query")
    db = as_numpy(database, dtype=np.float64, name="database")
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ShapeError(f"query, database: got shapes {q.shape} and {db.shape}; expected (Q, D) and (N, D)")
    for v, nm in ((q, "query"), (db, "database")):
        if not np.isfinite(v).all():
            raise InputError(f"{nm}: holds {int(v.size - np.isfinite(v).sum())} NaN or infinite values; expected "
                             "finite descriptors")
    kk = check_count(k, "k", minimum=1)
    if kk > db.shape[0]:
        raise InputError(f"k: got {kk}; expected at most the database size {db.shape[0]}")
    scale = None
    if metric == "standardized":
        scale = db.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
    dist = shape_distance(q[:, None, :], db[None, :, :], metric=metric, scale=scale)
    order = np.argsort(dist, axis=1, kind="stable")[:, :kk]
    return order.astype(np.int64), np.take_along_axis(dist, order, axis=1)


# ----------------------------------------------------------------------------- isospectral drums
def _inside(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd ray casting (points strictly inside or outside; none on the boundary)."""
    x, y = pts[:, 0], pts[:, 1]
    inside = np.zeros(pts.shape[0], dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
        if y0 == y1:
            continue
        cross = ((y0 > y) != (y1 > y)) & (x < x0 + (y - y0) * (x1 - x0) / (y1 - y0))
        inside ^= cross
    return inside


def isospectral_drums(refine: int = 8) -> tuple[Mesh, Mesh]:
    """The two isospectral but non-congruent drums of Gordon, Webb & Wolpert (1992), as the
    seven-half-square polygons of Buser, Conway, Doyle & Semmler (:data:`DRUMS`), each
    triangulated by the same criss-cross grid.

    The unit squares of ``[0, 3]^2`` are cut into ``refine x refine`` cells and each cell
    into four triangles by its diagonals; the polygons' edges run along cell sides or
    diagonals, so every triangle lies wholly inside or outside, and the triangles inside
    form the mesh.  Both meshes have the same number of triangles (``14 refine^2``), the
    same area (3.5) and perimeter (``6 + 3 sqrt 2``); their Dirichlet spectra
    (:func:`shape_dna` with ``boundary="dirichlet"``) agree up to discretisation error
    (the first eigenvalue is 2.5379... by Driscoll 1997), yet no rigid motion maps one
    onto the other.

    Parameters
    ----------
    refine : int, optional
        Cells per unit length (mesh size ``1 / refine``).

    Returns
    -------
    tuple of Mesh
        The planar meshes of drum ``"A"`` and drum ``"B"`` (2-D vertices).

    Raises
    ------
    InputError
        ``refine < 1``.

    Examples
    --------
    >>> a, b = isospectral_drums(2)
    >>> a.n_faces == b.n_faces == 14 * 2 ** 2, round(a.area, 6), round(b.area, 6)
    (True, 3.5, 3.5)
    """
    n = check_count(refine, "refine", minimum=1)
    h = 1.0 / n
    m = 3 * n
    gi, gj = np.meshgrid(np.arange(m + 1), np.arange(m + 1), indexing="ij")
    corners = np.stack([gi.ravel(), gj.ravel()], 1) * h
    ci, cj = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    ci, cj = ci.ravel(), cj.ravel()
    centres = np.stack([ci + 0.5, cj + 0.5], 1) * h
    verts = np.concatenate([corners, centres])

    def node(i, j):
        return i * (m + 1) + j

    c = (m + 1) ** 2 + np.arange(ci.size)
    a00, a10, a11, a01 = node(ci, cj), node(ci + 1, cj), node(ci + 1, cj + 1), node(ci, cj + 1)
    tri = np.concatenate([np.stack([a00, a10, c], 1), np.stack([a10, a11, c], 1),
                          np.stack([a11, a01, c], 1), np.stack([a01, a00, c], 1)])
    cent = verts[tri].mean(axis=1)
    out = []
    for key in ("A", "B"):
        poly = np.asarray(DRUMS[key], dtype=np.float64)
        f = tri[_inside(cent, poly)]
        used = np.zeros(verts.shape[0], dtype=bool)
        used[f.ravel()] = True
        new = np.cumsum(used) - 1
        out.append(Mesh(verts[used], new[f]))
    return out[0], out[1]
