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
