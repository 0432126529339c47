"""Device profile resolution and the client's description of itself."""

from __future__ import annotations

import json

import pytest

from fedbrick_flower.assembly import label_names, task_split
from fedbrick_flower.clients.profile import ClientSession, resolve_profile
from fedbrick_flower.data import DataError, label_mismatch
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
    info = json.loads(session.describe().to_json())  # the query reply as it travels

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
    info = json.loads(session.describe(("lora", "brick")).to_json())

    # Assert: tiny-llama is 4 layers of width 256, 4 heads of 64, 2 key/value heads, MLP 512.
    sizes = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
    assert tuple(info[key] for key in sizes) == (256, 512, 4, 4, 2, 64)
    assert (info["rank"], info["alpha"], info["adapter_kinds"]) == (8, 16.0, ["lora", "brick"])
    assert info["roles"] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert info["layer_schema"]["self_attn.k_proj.lora_B"] == [128, 8]  # 2 kv heads x 64
    assert info["layer_schema"]["mlp.down_proj.lora_A"] == [8, 512]
    assert len(info["layer_schema"]) == 14  # 7 projections x (A, B); the BRICKs are not per-layer LoRA names
    assert info["head_schema"] == {"head.weight": [5, 256], "head.bias": [5]}


def _device_scenario(tmp_path, rows_by_client: dict[str, list[tuple[str, str]]]):
    """The smoke scenario on a task whose data lives on the devices: each client's own JSONL file."""
    overrides = {"tasks": {"bbc": {"labels": ["neg", "pos"]}}, "data.client_test_fraction": 0.25}
    for index, (client_id, rows) in enumerate(rows_by_client.items()):
        path = tmp_path / f"{client_id}.jsonl"
        path.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
        overrides[f"clients.{index}.train"] = str(path)
    return load_scenario("smoke", overrides)


def test_a_device_trains_on_its_own_file_and_reports_counts_and_labels_only(tmp_path) -> None:
    # Prepare
    rows = {
        "bert-full": [(f"good {i}", "pos") for i in range(6)] + [(f"bad {i}", "neg") for i in range(2)],
        "bert-edge": [(f"fine {i}", "pos") for i in range(4)],
        "llama-edge": [("ok", "pos"), ("meh", "neg")],
    }
    scenario = _device_scenario(tmp_path, rows)
    session = ClientSession(scenario, scenario.client("bert-full"))

    # Execute
    info = json.loads(session.describe().to_json())  # the query reply as it travels
    edge = json.loads(ClientSession(scenario, scenario.client("bert-edge")).describe().to_json())

    # Assert: 8 rows, a stratified quarter held out (2 of 6 pos, 1 of 2 neg... at least 1 per class)
    assert info["num_train_examples"] + info["extra"]["num_test_examples"] == 8
    assert info["extra"]["num_test_examples"] == 3 and info["num_train_examples"] == 5
    assert info["extra"]["labels"] == ["neg", "pos"] and info["extra"]["own_data"] is True
    assert edge["extra"]["labels"] == ["pos"] and edge["num_train_examples"] == 3
    assert "good 0" not in json.dumps(info)


def test_a_device_with_labels_outside_the_task_reports_them_without_counts(tmp_path) -> None:
    # Prepare
    rows = {"bert-full": [("x", "pos"), ("y", "spam"), ("z", "pos")]}
    scenario = _device_scenario(tmp_path, rows | {"bert-edge": [("a", "pos")] * 2, "llama-edge": [("b", "neg")] * 2})
    session = ClientSession(scenario, scenario.client("bert-full"))

    # Execute
    info = json.loads(session.describe().to_json())  # the query reply as it travels

    # Assert
    assert info["extra"]["labels"] == ["pos", "spam"]
    assert label_mismatch(("neg", "pos"), info["extra"]["labels"]) is not None
    assert info["num_train_examples"] == 0
    with pytest.raises(DataError, match=r"bert-full.jsonl row 2: field 'label': 'spam' is not among"):
        session.examples("train")


