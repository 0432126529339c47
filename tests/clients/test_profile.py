"""Device profile resolution and the client's description of itself."""

from __future__ import annotations

import pytest

from fedbrick_flower.clients.profile import ClientSession, resolve_profile
from fedbrick_flower.scenario import ScenarioError, load_scenario


def test_profile_comes_from_partition_id_client_id_or_a_yaml_file(tmp_path) -> None:
    # Prepare
    scenario = load_scenario("smoke")
    profile_file = tmp_path / "edge.yaml"
    profile_file.write_text("{id: my-phone, model: tiny-bert, task: bbc, layers: 1, device: cpu}\n")

    # Execute
    by_partition = resolve_profile(scenario, {"partition-id": 2, "num-partitions": 3})
    by_id = resolve_profile(scenario, {"client-id": "bert-edge"})
    by_file = resolve_profile(scenario, {"profile": str(profile_file)})

    # Assert
    assert (by_partition.id, by_id.id, by_file.id) == ("llama-edge", "bert-edge", "my-phone")
    assert by_file.layers == 1


@pytest.mark.parametrize(
    "node_config, message",
    [
        ({"partition-id": 7}, "partition-id: 7 is outside"),
        ({"client-id": "nobody"}, "no client with id 'nobody'"),
        ({"profile": "/no/such/file.yaml"}, "node_config.profile"),
        ({}, "give one of"),
    ],
)
def test_unresolvable_node_config_is_named(node_config: dict, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        resolve_profile(load_scenario("smoke"), node_config)


def test_description_reports_schema_and_budget() -> None:
    # Prepare
    scenario = load_scenario("smoke")
    session = ClientSession(scenario, scenario.client("bert-edge"))

    # Execute
    info = session.describe()

    # Assert
    assert (info["num_layers"], info["budget"], info["fixed_layers"]) == (4, 2, [1, 3])
    assert info["layer_schema"]["attention.self.query.lora_A"] == [8, 256]
    assert info["head_schema"]["head.weight"] == [5, 256]


def test_a_budget_deeper_than_the_model_is_an_error() -> None:
    # Prepare
    scenario = load_scenario("smoke", {"clients.0.layers": 9})
    session = ClientSession(scenario, scenario.client("bert-full"))

    # Execute / Assert
    with pytest.raises(ScenarioError, match="bert-full.layers: 9 exceeds the 4 layers"):
        session.describe()


def test_description_carries_sizes_rank_roles_and_kinds_without_building_a_model(monkeypatch) -> None:
    # Prepare: any model load would fail.
    from fedbrick_flower import assembly

    scenario = load_scenario("smoke", {"lora.targets": "all-linear"})
    session = ClientSession(scenario, scenario.client("llama-edge"))
    assembly.cached_backbone.cache_clear()

    def no_model(*args, **kwargs):
        raise AssertionError("describe() must not load a model")

    monkeypatch.setattr(assembly, "load_backbone", no_model)

    # Execute
    info = session.describe(("lora", "brick"))

    # Assert: tiny-llama is 4 layers of width 256, 4 heads of 64, 2 key/value heads, MLP 512.
    sizes = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
    assert tuple(info[key] for key in sizes) == (256, 512, 4, 4, 2, 64)
    assert (info["rank"], info["alpha"], info["adapter_kinds"]) == (8, 16.0, ["lora", "brick"])
    assert info["roles"] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert info["layer_schema"]["self_attn.k_proj.lora_B"] == [128, 8]  # 2 kv heads x 64
    assert info["layer_schema"]["mlp.down_proj.lora_A"] == [8, 512]
    assert len(info["layer_schema"]) == 14  # 7 projections x (A, B); the BRICKs are not per-layer LoRA names
    assert info["head_schema"] == {"head.weight": [5, 256], "head.bias": [5]}
