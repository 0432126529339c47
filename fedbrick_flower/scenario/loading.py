"""Loading: find a scenario (a built-in name or a path), read its YAML, apply overrides, build and check it.

A scenario names the models, the tasks and how their data is split, each client's device profile, the
algorithm and its hyper-parameters, the rounds and the seed. Flower's ``run_config`` names the scenario and
may override single keys with dotted paths (``train.lr``, ``clients.0.layers``) or the short keys declared in
``pyproject.toml`` (``algorithm``, ``rounds``, ``seed``...).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..models.spec import ModelSpec
from ..registry import algorithm_names
from .building import build_typed, typed_value, unknown_keys
from .checks import profile_problems, semantic_problems
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

T = TypeVar("T")


SCENARIO_DIR = "scenarios"


def builtin_scenarios() -> list[str]:
    """Names of the scenarios that ship inside the package."""
    folder = resources.files("fedbrick_flower") / SCENARIO_DIR
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def scenario_path(name_or_path: str) -> Path:
    """A built-in scenario name or a YAML path -> the file."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise ScenarioError(f"scenario: file {name_or_path!r} does not exist")
        return candidate
    builtin = resources.files("fedbrick_flower") / SCENARIO_DIR / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise ScenarioError(f"scenario: {name_or_path!r} is neither a file nor a built-in ({builtin_scenarios()})")
    return Path(str(builtin))


# ---------------------------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats: YAML 1.1 reads ``5e-4`` and ``1e3`` (no dot) as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_value(text: str, where: str = "YAML") -> Any:
    """Parse YAML text the way scenarios are read (``5e-4`` is a float); errors give line and column."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        position = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = f" ({error.context})" if error.context else ""
        raise ScenarioError(f"{where}: not valid YAML at {position}{error.problem}{context}") from None
    except yaml.YAMLError as error:
        raise ScenarioError(f"{where}: not valid YAML: {error}") from None


def read_yaml_mapping(path: Path, where: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (a scenario or a device profile)."""
    raw = yaml_value(path.read_text(), f"{where} {path}")
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where} {path}: must hold a mapping of keys at the top level, got {raw!r}")
    return raw


