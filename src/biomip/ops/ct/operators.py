"""Linear operators with ``forward`` / ``adjoint`` that autograd differentiates through.

Every projector in :mod:`biomip.ops.ct` (re-exported by :mod:`biomip.reconstruct`) is a :class:`LinearOperator`: call it (or
``.forward``) on an image, ``.adjoint`` on a measurement.  Both accept numpy or torch
(numpy in -> numpy out; torch in -> torch out on the same device) and are
differentiable: the gradient of ``forward`` is ``adjoint`` and vice versa, evaluated
by the same kernels, so ``<A x, y> = <x, A^T y>`` holds to float rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from ...core.arrays import as_tensor, check_finite, is_tensor
from ...core.errors import InputError, ShapeError, describe
from ...core.image import Image
from ...core.progress import progress_bar


class _Apply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, op, adjoint):  # noqa: D401 - torch API
        ctx.op, ctx.adjoint = op, adjoint
        with torch.no_grad():
            return op._apply(x, adjoint)

    @staticmethod
    def backward(ctx, g):
        return _Apply.apply(g.contiguous(), ctx.op, not ctx.adjoint), None, None


class LinearOperator:
    """Base class: subclasses set ``in_shape`` / ``out_shape`` (trailing dims) and
    implement ``_apply(tensor, adjoint: bool) -> tensor`` for float tensors whose
    leading dims are a batch.

    Attributes
    ----------
    in_shape : tuple of int
        Trailing shape of the operator's input (e.g. the image ``(ny, nx)``).
    out_shape : tuple of int
        Trailing shape of its output (e.g. the sinogram ``(n_views, n_det)``).
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    name = "operator"

    # -------------------------------------------------------------- public API
    def forward(self, x):
        """Apply the operator (e.g. project an image into a sinogram).

        Parameters
        ----------
        x : numpy.ndarray or torch.Tensor
            Input ``(..., *in_shape)``; leading axes are a batch.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            ``A x``, ``(..., *out_shape)``, of the kind of `x` (autograd flows through).
        """
        return self._call(x, adjoint=False)

    __call__ = forward

    def adjoint(self, y):
        """Apply the adjoint (e.g. back-project a sinogram).

        Parameters
        ----------
        y : numpy.ndarray or torch.Tensor
            Input ``(..., *out_shape)``; leading axes are a batch.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            ``A^T y``, ``(..., *in_shape)``, of the kind of `y`.
        """
        return self._call(y, adjoint=True)

    @property
    def T(self) -> _Adjoint:
        """The adjoint operator (``op.T(y) == op.adjoint(y)``)."""
        return _Adjoint(self)

    def norm(self, iterations: int = 30, seed: int = 0, device=None, progress: bool | None = None) -> float:
        """Operator 2-norm ``||A||`` by power iteration on ``A^T A`` (cached).

        Parameters
        ----------
        iterations : int, optional
            Power iterations (default 30).
        seed : int, optional
            Seed of the random start vector.
        device : str or torch.device, optional
            Where to iterate (default ``biomip.config.device``).
        progress : bool, optional
            Show a bar over the power iterations (a cone-beam norm takes as long as 30
            iterations of a reconstruction; ``None``: ``biomip.config.progress``, else when
            stderr is a terminal).

        Returns
        -------
        float
            The estimated 2-norm (cached for the same `iterations` and `seed`, whatever the
            device).
        """
        key = ("norm", iterations, seed)              # the same norm on every device: computed once
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            g = torch.Generator().manual_seed(seed)
            x = torch.rand((1, *self.in_shape), generator=g, dtype=torch.float64 if self._prefers64 else torch.float32)
            if device is not None:
                x = x.to(device)
            lam = 0.0
            with progress_bar("operator norm ||A|| (power iteration)", iterations, progress) as bar:
                for _ in range(iterations):
                    x = x / torch.linalg.vector_norm(x)
                    y = self._apply(self._apply(x, False), True)
                    lam = float(torch.linalg.vector_norm(y))
                    x = y
                    bar.advance()
            cache[key] = lam ** 0.5
        return cache[key]

    _prefers64 = False

    # ------------------------------------------------------------- internals
    def _call(self, x, adjoint: bool):
        want = self.out_shape if adjoint else self.in_shape
        arg = "y" if adjoint else "x"
        if isinstance(x, Image):
            x = x.array
        numpy_in = not is_tensor(x)
        t = as_tensor(x, name=arg)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        if tuple(t.shape[t.ndim - len(want):]) != tuple(want) or t.ndim < len(want):
            kind = "measurement" if adjoint else "image"
            raise ShapeError(f"{arg}: got {describe(t)}; expected a {kind} of shape (..., "
                             f"{', '.join(map(str, want))}) for this {self.name}")
        check_finite(t, arg)
        lead = t.shape[: t.ndim - len(want)]
        flat = t.reshape((-1, *want)) if lead else t.reshape((1, *want))
        out = _Apply.apply(flat.contiguous(), self, adjoint) if flat.requires_grad else self._apply(flat.contiguous(), adjoint)
        res = self.in_shape if adjoint else self.out_shape
        out = out.reshape((*lead, *res))
        return out.detach().cpu().numpy() if numpy_in else out

    def _apply(self, x: torch.Tensor, adjoint: bool) -> torch.Tensor:  # pragma: no cover - abstract
        raise InputError(f"{type(self).__name__} does not implement _apply")


class _Adjoint(LinearOperator):
    def __init__(self, op: LinearOperator):
        self.op = op
        self.in_shape, self.out_shape = op.out_shape, op.in_shape
        self.name = f"adjoint of {op.name}"

    def _apply(self, x, adjoint):
        return self.op._apply(x, not adjoint)


def dot_test(op: LinearOperator, seed: int = 0, dtype=torch.float64) -> float:
    """Relative mismatch ``|<Ax, y> - <x, A^T y>| / |<Ax, y>|`` for random ``x, y``.

    Parameters
    ----------
    op : LinearOperator
        The operator to test.
    seed : int, optional
        Seed of the random vectors.
    dtype : torch.dtype, optional
        Precision of the test (default float64).

    Returns
    -------
    float
        The relative mismatch (rounding-level for an exact adjoint).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(op.in_shape, generator=g, dtype=dtype)
    y = torch.rand(op.out_shape, generator=g, dtype=dtype)
    ax = op._apply(x[None], False)[0]
    aty = op._apply(y[None], True)[0]
    lhs = float((ax * y).sum())
    rhs = float((x * aty).sum())
    return abs(lhs - rhs) / max(abs(lhs), 1e-30)


def np_or_torch(result, like):
    """Return ``result`` as numpy when ``like`` is not a tensor.

    Parameters
    ----------
    result : array_like or torch.Tensor
        The data to return.
    like : object
        The caller's input: when it is a torch tensor, ``result`` is returned as it is.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``result`` unchanged for tensor ``like``, else as numpy (detached, on the CPU).

    Examples
    --------
    >>> import torch
    >>> np_or_torch(torch.ones(2), np.zeros(2))
    array([1., 1.], dtype=float32)
    """
    if is_tensor(like):
        return result
    return result.detach().cpu().numpy() if is_tensor(result) else np.asarray(result)
