"""Weight alignment of Co-LoRA's frozen A and B across models (FedMosaic;
``docs/algorithms/fedmosaic.md#alignment-of-the-frozen-a-and-b``). Torch only.

Co-LoRA's P only means the same transformation in two models if their A project matching inputs to matching
rank-space coordinates and their B carry rank-space coordinates to matching outputs. Done once before round 1:

- the pivot (the smallest model) keeps seeded orthonormal A and B;
- a larger model's A is trained so that ``x_big A_bigᵀ ≈ x_pivot A_pivotᵀ`` on public inputs, plus 0.5 × the mean
  squared off-diagonal cosine of A's rows, then snapped to the nearest row-orthonormal matrix (``U Vᵀ``);
- its B is the pivot's B carried into its output space by a ridge CCA map between the two models' outputs.

Inputs here are activation matrices (one row per public example); which activations are taken is the caller's
choice (FedMosaic here: sequence-level mean-pooled activations, since tokenizers differ across families).
"""

from __future__ import annotations

import torch

Shape = tuple[int, ...]


def orthonormal_rows(shape: Shape, seed: int) -> torch.Tensor:
    """A seeded ``(r, d)`` matrix with orthonormal rows (``r <= d``): the V factor of a Gaussian's SVD."""
    rows, cols = shape
    if rows > cols:
        raise ValueError(f"orthonormal rows need rank <= width, got shape {shape}")
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    return nearest_row_orthonormal(gaussian).float()


def orthonormal_columns(shape: Shape, seed: int) -> torch.Tensor:
    """A seeded ``(d, r)`` matrix with orthonormal columns."""
    return orthonormal_rows((shape[1], shape[0]), seed).T.contiguous()


def nearest_row_orthonormal(matrix: torch.Tensor) -> torch.Tensor:
    """The row-orthonormal matrix closest to ``matrix`` in Frobenius norm: ``U Vᵀ`` of its thin SVD."""
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u @ vh


def orthogonality_penalty(matrix: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine among the rows of ``matrix`` (0 for orthogonal rows)."""
    rows = matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cosine = rows @ rows.T
    off = cosine - torch.diag(torch.diag(cosine))
    count = max(matrix.shape[0] * (matrix.shape[0] - 1), 1)
    return (off**2).sum() / count


def projection_error(inputs: torch.Tensor, a: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared difference between ``inputs Aᵀ`` and the pivot's rank-space projection ``target``."""
    return float(((inputs @ a.T - target) ** 2).mean())


def align_projection(
    inputs: torch.Tensor,
    target: torch.Tensor,
    start: torch.Tensor,
    *,
    steps: int = 200,
    lr: float = 1e-2,
    ortho_weight: float = 0.5,
) -> torch.Tensor:
    """Train a larger model's A so its projection of ``inputs`` matches ``target``, then snap it orthonormal.

    Parameters
    ----------
    inputs : torch.Tensor
        ``(n, d_big)`` inputs of the larger model's target module.
    target : torch.Tensor
        ``(n, r)`` the pivot's projections ``x_pivot A_pivotᵀ`` of the same examples.
    start : torch.Tensor
        ``(r, d_big)`` the starting A (seeded orthonormal).
    steps, lr, ortho_weight
        Adam steps, learning rate, and the weight of :func:`orthogonality_penalty` (FedMosaic: 0.5).

    Returns
    -------
    torch.Tensor
        ``(r, d_big)`` with orthonormal rows.
    """
    inputs, target = inputs.double(), target.double()
    a = start.detach().clone().double().requires_grad_(True)
    optimizer = torch.optim.Adam([a], lr=lr)
    for _ in range(steps):
        loss = ((inputs @ a.T - target) ** 2).mean() + ortho_weight * orthogonality_penalty(a)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return nearest_row_orthonormal(a.detach()).float()


def cca_map(pivot_outputs: torch.Tensor, big_outputs: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """The ridge CCA map T (``d_big × d_pivot``) that carries the pivot's output space into the larger model's.

    With centred outputs Y1 (pivot) and Y3 (larger), ``S11 = cov(Y1) + γI``, ``S33 = cov(Y3) + γI``,
    ``S31 = cov(Y3, Y1)``, ``M = S33^{-1/2} S31 S11^{-1/2} = U Σ Vᵀ`` and ``T = S33^{1/2} U Vᵀ S11^{-1/2}``.
    γ is scaled by each covariance's mean variance, so it regularises models of any activation scale alike.
    """
    y1 = pivot_outputs.double() - pivot_outputs.double().mean(dim=0)
    y3 = big_outputs.double() - big_outputs.double().mean(dim=0)
    n = max(y1.shape[0] - 1, 1)
    s11, s33, s31 = y1.T @ y1 / n, y3.T @ y3 / n, y3.T @ y1 / n
    s11 = s11 + ridge * (torch.trace(s11) / s11.shape[0] + 1e-12) * torch.eye(s11.shape[0], dtype=s11.dtype)
    s33 = s33 + ridge * (torch.trace(s33) / s33.shape[0] + 1e-12) * torch.eye(s33.shape[0], dtype=s33.dtype)
    s11_inv_half, s33_inv_half, s33_half = _power(s11, -0.5), _power(s33, -0.5), _power(s33, 0.5)
    u, _, vh = torch.linalg.svd(s33_inv_half @ s31 @ s11_inv_half, full_matrices=False)
    return (s33_half @ u @ vh @ s11_inv_half).float()


def carry_b(pivot_b: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """The larger model's B: ``T B_pivot``, snapped to orthonormal columns (Co-LoRA's B is orthonormal here)."""
    return nearest_row_orthonormal((transform @ pivot_b).T.double()).T.float().contiguous()


def _power(matrix: torch.Tensor, exponent: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(1e-12).pow(exponent)) @ vectors.T