# ---------------------------------------------------------------------------------------------- loading
def load_scenario(name_or_path: str, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read, override and validate a scenario (every problem of the file in one :class:`ScenarioError`)."""
    path = scenario_path(name_or_path)
    scenario, problems = collect_scenario(read_scenario(path, overrides))
    if problems:
        raise ScenarioError(problems, source=str(path))
    return scenario


def read_scenario(path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw mapping of a scenario file, its name defaulted to the file's stem, overrides applied."""
    raw = read_yaml_mapping(path, "scenario")
    raw.setdefault("name", path.stem)
    return apply_overrides(raw, overrides or {})


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted-path keys (``train.lr``, ``clients.0.layers``) in a copy of the raw scenario.

    The values are copied too: a later key (``clients.0.layers``) writes into what an earlier one set
    (``clients``), and must not write into the caller's overrides (a suite's shared client list).
    """
    result = copy.deepcopy(raw)
    overrides = copy.deepcopy(overrides)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: depth + 1]))
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, dotted)] = value
        else:
            node[last] = value
    return result


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` command-line overrides (values read as YAML: ``rounds=5``, ``layers=[0, 2]``)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ScenarioError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml_value(value, f"--set {item!r}")
    return overrides


def parse_scenario(raw: dict[str, Any]) -> Scenario:
    """Validate a raw scenario mapping; one :class:`ScenarioError` lists every problem, each naming field and value."""
    scenario, problems = collect_scenario(raw)
    if problems:
        raise ScenarioError(problems)
    return scenario


def collect_scenario(raw: dict[str, Any]) -> tuple[Scenario, list[str]]:
    """Build as much of a scenario as is valid and list every problem found on the way.

    Sections that fail are replaced by their defaults (clients, models and tasks that fail are left out), so the
    checks that follow, here and in :mod:`fedbrick_flower.preflight`, still see the rest of the file.
    """
    problems: list[str] = []
    problems += unknown_keys(raw, set(SCENARIO_KEYS), "")
    models: dict[str, ModelSpec] = {}
    for key, value in _mapping(raw, "models", problems).items():
        spec = _attempt(problems, functools.partial(_model_spec, key, value), None)
        if spec is not None:
            models[key] = spec
    tasks: dict[str, TaskSpec] = {}
    for key, value in _mapping(raw, "tasks", problems).items():
        task = _attempt(problems, functools.partial(build_typed, TaskSpec, value, f"tasks.{key}"), None)
        if task is not None:
            tasks[key] = task
    # Keys as written, so that a client of a model whose entry is broken is not reported a second time.
    known = tuple(set(raw[key]) if isinstance(raw.get(key), dict) else set() for key in ("models", "tasks"))
    clients = []
    for index, entry in enumerate(_list(raw, "clients", problems)):
        profile = _attempt(problems, functools.partial(_client, entry, index, *known), None)
        if profile is not None:
            clients.append(profile)
    scenario = Scenario(
        name=_attempt(problems, lambda: typed_value(raw.get("name", "scenario"), str, "name"), "scenario"),
        description=_attempt(problems, lambda: typed_value(raw.get("description", ""), str, "description"), ""),
        algorithm=_attempt(problems, lambda: _algorithm(raw), ""),
        models=models,
        tasks=tasks,
        clients=tuple(clients),
        rounds=_attempt(problems, lambda: typed_value(raw.get("rounds", 3), int, "rounds"), 3),
        seed=_attempt(problems, lambda: typed_value(raw.get("seed", 0), int, "seed"), 0),
        algorithm_params=_attempt(problems, lambda: _algorithm_params(raw.get("algorithm_params")), {}),
        data=_section(problems, DataSettings, raw, "data"),
        train=_section(problems, TrainSettings, raw, "train"),
        lora=_section(problems, LoraDefaults, raw, "lora"),
        server=_section(problems, ServerSettings, raw, "server"),
        faults=_section(problems, FaultSettings, raw, "faults"),
        privacy=_section(problems, PrivacySettings, raw, "privacy"),
        raw=raw,
    )
    entries = raw.get("clients")
    problems += semantic_problems(scenario, raw_clients=len(entries) if isinstance(entries, list) else None)
    return scenario, problems


def parse_profile(raw: dict[str, Any], where: str = "profile") -> ClientProfile:
    """Validate a stand-alone device profile (e.g. ``deploy/profiles/edge-2layer.yaml``)."""
    profile = build_typed(ClientProfile, raw, where)
    problems = profile_problems(profile, where)
    if problems:
        raise ScenarioError(problems, source=where)
    return profile


def _algorithm(raw: dict[str, Any]) -> str:
    if "algorithm" not in raw:
        raise ScenarioError(f"algorithm: required field missing (one of {algorithm_names()})")
    return typed_value(raw["algorithm"], str, "algorithm")


def _algorithm_params(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ScenarioError(
            f"algorithm_params: must be a mapping of parameter names to values, e.g. {{resample_layers: true}}, "
            f"got {value!r}"
        )
    return dict(value)


def _client(entry: Any, index: int, model_keys: set[str], task_keys: set[str]) -> ClientProfile:
    where = f"clients[{index}]"
    profile = build_typed(ClientProfile, entry, where)
    problems = []
    if model_keys and profile.model not in model_keys:
        problems.append(f"{where}.model: {profile.model!r} is not one of the scenario's models {sorted(model_keys)}")
    if task_keys and profile.task not in task_keys:
        problems.append(f"{where}.task: {profile.task!r} is not one of the scenario's tasks {sorted(task_keys)}")
    if problems:
        raise ScenarioError(problems)
    return profile


def _model_spec(key: str, raw: Any) -> ModelSpec:
    where = f"models.{key}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a mapping such as {{source: minilm}}, got {raw!r}")
    problems = unknown_keys(raw, set(MODEL_KEYS), where)
    for name in MODEL_KEYS.keys() - {"config"}:
        if raw.get(name) is not None and not isinstance(raw[name], str):
            problems.append(f"{where}.{name}: expected str, got {raw[name]!r}")
    source, family = raw.get("source"), raw.get("family")
    if (source is None) == (family is None):
        problems.append(f"{where}: give exactly one of 'source' (pretrained) or 'family' (random init)")
    config = raw.get("config") or {}
    if not isinstance(config, dict):
        problems.append(f"{where}.config: must be a mapping such as {{num_hidden_layers: 4}}, got {config!r}")
    if family is not None and raw.get("tokenizer") is None:
        problems.append(f"{where}.tokenizer: a random-init model needs a tokenizer source (e.g. 'minilm')")
    if problems:
        raise ScenarioError(problems)
    return ModelSpec(
        key=key, source=source, family=family, config=tuple(sorted(config.items())), tokenizer=raw.get("tokenizer")
    )


def _mapping(raw: dict[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict) or not value:
        missing = "required field missing" if value is None else f"must be a non-empty mapping, got {value!r}"
        problems.append(f"{key}: {missing}")
        return {}
    return value


def _list(raw: dict[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list):
        missing = "required field missing" if value is None else f"must be a list of client entries, got {value!r}"
        problems.append(f"{key}: {missing}")
        return []
    return value


def _child(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, where)]
    if not isinstance(node, dict):
        raise ScenarioError(f"{where}: cannot override inside a {type(node).__name__}")
    return node.setdefault(part, {})


def _list_index(node: list[Any], part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ScenarioError(f"{where}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _section(problems: list[str], cls: type[T], raw: dict[str, Any], key: str) -> T:
    return _attempt(problems, lambda: build_typed(cls, raw.get(key), key), cls())


def _attempt(problems: list[str], build: Callable[[], T], fallback: T) -> T:
    """``build()``, or ``fallback`` with the build's problems added to ``problems``."""
    try:
        return build()
    except ScenarioError as error:
        problems += error.problems
        return fallback
