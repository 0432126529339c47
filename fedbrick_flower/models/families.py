"""Model-family registry: where each family keeps its layer stack and what LoRA adapts.

Heterogeneous federations mix BERT-, MPNet-, Llama- and GPT-2-style backbones. Everything the rest of the
package needs to know about a family (the attribute path of the transformer layer stack, the projections
that LoRA targets, how a layer returns its output) lives here, so no other module branches on a family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class FamilySpec:
    """How one transformer family is laid out inside a Hugging Face ``AutoModel``.

    Parameters
    ----------
    name : str
        Registry key, equal to the Hugging Face ``config.model_type`` it serves.
    layer_stack : str
        Dotted attribute path from the base model to its ``nn.ModuleList`` of layers.
    lora_targets : tuple[str, ...]
        Paths, relative to one layer, of the linear projections LoRA adapts by default.
    layer_returns_tuple : bool
        True where a layer returns ``(hidden_states, ...)`` rather than a bare tensor.
    depth_attribute : str (default: "num_hidden_layers")
        Config attribute that holds the number of layers.
    """

    name: str
    layer_stack: str
    lora_targets: tuple[str, ...]
    layer_returns_tuple: bool = False
    depth_attribute: str = "num_hidden_layers"


_FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec("bert", "encoder.layer", ("attention.self.query", "attention.self.value")),
        FamilySpec("mpnet", "encoder.layer", ("attention.attn.q", "attention.attn.v"), layer_returns_tuple=True),
        FamilySpec("llama", "layers", ("self_attn.q_proj", "self_attn.v_proj")),
        FamilySpec("qwen2", "layers", ("self_attn.q_proj", "self_attn.v_proj")),
        FamilySpec("gemma3_text", "layers", ("self_attn.q_proj", "self_attn.v_proj")),
        # GPT-2 fuses q, k and v into one Conv1D; adapting it is the standard GPT-2 LoRA recipe.
        FamilySpec("gpt2", "h", ("attn.c_attn",), depth_attribute="n_layer"),
    )
}

FAMILIES: Mapping[str, FamilySpec] = MappingProxyType(_FAMILIES)


def family_of(model_type: str) -> FamilySpec:
    """Return the registered family of a Hugging Face ``model_type``.

    Raises
    ------
    ValueError
        If the family is not registered; the message lists the known families.
    """
    try:
        return FAMILIES[model_type]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"model family {model_type!r} is not supported (known: {known})") from None
