"""Segmentation losses shared by every network (textbook 6.4; nnU-Net's default).

* :func:`soft_dice` -- soft Dice per class, averaged;
* :func:`dice_ce_loss` / :class:`DiceCELoss` -- cross-entropy plus ``1 - soft Dice``;
  ``tests/nn/test_monai_parity.py`` checks them against MONAI's ``DiceCELoss``;
* :func:`partial_cross_entropy` -- cross-entropy over the annotated pixels only (scribbles).

Field losses of learned 2-D/3-D registration (SC-DREG), on batches of displacement fields
``(N, d, [Z,] Y, X)`` in mm (component 0 = x): :func:`laplacian_loss` (smoothness),
:func:`symmetry_loss` (left-right mirror symmetry), :func:`consistency_loss` (two fields
agree) and :func:`coefficient_prior` (statistical-model coefficients stay likely).

>>> import torch
>>> logits = torch.zeros(1, 2, 4, 4); target = torch.zeros(1, 4, 4, dtype=torch.long)
>>> float(dice_ce_loss(logits, target, include_background=True)) > 0
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.arrays import check_spacing
from ..core.errors import InputError, ShapeError, describe

__all__ = ["DiceCELoss", "coefficient_prior", "consistency_loss", "dice_ce_loss", "laplacian_loss", "partial_cross_entropy", "soft_dice",
           "soft_dice_loss", "symmetry_loss"]


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, include_background: bool = False,
              batch_dice: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice per class ``(2 sum(p t) + s) / (sum p + sum t + s)``, averaged.

    Averaged over the classes (and the samples unless ``batch_dice``, which pools the batch
    as one volume).

    Parameters
    ----------
    probs : torch.Tensor
        Class probabilities ``(n, K, *S)``; channel 0 is background.
    onehot : torch.Tensor
        One-hot target ``(n, K, *S)``.
    include_background : bool, optional
        Count channel 0 (ignored when ``K == 1``).
    batch_dice : bool, optional
        Pool the batch as one volume instead of averaging per sample.
    smooth : float, optional
        The smoothing term ``s`` of numerator and denominator.

    Returns
    -------
    torch.Tensor
        Scalar mean Dice, in ``[0, 1]``.

    Examples
    --------
    >>> import torch
    >>> fg = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> onehot = torch.stack([1 - fg, fg])[None]                 # (1, 2, 2, 2)
    >>> round(float(soft_dice(onehot, onehot)), 4)
    1.0
    >>> round(float(soft_dice(torch.full_like(onehot, 0.5), onehot)), 4)
    0.5
    """
    dims = tuple(range(2, probs.ndim))
    if batch_dice:
        dims = (0, *dims)
    if not include_background and probs.shape[1] > 1:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return ((2.0 * inter + smooth) / (denom + smooth)).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, include_background: bool = False,
                 dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = False,
                 smooth: float = 1e-5, class_weights=None, return_terms: bool = False):
    """Dice + cross-entropy loss of logits against integer class indices -- the nnU-Net loss.

    ``loss = ce_weight * CE(logits, target) + dice_weight * (1 - soft_dice(softmax(logits),
    onehot(target)))``.

    Parameters
    ----------
    logits : torch.Tensor
        ``(n, K, *S)`` raw network outputs.
    target : torch.Tensor
        Integer class indices ``(n, *S)`` (values ``0 .. K-1``; also ``(n, 1, *S)``).
    include_background : bool, optional
        Count class 0 in the Dice term.
    dice_weight : float, optional
        Weight of the Dice term.
    ce_weight : float, optional
        Weight of the cross-entropy term.
    batch_dice : bool, optional
        Dice over the batch pooled as one volume (see :func:`soft_dice`).
    smooth : float, optional
        Smoothing term of the Dice.
    class_weights : sequence of float or torch.Tensor or None, optional
        Optional CE weights per class (``K`` values).
    return_terms : bool, optional
        Also return the two terms.

    Returns
    -------
    loss : torch.Tensor
        Scalar loss (differentiable).
    ce : float
        The cross-entropy term (detached); only with ``return_terms=True``.
    dice : float
        The soft Dice (detached); only with ``return_terms=True``.

    Raises
    ------
    ShapeError
        When ``logits`` is not ``(n, K, *S)`` or ``target`` does not match it.
    InputError
        When ``target`` holds indices outside ``0 .. K-1``.

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(1, 2, 4, 4); target = torch.zeros(1, 4, 4, dtype=torch.long)
    >>> float(dice_ce_loss(logits, target, include_background=True)) > 0
    True
    """
    if not torch.is_tensor(logits) or logits.ndim < 3:
        raise ShapeError(f"logits: got {describe(logits)}; expected a tensor (n, classes, *spatial)")
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ShapeError(f"target: got shape {tuple(target.shape)}; expected {(logits.shape[0], *logits.shape[2:])} "
                         "(class indices for logits of shape " f"{tuple(logits.shape)})")
    target = target.long()
    k = logits.shape[1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
        raise InputError(f"target: class indices {int(target.min())}..{int(target.max())}; expected 0..{k - 1}")
    w = None if class_weights is None else torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    ce = F.cross_entropy(logits, target, weight=w)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, k).movedim(-1, 1).to(probs.dtype)
    dice = soft_dice(probs, onehot, include_background=include_background, batch_dice=batch_dice, smooth=smooth)
    loss = ce_weight * ce + dice_weight * (1.0 - dice)
    if return_terms:
        return loss, float(ce.detach()), float(dice.detach())
    return loss


