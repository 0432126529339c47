"""Scenario loading: every built-in parses, overrides apply, YAML errors and every problem of a file are named."""

from __future__ import annotations

from pathlib import Path

import pytest

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
from tests.imports import heavy_imports_after
from tests.scenario.smoke import BASE, smoke_with


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
        parse_scenario(smoke_with(path, value))


def test_models_need_exactly_one_of_source_or_family() -> None:
    raw = smoke_with("models.tiny-bert.source", "minilm")
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


def test_algorithm_params_as_a_list_is_a_clean_error() -> None:
    with pytest.raises(ScenarioError, match=r"algorithm_params: must be a mapping .* got \['resample_layers'\]"):
        parse_scenario(smoke_with("algorithm_params", ["resample_layers"]))


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


def test_malformed_yaml_names_the_file_line_and_column(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "bad.yaml"
    path.write_text("algorithm: fedavg\nmodels:\n  m: {source: minilm\ntasks: x\n")

    # Execute / Assert
    with pytest.raises(ScenarioError, match=rf"scenario {path}: not valid YAML at line 4, column 6: expected ','"):
        load_scenario(str(path))


def test_loading_every_builtin_scenario_imports_no_torch() -> None:
    # Execute: hetero-depth, then every other built-in file
    loaded = heavy_imports_after(
        "from fedbrick_flower.scenario import builtin_scenarios, load_scenario\n"
        "load_scenario('hetero-depth')\n"
        "for name in builtin_scenarios():\n"
        "    load_scenario(name)"
    )

    # Assert
    assert loaded == []


def test_overrides_leave_the_callers_values_as_they_were() -> None:
    # Prepare: a suite's client list, shared by its cells, with a later key that writes into it
    clients = [{"id": "a", "model": "m", "task": "t", "layers": 2}]
    overrides = {"clients": clients, "clients.0.layers": 6}

    # Execute
    raw = apply_overrides({"clients": []}, overrides)

    # Assert
    assert raw["clients"][0]["layers"] == 6
    assert clients[0]["layers"] == 2 and overrides["clients"] is clients
