"""Similarity-weighted mixing, the math FedBip and FedMosaic share (pure NumPy: no Flower, no torch).

Both algorithms turn the pairwise cosine similarity of client vectors (FedBip: task vectors, FedMosaic: gradient
descriptors) into a row-stochastic weight matrix ``P`` and give client ``i`` the mixture ``sum_k P[i, k] x_k``:

- FedBip (Yang et al., AAAI-26, https://arxiv.org/abs/2509.12697, ``docs/algorithms/fedbip.md#server-per-round``):
  ``c_ik = cos(tau_i, tau_k)``, ``p_ik = max(c_ik, 0) / sum_j max(c_ij, 0)`` with self included (``c_ii = 1``);
  FedBip-L repeats it per layer.
- FedMosaic's RELA: ``p_ik = softmax_k(c_ik / T)`` over the other clients (self excluded), ``T = 0.5``.

Every function takes an optional boolean ``mask`` (``mask[i, k]``: may client ``i`` weigh client ``k`` at all).
Masks restrict everything to groups (same architecture, same task: :func:`group_mask`) and to clients that share
at least one compared block (partial-depth models: :func:`shared_mask`). Weights of masked pairs are exactly 0.
A row whose admissible weights sum to 0 stays all-zero: the caller keeps that client's state as it is.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

_EPS = 1e-12


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of ``vectors``.

    Parameters
    ----------
    vectors : np.ndarray
        Shape ``(n, d)``.

    Returns
    -------
    np.ndarray
        ``(n, n)`` in ``[-1, 1]`` with a diagonal of 1. A zero vector has no direction: its cosine with every
        other vector is 0 (it attracts and repels nobody), and with itself 1 by definition.
    """
    return blockwise_cosine([np.asarray(vectors)])


def blockwise_cosine(blocks: Sequence[np.ndarray], holders: np.ndarray | None = None) -> np.ndarray:
    """Cosine of the concatenated blocks, each pair compared on the blocks both of them hold.

    With clients of different depth, block ``b`` is layer ``b`` and client ``i`` holds only some layers. The
    similarity of ``i`` and ``k`` is the cosine of their vectors restricted to the layers they share:
    ``sum_b <x_ib, x_kb> / sqrt(sum_{b shared} |x_ib|^2 * sum_{b shared} |x_kb|^2)``.

    Parameters
    ----------
    blocks : Sequence[np.ndarray]
        One ``(n, d_b)`` array per block; rows of clients that do not hold the block are ignored.
    holders : np.ndarray, optional
        ``(n, len(blocks))`` booleans, ``holders[i, b]``: client ``i`` holds block ``b``. Default: all hold all.

    Returns
    -------
    np.ndarray
        ``(n, n)`` cosines with a diagonal of 1; 0 for pairs that share no block or where either restricted
        vector is zero (use :func:`shared_mask` to tell "no shared block" apart from "orthogonal").
    """
    held = _holders(blocks, holders)
    return cosine_from_grams(block_grams(blocks, held), held)


def block_grams(blocks: Sequence[np.ndarray], holders: np.ndarray | None = None) -> list[np.ndarray]:
    """The ``(n, n)`` Gram matrix of each block, zero in the rows and columns of its non-holders.

    The expensive part of every cosine here; compute it once and pass it to :func:`cosine_from_grams` for the
    whole-model and for each per-layer similarity (FedBip-L needs both).
    """
    held = _holders(blocks, holders)
    grams = []
    for b, block in enumerate(blocks):
        rows = np.asarray(block, dtype=np.float32).reshape(block.shape[0], -1)
        gram = (rows @ rows.T).astype(np.float64)  # float32 BLAS: cosines need no more, and it is 2x faster
        grams.append(gram * np.outer(held[:, b], held[:, b]))
    return grams


def cosine_from_grams(grams: Sequence[np.ndarray], holders: np.ndarray) -> np.ndarray:
    """Shared-block cosines (see :func:`blockwise_cosine`) from the per-block Gram matrices."""
    held = np.asarray(holders, dtype=bool)
    dots = np.sum(grams, axis=0)
    squares = np.stack([np.diag(gram) for gram in grams], axis=1)  # (n, blocks): |x_ib|^2
    # restricted[i, k]: |x_i|^2 over the blocks that k holds (x_i is already zero where i holds nothing).
    restricted = squares @ held.T.astype(np.float64)
    denominator = np.sqrt(restricted * restricted.T)
    cosine = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > _EPS)
    np.fill_diagonal(cosine, 1.0)
    return np.clip(cosine, -1.0, 1.0)


def _holders(blocks: Sequence[np.ndarray], holders: np.ndarray | None) -> np.ndarray:
    if not blocks:
        raise ValueError("a cosine needs at least one block")
    n = blocks[0].shape[0]
    held = np.ones((n, len(blocks)), dtype=bool) if holders is None else np.asarray(holders, dtype=bool)
    if held.shape != (n, len(blocks)):
        raise ValueError(f"holders has shape {held.shape}, expected {(n, len(blocks))} (clients x blocks)")
    for b, block in enumerate(blocks):
        if block.shape[0] != n:
            raise ValueError(f"block {b} has {block.shape[0]} rows, expected {n} (one per client)")
    return held


def layerwise_cosine(blocks: Sequence[np.ndarray], holders: np.ndarray | None = None) -> list[np.ndarray]:
    """One cosine matrix per block (FedBip-L): ``[cos restricted to block b for b in blocks]``.

    Pairs in which either client lacks block ``b`` get 0 there; :func:`shared_mask` of ``holders[:, [b]]``
    excludes them from the weights.
    """
    held = _holders(blocks, holders)
    return [cosine_from_grams([gram], held[:, [b]]) for b, gram in enumerate(block_grams(blocks, held))]


