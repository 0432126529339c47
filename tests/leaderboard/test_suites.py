"""Suite expansion: methods x seeds, shared budgets, unregistered algorithms, --set overrides."""

from __future__ import annotations

import pytest

from fedbrick_flower.leaderboard import suites
from fedbrick_flower.leaderboard.suites import NOT_REGISTERED, SUITES, expand
from fedbrick_flower.scenario import load_scenario, parse_overrides


def _scenario(cell: suites.Cell):
    arguments = cell.set_arguments()
    assert arguments[::2] == ["--set"] * (len(arguments) // 2)
    return load_scenario(cell.scenario, parse_overrides(arguments[1::2]))


def test_depth_suite_expands_to_methods_times_seeds_method_major() -> None:
    # Prepare
    suite = SUITES["depth"]

    # Execute
    cells = expand(suite, [0, 1, 2])

    # Assert
    assert len(cells) == 7 * 3
    assert [c.key for c in cells[:4]] == [
        "alllayers/seed-0",
        "alllayers/seed-1",
        "alllayers/seed-2",
        "smallest-depth/seed-0",
    ]
    assert all(c.overrides["seed"] == c.seed and c.overrides["algorithm"] == c.algorithm for c in cells)
    assert all(c.unavailable is None for c in cells)


def test_depth_cells_resolve_to_the_same_data_and_budgets_with_their_own_depths() -> None:
    # Prepare
    cells = {c.method: c for c in expand(SUITES["depth"], [1], {"rounds": 2, "algorithm_params.distill_epochs": 1})}

    # Execute
    scenarios = {method: _scenario(cell) for method, cell in cells.items()}

    # Assert: same rounds, data, training budget and seed everywhere; depth and LoRA freezing by method
    first = scenarios["fedra"]
    for method, scenario in scenarios.items():
        assert (scenario.rounds, scenario.seed, scenario.data, scenario.tasks) == (2, 1, first.data, first.tasks)
        if method != "fedra-fedbrick-steps":  # its compute is what defines it (tested below)
            assert scenario.train.local_steps == first.train.local_steps
    assert first.data.proxy_fraction == 0.15
    assert [p.layers for p in scenarios["alllayers"].clients] == [6] * 6
    assert [p.layers for p in scenarios["smallest-depth"].clients] == [2] * 6
    assert [p.layers for p in scenarios["fedra"].clients] == [6, 4, 2, 2, 2, 2]
    assert scenarios["head-only"].train.freeze_lora and not scenarios["fedra"].train.freeze_lora
    # algorithm_params.distill_epochs reaches FedBRICK's cells only (FedAvg has no such parameter)
    assert scenarios["fedbrick"].algorithm_params["distill_epochs"] == 1
    assert scenarios["fedbrick-no-distill"].algorithm_params["distill"] is False
    assert "distill_epochs" not in scenarios["fedra"].algorithm_params


@pytest.mark.parametrize(("extra", "expected"), [({}, 15 + 10), ({"train.local_steps": 60}, 60 + 12)])
def test_the_fedra_variant_takes_fedbricks_optimizer_steps(extra: dict, expected: int) -> None:
    # Prepare: the depth suite's scenario trains 15 local steps; FedBRICK adds max(10, 20 %) Stage-II steps
    cells = {c.method: c for c in expand(SUITES["depth"], [0], extra)}

    # Execute
    scenarios = {method: _scenario(cells[method]) for method in ("fedra", "fedra-fedbrick-steps", "fedbrick")}

    # Assert: the same FedRA otherwise; FedBRICK's own cell keeps the cell's Stage-I steps
    assert scenarios["fedra-fedbrick-steps"].train.local_steps == expected
    assert scenarios["fedbrick"].train.local_steps == scenarios["fedra"].train.local_steps
    assert suites.fedbrick_round_steps(scenarios["fedbrick"].train.local_steps) == expected
    assert scenarios["fedra-fedbrick-steps"].algorithm_params == scenarios["fedra"].algorithm_params


def test_rank_suite_gives_fedavg_one_rank_and_the_mix_to_rank_methods() -> None:
    # Prepare
    cells = {c.method: c for c in expand(SUITES["rank"], [0])}

    # Execute
    ranks = {method: [p.rank for p in _scenario(cell).clients] for method, cell in cells.items()}

    # Assert
    assert ranks["fedavg-min-rank"] == [2] * 8
    assert ranks["fedavg-max-rank"] == [16] * 8
    assert ranks["hetlora"] == [16, 8, 8, 4, 4, 2, 2, 2]


def test_rank_suite_keeps_every_client_at_full_depth_so_depth_does_not_confound_rank() -> None:
    # Prepare
    cells = expand(SUITES["rank"], [0])

    # Execute
    depths = {cell.method: [p.layers for p in _scenario(cell).clients] for cell in cells}

    # Assert: no client holds part of the depth (None: the model's full depth)
    assert all(layers == [None] * 8 for layers in depths.values()), depths


def test_unregistered_algorithms_are_declared_unavailable_until_registered(monkeypatch) -> None:
    # Prepare
    hybrid = SUITES["hybrid"]

    # Execute: a registry without FedMosaic and H2Tune (as a plug-in's algorithm before its package is installed)
    monkeypatch.setattr(suites, "algorithm_names", lambda: ["local", "fedavg", "hetlora"])
    before = {c.method: c.unavailable for c in expand(hybrid, [0])}
    monkeypatch.undo()
    after = {c.method: c.unavailable for c in expand(hybrid, [0])}

    # Assert
    assert before["fedmosaic"] == NOT_REGISTERED and before["h2tune"] == NOT_REGISTERED
    assert before["local"] is None
    assert all(reason is None for reason in after.values())


def test_methods_filter_keeps_suite_order_and_refuses_unknown_names() -> None:
    # Execute
    cells = expand(SUITES["depth"], [0], methods=["head-only", "fedra"])

    # Assert
    assert [c.method for c in cells] == ["fedra", "head-only"]
    with pytest.raises(ValueError, match="fedrra"):
        expand(SUITES["depth"], [0], methods=["fedrra"])


@pytest.mark.parametrize("name", ["personalization", "hybrid"])
def test_every_cell_of_the_personalization_and_hybrid_suites_loads_with_the_same_data(name: str) -> None:
    # Prepare
    cells = expand(SUITES[name], [2], {"rounds": 3})

    # Execute: load_scenario runs every check the run would (FedMosaic's one rank, parameters by algorithm)
    scenarios = {cell.method: _scenario(cell) for cell in cells}

    # Assert
    first = next(iter(scenarios.values()))
    for scenario in scenarios.values():
        assert (scenario.rounds, scenario.seed, scenario.data, scenario.tasks) == (3, 2, first.data, first.tasks)
        assert [(p.model, p.task, p.layers, p.rank) for p in scenario.clients] == [
            (p.model, p.task, p.layers, p.rank) for p in first.clients
        ]
    assert {method: s.algorithm for method, s in scenarios.items()} == {
        m.name: m.algorithm for m in SUITES[name].methods
    }


def test_hybrid_suite_crosses_families_and_gives_only_fedmosaic_its_probe() -> None:
    # Prepare / Execute
    scenarios = {c.method: _scenario(c) for c in expand(SUITES["hybrid"], [0])}

    # Assert: every task is held by clients of two families, so what one family learns can help another
    clients = scenarios["local"].clients
    families_by_task = {p.task: {q.model for q in clients if q.task == p.task} for p in clients}
    assert all(len(models) == 2 for models in families_by_task.values())
    assert scenarios["fedmosaic"].algorithm_params["probe"] == "smollm2-135m"
    assert all(not s.algorithm_params for method, s in scenarios.items() if method != "fedmosaic")
