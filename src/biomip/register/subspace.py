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

from ..core.errors import InputError, ShapeError
from ..core.image import Image
from ..core.kinds import same_kind
from .demons import DeformableResult


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
            Number of modes to keep (at most ``n - 1``); default: enough to explain
            ``explained``.
        explained : float, optional
            Fraction of the total variance the kept modes explain when ``k`` is None.

        Returns
        -------
        DeformationModel
            The model on the fields' grid.

        Raises
        ------
        InputError
            For an empty list, non-Image items, or fewer than 2 fields.
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
        mean = arr.mean(0)
        X = (arr - mean).reshape(n, -1)
        _, s, vt = np.linalg.svd(X, full_matrices=False)
        var = s ** 2 / max(n - 1, 1)
        if k is None:
            frac = np.cumsum(var) / max(var.sum(), 1e-30)
            k = int(np.searchsorted(frac, explained) + 1)
        k = int(max(1, min(k, n - 1 if n > 1 else 1)))
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
        """
        z = np.load(str(path), allow_pickle=False)
        grid = Image(np.zeros(z["mean"].shape, np.float32), spacing=z["spacing"], origin=z["origin"],
                     direction=z["direction"], axes=str(z["axes"]))
        return cls(z["mean"], z["components"], z["variances"], grid)


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
        Maximum L-BFGS iterations.
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
        When ``model`` is not a DeformationModel or ``metric`` is unknown.
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
