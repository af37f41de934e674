"""Statistical deformation model (textbook 7.4, case study 6): principal components of a
set of displacement fields, and registration restricted to ``k`` subspace coordinates.

``u(c) = mean + sum_k c_k sqrt(var_k) phi_k`` -- coefficients ``c`` are in standard
deviations of the training set, so ``|c|^2`` is the (Gaussian) prior energy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core.arrays import check_count, check_number
from ..core.errors import BiomipError, FormatError, InputError, ShapeError
from ..core.image import Image
from ..core.kinds import same_kind
from ._dense import check_iterations
from .demons import DeformableResult

_MODEL_KEYS = ("mean", "components", "variances", "spacing", "origin", "direction", "axes")
_MAX_MODES = 100_000


def _read_model_npz(path) -> dict:
    """The arrays of a saved :class:`DeformationModel`, checked from the ``.npy``
    headers (names, dtypes, shapes, total size) before any array is read."""
    import zipfile

    from numpy.lib import format as npf

    from ..core.arrays import check_memory

    label = f"deformation model {str(path)!r}"
    try:
        with zipfile.ZipFile(str(path)) as zf:
            names = set(zf.namelist())
            if len(names) > 64:
                raise FormatError(f"{label}: {len(names)} entries; expected the {len(_MODEL_KEYS)} arrays of a model")
            missing = [k for k in _MODEL_KEYS if k + ".npy" not in names]
            if missing:
                raise FormatError(f"{label}: no {', '.join(missing)} array (a damaged or edited file)")
            heads = {}
            for key in _MODEL_KEYS:
                with zf.open(key + ".npy") as fh:
                    version = npf.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = npf.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = npf.read_array_header_2_0(fh)
                    else:
                        raise FormatError(f"{label}: {key}: .npy format {version}; expected 1.0 or 2.0")
                heads[key] = (tuple(int(n) for n in shape), np.dtype(dtype))
    except FormatError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile, KeyError,
            NotImplementedError) as exc:
        raise FormatError(f"{label}: cannot read it as a saved model ({type(exc).__name__}: {exc})") from exc
    for key, (shape, dtype) in heads.items():
        want = "U" if key == "axes" else "f"
        if dtype.kind != want or dtype.hasobject:
            raise FormatError(f"{label}: {key} has dtype {dtype}; expected {'text' if want == 'U' else 'float'}")
    mshape = heads["mean"][0]
    d = len(mshape) - 1
    if d not in (2, 3) or mshape[0] != d or any(n < 1 for n in mshape):
        raise FormatError(f"{label}: mean has shape {mshape}; expected (d, [z,] y, x) with d = 2 or 3 components")
    cshape = heads["components"][0]
    if len(cshape) != d + 2 or cshape[1:] != mshape or not 1 <= cshape[0] <= _MAX_MODES:
        raise FormatError(f"{label}: components have shape {cshape}; expected (k, {', '.join(map(str, mshape))}) "
                          f"with 1 <= k <= {_MAX_MODES}")
    k = cshape[0]
    for key, want in (("variances", (k,)), ("spacing", (d,)), ("origin", (d,)), ("direction", (d, d)), ("axes", ())):
        if heads[key][0] != want:
            raise FormatError(f"{label}: {key} has shape {heads[key][0]}; expected {want}")
    nbytes = sum(float(np.prod(s, dtype=np.float64)) * max(t.itemsize, 8) for s, t in heads.values())
    try:
        check_memory(2 * nbytes, "path", f"the deformation model {str(path)!r}")
    except InputError as exc:
        raise FormatError(str(exc)) from exc
    try:
        with np.load(str(path), allow_pickle=False) as z:
            out = {key: np.asarray(z[key]) for key in _MODEL_KEYS}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise FormatError(f"{label}: truncated or damaged data ({type(exc).__name__}: {exc})") from exc
    for key in _MODEL_KEYS:
        if out[key].shape != heads[key][0]:
            raise FormatError(f"{label}: {key}: read shape {out[key].shape}, header says {heads[key][0]}")
        if key != "axes":
            out[key] = out[key].astype(np.float64)
    return out


@dataclass
class DeformationModel:
    """PCA of displacement fields on one grid (``grid``: the geometry of the fields).

    ``u(c) = mean + sum_k c_k sqrt(var_k) phi_k``; build one with :meth:`fit`.

    Parameters
    ----------
    mean : numpy.ndarray
        Mean field ``(d, [z,] y, x)``: mm vectors, component 0 = x.
    components : numpy.ndarray
        Orthonormal modes ``phi_k``, ``(k, d, [z,] y, x)``.
    variances : numpy.ndarray
        ``(k,)`` variance of the training fields along each mode, mm^2.
    grid : Image
        An Image ``(d, [z,] y, x)`` (axes ``'cyx'`` / ``'czyx'``) carrying the geometry
        of the fields; its values are not used.

    Examples
    --------
    >>> import numpy as np
    >>> fields = np.zeros((3, 2, 8, 8)); fields[:, 0] = np.array([-1.0, 0.0, 1.0])[:, None, None]
    >>> model = DeformationModel.fit(fields, k=1)
    >>> model.k, np.round(model.variances, 6)
    (1, array([64.]))
    >>> np.round(model.project(fields[2]), 6)          # +1 standard deviation
    array([1.])
    """

    mean: np.ndarray              # (d, *shape)
    components: np.ndarray        # (k, d, *shape), orthonormal
    variances: np.ndarray         # (k,)
    grid: Image

    @classmethod
    def fit(cls, fields, k: int | None = None, explained: float = 0.98) -> DeformationModel:
        """PCA of ``fields`` (list of displacement Images on the same grid, or an array
        ``(n, d, *shape)`` with unit spacing); keep ``k`` modes or enough to explain
        ``explained`` of the variance.

        Parameters
        ----------
        fields : list of Image or numpy.ndarray
            At least 2 displacement fields ``(d, [z,] y, x)`` in mm (component 0 = x):
            Images on one grid, or an array ``(n, d, [z,] y, x)`` (1-mm grid, origin 0).
        k : int, optional
            Number of modes to keep (1 to ``n - 1``); default: enough to explain
            ``explained``.
        explained : float, optional
            Fraction in ``(0, 1]`` of the total variance the kept modes explain when
            ``k`` is None.

        Returns
        -------
        DeformationModel
            The model on the fields' grid.

        Raises
        ------
        InputError
            For an empty list, non-Image items, fewer than 2 fields, NaN / infinity,
            ``k`` not an integer in ``[1, n - 1]`` or ``explained`` outside ``(0, 1]``.
        ShapeError
            When the fields are not ``(n, d, [z,] y, x)`` with ``d`` components.
        GeometryError
            When the Images lie on different grids.
        """
        if isinstance(fields, np.ndarray):
            arr = np.asarray(fields, dtype=np.float64)
            grid = Image(np.zeros(arr.shape[1:], np.float32), axes="c" + "zyx"[-(arr.ndim - 2):])
        else:
            fields = list(fields)
            if not fields or not all(isinstance(f, Image) for f in fields):
                raise InputError("fields: expected a non-empty list of displacement Images or an (n, d, ...) array")
            for f in fields[1:]:
                fields[0].check_same_geometry(f, "fields[0]", "fields[i]")
            arr = np.stack([f.numpy().astype(np.float64) for f in fields])
            grid = fields[0]
        if arr.ndim < 4 or arr.shape[1] != arr.ndim - 2:
            raise ShapeError(f"fields: got shape {arr.shape}; expected (n, d, [z,] y, x) with d components")
        n = arr.shape[0]
        if n < 2:
            raise InputError("fields: need at least 2 fields for a PCA")
        if not np.all(np.isfinite(arr)):
            raise InputError("fields: contain NaN or infinity; expected finite displacements (mm)")
        if k is not None:
            k = check_count(k, "k")
            if k > n - 1:
                raise InputError(f"k: got {k}; expected at most n - 1 = {n - 1} modes for {n} fields")
        explained = check_number(explained, "explained", low=0.0, low_open=True, high=1.0)
        mean = arr.mean(0)
        X = (arr - mean).reshape(n, -1)
        _, s, vt = np.linalg.svd(X, full_matrices=False)
        var = s ** 2 / max(n - 1, 1)
        if k is None:
            frac = np.cumsum(var) / max(var.sum(), 1e-30)
            k = int(np.searchsorted(frac, explained) + 1)
        k = int(max(1, min(k, n - 1)))
        comps = vt[:k].reshape((k, *arr.shape[1:]))
        return cls(mean, comps, var[:k], grid.with_array(np.zeros(arr.shape[1:], np.float32)))

    @property
    def k(self) -> int:
        """Number of modes."""
        return int(self.components.shape[0])

    def field(self, coeffs) -> Image:
        """The displacement ``mean + sum c_k sqrt(var_k) phi_k`` as an Image.

        Parameters
        ----------
        coeffs : array_like
            ``k`` coefficients, in standard deviations of the training set.

        Returns
        -------
        Image
            float32 field ``(d, [z,] y, x)`` in mm on the model's grid,
            ``meta["kind"] == "displacement"``.

        Raises
        ------
        ShapeError
            When ``coeffs`` does not hold ``k`` values.
        """
        c = np.asarray(coeffs, dtype=np.float64).ravel()
        if c.size != self.k:
            raise ShapeError(f"coeffs: got {c.size} values; the model has {self.k} modes")
        u = self.mean + np.tensordot(c * np.sqrt(self.variances), self.components, axes=1)
        return self.grid.with_array(u.astype(np.float32), meta={"kind": "displacement", "model": "pca"})

    def project(self, field) -> np.ndarray:
        """Subspace coordinates (in standard deviations) of a displacement field.

        Parameters
        ----------
        field : Image or array_like
            Displacement ``(d, [z,] y, x)`` in mm on the model's grid.

        Returns
        -------
        numpy.ndarray
            ``(k,)`` coefficients: the projection of ``field - mean`` on each mode,
            divided by the mode's standard deviation.

        Raises
        ------
        ShapeError
            When ``field`` does not have the model's shape.
        """
        u = field.numpy() if isinstance(field, Image) else np.asarray(field)
        if u.shape != self.mean.shape:
            raise ShapeError(f"field: got shape {u.shape}; expected {self.mean.shape}")
        coef = np.tensordot(self.components, u - self.mean, axes=(tuple(range(1, u.ndim + 1)),
                                                                      tuple(range(u.ndim))))
        return coef / np.sqrt(np.maximum(self.variances, 1e-30))

    def save(self, path) -> None:
        """Write the model as a compressed ``.npz`` (atomically; no pickles).

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (numpy adds no suffix: name it ``*.npz``).

        Examples
        --------
        >>> import tempfile, pathlib
        >>> model = DeformationModel.fit(np.random.default_rng(0).random((4, 2, 6, 6)), k=2)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     model.save(pathlib.Path(tmp) / "pca.npz")
        ...     back = DeformationModel.load(pathlib.Path(tmp) / "pca.npz")
        >>> back.k, np.allclose(back.mean, model.mean)
        (2, True)
        """
        from ..core.atomic import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, mean=self.mean, components=self.components, variances=self.variances,
                                spacing=np.asarray(self.grid.spacing), origin=np.asarray(self.grid.origin),
                                direction=self.grid.direction, axes=np.asarray(self.grid.axes))

    @classmethod
    def load(cls, path) -> DeformationModel:
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.npz`` file.

        Returns
        -------
        DeformationModel
            The model with its grid geometry (spacing, origin, direction, axes).

        Raises
        ------
        FormatError
            For a missing, truncated or damaged file, a missing array, arrays of the
            wrong dtype or of inconsistent shapes, sizes beyond this machine's memory
            (checked from the headers before anything is read), NaN / infinity, a
            non-positive spacing or a singular direction.
        """
        arrays = _read_model_npz(path)
        mean, comps, var = arrays["mean"], arrays["components"], arrays["variances"]
        label = f"deformation model {str(path)!r}"
        if not all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f"):
            raise FormatError(f"{label}: NaN or infinity in its arrays (a damaged or edited file)")
        d = mean.shape[0]
        if np.any(arrays["spacing"] <= 0) or abs(np.linalg.det(arrays["direction"])) < 1e-6 or np.any(var < 0):
            raise FormatError(f"{label}: spacing {arrays['spacing'].tolist()}, direction "
                              f"{arrays['direction'].tolist()} or variances not valid (positive spacing, an invertible "
                              "direction, non-negative variances expected; a damaged or edited file)")
        axes = str(arrays["axes"])
        if axes != "c" + "zyx"[-d:]:
            raise FormatError(f"{label}: axes {axes!r}; expected {'c' + 'zyx'[-d:]!r} for a {d}-D field")
        try:
            grid = Image(np.zeros(mean.shape, np.float32), spacing=arrays["spacing"], origin=arrays["origin"],
                         direction=arrays["direction"], axes=axes)
        except BiomipError as exc:
            raise FormatError(f"{label}: invalid grid geometry ({exc})") from exc
        return cls(mean, comps, var, grid)


