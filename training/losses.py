"""Training losses: cross-entropy with label smoothing and class weights, class weights from the
strongly imbalanced class counts of the paper's Table 2, and neutral cross-entropy.

Conventions shared by every loss here (logits ``[B, C]`` float, target ``[B]`` int64 class index):

- label smoothing ``eps``: the hard target becomes ``(1 - eps) * onehot(y) + eps / C``;
- class weights ``w [C]``: sample i is weighted by ``w[y_i]`` and the batch loss is the weighted
  mean ``sum_i w[y_i] l_i / sum_i w[y_i]`` (without weights: the plain mean). With ``eps = 0``
  this equals ``torch.nn.functional.cross_entropy(logits, y, weight=w)``; with ``eps > 0`` it
  differs from torch, which also weights the smoothing mass of every class c by ``w[c]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

WEIGHT_SCHEMES = ("inverse_sqrt", "inverse", "effective")
DEFAULT_NEUTRAL_ALPHA = 0.3
DEFAULT_EFFECTIVE_BETA = 0.999


def _check_common(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float,
    class_weight: torch.Tensor | None,
    logits_name: str = "logits",
) -> None:
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(
            f"argument '{logits_name}': must have shape [B >= 1, C >= 2], got {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"argument '{logits_name}': must be a floating tensor, got {logits.dtype}")
    if target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"argument 'target': must have shape [B] = [{logits.shape[0]}], got {tuple(target.shape)}"
        )
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"argument 'target': must hold integer class indices, got {target.dtype}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
        raise ValueError(
            f"argument 'target': class indices must be in [0, {logits.shape[1]}), got "
            f"[{int(target.min())}, {int(target.max())}]"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"argument 'label_smoothing': must be in [0, 1), got {label_smoothing!r}")
    if class_weight is not None:
        if class_weight.ndim != 1 or class_weight.shape[0] != logits.shape[1]:
            raise ValueError(
                f"argument 'class_weight': must have shape [C] = [{logits.shape[1]}], got "
                f"{tuple(class_weight.shape)}"
            )
        if not bool(torch.isfinite(class_weight).all()) or bool((class_weight < 0).any()):
            raise ValueError("argument 'class_weight': must be finite and >= 0")


def _hard_target(
    target: torch.Tensor, n_classes: int, label_smoothing: float, dtype: torch.dtype
) -> torch.Tensor:
    """``(1 - eps) * onehot(y) + eps / C`` as ``[B, C]``."""
    onehot = F.one_hot(target.long(), n_classes).to(dtype)
    return onehot * (1.0 - label_smoothing) + label_smoothing / n_classes


def _soft_cross_entropy(
    logits: torch.Tensor,
    soft_target: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
) -> torch.Tensor:
    """Weighted mean over the batch of ``-sum_c t_c log softmax(logits)_c``."""
    per_sample = -(soft_target * F.log_softmax(logits, dim=1)).sum(dim=1)
    if class_weight is None:
        return per_sample.mean()
    w = class_weight.to(per_sample)[target.long()]
    total = w.sum()
    if float(total) <= 0:
        raise ValueError("argument 'class_weight': the weights of this batch's classes sum to 0")
    return (w * per_sample).sum() / total


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``logits [B, C]`` against class indices ``target [B]`` (scalar).

    Args:
        label_smoothing: eps in [0, 1) (see the module docstring).
        class_weight: optional ``[C]`` non-negative weights (see the module docstring).

    Raises:
        ValueError: shapes, dtypes, index range, eps or weights out of their rules.
    """
    _check_common(logits, target, label_smoothing, class_weight)
    soft = _hard_target(target, logits.shape[1], label_smoothing, logits.dtype)
    return _soft_cross_entropy(logits, soft, target, class_weight)


def neutral_cross_entropy(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    target: torch.Tensor,
    alpha: float = DEFAULT_NEUTRAL_ALPHA,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Neutral cross-entropy over two augmented views of the same cases — OUR READING.

    The DMFN paper names the loss (from Xu et al., IEEE TIP 2021, where it tempers the
    over-sharpness of entropy minimisation with a consistency target) but gives no formula. For
    supervised training we define, with ``p_k = softmax(logits_k)``:

        t = (1 - alpha) * y_s + alpha * stopgrad((p1 + p2) / 2)
        loss = CE(t, p1) + CE(t, p2)

    where ``y_s`` is the (optionally label-smoothed) one-hot target and ``CE(t, p) =
    -sum_c t_c log p_c``, each averaged over the batch (weighted by ``class_weight[y]`` as in
    :func:`cross_entropy`). No gradient flows through ``t``. With ``alpha = 0`` the loss is
    ``cross_entropy(logits1, y) + cross_entropy(logits2, y)``.

    Args:
        logits1, logits2: ``[B, C]`` logits of the two views (same cases, same order).
        target: ``[B]`` class indices.
        alpha: weight of the neutral (mean-prediction) target, in [0, 1).

    Raises:
        ValueError: ``alpha`` outside [0, 1), shape mismatch between the logits, or any rule of
            :func:`cross_entropy`.
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"argument 'alpha': must be in [0, 1), got {alpha!r}")
    if logits1.shape != logits2.shape:
        raise ValueError(
            "arguments 'logits1', 'logits2': must have the same shape, got "
            f"{tuple(logits1.shape)} and {tuple(logits2.shape)}"
        )
    _check_common(logits1, target, label_smoothing, class_weight, "logits1")
    _check_common(logits2, target, label_smoothing, class_weight, "logits2")
    hard = _hard_target(target, logits1.shape[1], label_smoothing, logits1.dtype)
    with torch.no_grad():
        mean_prob = (F.softmax(logits1, dim=1) + F.softmax(logits2, dim=1)) / 2
    soft = (1.0 - alpha) * hard + alpha * mean_prob
    return _soft_cross_entropy(logits1, soft, target, class_weight) + _soft_cross_entropy(
        logits2, soft, target, class_weight
    )


