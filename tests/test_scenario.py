"""Scenario loading: every built-in parses, overrides apply, and errors name the offending field."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from fedbrick_flower.registry import algorithm_names
from fedbrick_flower.runconfig import scenario_overrides
from fedbrick_flower.scenario import (
    ScenarioError,
    apply_overrides,
    builtin_scenarios,
    collect_scenario,
    load_scenario,
    parse_overrides,
    parse_scenario,
    scenario_path,
)

BASE = yaml.safe_load(scenario_path("smoke").read_text())


def _with(path: str, value) -> dict:
    raw = copy.deepcopy(BASE)
    return apply_overrides(raw, {path: value})


@pytest.mark.parametrize("name", builtin_scenarios())
def test_every_builtin_scenario_is_valid(name: str) -> None:
    # Execute
    scenario = load_scenario(name)

    # Assert
    assert scenario.clients and scenario.rounds >= 1
    assert {c.model for c in scenario.clients} <= set(scenario.models)


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("rounds", 0, "rounds: must be >= 1"),
        ("rounds", "two", "rounds: expected int"),
        ("algorithm", "fedsgd", "algorithm: 'fedsgd' is not one of"),
        ("train.lr", -1.0, "train.lr: must be > 0"),
        ("train.learning_rate", 0.1, "train.learning_rate: unknown field"),
        ("data.partition", "shards", "data.partition: 'shards'"),
        ("data.partition_params", [1], "data.partition_params: must be a mapping"),
        ("data.partition_params", {"alpha": 0.5}, "data.partition_params.alpha: not a parameter of partitioner 'iid'"),
        ("data", {"partition": "dirichlet", "dirichlet_alpha": 0.0}, "data.dirichlet_alpha: must be > 0"),
        ("data.overlong", "cut", "data.overlong: 'cut' is not one of"),
        ("data.max_length", 0, "data.max_length: must be >= 2"),
        ("tasks.bbc.kind", "regression", "tasks.bbc.kind: 'regression' is not one of"),
        ("tasks.bbc.train", "x.jsonl", r"tasks.bbc: give at most one of dataset, train, hf_dataset"),
        ("tasks.bbc.labels", ["a"], "tasks.bbc.labels: packaged dataset 'bbc-news' has its own label set"),
        ("tasks.bbc.test", "t.jsonl", "tasks.bbc.test: a test file needs a train file"),
        ("tasks.bbc.hf_test_split", "test", "tasks.bbc.hf_test_split: only for a task with hf_dataset"),
        ("clients.0.train", "data.txt", r"clients\[0\].train: 'data.txt' is not one of the formats"),
        ("clients.0.test", "t.csv", r"clients\[0\].test: a test file needs a train file"),
        ("server.wire_dtype", "bfloat16", "server.wire_dtype: 'bfloat16'"),
        ("clients.1.layers", 0, r"clients\[1\].layers: a depth budget must be >= 1"),
        ("clients.1.layers", [1, 1], r"clients\[1\].layers: must be distinct"),
        ("clients.0.model", "gpt-5", r"clients\[0\].model: 'gpt-5'"),
        ("clients.2.device", "gpu", r"clients\[2\].device: 'gpu'"),
        ("faults.nan_update", ["nobody"], "faults.nan_update: 'nobody'"),
        ("faults.scaled_update", ["nobody"], "faults.scaled_update: 'nobody'"),
        ("faults.sign_flip", ["nobody"], "faults.sign_flip: 'nobody'"),
        ("server.aggregation", "mode", r"server.aggregation: 'mode' is not one of mean, median, trimmed-mean"),
        ("server.trim_fraction", 0.5, r"server.trim_fraction: must be in \[0, 0.5\), got 0.5"),
        ("server.outlier_norm_multiple", 1.0, r"server.outlier_norm_multiple: must be > 1, got 1.0"),
        ("server.norm_scope", "tensor", r"server.norm_scope: 'tensor' is not one of layer, update"),
    ],
)
def test_errors_name_the_field_and_value(path: str, value, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(_with(path, value))


def test_data_partition_takes_a_partitioner_and_its_parameters() -> None:
    # Execute
    pathological = parse_scenario(
        _with("data", {"partition": "pathological", "partition_params": {"num_classes_per_partition": 2}})
    )
    legacy = parse_scenario(_with("data", {"partition": "dirichlet", "dirichlet_alpha": 0.3}))
    given = parse_scenario(_with("data", {"partition": "dirichlet", "partition_params": {"alpha": 2}}))

    # Assert
    assert pathological.data.partitioner_params() == {"num_classes_per_partition": 2}
    assert legacy.data.partitioner_params() == {"alpha": 0.3}
    assert given.data.partitioner_params() == {"alpha": 2}


def test_file_tasks_and_device_only_tasks() -> None:
    # Prepare
    files = _with("tasks.bbc", {"train": "train.jsonl", "test": "test.csv", "text": "body", "labels": [0, 1]})
    devices = _with("tasks.bbc", {"labels": ["neg", "pos"]})
    for index, name in enumerate(["a.jsonl", "b.parquet", "c.csv"]):
        devices["clients"][index]["train"] = name
    undeclared = _with("tasks.bbc", {"kind": "classification"})
    missing_file = copy.deepcopy(devices)
    del missing_file["clients"][1]["train"]

    # Execute
    by_files = parse_scenario(files)
    on_devices = parse_scenario(devices)

    # Assert
    assert by_files.tasks["bbc"].labels == ("0", "1") and by_files.tasks["bbc"].text == "body"
    assert [c.train for c in on_devices.clients] == ["a.jsonl", "b.parquet", "c.csv"]
    with pytest.raises(ScenarioError, match="tasks.bbc.labels: a task whose data lives only on the devices"):
        parse_scenario(undeclared)
    with pytest.raises(ScenarioError, match=r"clients\[1\].train: task 'bbc' names no data of its own"):
        parse_scenario(missing_file)


def test_models_need_exactly_one_of_source_or_family() -> None:
    raw = _with("models.tiny-bert.source", "minilm")
    with pytest.raises(ScenarioError, match="models.tiny-bert: give exactly one"):
        parse_scenario(raw)


def test_run_config_short_keys_and_sentinels_become_overrides() -> None:
    # Prepare
    run_config = {
        "scenario": "smoke",
        "out-dir": "",
        "algorithm": "local",
        "rounds": 0,
        "seed": -1,
        "local-steps": 3,
        "wire-dtype": "",
        "fraction-train": -1.0,
    }

    # Execute
    overrides = scenario_overrides(run_config)
    scenario = load_scenario("smoke", overrides)

    # Assert
    assert overrides == {"algorithm": "local", "train.local_steps": 3}
    assert (scenario.algorithm, scenario.train.local_steps, scenario.rounds) == ("local", 3, 2)


def test_unknown_scenario_lists_the_builtins() -> None:
    with pytest.raises(ScenarioError, match="neither a file nor a built-in"):
        load_scenario("no-such-scenario")


def test_scenarios_compare_by_content() -> None:
    assert load_scenario("smoke") == load_scenario("smoke")
    assert hash(load_scenario("smoke")) == hash(load_scenario("smoke"))
    assert load_scenario("smoke") != load_scenario("smoke", {"rounds": 3})


def test_command_line_overrides_are_read_as_yaml() -> None:
    # Execute
    overrides = parse_overrides(["rounds=5", "clients.0.layers=[0, 2]", "algorithm=local"])

    # Assert
    assert overrides == {"rounds": 5, "clients.0.layers": [0, 2], "algorithm": "local"}
    with pytest.raises(ScenarioError, match="expected KEY=VALUE"):
        parse_overrides(["rounds"])


def test_exponent_floats_without_a_dot_are_numbers(tmp_path: Path) -> None:
    # Prepare: PyYAML (YAML 1.1) alone reads 5e-4 as the string '5e-4'
    path = tmp_path / "lr.yaml"
    path.write_text(scenario_path("smoke").read_text().replace("lr: 0.001", "lr: 5e-4"))

    # Execute
    scenario = load_scenario(str(path))

    # Assert
    assert scenario.train.lr == pytest.approx(0.0005)
    assert parse_overrides(["train.lr=1e-3"]) == {"train.lr": 0.001}


def test_a_string_where_a_number_is_expected_says_how_to_write_it() -> None:
    with pytest.raises(ScenarioError, match=r"train.lr: expected float, got 'fast' \(a string: write the number"):
        parse_scenario(_with("train.lr", "fast"))


def test_a_string_where_a_list_is_expected_names_the_list_form() -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(_with("faults.nan_update", "bert-full"))
    assert caught.value.problems == [
        "faults.nan_update: expected list of str, got 'bert-full' (write a list: [bert-full])"
    ]


def test_a_missing_required_key_is_named() -> None:
    # Prepare
    raw = copy.deepcopy(BASE)
    del raw["clients"][1]["task"]
    del raw["algorithm"]

    # Execute
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(raw)

    # Assert
    assert caught.value.problems == [
        "clients[1].task: required field missing (required: id, model, task)",
        f"algorithm: required field missing (one of {algorithm_names()})",
    ]
    assert "__init__" not in str(caught.value)


def test_algorithm_params_as_a_list_is_a_clean_error() -> None:
    with pytest.raises(ScenarioError, match=r"algorithm_params: must be a mapping .* got \['resample_layers'\]"):
        parse_scenario(_with("algorithm_params", ["resample_layers"]))


def test_unknown_fields_suggest_the_near_miss() -> None:
    with pytest.raises(ScenarioError, match=r"train.local_step: unknown field \(did you mean 'local_steps'\?\)"):
        parse_scenario(_with("train.local_step", 3))


def test_every_problem_of_a_file_is_collected() -> None:
    # Prepare
    raw = apply_overrides(BASE, {"rounds": 0, "train.lr": -1.0, "clients.0.device": "gpu", "data.max_length": "x"})

    # Execute
    _, problems = collect_scenario(raw)

    # Assert
    assert problems == [
        "data.max_length: expected int, got 'x'",
        "rounds: must be >= 1, got 0",
        "train.lr: must be > 0, got -1.0",
        "clients[0].device: 'gpu' is not one of auto, cpu, mps, cuda, cuda:N",
    ]


def test_different_ranks_on_one_model_are_refused_under_fedavg() -> None:
    # Prepare
    raw = apply_overrides(BASE, {"clients.0.rank": 4, "clients.1.rank": 1})

    # Execute
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(raw)

    # Assert
    assert caught.value.problems == [
        "clients bert-edge (rank 1) and bert-full (rank 4) share model tiny-bert; fedavg needs one rank per model "
        "(algorithms that mix ranks: flexlora, flora, h2tune, hetlora)"
    ]


def test_an_algorithm_that_mixes_ranks_accepts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a registered algorithm that declares it can mix ranks
    from fedbrick_flower import registry

    monkeypatch.setitem(
        registry._ALGORITHMS, "mixer", dataclasses.replace(registry.algorithm_entry("fedavg"), mixes_ranks=True)
    )
    raw = apply_overrides(BASE, {"clients.0.rank": 4, "clients.1.rank": 1, "algorithm": "mixer"})

    # Execute
    scenario = parse_scenario(raw)

    # Assert
    assert [c.rank for c in scenario.clients] == [4, 1, None]
    with pytest.raises(ScenarioError, match="algorithms that mix ranks: flexlora, flora, h2tune, hetlora, mixer"):
        parse_scenario(apply_overrides(raw, {"algorithm": "fedavg"}))


def test_malformed_yaml_names_the_file_line_and_column(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "bad.yaml"
    path.write_text("algorithm: fedavg\nmodels:\n  m: {source: minilm\ntasks: x\n")

    # Execute / Assert
    with pytest.raises(ScenarioError, match=rf"scenario {path}: not valid YAML at line 4, column 6: expected ','"):
        load_scenario(str(path))


def test_a_robust_aggregation_is_refused_under_an_algorithm_that_mixes_by_its_own_rule() -> None:
    # Prepare
    raw = _with("server.aggregation", "median")
    raw["algorithm"] = "fedbip"

    # Execute
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(raw)

    # Assert
    [problem] = [p for p in caught.value.problems if p.startswith("server.aggregation")]
    assert problem.startswith("server.aggregation: 'median' needs an algorithm that averages each tensor")
    assert "(fedavg, fedbrick)" in problem and "fedbip mixes updates by its own rule" in problem


def test_the_norm_check_and_a_robust_mean_are_accepted_under_fedavg() -> None:
    # Prepare
    raw = _with("server", {"aggregation": "trimmed-mean", "outlier_norm_multiple": 3, "clip_norm": 5})

    # Execute
    scenario = parse_scenario(raw)

    # Assert
    assert (scenario.server.aggregation, scenario.server.outlier_norm_multiple) == ("trimmed-mean", 3.0)


def test_fedmosaic_refuses_two_ranks_even_across_models_naming_the_field() -> None:
    # Prepare: the two BERT clients keep the scenario's rank, the Llama client asks for another one
    rank = BASE.get("lora", {}).get("rank", 8)
    raw = apply_overrides(BASE, {"algorithm": "fedmosaic", "clients.2.rank": rank - 1})

    # Execute
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(raw)

    # Assert
    assert caught.value.problems == [
        f"clients[2].rank={rank - 1}: fedmosaic needs one LoRA rank across the federation, got {[rank - 1, rank]}"
    ]


@pytest.mark.parametrize("algorithm", ["fedmosaic", "h2tune"])
def test_an_algorithm_that_trains_classifiers_only_refuses_a_generative_task(algorithm: str) -> None:
    # Prepare: the instruct scenario's generative tasks under an algorithm whose client trains a classifier
    raw = yaml.safe_load(scenario_path("instruct").read_text())
    raw["algorithm"] = algorithm

    # Execute
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(raw)

    # Assert: every generative task is named, with the field
    refused = [p for p in caught.value.problems if "trains classifiers only" in p]
    assert refused == [
        f"tasks.{name}.kind: {algorithm} trains classifiers only, and this task is generative"
        for name in ("topic", "news", "chat")
    ]


@pytest.mark.parametrize(("algorithm", "accepted"), [("fedavg", True), ("fedbrick", True), ("fedbip", False)])
def test_a_linear_probe_needs_a_layerwise_algorithm(algorithm: str, accepted: bool) -> None:
    # Prepare: train.freeze_lora keeps LoRA off the wire, which only a layer-wise server state tolerates
    raw = apply_overrides(BASE, {"algorithm": algorithm, "train.freeze_lora": True})

    # Execute
    problems: list[str] = []
    try:
        parse_scenario(raw)
    except ScenarioError as error:
        problems = [p for p in error.problems if p.startswith("train.freeze_lora")]

    # Assert
    assert problems == (
        []
        if accepted
        else [
            "train.freeze_lora: a federated linear probe keeps LoRA off the wire, which needs a layer-wise algorithm "
            "(fedavg, fedbrick); fedbip mixes every client's LoRA"
        ]
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"server.stop_when_plateau": "global"}, "server.stop_when_plateau: 'global' watches a validation loss"),
        ({"server.stop_when_plateau": "test"}, "server.stop_when_plateau: 'test' is not one of"),
        ({"data.validation_fraction": 1.0}, r"data.validation_fraction: must be in \[0, 1\)"),
        ({"server.plateau_window": 0}, "server.plateau_window: must be >= 1"),
    ],
)
def test_validation_and_plateau_fields_are_checked(overrides: dict, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(apply_overrides(copy.deepcopy(BASE), overrides))


def test_plateau_stop_with_a_validation_split_is_valid_and_off_by_default() -> None:
    # Execute
    default = parse_scenario(copy.deepcopy(BASE))
    stopping = parse_scenario(
        apply_overrides(copy.deepcopy(BASE), {"data.validation_fraction": 0.2, "server.stop_when_plateau": "on-device"})
    )

    # Assert
    assert default.server.stop_when_plateau == "off" and default.data.validation_fraction == 0.0
    assert stopping.server.stop_when_plateau == "on-device" and stopping.server.plateau_window == 5
