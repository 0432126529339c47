"""Checks across fields: data sources, ranks per model, and the capabilities an algorithm declares in the registry."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml

from fedbrick_flower.scenario import ScenarioError, apply_overrides, collect_scenario, parse_scenario, scenario_path
from tests.scenario.smoke import BASE, smoke_with


def test_file_tasks_and_device_only_tasks() -> None:
    # Prepare
    files = smoke_with("tasks.bbc", {"train": "train.jsonl", "test": "test.csv", "text": "body", "labels": [0, 1]})
    devices = smoke_with("tasks.bbc", {"labels": ["neg", "pos"]})
    for index, name in enumerate(["a.jsonl", "b.parquet", "c.csv"]):
        devices["clients"][index]["train"] = name
    undeclared = smoke_with("tasks.bbc", {"kind": "classification"})
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


def test_a_robust_aggregation_is_refused_under_an_algorithm_that_mixes_by_its_own_rule() -> None:
    # Prepare
    raw = smoke_with("server.aggregation", "median")
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
    raw = smoke_with("server", {"aggregation": "trimmed-mean", "outlier_norm_multiple": 3, "clip_norm": 5})

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


@pytest.mark.parametrize(
    ("algorithm", "server", "expected"),
    [
        ("fedbip", {}, "privacy.mode: 'central' needs an algorithm whose server averages each tensor over its holders"),
        ("fedavg", {"aggregation": "median"}, "server.aggregation: 'median' cannot run under privacy.mode: central"),
        ("fedavg", {"clip_norm": 2.0}, "server.clip_norm: cannot be set under privacy.mode: central"),
    ],
)
def test_central_privacy_is_refused_where_the_server_math_is_not_a_mean_over_holders(
    algorithm: str, server: dict, expected: str
) -> None:
    # Prepare
    raw = smoke_with("privacy", {"mode": "central"})
    raw["algorithm"], raw["server"] = algorithm, server

    # Execute
    _, problems = collect_scenario(raw)

    # Assert
    assert any(problem.startswith(expected) for problem in problems), problems


def test_local_privacy_and_the_default_screening_load_for_every_algorithm_of_the_smoke_clients() -> None:
    # Prepare
    raw = smoke_with("privacy", {"mode": "local", "noise_multiplier": 0.5})

    # Execute
    scenario, problems = collect_scenario(raw)

    # Assert: the default screening is on (10x the round's median RMS entry), privacy is as written
    assert problems == []
    assert (scenario.server.outlier_norm_multiple, scenario.server.norm_scope) == (10.0, "rms")
    assert (scenario.privacy.mode, scenario.privacy.noise_multiplier, scenario.privacy.delta) == ("local", 0.5, 1e-5)