def class_weights_from_counts(
    counts: Sequence[float] | np.ndarray | torch.Tensor,
    scheme: str = "inverse_sqrt",
    beta: float = DEFAULT_EFFECTIVE_BETA,
) -> torch.Tensor:
    """Per-class loss weights ``[C]`` float32 from training-split class counts, normalised to sum C.

    Schemes: "inverse" ``1 / n_c``; "inverse_sqrt" ``1 / sqrt(n_c)`` (milder, the default for the
    strong imbalance of Table 2: 306 cysts vs 5 of the rarest classes); "effective" the
    effective-number weights of Cui et al. (CVPR 2019) ``(1 - beta) / (1 - beta ** n_c)``.

    A class with count 0 (absent from the training split, so never a training target) gets
    weight 0 and a logged warning; the weights of the present classes sum to C.

    Raises:
        ValueError: counts not a 1-D vector of >= 2 finite values >= 0 with at least one > 0,
            unknown scheme, beta outside [0, 1) for "effective".
    """
    n = np.asarray(
        counts.detach().cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64
    )
    if n.ndim != 1 or n.size < 2:
        raise ValueError(
            f"argument 'counts': must be a vector of >= 2 class counts, got shape {n.shape}"
        )
    if not np.isfinite(n).all() or (n < 0).any() or not (n > 0).any():
        raise ValueError(
            f"argument 'counts': every count must be finite and >= 0, one at least > 0, got {n.tolist()}"
        )
    present = n > 0
    if not present.all():
        log.warning(
            "class_weights_from_counts: classes %s have no training cases; their weight is 0",
            np.flatnonzero(~present).tolist(),
        )
    n = np.where(present, n, 1.0)  # placeholder for absent classes, zeroed below
    if scheme == "inverse":
        w = 1.0 / n
    elif scheme == "inverse_sqrt":
        w = 1.0 / np.sqrt(n)
    elif scheme == "effective":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"argument 'beta': must be in [0, 1), got {beta!r}")
        # beta = 0 gives equal weights; -expm1(n log beta) = 1 - beta**n without cancellation.
        w = np.ones_like(n) if beta == 0.0 else (1.0 - beta) / -np.expm1(n * np.log(beta))
    else:
        raise ValueError(f"argument 'scheme': must be one of {WEIGHT_SCHEMES}, got {scheme!r}")
    w = np.where(present, w, 0.0)
    return torch.as_tensor(w * (n.size / w.sum()), dtype=torch.float32)


def with_auxiliary(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    aux_logits: Sequence[torch.Tensor],
    target: torch.Tensor,
    weight: float,
) -> torch.Tensor:
    """``loss_fn(logits, target) + weight * sum_k loss_fn(aux_logits[k], target)`` (scalar).

    Auxiliary unimodal heads (e.g. the CT-only and tabular-only logits of a fusion model, see
    :meth:`dmfn.training.models.fusion.DMFN.forward_with_aux`), each trained on the same target
    with the same loss as the fused logits: a standard remedy for modality imbalance, where the
    stronger modality dominates joint training and the weaker branch learns little. ``weight`` is
    per auxiliary head; ``weight = 0`` gives exactly ``loss_fn(logits, target)``.

    Raises:
        ValueError: ``weight`` not finite and >= 0, ``weight > 0`` without auxiliary logits, or an
            auxiliary logits tensor of another shape than ``logits``.
    """
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"argument 'weight': must be finite and >= 0, got {weight!r}")
    if weight > 0 and len(aux_logits) == 0:
        raise ValueError("argument 'aux_logits': weight > 0 needs at least one auxiliary head")
    for k, aux in enumerate(aux_logits):
        if aux.shape != logits.shape:
            raise ValueError(
                f"argument 'aux_logits': entry {k} must have the shape of 'logits' "
                f"{tuple(logits.shape)}, got {tuple(aux.shape)}"
            )
    loss = loss_fn(logits, target)
    if weight == 0:
        return loss
    aux_total = sum(loss_fn(aux, target) for aux in aux_logits)
    return loss + weight * aux_total