def partial_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1,
                          class_weights=None) -> torch.Tensor:
    """Cross-entropy over the annotated pixels only (weak supervision by scribbles or clicks).

    ``mean over {i : target_i != ignore_index} of -log softmax(logits_i)[target_i]``; pixels
    whose target is ``ignore_index`` carry no loss and no gradient.  With no annotated pixel
    the loss is 0 (still differentiable).

    Class 0 is the background in every biomip label image, so the default ``ignore_index``
    is -1; scribble maps in the ilastik convention (0 = not annotated, ``c`` = class
    ``c - 1``) become targets by ``scribbles - 1``.

    Parameters
    ----------
    logits : torch.Tensor
        ``(n, K, *S)`` raw network outputs.
    target : torch.Tensor
        Integer class indices ``(n, *S)`` (also ``(n, 1, *S)``): ``0 .. K-1`` or
        ``ignore_index``.
    ignore_index : int, optional
        The "not annotated" value.
    class_weights : sequence of float or torch.Tensor or None, optional
        Weight per class (``K`` values): the weighted mean over the annotated pixels
        (PyTorch's ``cross_entropy(weight=...)`` rule).

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Raises
    ------
    ShapeError
        When ``logits`` is not ``(n, K, *S)`` or ``target`` does not match it.
    InputError
        When ``target`` holds values other than ``0 .. K-1`` and ``ignore_index``, or
        ``class_weights`` does not have ``K`` values.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[[0.0, 2.0]], [[0.0, 0.0]]])[None]        # (1, 2, 1, 2)
    >>> target = torch.tensor([[[-1, 0]]])                               # left pixel not annotated
    >>> round(float(partial_cross_entropy(logits, target)), 4)           # -log(1 / (1 + e^-2))
    0.1269
    """
    if not torch.is_tensor(logits) or logits.ndim < 3:
        raise ShapeError(f"logits: got {describe(logits)}; expected a tensor (n, classes, *spatial)")
    if not torch.is_tensor(target):
        raise InputError(f"target: got {describe(target)}; expected an integer tensor (n, *spatial)")
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ShapeError(f"target: got shape {tuple(target.shape)}; expected {(logits.shape[0], *logits.shape[2:])} "
                         f"(class indices for logits of shape {tuple(logits.shape)})")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise InputError(f"target: got dtype {target.dtype}; expected integer class indices")
    k = logits.shape[1]
    ignore_index = int(ignore_index)
    target = target.long()
    valid = target != ignore_index
    if bool(valid.any()):
        tv = target[valid]
        if int(tv.min()) < 0 or int(tv.max()) >= k:
            raise InputError(f"target: class indices {int(tv.min())}..{int(tv.max())} besides ignore_index="
                             f"{ignore_index}; expected 0..{k - 1}")
    w = None
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device).reshape(-1)
        if w.numel() != k:
            raise InputError(f"class_weights: got {w.numel()} values; expected {k} (one per class)")
    if not bool(valid.any()):
        return logits.sum() * 0.0
    safe = torch.where(valid, target, torch.zeros_like(target))
    ce = F.cross_entropy(logits, safe, weight=w, reduction="none")
    vf = valid.to(logits.dtype)
    if w is not None:
        wt = w[safe] * vf
        return (ce * vf).sum() / wt.sum().clamp_min(torch.finfo(logits.dtype).tiny)
    return (ce * vf).sum() / vf.sum()


