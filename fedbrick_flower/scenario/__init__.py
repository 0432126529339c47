"""Scenarios: one YAML file describes a whole run, validated on load with errors that name the field.

- :mod:`~fedbrick_flower.scenario.schema`: the dataclasses of a validated scenario and the keys of a file;
- :mod:`~fedbrick_flower.scenario.loading`: built-in discovery, YAML, overrides, ``load_scenario``;
- :mod:`~fedbrick_flower.scenario.checks`: ranges, choices and the checks across fields;
- :mod:`~fedbrick_flower.scenario.building`: the generic typed builder (a dataclass from a mapping).

None of them imports torch or a strategy. The scenario files themselves live in ``fedbrick_flower/scenarios/``.
"""

from .building import did_you_mean, type_name, typed_value
from .checks import (
    CHOICES,
    DEVICES,
    DTYPES,
    FAULT_LISTS,
    RANGES,
    WIRE_DTYPES,
    Range,
    aggregation_problems,
    linear_probe_problems,
    objective_problems,
    rank_problems,
    semantic_problems,
)
from .loading import (
    SCENARIO_DIR,
    apply_overrides,
    builtin_scenarios,
    collect_scenario,
    load_scenario,
    parse_overrides,
    parse_profile,
    parse_scenario,
    read_scenario,
    read_yaml_mapping,
    scenario_path,
    yaml_value,
)
from .schema import (
    MODEL_KEYS,
    SCENARIO_KEYS,
    ClientProfile,
    DataSettings,
    FaultSettings,
    LoraDefaults,
    PrivacySettings,
    Scenario,
    ScenarioError,
    ServerSettings,
    TaskSpec,
    TrainSettings,
)

__all__ = [
    "CHOICES",
    "DEVICES",
    "DTYPES",
    "FAULT_LISTS",
    "MODEL_KEYS",
    "RANGES",
    "SCENARIO_DIR",
    "SCENARIO_KEYS",
    "WIRE_DTYPES",
    "ClientProfile",
    "DataSettings",
    "FaultSettings",
    "LoraDefaults",
    "PrivacySettings",
    "Range",
    "Scenario",
    "ScenarioError",
    "ServerSettings",
    "TaskSpec",
    "TrainSettings",
    "aggregation_problems",
    "apply_overrides",
    "builtin_scenarios",
    "collect_scenario",
    "did_you_mean",
    "linear_probe_problems",
    "load_scenario",
    "objective_problems",
    "parse_overrides",
    "parse_profile",
    "parse_scenario",
    "rank_problems",
    "read_scenario",
    "read_yaml_mapping",
    "scenario_path",
    "semantic_problems",
    "type_name",
    "typed_value",
    "yaml_value",
]
