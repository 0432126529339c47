"""Pure rank math of LoRA factors of different ranks (no Flower, no torch): pad, truncate, stack, SVD, spectra.

Conventions (``docs/algorithms/mixed-ranks.md#conventions``): a client of rank r trains ``A`` (r x d_in) and ``B``
(d_out x r) and its
update is ``dW = (alpha / r) B A``. Factors of different ranks are only ever mixed after that scale is folded
in (``scale_one``), so a client's weight never depends on the rank it happens to train at.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Factors = tuple[np.ndarray, np.ndarray]  # (A: r x d_in, B: d_out x r)


def lora_scale(alpha: float, rank: int) -> float:
    """peft's LoRA scale ``alpha / rank``."""
    if rank < 1:
        raise ValueError(f"a LoRA rank must be >= 1, got {rank}")
    return float(alpha) / rank


def rank_of(a: np.ndarray) -> int:
    """The rank dimension of an ``A`` factor (its rows)."""
    return int(a.shape[0])


def product(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """The LoRA update ``dW = (alpha / r) B A`` (d_out x d_in) in float64."""
    return lora_scale(alpha, rank_of(a)) * (np.asarray(b, np.float64) @ np.asarray(a, np.float64))


def scale_one(a: np.ndarray, b: np.ndarray, alpha: float) -> Factors:
    """Fold the scale into ``A``: factors whose plain product ``B A`` is the update ``dW``."""
    return lora_scale(alpha, rank_of(a)) * np.asarray(a, np.float64), np.asarray(b, np.float64)


def from_scale_one(a: np.ndarray, b: np.ndarray, alpha: float, rank: int | None = None) -> Factors:
    """Inverse of :func:`scale_one` for a client that runs at ``rank`` (default: the factors' own rank)."""
    return np.asarray(a, np.float64) / lora_scale(alpha, rank or rank_of(a)), np.asarray(b, np.float64)


def zero_pad(a: np.ndarray, b: np.ndarray, rank: int) -> Factors:
    """Pad ``A`` with zero rows and ``B`` with zero columns up to ``rank``; the plain product is unchanged."""
    missing = rank - rank_of(a)
    if missing < 0:
        raise ValueError(f"cannot zero-pad rank {rank_of(a)} factors down to rank {rank}")
    return np.pad(a, ((0, missing), (0, 0))), np.pad(b, ((0, 0), (0, missing)))


def truncate(a: np.ndarray, b: np.ndarray, rank: int) -> Factors:
    """The leading ``rank`` components: the first rows of ``A`` and the first columns of ``B``."""
    if not 1 <= rank <= rank_of(a):
        raise ValueError(f"cannot truncate rank {rank_of(a)} factors to rank {rank}")
    return a[:rank], b[:, :rank]


def stack(factors: Sequence[Factors], coefficients: Sequence[float]) -> Factors:
    """FLoRA's stacking: ``A = [c_1 A_1; ...; c_K A_K]``, ``B = [B_1 ... B_K]``, so ``B A = sum_k c_k B_k A_k``.

    With scale-one factors and ``c_k = p_k`` the stack's plain product is exactly ``sum_k p_k dW_k``, at rank
    ``sum_k r_k``.
    """
    if len(factors) != len(coefficients) or not factors:
        raise ValueError(f"stack needs one coefficient per factor pair, got {len(factors)} and {len(coefficients)}")
    a = np.concatenate([c * np.asarray(f[0], np.float64) for f, c in zip(factors, coefficients, strict=True)])
    b = np.concatenate([np.asarray(f[1], np.float64) for f in factors], axis=1)
    return a, b


def weighted_product_sum(factors: Sequence[Factors], coefficients: Sequence[float]) -> np.ndarray:
    """``sum_k c_k B_k A_k`` as one dense matrix, through one stacked matrix product."""
    a, b = stack(factors, coefficients)
    return b @ a


def svd(delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``delta = U diag(S) V^T`` in float64 (singular values in descending order)."""
    return np.linalg.svd(np.asarray(delta, np.float64), full_matrices=False)


def svd_factors(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int) -> Factors:
    """Scale-one factors of the rank-``rank`` truncation: ``B = U_r sqrt(S_r)``, ``A = sqrt(S_r) V_r^T``.

    ``rank`` may exceed the number of singular values (a small matrix); the factors then stop there.
    """
    root = np.sqrt(s[:rank])
    return root[:, None] * vt[:rank], u[:, :rank] * root[None, :]


def tail_energy(s: np.ndarray, rank: int) -> tuple[float, float]:
    """``(sum_{i > rank} s_i^2, sum_i s_i^2)``: the spectral energy beyond ``rank`` and the total."""
    energy = np.square(np.asarray(s, np.float64))
    return float(energy[rank:].sum()), float(energy.sum())


def tail_share(s: np.ndarray, rank: int) -> float:
    """Share of the spectral energy beyond ``rank`` (the discarded share of a rank-``rank`` truncation).

    Its square root is the relative Frobenius error of the best rank-``rank`` approximation (Eckart-Young).
    Zero for a zero matrix.
    """
    tail, total = tail_energy(s, rank)
    return tail / total if total > 0 else 0.0


def product_svd(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD of the plain product ``B A`` without forming it when the rank is small.

    With ``B = Q_B R_B`` and ``A^T = Q_A R_A``, ``B A = Q_B (R_B R_A^T) Q_A^T``, so only an r x r matrix is
    decomposed: O(d r^2) instead of O(d^2 r) plus a d x d SVD. From rank ``min(d_out, d_in)`` on, the dense
    product is cheaper and is decomposed instead.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if rank_of(a) >= min(b.shape[0], a.shape[1]):
        return svd(b @ a)
    q_b, r_b = np.linalg.qr(b)
    q_a, r_a = np.linalg.qr(a.T)
    u, s, vt = np.linalg.svd(r_b @ r_a.T)
    return q_b @ u, s, vt @ q_a.T


def product_norm(a: np.ndarray, b: np.ndarray) -> float:
    """Frobenius norm of the plain product ``B A`` through ``trace((A A^T)(B^T B))``, without forming it."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(max(np.sum((a @ a.T) * (b.T @ b)), 0.0)))


def numerical_rank(s: np.ndarray, tolerance: float = 1e-7) -> int:
    """How many singular values exceed ``tolerance`` times the largest (at least 1)."""
    if s.size == 0 or s[0] <= 0:
        return 1
    return max(1, int(np.sum(s > tolerance * s[0])))


def exact_factors(delta: np.ndarray, tolerance: float = 1e-7) -> Factors:
    """Scale-one factors that reproduce ``delta`` (to ``tolerance``) at its numerical rank."""
    u, s, vt = svd(delta)
    return svd_factors(u, s, vt, numerical_rank(s, tolerance))
