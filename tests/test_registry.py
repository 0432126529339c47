"""The algorithm registry: declared algorithm parameters and rank mixing."""

from __future__ import annotations

import inspect

import pytest

from fedbrick_flower.registry import (
    FLORA_SEGMENTS_KEY,
    RUNTIME_ARGUMENTS,
    AlgorithmEntry,
    algorithm_entry,
    algorithm_names,
    algorithm_parameters,
    mixes_ranks,
    rank_mixing_algorithms,
    register,
    scenario_checks,
)


def test_parameters_come_from_the_strategy_init_chain_minus_runtime_arguments() -> None:
    # Execute
    fedavg = algorithm_parameters("fedavg")
    fedbrick = algorithm_parameters("fedbrick")

    # Assert
    assert list(fedavg) == ["resample_layers"]
    assert fedavg["resample_layers"].default is False
    assert fedbrick["resample_layers"].default is True  # the subclass's default wins
    assert fedbrick["distill_lr"].default == pytest.approx(1e-4)
    assert not set(fedbrick) & RUNTIME_ARGUMENTS


def test_exactly_the_rank_heterogeneous_methods_mix_ranks() -> None:
    # Assert
    assert rank_mixing_algorithms() == ["flexlora", "flora", "h2tune", "hetlora"]
    assert not mixes_ranks("fedavg") and not mixes_ranks("fedbip") and mixes_ranks("flora")


def test_registering_a_name_twice_is_refused() -> None:
    # Prepare
    entry = AlgorithmEntry(server="a:B", client="c:D", description="x")

    # Execute / Assert
    with pytest.raises(ValueError, match="'fedavg' is already registered"):
        register("fedavg", entry)


def test_an_algorithm_may_not_take_a_wire_key_of_another() -> None:
    # Prepare
    entry = AlgorithmEntry(server="a:B", client="c:D", description="x", wire_keys=("own-key", FLORA_SEGMENTS_KEY))

    # Execute / Assert
    with pytest.raises(ValueError, match=r"'plugin': wire keys \['flora-segments'\] are already those of 'flora'"):
        register("plugin", entry)
    assert "plugin" not in algorithm_names()


def test_each_built_in_wire_key_belongs_to_one_client_half() -> None:
    # Execute
    owners: dict[str, set[str]] = {}
    for name in algorithm_names():
        for key in algorithm_entry(name).wire_keys:
            owners.setdefault(key, set()).add(algorithm_entry(name).client)

    # Assert
    assert FLORA_SEGMENTS_KEY in algorithm_entry("flora").wire_keys
    assert all(len(clients) == 1 for clients in owners.values())


def test_runtime_arguments_are_exactly_what_the_server_app_fills_in() -> None:
    # Prepare
    from fedbrick_flower.registry import RUNTIME_ARGUMENTS
    from fedbrick_flower.scenario import load_scenario
    from fedbrick_flower.strategies.build import runtime_arguments

    # Execute
    filled = set(runtime_arguments(load_scenario("smoke"), callbacks=[]))

    # Assert: `scenario` is passed by from_scenario itself; the rest must not be mistaken for algorithm params
    assert filled | {"scenario"} == set(RUNTIME_ARGUMENTS)


def test_every_declared_scenario_check_is_a_function_of_the_scenario() -> None:
    # Execute
    checks = {name: scenario_checks(name) for name in algorithm_names()}

    # Assert: the algorithms with checks of their own declare them; each takes the scenario alone
    assert sorted(name for name, check in checks.items() if check is not None) == [
        "fedbip",
        "fedbip-l",
        "fedmosaic",
        "h2tune",
    ]
    for check in filter(None, checks.values()):
        assert list(inspect.signature(check).parameters) == ["scenario"]
