"""Module roles of every registered family, checked against tiny random-init models."""

from __future__ import annotations

import pytest
from torch import nn

from fedbrick_flower.models import FAMILIES, family_of, layer_stack
from fedbrick_flower.models.families import ROLES, resolve_roles
from tests.conftest import TINY_CONFIGS, tiny_model

# Which roles each family has, and which module plays it: the table the registry must match.
EXPECTED_PATHS = {
    "bert": {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "up": "intermediate.dense",
        "down": "output.dense",
    },
    "mpnet": {
        "q": "attention.attn.q",
        "k": "attention.attn.k",
        "v": "attention.attn.v",
        "o": "attention.attn.o",
        "up": "intermediate.dense",
        "down": "output.dense",
    },
    **{
        name: {role: f"{'mlp' if role in ('gate', 'up', 'down') else 'self_attn'}.{role}_proj" for role in ROLES}
        for name in ("llama", "qwen2", "gemma3_text")
    },
    "gpt2": {
        "q": "attn.c_attn",
        "k": "attn.c_attn",
        "v": "attn.c_attn",
        "o": "attn.c_proj",
        "up": "mlp.c_fc",
        "down": "mlp.c_proj",
    },
}


def _in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    # GPT-2's Conv1D stores its weight as (in, out).
    return tuple(module.weight.shape)


def test_every_registered_family_is_in_the_table() -> None:
    assert set(FAMILIES) == set(EXPECTED_PATHS) == set(TINY_CONFIGS)


@pytest.mark.parametrize("model_type", sorted(EXPECTED_PATHS))
def test_role_paths_and_shapes_match_a_real_model(model_type: str) -> None:
    # Prepare
    model = tiny_model(model_type)
    family = family_of(model_type)
    layer = layer_stack(model, family)[0]
    dims = family.dims(model.config)

    # Execute / Assert
    assert family.roles == tuple(EXPECTED_PATHS[model_type])
    for role, path in EXPECTED_PATHS[model_type].items():
        assert family.module_path(role) == path
        module = layer.get_submodule(path)
        assert _in_out(module) == family.in_out(role, dims), (model_type, role)


@pytest.mark.parametrize(
    "model_type, dims",
    [
        ("bert", (32, 64, 4, 2, 2, 16)),
        ("llama", (32, 64, 4, 2, 1, 16)),
        # Gemma's head_dim is set explicitly (16, not 32 / 2 = 16 by chance: heads x head_dim = 32).
        ("gemma3_text", (32, 64, 4, 2, 1, 16)),
        # GPT-2 leaves n_inner unset: 4 d.
        ("gpt2", (32, 128, 4, 2, 2, 16)),
    ],
)
def test_dims_come_from_the_config(model_type: str, dims: tuple[int, ...]) -> None:
    # Execute
    found = family_of(model_type).dims(tiny_model(model_type).config)

    # Assert
    got = (found.hidden_size, found.intermediate_size, found.num_layers, found.num_heads, found.num_kv_heads)
    assert (*got, found.head_dim) == dims


def test_missing_and_unknown_roles_are_named() -> None:
    with pytest.raises(ValueError, match="'bert' has no 'gate' projection"):
        family_of("bert").module_path("gate")
    with pytest.raises(ValueError, match="'query' is not one of"):
        family_of("llama").module_path("query")
    with pytest.raises(ValueError, match=r"\['wq'\] are not among"):
        resolve_roles(["q", "wq"])


def test_all_linear_expands_to_the_family_roles_and_gpt2_qkv_is_one_module() -> None:
    # Execute / Assert
    assert resolve_roles("all-linear", family_of("mpnet")) == ("q", "k", "v", "o", "up", "down")
    assert resolve_roles(["v", "q"]) == ("q", "v")
    assert family_of("gpt2").module_paths(["q", "v"]) == ("attn.c_attn",)
    assert family_of("gpt2").module_paths(["all-linear"]) == ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