def shared_mask(holders: np.ndarray) -> np.ndarray:
    """``(n, n)`` booleans: clients ``i`` and ``k`` hold at least one block in common."""
    held = np.asarray(holders, dtype=np.float64)
    return (held @ held.T) > 0


def group_mask(groups: Sequence[Hashable]) -> np.ndarray:
    """``(n, n)`` booleans: clients ``i`` and ``k`` belong to the same group (architecture, rank, task...)."""
    _, ids = np.unique(np.array([repr(label) for label in groups], dtype=object), return_inverse=True)
    return ids[:, None] == ids[None, :]


def clipped_weights(
    similarity: np.ndarray,
    mask: np.ndarray | None = None,
    include_self: bool = True,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """FedBip's default weighting: clip at 0, then row-normalise.

    ``p_ik = s_k max(c_ik, 0) / sum_j s_j max(c_ij, 0)`` over the admissible ``k``. With ``include_self`` the
    self term ``c_ii = 1`` is in every denominator, so the denominator is at least ``s_i`` and conflicting
    clients (negative cosine) get exactly 0.

    Parameters
    ----------
    similarity : np.ndarray
        ``(n, n)`` cosines.
    mask : np.ndarray, optional
        ``(n, n)`` booleans of admissible pairs (default: all). The diagonal is governed by ``include_self``.
    include_self : bool (default: True)
        Whether client ``i`` weighs its own vector (with ``c_ii``, normally 1).
    scale : np.ndarray, optional
        ``(n,)`` prior weight per column, e.g. a staleness decay ``gamma ** age`` (default: all 1).

    Returns
    -------
    np.ndarray
        ``(n, n)`` non-negative weights whose rows sum to 1, or to 0 where nothing is admissible.
    """
    scores = np.maximum(np.asarray(similarity, dtype=np.float64), 0.0)
    return _normalise_rows(scores, _admissible(scores.shape, mask, include_self), scale)


def softmax_weights(
    similarity: np.ndarray,
    temperature: float = 0.5,
    mask: np.ndarray | None = None,
    include_self: bool = True,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax weighting: ``p_ik = s_k exp(c_ik / T) / sum_j s_j exp(c_ij / T)`` over the admissible ``k``.

    FedMosaic's RELA is ``temperature=0.5, include_self=False``; FedBip offers it as an ablation.

    Parameters
    ----------
    similarity : np.ndarray
        ``(n, n)`` cosines.
    temperature : float (default: 0.5)
        Softmax temperature T; smaller is sharper.
    mask, include_self, scale
        As in :func:`clipped_weights`.
    """
    if temperature <= 0:
        raise ValueError(f"softmax temperature must be > 0, got {temperature}")
    logits = np.asarray(similarity, dtype=np.float64) / temperature
    admissible = _admissible(logits.shape, mask, include_self)
    # Subtracting each row's largest admissible logit keeps exp() finite without changing the weights.
    peak = np.max(np.where(admissible, logits, -np.inf), axis=1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return _normalise_rows(np.exp(logits - peak), admissible, scale)


def renormalise(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep only the admissible entries of each row and rescale them to sum to 1 (zero rows stay zero).

    Used where a part of the model exists only for some of the weighted clients: a layer held by a subset
    (partial depth), or a task head shared only by clients of the same task.
    """
    return _normalise_rows(np.asarray(weights, dtype=np.float64), np.asarray(mask, dtype=bool), None)


def _admissible(shape: tuple[int, ...], mask: np.ndarray | None, include_self: bool) -> np.ndarray:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"a similarity matrix must be square, got shape {shape}")
    admissible = np.ones(shape, dtype=bool) if mask is None else np.array(mask, dtype=bool)
    if admissible.shape != shape:
        raise ValueError(f"mask has shape {admissible.shape}, expected {shape}")
    np.fill_diagonal(admissible, include_self)
    return admissible


def _normalise_rows(scores: np.ndarray, admissible: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    weighted = np.where(admissible, scores, 0.0)
    if scale is not None:
        column_scale = np.asarray(scale, dtype=np.float64)
        if column_scale.shape != (scores.shape[1],) or np.any(column_scale < 0):
            raise ValueError(f"scale must be {scores.shape[1]} non-negative values, got {column_scale!r}")
        weighted = weighted * column_scale[None, :]
    totals = weighted.sum(axis=1, keepdims=True)
    return np.divide(weighted, totals, out=np.zeros_like(weighted), where=totals > _EPS)


def columnwise_cosine(matrices: np.ndarray) -> np.ndarray:
    """FedMosaic's RELA similarity of matrix descriptors: the cosine of each column pair, averaged over columns.

    ``S_ij = (1 / C) sum_c cos(G_i[:, c], G_j[:, c])`` for ``(n, rows, C)`` descriptors (the probe gradients). A
    zero column has no direction and contributes 0; the diagonal is 1 by definition.

    Returns
    -------
    np.ndarray
        ``(n, n)`` in ``[-1, 1]``.
    """
    stacked = np.asarray(matrices, dtype=np.float64)
    if stacked.ndim != 3:
        raise ValueError(f"column-wise cosine needs (clients, rows, columns) descriptors, got shape {stacked.shape}")
    norms = np.linalg.norm(stacked, axis=1, keepdims=True)
    unit = np.divide(stacked, norms, out=np.zeros_like(stacked), where=norms > _EPS)
    cosine = np.einsum("irc,jrc->ij", unit, unit) / stacked.shape[2]
    np.fill_diagonal(cosine, 1.0)
    return np.clip(cosine, -1.0, 1.0)