class DiceCELoss(torch.nn.Module):
    """:func:`dice_ce_loss` as a module (``loss_fn(logits, target)``).

    Parameters
    ----------
    include_background : bool, optional
        Count class 0 in the Dice term.
    dice_weight : float, optional
        Weight of the Dice term.
    ce_weight : float, optional
        Weight of the cross-entropy term.
    batch_dice : bool, optional
        Dice over the batch pooled as one volume.
    smooth : float, optional
        Smoothing term of the Dice.
    class_weights : sequence of float or torch.Tensor or None, optional
        Optional CE weights per class.

    Examples
    --------
    >>> import torch
    >>> loss_fn = DiceCELoss()
    >>> float(loss_fn(torch.zeros(1, 2, 4, 4), torch.ones(1, 4, 4, dtype=torch.long))) > 0
    True
    """

    def __init__(self, include_background: bool = False, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 batch_dice: bool = False, smooth: float = 1e-5, class_weights=None):
        super().__init__()
        self.kw = dict(include_background=include_background, dice_weight=dice_weight, ce_weight=ce_weight,
                       batch_dice=batch_dice, smooth=smooth, class_weights=class_weights)

    def forward(self, logits, target):
        """The loss of ``logits`` against ``target`` (see :func:`dice_ce_loss`).

        Parameters
        ----------
        logits : torch.Tensor
            ``(n, K, *S)`` raw network outputs.
        target : torch.Tensor
            Class indices ``(n, *S)`` or ``(n, 1, *S)``.

        Returns
        -------
        torch.Tensor
            Scalar loss.
        """
        return dice_ce_loss(logits, target, **self.kw)


def soft_dice_loss(warped: torch.Tensor, target: torch.Tensor, d: int) -> torch.Tensor:
    """1 - mean soft Dice over the foreground channels of one-hot volumes ``(n, K, *S)``.

    Labels absent from both images are skipped.

    Parameters
    ----------
    warped : torch.Tensor
        Warped one-hot (or soft) labels ``(n, K, *S)``.
    target : torch.Tensor
        Target one-hot labels ``(n, K, *S)``.
    d : int
        Number of spatial axes (2 or 3).

    Returns
    -------
    torch.Tensor
        Scalar loss; 0 (keeping the graph) when no label is present.

    Examples
    --------
    >>> import torch
    >>> t = torch.zeros(1, 2, 4, 4); t[:, 1, :2] = 1
    >>> float(soft_dice_loss(t, t, 2))
    0.0
    """
    dims = tuple(range(2, 2 + d))
    inter = (warped * target).sum(dims)
    denom = warped.sum(dims) + target.sum(dims)
    present = denom > 1e-6
    dice = 2 * inter / denom.clamp_min(1e-6)
    if not bool(present.any()):
        return warped.sum() * 0.0
    return 1.0 - dice[present].mean()


