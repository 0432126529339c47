"""Backbones: loading, family registry, depth truncation, task head and device placement. No Flower imports."""

from .backbone import (
    ModelSpec,
    SequenceClassifier,
    hidden_size,
    load_backbone,
    load_tokenizer,
    model_family,
    num_layers,
    stable_seed,
)
from .families import FAMILIES, FamilySpec, family_of
from .placement import resolve_device, resolve_dtype
from .stack import LayerShim, global_layer_indices, keep_layers, layer_stack

__all__ = [
    "FAMILIES",
    "FamilySpec",
    "LayerShim",
    "ModelSpec",
    "SequenceClassifier",
    "family_of",
    "global_layer_indices",
    "hidden_size",
    "keep_layers",
    "layer_stack",
    "load_backbone",
    "load_tokenizer",
    "model_family",
    "num_layers",
    "resolve_device",
    "resolve_dtype",
    "stable_seed",
]
