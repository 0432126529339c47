"""Depth maps between models of different depth: block-end layers and relative-depth interpolation. Pure NumPy.

Models of different depth are matched by RELATIVE depth: layer ``l`` of an ``L``-layer model sits at
``l / (L - 1)`` (CKA between a small and a large model peaks at equal relative depth; Seo et al., ICLR 2026,
https://arxiv.org/abs/2506.11024, section 3.3). Two helpers follow from it:

- :func:`block_end_layers` cuts a model into ``n_blocks`` depth blocks and returns the last layer of each, so
  block ``b`` of every model can be matched to block ``b`` of every other;
- :func:`relative_depth_map` gives, for each layer of one model, its interpolation weights over the layers of
  another (an initial layer-to-layer relation between models of different depths).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

BlockRule = Literal["relative-depth", "balanced", "floor-step"]


def block_end_layers(num_layers: int, n_blocks: int = 4, rule: BlockRule = "balanced") -> list[int]:
    """The last layer of each of ``n_blocks`` depth blocks of an ``num_layers``-layer model.

    Parameters
    ----------
    num_layers : int
        Depth L of the model.
    n_blocks : int (default: 4)
        Number of blocks N_B.
    rule : {"relative-depth", "balanced", "floor-step"} (default: "balanced")
        ``relative-depth``: block b (1-based) ends at the layer nearest relative depth ``b / N_B`` on the axis
        ``l / (L - 1)`` of :func:`relative_depth_positions`, i.e. ``round(b (L - 1) / N_B)`` (a half rounds up), so
        block b of models of any depth sits at the same relative depth, within half a layer (for L = 6, 12, 30:
        1, 3, 4, 5 / 3, 6, 8, 11 / 7, 15, 22, 29). ``balanced``: block b (1-based) ends at ``ceil(b L / N_B) - 1``,
        so layer ``l`` belongs to block ``floor(l N_B / L)`` and block sizes differ by at most one; each block end
        sits as close as the integer grid allows to the share ``b / N_B`` of the layers. ``floor-step``: with
        ``step = L // N_B`` the ends are ``{b step - 1 : b < N_B} U {L - 1}``; every block but the last has ``step``
        layers and the last takes the remainder, so for L = 6 the ends are 0, 1, 2, 5. ``balanced`` and
        ``floor-step`` agree whenever N_B divides L.

    Returns
    -------
    list[int]
        ``n_blocks`` increasing global layer indices; the last is always ``num_layers - 1``.

    Raises
    ------
    ValueError
        If ``n_blocks`` is not in ``1..num_layers`` or ``rule`` is unknown.
    """
    if not 1 <= n_blocks <= num_layers:
        raise ValueError(f"n_blocks must be in 1..{num_layers} (the model's depth), got {n_blocks}")
    if rule == "relative-depth":
        # Integer arithmetic: floor((2 b (L - 1) + N_B) / (2 N_B)) is b (L - 1) / N_B rounded half up. Targets
        # are at least one layer apart while N_B < L; N_B = L blocks are every layer.
        if n_blocks == num_layers:
            return list(range(num_layers))
        return [(2 * b * (num_layers - 1) + n_blocks) // (2 * n_blocks) for b in range(1, n_blocks + 1)]
    if rule == "balanced":
        return [-(-b * num_layers // n_blocks) - 1 for b in range(1, n_blocks + 1)]
    if rule == "floor-step":
        step = num_layers // n_blocks
        return [b * step - 1 for b in range(1, n_blocks)] + [num_layers - 1]
    raise ValueError(f"rule must be 'relative-depth', 'balanced' or 'floor-step', got {rule!r}")


def relative_depth_positions(source_layers: int, target_layers: int) -> np.ndarray:
    """Where each layer of a ``source_layers``-deep model falls on the layer axis of a ``target_layers``-deep one.

    Layer ``l`` maps to ``l (L_t - 1) / (L_s - 1)``, so first meets first and last meets last. A one-layer
    source has no relative depth of its own; its layer feeds the head as a last layer does, so it maps to the
    target's last layer.

    Returns
    -------
    np.ndarray
        ``(source_layers,)`` float positions in ``[0, target_layers - 1]``.
    """
    _check_depths(source_layers, target_layers)
    if source_layers == 1:
        return np.array([float(target_layers - 1)])
    return np.arange(source_layers) * (target_layers - 1) / (source_layers - 1)


def relative_depth_map(source_layers: int, target_layers: int) -> np.ndarray:
    """Linear interpolation weights of each source layer over the target layers, by relative depth.

    Source layer ``l`` at position ``p`` (see :func:`relative_depth_positions`) puts weight ``1 - frac(p)`` on
    target layer ``floor(p)`` and ``frac(p)`` on ``floor(p) + 1``. A relation matrix from a client of depth
    ``L_k`` to ``L_max`` shared slots is ``relative_depth_map(L_k, L_max).T`` (``L_max x L_k``).

    Returns
    -------
    np.ndarray
        ``(source_layers, target_layers)``; each row sums to 1 and has at most two non-zero entries.
    """
    _check_depths(source_layers, target_layers)
    weights = np.zeros((source_layers, target_layers))
    for layer in range(source_layers):
        # Integer arithmetic, so a position that is a whole number (layer 3 of 4 -> 29 of 30) is exactly one.
        numerator = (target_layers - 1) * (layer if source_layers > 1 else 1)
        denominator = max(source_layers - 1, 1)
        low, remainder = divmod(numerator, denominator)
        weights[layer, low] = 1.0 - remainder / denominator
        if remainder:
            weights[layer, low + 1] = remainder / denominator
    return weights


def _check_depths(source_layers: int, target_layers: int) -> None:
    for name, value in (("source_layers", source_layers), ("target_layers", target_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