# ------------------------------------------------------------------------ field losses
def _field_batch(u, name: str) -> torch.Tensor:
    """A batch of fields ``(N, d, *S)`` with ``d == len(S)`` in {2, 3}, as a float tensor."""
    if not torch.is_tensor(u):
        raise InputError(f"{name}: got {describe(u)}; expected a torch tensor (N, 3, Z, Y, X) or (N, 2, Y, X)")
    if u.ndim not in (4, 5) or u.shape[1] != u.ndim - 2:
        raise ShapeError(f"{name}: got shape {tuple(u.shape)}; expected (N, 3, Z, Y, X) or (N, 2, Y, X) "
                         "(component axis second, component 0 = x)")
    return u if u.is_floating_point() else u.float()


def laplacian_loss(u: torch.Tensor, spacing=None) -> torch.Tensor:
    """Smoothness: mean squared discrete Laplacian of each component of a field batch.

    ``lap u_c = sum_k (u_c[i+1] - 2 u_c[i] + u_c[i-1]) / h_k**2`` along every spatial axis
    ``k`` (second-order central differences, mm^-1 for fields in mm); the mean of
    ``(lap u_c)**2`` over the batch, the components and the **interior voxels** (one voxel
    off every face: the border, where the stencil would need padding, is left out).  Zero
    for any affine field; exact for quadratic ones.

    Parameters
    ----------
    u : torch.Tensor
        Fields ``(N, 3, Z, Y, X)`` (or ``(N, 2, Y, X)``) in mm, at least 3 voxels per axis.
    spacing : sequence of float or None, optional
        Voxel size in mm, world order ``(x, y[, z])`` (``None``: 1 mm).

    Returns
    -------
    torch.Tensor
        Scalar loss (differentiable).

    Raises
    ------
    InputError
        ``u`` not a tensor, or a non-numeric ``spacing``.
    GeometryError
        ``spacing`` of the wrong length or not positive.
    ShapeError
        ``u`` not a field batch, or fewer than 3 voxels along an axis.

    Examples
    --------
    >>> import torch
    >>> z, y, x = torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij")
    >>> u = torch.stack([x * x, 2 * y, z])[None]           # lap u_x = 2, others 0
    >>> round(float(laplacian_loss(u)), 4)                  # (2**2 + 0 + 0) / 3 components
    1.3333
    """
    u = _field_batch(u, "u")
    d = u.ndim - 2
    if min(u.shape[2:]) < 3:
        raise ShapeError(f"u: got spatial shape {tuple(u.shape[2:])}; expected at least 3 voxels per axis")
    sp = tuple(float(s) for s in check_spacing(spacing, d))
    inner = (slice(None), slice(None)) + (slice(1, -1),) * d
    lap = None
    for k in range(d):                      # world axis k (x, y, z) = tensor axis ndim - 1 - k
        ax = u.ndim - 1 - k
        n = u.shape[ax]
        second = (u.narrow(ax, 2, n - 2) - 2 * u.narrow(ax, 1, n - 2) + u.narrow(ax, 0, n - 2)) / sp[k] ** 2
        idx = list(inner)
        idx[ax] = slice(None)
        term = second[tuple(idx)]
        lap = term if lap is None else lap + term
    return (lap ** 2).mean()


