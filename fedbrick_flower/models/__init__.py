"""Backbones: loading, family registry, depth truncation, task or LM head, device placement. No Flower imports.

Names are loaded from their submodule on first use (PEP 562), so the torch-free modules (``families``, ``spec``,
``depth``) load without torch: reading a scenario, or a family's roles, imports none.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "SequenceClassifier": "backbone",
    "ensure_pad_token": "backbone",
    "hidden_size": "backbone",
    "load_backbone": "backbone",
    "load_config": "backbone",
    "load_tokenizer": "backbone",
    "model_family": "backbone",
    "num_layers": "backbone",
    "stable_seed": "backbone",
    "CausalLM": "causal_lm",
    "block_end_layers": "depth",
    "relative_depth_map": "depth",
    "relative_depth_positions": "depth",
    "ALL_LINEAR": "families",
    "FAMILIES": "families",
    "ROLES": "families",
    "FamilySpec": "families",
    "ModelDims": "families",
    "family_of": "families",
    "model_dims": "families",
    "resolve_roles": "families",
    "resolve_device": "placement",
    "resolve_dtype": "placement",
    "ModelSpec": "spec",
    "LayerShim": "stack",
    "global_layer_indices": "stack",
    "keep_layers": "stack",
    "layer_stack": "stack",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import ``name`` from its submodule the first time it is asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
