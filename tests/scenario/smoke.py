"""The smoke scenario as a raw mapping, for tests that break one value of a valid file."""

from __future__ import annotations

import copy

import yaml

from fedbrick_flower.scenario import apply_overrides, scenario_path

BASE = yaml.safe_load(scenario_path("smoke").read_text())


def smoke_with(path: str, value: object) -> dict:
    """The smoke scenario's raw mapping with one dotted-path key set."""
    return apply_overrides(copy.deepcopy(BASE), {path: value})
