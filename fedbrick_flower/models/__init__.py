"""Backbones: loading, family registry, depth truncation, task or LM head, device placement. No Flower imports."""

from .backbone import (
    ModelSpec,
    SequenceClassifier,
    hidden_size,
    load_backbone,
    load_config,
    load_tokenizer,
    model_family,
    num_layers,
    stable_seed,
)
from .causal_lm import CausalLM, causal_lm
from .depth import block_end_layers, relative_depth_map, relative_depth_positions
from .families import ALL_LINEAR, FAMILIES, ROLES, FamilySpec, ModelDims, family_of, model_dims, resolve_roles
from .placement import resolve_device, resolve_dtype
from .stack import LayerShim, global_layer_indices, keep_layers, layer_stack

__all__ = [
    "ALL_LINEAR",
    "CausalLM",
    "causal_lm",
    "FAMILIES",
    "ROLES",
    "FamilySpec",
    "ModelDims",
    "block_end_layers",
    "model_dims",
    "relative_depth_map",
    "relative_depth_positions",
    "resolve_roles",
    "LayerShim",
    "ModelSpec",
    "SequenceClassifier",
    "family_of",
    "global_layer_indices",
    "hidden_size",
    "keep_layers",
    "layer_stack",
    "load_backbone",
    "load_config",
    "load_tokenizer",
    "model_family",
    "num_layers",
    "resolve_device",
    "resolve_dtype",
    "stable_seed",
]
