"""``lora.targets`` takes module roles: the default, ``all-linear``, and errors that name the field."""

from __future__ import annotations

import pytest

from fedbrick_flower.scenario import ScenarioError, load_scenario


@pytest.mark.parametrize(
    "targets, roles",
    [(None, ("q", "v")), ("all-linear", ("all-linear",)), (["q", "k", "down"], ("q", "k", "down"))],
)
def test_targets_are_roles(targets, roles: tuple[str, ...]) -> None:
    # Execute
    scenario = load_scenario("smoke", {} if targets is None else {"lora.targets": targets})

    # Assert
    assert scenario.lora.roles == roles


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("lora.targets", ["q", "query"], r"lora.targets: module roles \['query'\] are not among"),
        ("lora.targets", [], "lora.targets: module roles must not be empty"),
        ("lora.targets", 3, "lora.targets: expected"),
        ("lora.dropout", 1.5, r"lora.dropout: must be in \[0, 1\)"),
    ],
)
def test_bad_lora_settings_name_the_field(path: str, value, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario("smoke", {path: value})
