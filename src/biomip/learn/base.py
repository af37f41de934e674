"""Checks and conventions shared by the feature-matrix methods of :mod:`biomip.learn`:
an ``(n, f)`` matrix (numpy or torch; torch computes where the tensor lives), seeds,
option names, sample weights and the block size of row-wise distance passes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.arrays import as_tensor, is_tensor
from ..core.errors import InputError, ShapeError, describe
from ..core.image import Image

PARALLEL_MIN = 1 << 21     # below this many elements per pass, CPU work runs on one torch thread

BLOCK = 1 << 22            # elements of one block of the (rows x centres) distance matrix


def check_seed(seed) -> int:
    """``seed`` as a Python ``int``.

    Parameters
    ----------
    seed : int
        An integer seed (``bool`` is refused).

    Returns
    -------
    int
        The seed.

    Raises
    ------
    InputError
        When ``seed`` is not an integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed: got {seed!r}; expected an integer")
    return int(seed)


def check_choice(value, name: str, options) -> str:
    """``value`` checked against a list of option names.

    Parameters
    ----------
    value : str
        The option given.
    name : str
        The argument's name, for the error message.
    options : sequence of str
        The allowed values.

    Returns
    -------
    str
        ``value``.

    Raises
    ------
    InputError
        When ``value`` is not one of ``options``.
    """
    if not isinstance(value, str) or value not in options:
        raise InputError(f"{name}: got {value!r}; expected one of {', '.join(map(repr, options))}")
    return value


def feature_matrix(x, name: str = "x", device=None, dtype=torch.float32) -> torch.Tensor:
    """``x`` as a finite (n, f) floating tensor (a 1-D array is one feature per sample).

    Parameters
    ----------
    x : array_like or torch.Tensor
        The feature matrix ``(n_samples, n_features)``, or ``(n_samples,)``.
    name : str, optional
        The argument's name, for error messages.
    device : str or torch.device or None, optional
        Where the tensor is put (``None``: where ``x`` lives; numpy:
        ``biomip.config.device``).
    dtype : torch.dtype, optional
        Floating dtype of the result.

    Returns
    -------
    torch.Tensor
        The ``(n, f)`` matrix.

    Raises
    ------
    InputError
        For an :class:`Image`, complex or boolean values, or NaN / Inf.
    ShapeError
        When ``x`` is not a non-empty 1-D or 2-D array.
    """
    if isinstance(x, Image):
        raise InputError(f"{name}: got an Image; expected an (n_samples, n_features) array "
                         "(use kmeans_segment / gmm_segment / spectral_segment for images)")
    try:
        t = as_tensor(x, device=device, name=name)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{name}: got {describe(x)}; expected an (n_samples, n_features) array") from exc
    if t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"{name}: got dtype {t.dtype}; expected real numbers")
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ShapeError(f"{name}: got {describe(x)}; expected a non-empty (n_samples, n_features) array")
    t = t.to(dtype)
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise InputError(f"{name}: contains {n_bad} NaN/Inf value(s) of {t.numel()}; expected finite features")
    return t


def check_k(k, n: int, what: str = "samples") -> int:
    """The number of clusters ``k``, checked against the number of items ``n``.

    Parameters
    ----------
    k : int
        Number of clusters, ``1 <= k <= n``.
    n : int
        Number of samples (or nodes).
    what : str, optional
        What ``n`` counts, for the error message.

    Returns
    -------
    int
        ``k``.

    Raises
    ------
    InputError
        When ``k`` is not an integer in ``[1, n]``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k: got {k!r}; expected an integer >= 1 (the number of clusters)")
    if k > n:
        raise InputError(f"k: got {k} clusters for {n} {what}; expected k <= the number of {what}")
    return int(k)


def sample_weights(sample_weight, n: int, ref: torch.Tensor):
    """Checked per-sample weights as a flat tensor like ``ref``, or ``None``.

    Parameters
    ----------
    sample_weight : array_like or None
        ``n`` finite, non-negative weights with a positive sum, or ``None``.
    n : int
        Number of samples.
    ref : torch.Tensor
        Tensor whose device and dtype the weights take.

    Returns
    -------
    torch.Tensor or None
        The ``(n,)`` weights, or ``None``.

    Raises
    ------
    ShapeError
        When the number of weights is not ``n``.
    InputError
        When the weights are not finite, negative, or sum to 0.
    """
    if sample_weight is None:
        return None
    w = as_tensor(sample_weight, device=ref.device, name="sample_weight").to(ref.dtype).reshape(-1)
    if w.numel() != n:
        raise ShapeError(f"sample_weight: got {w.numel()} values for {n} samples; expected one weight per sample")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise InputError("sample_weight: expected finite, non-negative weights with a positive sum")
    return w


def wide_result(ref) -> bool:
    """Whether results computed for the input ``ref`` should be float64: not for float32 /
    float16 / bfloat16 input (arrays or tensors), yes for float64, integers and lists."""
    if is_tensor(ref):
        return ref.dtype not in (torch.float32, torch.float16, torch.bfloat16)
    return np.asarray(ref).dtype not in (np.float32, np.float16)


def like_features(result, ref):
    """numpy for numpy input, torch (on the input's device) for torch input.

    Parameters
    ----------
    result : torch.Tensor
        The computed result.
    ref : array_like or torch.Tensor
        The input whose kind the result takes.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``result``, converted to numpy unless ``ref`` is a tensor.
    """
    if is_tensor(ref):
        return result
    return result.detach().cpu().numpy()


def block_rows(n: int, width: int) -> int:
    """Rows per block so that a (rows, width) float32 block stays near 16 MB.

    Parameters
    ----------
    n : int
        Number of rows in all.
    width : int
        Number of columns of a block.

    Returns
    -------
    int
        Rows per block, at least 1024 (at most ``n`` when ``n >= 1024``).
    """
    return max(1024, min(n, BLOCK // max(int(width), 1)))


def label_dtype(k: int):
    """The smallest torch integer dtype for labels ``0..k-1``: int16 below 32768, else int32.

    Parameters
    ----------
    k : int
        Number of labels.

    Returns
    -------
    torch.dtype
        ``torch.int16`` or ``torch.int32``.
    """
    return torch.int16 if k < 32768 else torch.int32
