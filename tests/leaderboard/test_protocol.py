"""The protocol's data: budgets, the tuning grid, the powered suites, and a suite built from a user's file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbrick_flower.leaderboard.protocol import (
    MIN_LOCAL_STEPS,
    MIN_ROUNDS_CAP,
    POWERED,
    Protocol,
    edges,
    known_field,
    suite_from_file,
    user_powered_suite,
)
from fedbrick_flower.leaderboard.suites import expand

SCENARIO = """\
algorithm: fedavg
models: {m: {source: minilm}}
tasks: {t: {dataset: bbc-news}}
clients: [{id: a, model: m, task: t}, {id: b, model: m, task: t}]
"""


def test_every_powered_suite_meets_the_minimum_budgets() -> None:
    # Assert
    for powered in POWERED.values():
        protocol = powered.protocol
        assert protocol.rounds_cap >= MIN_ROUNDS_CAP and protocol.local_steps >= MIN_LOCAL_STEPS
        assert protocol.seeds >= 5 and protocol.validation_fraction > 0
        names = {m.name for m in powered.suite.methods}
        for pair in (*powered.comparisons, *powered.controls):
            assert {pair.method, pair.baseline} <= names, (powered.name, pair)


def test_protocol_overrides_turn_on_validation_and_the_plateau_stop() -> None:
    # Execute
    overrides = Protocol().overrides()

    # Assert
    assert overrides["rounds"] == 40 and overrides["train.local_steps"] == 20
    assert overrides["server.stop_when_plateau"] == "global"
    assert overrides["server.plateau_window"] == 5 and overrides["server.plateau_tolerance"] == 0.01


def test_grid_keys_this_version_does_not_know_are_left_out_and_named() -> None:
    # Prepare
    protocol = Protocol(grid={"train.lr": (5e-4, 1e-3), "train.no_such_field": (0, 1)})

    # Execute
    grid, left_out = protocol.available_grid()

    # Assert
    assert grid == {"train.lr": (5e-4, 1e-3)} and left_out == ["train.no_such_field"]
    assert protocol.grid_points() == [{"train.lr": 5e-4}, {"train.lr": 1e-3}]
    assert known_field("data.validation_fraction") and not known_field("train.nothing")


def test_two_of_six_suite_puts_every_client_at_two_layers_except_the_ceiling() -> None:
    # Prepare
    suite = POWERED["depth-2of6"].suite

    # Execute
    cells = {c.method: c for c in expand(suite, [0])}

    # Assert
    assert cells["fedra"].overrides["clients.3.layers"] == 2
    assert cells["alllayers"].overrides["clients.3.layers"] == 6
    assert cells["fedra-fedbrick-steps"].unavailable is None and cells["fedra-fedbrick-steps"].algorithm == "fedavg"


def test_suite_from_a_user_file_takes_suite_methods_and_algorithms(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "mine.yaml"
    path.write_text(SCENARIO)

    # Execute
    suite = suite_from_file(path, ["fedra", "fedbrick", "fedavg"])
    cells = expand(suite, [0])

    # Assert
    assert suite.name == "mine" and suite.scenario == str(path.resolve())
    assert [c.algorithm for c in cells] == ["fedavg", "fedbrick", "fedavg"]
    assert cells[0].overrides["algorithm_params"] == {"resample_layers": True}
    assert all("clients" not in key for c in cells for key in c.overrides)  # the file's own clients
    powered = user_powered_suite(suite)
    assert [(c.method, c.baseline) for c in powered.comparisons] == [("fedbrick", "fedra"), ("fedavg", "fedra")]
    assert powered.protocol.plateau_metric == "global"


def test_user_file_without_global_evaluation_watches_on_device_loss(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "mine.yaml"
    path.write_text(SCENARIO + "server: {evaluate_global: false}\n")

    # Execute
    powered = user_powered_suite(suite_from_file(path, ["local", "fedit"]))

    # Assert
    assert powered.protocol.plateau_metric == "on-device" and powered.protocol.headline == "on-device"


def test_unknown_method_and_missing_methods_are_named(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "mine.yaml"
    path.write_text(SCENARIO)

    # Execute / Assert
    with pytest.raises(ValueError, match="not-a-method"):
        suite_from_file(path, ["fedra", "not-a-method"])
    with pytest.raises(ValueError, match="--methods"):
        suite_from_file(path, [])


def test_rank_suite_holds_every_client_at_full_depth_and_a_large_test_split() -> None:
    # Execute
    cells = expand(POWERED["rank"].suite, [0])

    # Assert
    for cell in cells:
        assert all(cell.overrides[f"clients.{i}.layers"] == 6 for i in range(8)), cell.method
        assert cell.overrides["data.server_test_fraction"] == 0.3


def test_a_choice_at_the_grid_edge_is_named_except_a_lowest_value_of_zero() -> None:
    # Prepare
    tried = [{"train.lr": lr, "train.head_warmup_steps": wu} for lr in (1e-4, 1e-3, 1e-2) for wu in (0, 20)]

    # Execute / Assert
    assert edges({"train.lr": 1e-4, "train.head_warmup_steps": 0}, tried) == {"train.lr": "lowest"}
    assert edges({"train.lr": 1e-3, "train.head_warmup_steps": 20}, tried) == {"train.head_warmup_steps": "highest"}
    assert Protocol().grid_points(("train.lr",)) == [{"train.head_lr": 1e-3}, {"train.head_lr": 5e-3}]


def test_only_a_choice_at_an_extendable_edge_moves_past_it() -> None:
    # Prepare: train.lr extends by halving or doubling, the warm-up does not extend
    protocol = Protocol(extend={"train.lr": 0.5})
    tried = [{"train.lr": lr, "train.head_warmup_steps": wu} for lr in (1e-4, 1e-3) for wu in (0, 20)]

    # Execute / Assert
    assert protocol.beyond_edge({"train.lr": 1e-4, "train.head_warmup_steps": 20}, tried) == {
        "train.lr": 5e-5, "train.head_warmup_steps": 20
    }  # fmt: skip
    assert protocol.beyond_edge({"train.lr": 1e-3, "train.head_warmup_steps": 0}, tried)["train.lr"] == 2e-3
    middle = [*tried, {"train.lr": 5e-4, "train.head_warmup_steps": 20}]
    assert protocol.beyond_edge({"train.lr": 5e-4, "train.head_warmup_steps": 20}, middle) is None


def test_every_powered_suite_names_each_method_once() -> None:
    # Execute
    names = {name: [m.name for m in powered.suite.methods] for name, powered in POWERED.items()}

    # Assert: two methods of one name would share one run directory
    assert {name: len(set(methods)) for name, methods in names.items()} == {n: len(m) for n, m in names.items()}
