"""``privacy.secure_aggregation``: refused at load, naming the field, wherever the server needs an individual
update; accepted under the algorithms whose registry entry declares that their server needs only sums."""

from __future__ import annotations

import pytest

from fedbrick_flower.registry import secure_aggregation_algorithms
from fedbrick_flower.scenario import ScenarioError, apply_overrides, parse_scenario
from tests.scenario.smoke import BASE

SECURE = {"privacy.secure_aggregation": True}


def test_the_algorithms_whose_server_needs_only_sums_declare_it() -> None:
    assert secure_aggregation_algorithms() == ["fedavg", "fedbrick"]


def test_secure_aggregation_is_off_by_default_and_accepted_under_fedavg() -> None:
    # Execute
    default = parse_scenario(BASE)
    secure = parse_scenario(apply_overrides(BASE, SECURE))

    # Assert
    assert default.privacy.secure_aggregation is False
    assert secure.privacy.secure_aggregation is True and secure.algorithm == "fedavg"


@pytest.mark.parametrize("algorithm", ["fedbip", "fedmosaic", "flora", "h2tune", "hetlora", "flexlora", "local"])
def test_algorithms_that_need_individual_updates_are_refused(algorithm: str) -> None:
    # Prepare
    raw = apply_overrides(BASE, {**SECURE, "algorithm": algorithm})

    # Execute / Assert
    with pytest.raises(ScenarioError, match=rf"privacy.secure_aggregation: {algorithm} needs each client's"):
        parse_scenario(raw)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("server.aggregation", "median"),
        ("server.clip_norm", 1.0),
        ("server.clip_norm_multiple", 2.0),
        ("server.outlier_norm_multiple", 3.0),
    ],
)
def test_defences_that_need_individual_updates_are_refused(key: str, value: object) -> None:
    # Prepare
    raw = apply_overrides(BASE, {**SECURE, key: value})

    # Execute / Assert
    with pytest.raises(ScenarioError, match=rf"privacy.secure_aggregation: {key}"):
        parse_scenario(raw)


def test_one_client_cannot_aggregate_securely() -> None:
    # Prepare
    raw = apply_overrides(BASE, SECURE)
    raw["clients"] = raw["clients"][:1]

    # Execute / Assert
    with pytest.raises(ScenarioError, match="privacy.secure_aggregation: needs at least 2 clients"):
        parse_scenario(raw)
