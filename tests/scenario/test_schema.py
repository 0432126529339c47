"""The scenario schema: scenarios compare by content, and the data settings give a partitioner its parameters."""

from __future__ import annotations

from fedbrick_flower.scenario import load_scenario, parse_scenario
from tests.scenario.smoke import smoke_with


def test_scenarios_compare_by_content() -> None:
    assert load_scenario("smoke") == load_scenario("smoke")
    assert hash(load_scenario("smoke")) == hash(load_scenario("smoke"))
    assert load_scenario("smoke") != load_scenario("smoke", {"rounds": 3})


def test_data_partition_takes_a_partitioner_and_its_parameters() -> None:
    # Execute
    pathological = parse_scenario(
        smoke_with("data", {"partition": "pathological", "partition_params": {"num_classes_per_partition": 2}})
    )
    legacy = parse_scenario(smoke_with("data", {"partition": "dirichlet", "dirichlet_alpha": 0.3}))
    given = parse_scenario(smoke_with("data", {"partition": "dirichlet", "partition_params": {"alpha": 2}}))

    # Assert
    assert pathological.data.partitioner_params() == {"num_classes_per_partition": 2}
    assert legacy.data.partitioner_params() == {"alpha": 0.3}
    assert given.data.partitioner_params() == {"alpha": 2}
