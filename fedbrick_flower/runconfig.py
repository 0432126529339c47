"""Flower ``run_config`` -> scenario: the scenario name plus single-key overrides.

``pyproject.toml`` declares the short keys (Flower rejects undeclared ones); an empty string, 0 or -1 there
means "keep the scenario's value". Any other declared key is a dotted scenario path.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from .data.sources import FileStamp, file_stamp
from .scenario import Scenario, load_scenario, scenario_path

SCENARIO_KEY = "scenario"
OUT_DIR_KEY = "out-dir"
RESUME_KEY = "resume-from"
AUDIT_KEY = "audit-wire"
# The fingerprint of the scenario `fedbrick-flower run` checked before submitting: the ServerApp does not repeat
# the pre-flight checks of that same scenario (a plain `flwr run .` leaves it empty and gets them all).
PREFLIGHT_KEY = "preflight"
_RUN_KEYS = {SCENARIO_KEY, OUT_DIR_KEY, RESUME_KEY, AUDIT_KEY, PREFLIGHT_KEY}
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
    """Load the run's scenario with its overrides applied.

    Every message of a run asks for it, so it is read once per process: memoized on the file's path, size and
    modification time and on the overrides (a scenario file rewritten in place is read again).
    """
    name = str(run_config.get(SCENARIO_KEY, "smoke"))
    overrides = json.dumps(scenario_overrides(run_config), sort_keys=True)
    return _load(name, file_stamp(scenario_path(name)), overrides)


@functools.lru_cache(maxsize=8)
def _load(name: str, stamp: FileStamp, overrides: str) -> Scenario:
    return load_scenario(name, json.loads(overrides))