def test_a_profile_file_reads_its_data_relative_to_its_folder(tmp_path) -> None:
    # Prepare
    scenario = load_scenario("smoke")
    (tmp_path / "device").mkdir()
    profile_file = tmp_path / "device" / "phone.yaml"
    profile_file.write_text("{id: phone, model: tiny-bert, task: bbc, train: mine.jsonl, test: /abs/test.csv}\n")

    # Execute
    profile = resolve_profile(scenario, {"profile": str(profile_file)})

    # Assert
    assert profile.train == str(tmp_path / "device" / "mine.jsonl")
    assert profile.test == "/abs/test.csv"


def test_the_server_never_reads_the_devices_files(tmp_path) -> None:
    # Prepare: the device files are gone, as they are on the server machine
    scenario = _device_scenario(tmp_path, {"bert-full": [("a", "pos")], "bert-edge": [], "llama-edge": []})
    for path in tmp_path.glob("*.jsonl"):
        path.unlink()

    # Execute
    server_test = task_split(scenario, "bbc", "server_test", None)
    proxy = task_split(scenario, "bbc", "proxy", None)

    # Assert: no examples, the declared label set
    assert len(server_test) == len(proxy) == 0
    assert server_test.label_names == ("neg", "pos")


def test_a_client_on_a_pathological_share_reports_the_labels_of_its_share() -> None:
    # Prepare
    scenario = load_scenario(
        "smoke",
        {"data": {"partition": "pathological", "partition_params": {"num_classes_per_partition": 2}, "max_length": 16}},
    )
    sessions = [ClientSession(scenario, profile) for profile in scenario.clients]

    # Execute
    reports = [session.data_report() for session in sessions]

    # Assert: each reports 2 of the 5 BBC topics, and its counts
    assert [len(report["labels"]) for report in reports] == [2, 2, 2]
    assert all(set(report["labels"]) <= set(label_names(scenario, "bbc")) for report in reports)
    assert all(report["num_train_examples"] > 0 and report["own_data"] is False for report in reports)


@pytest.mark.parametrize("client", ["bert-edge", "llama-edge"])
def test_bfloat16_on_a_cpu_keeps_fp32_weights_and_runs_the_backbone_under_autocast(client: str) -> None:
    # Prepare: the same client in float32 and in bfloat16, both on the CPU.
    import torch

    from fedbrick_flower.data import iterate_batches

    scenario = load_scenario("smoke", {f"clients.{i}.device": "cpu" for i in range(3)})
    index = [c.id for c in scenario.clients].index(client)
    bf16 = load_scenario("smoke", {"clients.0.device": "cpu", f"clients.{index}.dtype": "bfloat16"})
    fp32_session = ClientSession(scenario, scenario.client(client))
    bf16_session = ClientSession(bf16, bf16.client(client))
    batch = next(iterate_batches(fp32_session.examples("train"), 4, shuffle=False))

    # Execute
    fp32_model, bf16_model = fp32_session.build([0, 1]), bf16_session.build([0, 1])
    fp32_logits = fp32_model(batch["input_ids"], batch["attention_mask"])
    bf16_logits = bf16_model(batch["input_ids"], batch["attention_mask"])
    bf16_session.objective.loss(bf16_model, batch).backward()

    # Assert: every weight, adapter and gradient stays fp32; the output is fp32 and only close to the fp32 one.
    assert fp32_model.autocast_dtype is None and bf16_model.autocast_dtype is torch.bfloat16
    assert {p.dtype for p in bf16_model.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in bf16_model.parameters() if p.grad is not None} == {torch.float32}
    assert bf16_logits.dtype == fp32_logits.dtype == torch.float32
    assert not torch.equal(bf16_logits, fp32_logits)
    torch.testing.assert_close(bf16_logits, fp32_logits, atol=0.1, rtol=0.1)