def _model_grid(arguments):
    model = arguments["model"]
    if not isinstance(model, DeformationModel):
        raise InputError(f"model: got {type(model).__name__}; expected a DeformationModel (DeformationModel.fit)")
    grid = model.grid
    return Image(np.zeros(grid.spatial_shape, np.float32), spacing=grid.spacing, origin=grid.origin,
                 direction=grid.direction)


@same_kind("fixed", "moving", reference=_model_grid)
def subspace_register(fixed: Image, moving: Image, model: DeformationModel, metric: str = "mse",
                      prior: float = 1e-3, iterations: int = 50, spacing=None) -> DeformableResult:
    """Registration restricted to the model's subspace: minimise
    ``metric(fixed, moving(p + u(c)(p))) + prior * |c|^2`` over the ``k`` coefficients by
    L-BFGS.  ``fixed`` and ``moving`` lie on the model's grid: Images, or numpy arrays /
    torch tensors (which take the model grid's geometry); the result is the same kind.

    The optimisation runs on the CPU in float64, from ``c = 0`` (the mean field).

    Parameters
    ----------
    fixed : Image, numpy.ndarray or torch.Tensor
        The reference image ``([z,] y, x)`` on the model's grid.
    moving : Image, numpy.ndarray or torch.Tensor
        The image to register, on the same grid.
    model : DeformationModel
        The statistical deformation model (:meth:`DeformationModel.fit`).
    metric : {"mse", "ncc"}, optional
        The data term: MSE or ``1 - NCC``.
    prior : float, optional
        Weight of the Gaussian prior energy ``|c|^2``.
    iterations : int, optional
        Maximum L-BFGS iterations (1 to 10^6).
    spacing : sequence of float, optional
        Voxel size (x, y[, z]) in mm for array inputs; must be None (or equal the
        model grid's) -- arrays take the model grid's geometry.

    Returns
    -------
    DeformableResult
        ``displacement`` (the model field of the coefficients, mm) and ``warped`` of
        the kind of the inputs, ``history`` (the data term at every evaluation) and
        ``params`` (settings, ``k`` and ``params["coefficients"]``, in standard
        deviations).

    Raises
    ------
    InputError
        When ``model`` is not a DeformationModel, ``metric`` is unknown, ``prior`` is
        negative / NaN or ``iterations`` is not an integer in ``[1, 10^6]``.
    GeometryError
        When the images do not lie on the model's grid.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:16, :16]
    >>> fixed = np.exp(-((xx - 8.0) ** 2 + (yy - 8.0) ** 2) / 10.0)
    >>> moving = np.exp(-((xx - 9.0) ** 2 + (yy - 8.0) ** 2) / 10.0)  # 1 mm along x
    >>> fields = np.zeros((3, 2, 16, 16)); fields[:, 0] = np.array([-2.0, 0.0, 2.0])[:, None, None]
    >>> res = subspace_register(fixed, moving, DeformationModel.fit(fields, k=1), prior=0.0)
    >>> round(float(res.displacement[0].mean()), 1)               # a 1-mm shift along x
    1.0
    """
    from ..ops.spatial import warp
    from . import losses

    fixed.check_same_geometry(moving, "fixed", "moving")
    _model_grid({"model": model})                       # a DeformationModel, else an InputError naming model
    fixed.check_same_geometry(model.grid, "fixed", "model grid")
    if metric not in ("mse", "ncc"):
        raise InputError(f"metric: got {metric!r}; expected 'mse' or 'ncc'")
    prior = check_number(prior, "prior", nonneg=True)
    iterations = check_iterations(iterations)
    t0 = time.perf_counter()
    f = fixed.torch("cpu").to(torch.float64)
    m = moving.torch("cpu").to(torch.float64)
    mean = torch.as_tensor(model.mean)
    basis = torch.as_tensor(model.components * np.sqrt(model.variances).reshape((-1,) + (1,) * model.mean.ndim))
    c = torch.zeros(model.k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([c], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")
    history: list[float] = []
    sp = fixed.spacing

    def closure():
        opt.zero_grad()
        u = mean + torch.tensordot(c, basis, dims=1)
        mw = warp(m, u, spacing=sp, padding="border")
        data = losses.mse(f, mw) if metric == "mse" else 1.0 - losses.ncc(f, mw)
        loss = data + prior * (c * c).sum()
        loss.backward()
        history.append(float(data.detach()))
        return loss

    opt.step(closure)
    coeffs = c.detach().numpy()
    field = model.field(coeffs)
    warped = warp(moving, field, padding="border")
    res = DeformableResult(field, warped, history, time.perf_counter() - t0,
                           {"method": "pca subspace", "k": model.k, "metric": metric, "prior": prior})
    res.params["coefficients"] = coeffs.tolist()
    return res