def symmetry_loss(u: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Mirror symmetry: mean ``|u - mirror(u)|`` of a field batch.

    ``mirror(u)(p) = M u(M p)`` with ``M`` the reflection about the grid's mid-plane normal
    to ``axis``: the array flipped along ``axis`` and the component along it negated
    (component 0 for the x axis, -1; 1 for y, -2; 2 for z, -3).  For a head with
    axes ``(z, y, x) = (inferior -> superior, anterior -> posterior, right -> left)`` (LPS) the
    default ``axis=-1`` is left-right symmetry about the mid-sagittal plane.

    Parameters
    ----------
    u : torch.Tensor
        Fields ``(N, 3, Z, Y, X)`` (or ``(N, 2, Y, X)``) in mm, component 0 = x.
    axis : int, optional
        The spatial axis mirrored: ``-1`` (x), ``-2`` (y), ``-3`` (z), or the same axis as a
        non-negative tensor axis (``2 .. ndim - 1``).

    Returns
    -------
    torch.Tensor
        Scalar loss in mm (differentiable).

    Raises
    ------
    InputError
        ``u`` not a tensor, or ``axis`` not a spatial axis.
    ShapeError
        ``u`` not a field batch.

    Examples
    --------
    >>> import torch
    >>> x = torch.linspace(-1, 1, 4)
    >>> u = torch.zeros(1, 3, 2, 2, 4); u[:, 0] = x; u[:, 1] = x ** 2     # odd u_x, even u_y
    >>> float(symmetry_loss(u))
    0.0
    >>> u[:, 0] += 0.5                          # a shift along x: |u_x - mirror(u)_x| = 1 everywhere
    >>> round(float(symmetry_loss(u)), 4)       # averaged over the 3 components
    0.3333
    """
    u = _field_batch(u, "u")
    d = u.ndim - 2
    if isinstance(axis, bool) or not isinstance(axis, int) or not (-d <= axis < 0 or 2 <= axis < u.ndim):
        raise InputError(f"axis: got {axis!r}; expected a spatial axis, -1..-{d} or 2..{u.ndim - 1}")
    ax = axis % u.ndim
    comp = u.ndim - 1 - ax
    sign = torch.ones(d, dtype=u.dtype, device=u.device)
    sign[comp] = -1.0
    mirrored = u.flip(ax) * sign.reshape(1, d, *([1] * d))
    return (u - mirrored).abs().mean()


def consistency_loss(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two field batches (e.g. the coarse and the refined field).

    Parameters
    ----------
    u : torch.Tensor
        Fields ``(N, d, *S)`` in mm.
    v : torch.Tensor
        Fields of the same shape.

    Returns
    -------
    torch.Tensor
        Scalar ``mean((u - v)**2)`` in mm^2 (differentiable).

    Raises
    ------
    InputError
        An argument is not a tensor.
    ShapeError
        The shapes differ.

    Examples
    --------
    >>> import torch
    >>> float(consistency_loss(torch.zeros(1, 3, 2, 2, 2), torch.full((1, 3, 2, 2, 2), 2.0)))
    4.0
    """
    for name, t in (("u", u), ("v", v)):
        if not torch.is_tensor(t):
            raise InputError(f"{name}: got {describe(t)}; expected a torch tensor (N, d, *spatial)")
    if u.shape != v.shape:
        raise ShapeError(f"v: got shape {tuple(v.shape)}; expected the shape of u {tuple(u.shape)}")
    return ((u - v) ** 2).mean()


def coefficient_prior(c: torch.Tensor) -> torch.Tensor:
    """Gaussian prior on statistical-model coefficients: ``mean(c**2)``.

    For coefficients in standard-deviation units (``u = mean + sum_k c_k sqrt(var_k)
    phi_k``) this is the negative log-likelihood of the model's Gaussian up to a constant
    and a factor, averaged over the batch and the modes.

    Parameters
    ----------
    c : torch.Tensor
        Coefficients ``(N, k)`` (any shape is accepted).

    Returns
    -------
    torch.Tensor
        Scalar loss (differentiable).

    Raises
    ------
    InputError
        ``c`` not a non-empty tensor.

    Examples
    --------
    >>> import torch
    >>> float(coefficient_prior(torch.tensor([[1.0, -3.0]])))
    5.0
    """
    if not torch.is_tensor(c) or c.numel() == 0:
        raise InputError(f"c: got {describe(c)}; expected a non-empty torch tensor (N, k)")
    c = c if c.is_floating_point() else c.float()
    return (c ** 2).mean()
