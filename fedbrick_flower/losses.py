"""Loss terms that both halves use (``docs/algorithms/fedbrick.md#client-per-round-stage-i-and-stage-ii``). Pure
torch, no Flower imports.

FedBRICK fits a BRICK to its layer with the same padding-aware MSE on the client (Stage II) and on the server
(layer-wise distillation), so the term lives here rather than in either half.
"""

from __future__ import annotations

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over real tokens and all features, in float32.

    Parameters
    ----------
    pred, target : torch.Tensor
        Hidden states of shape ``(..., T, d)``.
    token_mask : torch.Tensor or None
        ``(..., T)``, bool or 0/1, true for real tokens; None counts every token.

    Returns
    -------
    torch.Tensor
        Scalar loss (differentiable w.r.t. ``pred``); 0 when there is no real token.
        Padded positions contribute neither value nor gradient, even if they hold NaN
        or inf.
    """
    total, count = masked_sse(pred, target, token_mask)
    return total / count.clamp_min(1)


def masked_squared_error(pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """``E ||pred - target||_2^2``: the squared L2 distance of each token's features, averaged over real tokens.

    FedBRICK's Stage-II term (eq. 24) sums over the d features of a token, so ``lambda_d`` weighs it as the
    paper does; :func:`masked_mse` would divide it by d as well (for MiniLM, 384 times weaker).
    """
    total, count = masked_sse(pred, target, token_mask)
    tokens = torch.div(count, pred.shape[-1], rounding_mode="floor")
    return total / tokens.clamp_min(1)


def masked_sse(
    pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 sum of squared errors over real tokens and features, and their count."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    diff = pred.float() - target.float()
    if token_mask is None:
        return diff.pow(2).sum(), torch.tensor(diff.numel(), device=diff.device)
    if token_mask.shape != pred.shape[:-1]:
        raise ValueError(
            f"token_mask shape {tuple(token_mask.shape)} does not match "
            f"hidden states {tuple(pred.shape)} (expected {tuple(pred.shape[:-1])})"
        )
    keep = token_mask.to(device=diff.device, dtype=torch.bool).unsqueeze(-1)
    # Select the difference rather than multiplying by the mask: 0 * NaN is NaN, and
    # the selection also keeps NaN/inf padding out of the backward pass.
    zero = torch.zeros((), dtype=diff.dtype, device=diff.device)
    diff = torch.where(keep, diff, zero)
    # An integer count stays exact beyond float32's 2**24 (128 x 197 x 768 exceeds it).
    count = keep.sum() * pred.shape[-1]
    return diff.pow(2).sum(), count
