"""Segmentation losses shared by every network (textbook 6.4; nnU-Net's default).

* :func:`soft_dice` -- soft Dice per class, averaged;
* :func:`dice_ce_loss` / :class:`DiceCELoss` -- cross-entropy plus ``1 - soft Dice``;
  ``tests/nn/test_monai_parity.py`` checks them against MONAI's ``DiceCELoss``.

>>> import torch
>>> logits = torch.zeros(1, 2, 4, 4); target = torch.zeros(1, 4, 4, dtype=torch.long)
>>> float(dice_ce_loss(logits, target, include_background=True)) > 0
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.errors import InputError, ShapeError, describe

__all__ = ["DiceCELoss", "dice_ce_loss", "soft_dice", "soft_dice_loss"]


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
