"""Typed building: wrong types, missing and unknown keys are named with the field and how to write it."""

from __future__ import annotations

import copy

import pytest

from fedbrick_flower.registry import algorithm_names
from fedbrick_flower.scenario import ScenarioError, parse_scenario
from tests.scenario.smoke import BASE, smoke_with


def test_a_string_where_a_number_is_expected_says_how_to_write_it() -> None:
    with pytest.raises(ScenarioError, match=r"train.lr: expected float, got 'fast' \(a string: write the number"):
        parse_scenario(smoke_with("train.lr", "fast"))


def test_a_string_where_a_list_is_expected_names_the_list_form() -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(smoke_with("faults.nan_update", "bert-full"))
    assert caught.value.problems == [
        "faults.nan_update: expected list of str, got 'bert-full' (write a list: [bert-full])"
    ]


def test_a_missing_required_key_is_named() -> None:
    # Prepare
    raw = copy.deepcopy(BASE)
    del raw["clients"][1]["task"]
    del raw["algorithm"]

    # Execute
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(raw)

    # Assert
    assert caught.value.problems == [
        "clients[1].task: required field missing (required: id, model, task)",
        f"algorithm: required field missing (one of {algorithm_names()})",
    ]
    assert "__init__" not in str(caught.value)


def test_unknown_fields_suggest_the_near_miss() -> None:
    with pytest.raises(ScenarioError, match=r"train.local_step: unknown field \(did you mean 'local_steps'\?\)"):
        parse_scenario(smoke_with("train.local_step", 3))
