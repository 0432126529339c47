"""Flower ``run_config`` -> scenario: the scenario name plus single-key overrides.

``pyproject.toml`` declares the short keys (Flower rejects undeclared ones); an empty string, 0 or -1 there
means "keep the scenario's value". Any other declared key is a dotted scenario path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .scenario import Scenario, load_scenario

SCENARIO_KEY = "scenario"
OUT_DIR_KEY = "out-dir"
RESUME_KEY = "resume-from"
AUDIT_KEY = "audit-wire"
_RUN_KEYS = {SCENARIO_KEY, OUT_DIR_KEY, RESUME_KEY, AUDIT_KEY}
_UNSET: tuple[Any, ...] = ("", -1, -1.0)
_SHORT_KEYS = {
    "algorithm": "algorithm",
    "rounds": "rounds",
    "seed": "seed",
    "local-steps": "train.local_steps",
    "fraction-train": "server.fraction_train",
    "wire-dtype": "server.wire_dtype",
}


def scenario_overrides(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The scenario overrides a run config carries (unset sentinels dropped)."""
    overrides = {}
    for key, value in run_config.items():
        if key in _RUN_KEYS or value in _UNSET or (key == "rounds" and value == 0):
            continue
        overrides[_SHORT_KEYS.get(key, key)] = value
    return overrides


def scenario_from_run_config(run_config: Mapping[str, Any]) -> Scenario:
    """Load the run's scenario with its overrides applied."""
    return load_scenario(str(run_config.get(SCENARIO_KEY, "smoke")), scenario_overrides(run_config))
