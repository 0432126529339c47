"""Depth truncation: keep an arbitrary subset of a model's layers and remember their GLOBAL indices.

``from_pretrained(..., num_hidden_layers=k)`` only keeps a prefix. Partial-depth federated methods hold
arbitrary, per-round subsets, and every adapter tensor must be named by the layer's index in the full model so
that a 2-layer client's update lands on the right layers of the global model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter

from torch import nn

from .families import FamilySpec

GLOBAL_INDICES_ATTRIBUTE = "fedbrick_global_layer_indices"

LayerFiller = Callable[[int], nn.Module]


class LayerShim(nn.Module):
    """Give a hidden-state map (``Tensor -> Tensor``) the call signature of a transformer layer.

    The wrapped module sees only the hidden states; masks, position embeddings and caches that the stack
    passes to its layers are ignored, which is what a per-token surrogate such as a BRICK needs.
    """

    def __init__(self, inner: nn.Module, returns_tuple: bool) -> None:
        super().__init__()
        self.inner = inner
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        output = self.inner(hidden_states)
        return (output,) if self.returns_tuple else output


def layer_stack(model: nn.Module, family: FamilySpec) -> nn.ModuleList:
    """Return the ``nn.ModuleList`` that holds the model's transformer layers."""
    return attrgetter(family.layer_stack)(model)


def global_layer_indices(model: nn.Module, family: FamilySpec) -> tuple[int, ...]:
    """Global index of each position of the (possibly truncated) layer stack."""
    recorded = getattr(model, GLOBAL_INDICES_ATTRIBUTE, None)
    if recorded is not None:
        return recorded
    return tuple(range(len(layer_stack(model, family))))


def keep_layers(
    model: nn.Module,
    family: FamilySpec,
    kept: Sequence[int],
    filler: LayerFiller | None = None,
) -> nn.Module:
    """Keep only the layers ``kept`` (global indices, any subset) of a full-depth model, in place.

    Parameters
    ----------
    model : nn.Module
        A full-depth Hugging Face base model (``AutoModel``) of ``family``.
    family : FamilySpec
        Where the model's layer stack lives.
    kept : Sequence[int]
        Global indices to keep; sorted and de-duplicated, since layer order is the model's order.
    filler : LayerFiller, optional
        Without it, missing layers are removed (the stack gets shorter, FedRA-style depth skipping). With it,
        every missing global index ``g`` is replaced by ``LayerShim(filler(g))`` and the stack keeps full depth.

    Returns
    -------
    nn.Module
        The same model, with ``fedbrick_global_layer_indices`` recording the global index of each position.
    """
    stack = layer_stack(model, family)
    depth = len(stack)
    kept_sorted = sorted(set(kept))
    if not kept_sorted or kept_sorted[0] < 0 or kept_sorted[-1] >= depth:
        raise ValueError(f"layers={list(kept)!r} must be a non-empty subset of 0..{depth - 1}")
    if filler is None:
        positions = kept_sorted
        modules = [stack[g] for g in kept_sorted]
    else:
        positions = list(range(depth))
        held = set(kept_sorted)
        modules = [stack[g] if g in held else LayerShim(filler(g), family.layer_returns_tuple) for g in positions]
    _replace_stack(model, family, nn.ModuleList(modules))
    _shrink_config(model, family, positions)
    setattr(model, GLOBAL_INDICES_ATTRIBUTE, tuple(positions))
    return model


def _replace_stack(model: nn.Module, family: FamilySpec, modules: nn.ModuleList) -> None:
    parent_path, _, attribute = family.layer_stack.rpartition(".")
    parent = attrgetter(parent_path)(model) if parent_path else model
    setattr(parent, attribute, modules)


def _shrink_config(model: nn.Module, family: FamilySpec, positions: list[int]) -> None:
    # Decoder stacks iterate ``layers[: config.num_hidden_layers]`` and index per-layer attention types
    # (sliding window or full) by position, so both must follow the new stack.
    # A KV cache indexes layers by their original ``layer_idx``, which a truncated stack breaks; classification
    # never decodes step by step, so the cache goes.
    config = model.config
    if hasattr(config, "use_cache"):
        config.use_cache = False
    setattr(config, family.depth_attribute, len(positions))
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) > max(positions):
        config.layer_types = [layer_types[g] for g in positions]


def holds_shims(model: nn.Module, family: FamilySpec) -> bool:
    """Whether any position of the layer stack is a :class:`LayerShim` (a surrogate that keeps no KV cache)."""
    return any(isinstance(layer, LayerShim) for layer in layer_stack(model, family))


@contextlib.contextmanager
def positional_layer_indices(model: nn.Module, family: FamilySpec) -> Iterator[None]:
    """Within the block, every layer's ``layer_idx`` is its POSITION in the (truncated) stack, then its own again.

    A Hugging Face KV cache holds one slot per position of the stack (``config`` was shrunk to the kept layers) and
    each attention module writes to ``cache.layers[self.layer_idx]``; a truncated stack keeps its layers' original
    indices (layer 26 of 30 at position 0), which would address slots that do not exist. Nothing else reads
    ``layer_idx`` after construction (per-layer attention types and scalings are fixed at ``__init__``), so the
    computation is the same.
    """
    saved: list[tuple[nn.Module, int]] = []
    try:
        for position, layer in enumerate(layer_stack(model, family)):
            for module in layer.modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    saved.append((module, module.layer_idx))
                    module.layer_idx = position
        yield
    finally:
        for module, index in saved:
            module.layer_idx = index
