"""Scenario loading: every built-in parses, overrides apply, and errors name the offending field."""

from __future__ import annotations

import copy

import pytest
import yaml

from fedbrick_flower.runconfig import scenario_overrides
from fedbrick_flower.scenario import (
    ScenarioError,
    apply_overrides,
    builtin_scenarios,
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
        ("data", {"partition": "dirichlet", "dirichlet_alpha": 0.0}, "data.partition_params.alpha: must be > 0"),
        ("data.overlong", "cut", "data.overlong: 'cut' is not one of"),
        ("data.max_length", 0, "data.max_length: must be >= 1"),
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
