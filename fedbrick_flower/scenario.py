"""Scenarios: one YAML file describes a whole run, validated on load with errors that name the field.

A scenario names the models, the tasks and how their data is split, each client's device profile, the
algorithm and its hyper-parameters, the rounds and the seed. Flower's ``run_config`` names the scenario and
may override single keys with dotted paths (``train.lr``, ``clients.0.layers``) or the short keys declared in
``pyproject.toml`` (``algorithm``, ``rounds``, ``seed``...).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from .registry import (  # entries only: no strategy import
    algorithm_names,
    classification_only,
    linear_probe_algorithms,
    mixes_ranks,
    one_rank,
    rank_mixing_algorithms,
    robust_aggregation_algorithms,
)
from .strategies.aggregation import AGGREGATIONS, NORM_SCOPES  # pure NumPy: no Flower, no torch

if TYPE_CHECKING:  # the models package imports torch; commands that do not train must not
    from .models.backbone import ModelSpec

T = TypeVar("T")


class ScenarioError(ValueError):
    """One or more scenario or profile values are wrong; each problem starts with the field's dotted path.

    Parameters
    ----------
    problems : str or sequence of str
        One message per problem (``"tasks.news.dataset: 'bbc' is not a known dataset ..."``).
    source : str, optional
        The file the problems were found in, named in the message when there are several.
    """

    def __init__(self, problems: str | Sequence[str], source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(_describe(self.problems, source))


def _describe(problems: list[str], source: str | None) -> str:
    if len(problems) == 1:
        return problems[0]
    where = f" in {source}" if source else ""
    return f"{len(problems)} problems{where}:\n" + "\n".join(f"  - {problem}" for problem in problems)


@dataclass(frozen=True)
class TaskSpec:
    """One task: where its examples come from, what kind they are, and which fields hold them.

    The examples come from at most one of ``dataset`` (a packaged dataset), ``train`` (a JSONL, CSV or Parquet
    file, with an optional ``test`` file that becomes the server's test split) or ``hf_dataset`` (a Hugging Face
    dataset: a hub id, a folder saved with ``save_to_disk``, or a local path ``datasets.load_dataset`` reads).
    A task with none of them has its data on the devices only (each client names its own files). Relative
    paths are read from the working directory. ``labels`` declares the label set (in class-id order); without
    it the set is every label found in the task's data, sorted.
    """

    dataset: str | None = None
    kind: str = "classification"
    train: str | None = None
    test: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    hf_test_split: str | None = None
    text: str = "text"
    text_pair: str | None = None
    label: str | None = None
    prompt: str = "prompt"
    response: str = "response"
    labels: tuple[str | int, ...] | None = None
    max_examples: int | None = None

    def __post_init__(self) -> None:
        # Labels are compared as strings everywhere (a JSONL label 1 and a declared label "1" are the same).
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(str(label).strip() for label in self.labels))

    @property
    def sources(self) -> list[str]:
        """The fields that name this task's own data (at most one may be set)."""
        return [name for name in ("dataset", "train", "hf_dataset") if getattr(self, name) is not None]


@dataclass(frozen=True)
class DataSettings:
    """How each task is split between the server (proxy, test) and the clients (train, test).

    ``partition`` names a Flower Datasets partitioner (``iid``, ``dirichlet``, ``pathological``, ``shard``,
    ``linear``, ``square``, ``exponential``) and ``partition_params`` its parameters; ``dirichlet_alpha`` is
    the Dirichlet ``alpha`` when ``partition_params`` gives none. ``overlong`` says what happens to an example
    longer than ``max_length`` tokens: ``truncate`` or ``drop`` (both counted and logged); a generative example
    is truncated by cutting its response, and dropped under either policy when its prompt alone fills
    ``max_length``. Generative test splits whose answers are all at most ``short_answer_tokens`` tokens long (end of
    turn included) are also scored by greedy generation (exact match); 0 turns that off.
    """

    partition: str = "iid"
    partition_params: dict[str, Any] = field(default_factory=dict)
    dirichlet_alpha: float = 0.5
    proxy_fraction: float = 0.05
    server_test_fraction: float = 0.2
    client_test_fraction: float = 0.2
    max_length: int = 64
    overlong: str = "truncate"
    short_answer_tokens: int = 8

    def partitioner_params(self) -> dict[str, Any]:
        """The partitioner's parameters as given, with ``alpha`` from ``dirichlet_alpha`` for ``dirichlet``."""
        params = dict(self.partition_params)
        if self.partition == "dirichlet":
            params.setdefault("alpha", self.dirichlet_alpha)
        return params


@dataclass(frozen=True)
class TrainSettings:
    """The local training loop of every client."""

    local_steps: int = 20
    batch_size: int = 16
    lr: float = 5e-4
    head_lr: float = 5e-3
    weight_decay: float = 0.0
    eval_batch_size: int = 64
    freeze_lora: bool = False
    """True: LoRA stays at its initialisation (B = 0) and only the head trains (FedBRICK: and its BRICKs), a
    federated linear probe. LoRA then stays off the wire both ways (``fedavg`` and ``fedbrick`` only)."""
    evaluate_every: int = 1
    """The clients score their own test split in every K-th round's training message (K, 2K, ...) and always in
    the last round; evaluation-only messages (to clients that did not train) always score."""


@dataclass(frozen=True)
class LoraDefaults:
    """LoRA settings shared by the clients unless a profile overrides the rank.

    ``targets`` are module ROLES (``q k v o gate up down``, mapped to each family's own modules), or
    ``all-linear`` for every projection the family has.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | str = ("q", "v")

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)


@dataclass(frozen=True)
class ServerSettings:
    """Round mechanics on the server."""

    fraction_train: float = 1.0
    min_train_clients: int = 1
    min_clients: int | None = None
    wire_dtype: str = "float32"
    max_update_mb: float = 64.0
    evaluate_global: bool = True
    evaluate_without_lora: bool = False
    """Also score each global model with its LoRA B zeroed (head only): what the aggregated LoRA adds."""
    evaluate_every: int = 1
    """Server-side evaluation of the global models in every K-th round (K, 2K, ...) and always in the last round."""
    node_wait_timeout: float = 120.0
    round_timeout: float = 3600.0
    aggregation: str = "mean"
    trim_fraction: float = 0.2
    outlier_norm_multiple: float | None = None
    norm_scope: str = "layer"
    clip_norm: float | None = None
    clip_norm_multiple: float | None = None


@dataclass(frozen=True)
class FaultSettings:
    """Fault injection for resilience tests: the listed clients corrupt their training replies."""

    nan_update: tuple[str, ...] = ()
    scaled_update: tuple[str, ...] = ()
    scale_factor: float = 1000.0
    sign_flip: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientProfile:
    """A device profile: what one client holds and where it runs.

    ``layers`` is a depth budget (an int: the server allocates that many layers) or an explicit list of global
    layer indices the device keeps. ``group`` is the client's domain for per-group state (FedBRICK's BRICK
    sets); it defaults to the task. ``train`` (and optionally ``test``) name the device's own data files (JSONL,
    CSV or Parquet, read with the task's columns): only this device reads them, and it trains on them instead
    of a share of the task's data.
    """

    id: str
    model: str
    task: str
    layers: int | tuple[int, ...] | None = None
    rank: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    group: str | None = None
    train: str | None = None
    test: str | None = None

    @property
    def domain(self) -> str:
        return self.group or self.task


@dataclass(frozen=True, eq=False)
class Scenario:
    """A validated scenario. Equal (and hashed) by content, so per-process caches can key on it."""

    name: str
    algorithm: str
    models: dict[str, ModelSpec]
    tasks: dict[str, TaskSpec]
    clients: tuple[ClientProfile, ...]
    rounds: int = 3
    seed: int = 0
    algorithm_params: dict[str, Any] = field(default_factory=dict)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    lora: LoraDefaults = field(default_factory=LoraDefaults)
    server: ServerSettings = field(default_factory=ServerSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scenario) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def client(self, client_id: str) -> ClientProfile:
        for profile in self.clients:
            if profile.id == client_id:
                return profile
        raise ScenarioError(f"clients: no client with id {client_id!r} (known: {[c.id for c in self.clients]})")

    def clients_of_task(self, task: str) -> list[str]:
        return [profile.id for profile in self.clients if profile.task == task]


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
    """Set dotted-path keys (``train.lr``, ``clients.0.layers``) in a copy of the raw scenario."""
    result = copy.deepcopy(raw)
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
    problems += _unknown_keys(raw, set(SCENARIO_KEYS), "")
    models: dict[str, ModelSpec] = {}
    for key, value in _mapping(raw, "models", problems).items():
        spec = _attempt(problems, functools.partial(_model_spec, key, value), None)
        if spec is not None:
            models[key] = spec
    tasks: dict[str, TaskSpec] = {}
    for key, value in _mapping(raw, "tasks", problems).items():
        task = _attempt(problems, functools.partial(_build, TaskSpec, value, f"tasks.{key}"), None)
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
        raw=raw,
    )
    entries = raw.get("clients")
    problems += semantic_problems(scenario, raw_clients=len(entries) if isinstance(entries, list) else None)
    return scenario, problems


def parse_profile(raw: dict[str, Any], where: str = "profile") -> ClientProfile:
    """Validate a stand-alone device profile (e.g. ``deploy/profiles/edge-2layer.yaml``)."""
    profile = _build(ClientProfile, raw, where)
    problems = _profile_problems(profile, where)
    if problems:
        raise ScenarioError(problems, source=where)
    return profile


# ---------------------------------------------------------------------------------------------- allowed values
SCENARIO_KEYS: dict[str, str] = {
    "name": "the run's name",
    "description": "what the scenario shows (one line, for `fedbrick-flower scenarios`)",
    "algorithm": "the registered algorithm (required)",
    "rounds": "number of federated rounds",
    "seed": "seed of data splits, layer draws, initialisation and batch order",
    "algorithm_params": "keyword arguments of the algorithm's strategy (see below)",
    "models": "named models (required): MODEL_KEY -> model entry",
    "tasks": "named tasks (required): TASK_KEY -> task entry",
    "clients": "the device profiles (required): a list of client entries",
    "data": "how each task is split",
    "train": "local training of every client",
    "lora": "LoRA defaults",
    "server": "round mechanics",
    "faults": "fault injection for resilience tests",
}
MODEL_KEYS: dict[str, str] = {
    "source": "pretrained: a packaged name, a local folder, or a hub id (hub ids only when the hub is reachable)",
    "family": "random init (untrained): a Hugging Face model_type such as bert or llama",
    "config": "random init: config overrides (hidden_size, num_hidden_layers...)",
    "tokenizer": "tokenizer source (default: source; required with family)",
}


@dataclass(frozen=True)
class Range:
    """A numeric range a field must lie in (``low``/``high`` None: unbounded on that side)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_AT_LEAST_1 = Range(1)
_POSITIVE = Range(0, low_open=True)
_OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)
# Checked by semantic_problems and printed by the field reference (``fedbrick-flower fields``): one table.
RANGES: dict[str, Range] = {
    "rounds": _AT_LEAST_1,
    "tasks.*.max_examples": _AT_LEAST_1,
    "data.dirichlet_alpha": _POSITIVE,
    "data.proxy_fraction": Range(0, 1, high_open=True),  # 0: no public proxy split (nothing to distil on)
    "data.server_test_fraction": _OPEN_UNIT,
    "data.client_test_fraction": _OPEN_UNIT,
    "data.max_length": Range(2),
    "data.short_answer_tokens": Range(0),
    "train.local_steps": _AT_LEAST_1,
    "train.batch_size": _AT_LEAST_1,
    "train.lr": _POSITIVE,
    "train.head_lr": _POSITIVE,
    "train.weight_decay": Range(0),
    "train.eval_batch_size": _AT_LEAST_1,
    "train.evaluate_every": _AT_LEAST_1,
    "lora.rank": _AT_LEAST_1,
    "lora.alpha": _POSITIVE,
    "lora.dropout": Range(0, 1, high_open=True),
    "server.fraction_train": Range(0, 1, low_open=True),
    "server.min_train_clients": _AT_LEAST_1,
    "server.min_clients": _AT_LEAST_1,
    "server.max_update_mb": _POSITIVE,
    "server.node_wait_timeout": _POSITIVE,
    "server.round_timeout": _POSITIVE,
    "server.evaluate_every": _AT_LEAST_1,
    "server.trim_fraction": Range(0, 0.5, high_open=True),
    "server.outlier_norm_multiple": Range(1, low_open=True),
    "server.clip_norm": _POSITIVE,
    "server.clip_norm_multiple": _POSITIVE,
    "clients[].rank": _AT_LEAST_1,
    "clients[].batch_size": _AT_LEAST_1,
}
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "mps", "cuda", "cuda:N")
WIRE_DTYPES = ("float32", "float16")
# Fields whose value is one of a fixed list known without importing torch; dataset, partition and model names
# come from their registries in :mod:`fedbrick_flower.preflight`.
CHOICES: dict[str, tuple[str, ...]] = {
    "server.wire_dtype": WIRE_DTYPES,
    "server.aggregation": AGGREGATIONS,
    "server.norm_scope": NORM_SCOPES,
    "clients[].dtype": DTYPES,
    "clients[].device": DEVICES,
}


# ---------------------------------------------------------------------------------------------- validation
def semantic_problems(scenario: Scenario, raw_clients: int | None = None) -> list[str]:
    """Problems across fields: ranges, choices, ids, references between sections, LoRA ranks per model."""
    problems = _range_problems(scenario)
    if raw_clients == 0:
        problems.append("clients: a scenario needs at least one client, got an empty list")
    ids = [c.id for c in scenario.clients]
    duplicates = sorted({cid for cid in ids if ids.count(cid) > 1})
    if duplicates:
        problems.append(f"clients: duplicate ids {duplicates}")
    names = algorithm_names()
    if scenario.algorithm and scenario.algorithm not in names:
        hint = did_you_mean(scenario.algorithm, names)
        problems.append(f"algorithm: {scenario.algorithm!r} is not one of {names}{hint}")
    data = scenario.data
    if data.proxy_fraction + data.server_test_fraction >= 1.0:
        problems.append(
            f"data.proxy_fraction + data.server_test_fraction: {data.proxy_fraction} + {data.server_test_fraction} "
            "leaves no data for the clients (the sum must be < 1)"
        )
    problems += _lora_problems(scenario.lora)
    problems += _data_problems(scenario)
    server = scenario.server
    if server.min_clients is not None and scenario.clients and server.min_clients > len(scenario.clients):
        problems.append(f"server.min_clients: must be <= the {len(scenario.clients)} clients, got {server.min_clients}")
    for index, profile in enumerate(scenario.clients):
        problems += _profile_problems(profile, f"clients[{index}]")
    for fault in FAULT_LISTS:
        for client_id in getattr(scenario.faults, fault):
            if client_id not in ids:
                problems.append(f"faults.{fault}: {client_id!r} is not a client id of this scenario {ids}")
    problems += rank_problems(scenario) + aggregation_problems(scenario) + objective_problems(scenario)
    problems += linear_probe_problems(scenario)
    return problems


FAULT_LISTS = ("nan_update", "scaled_update", "sign_flip")


def aggregation_problems(scenario: Scenario) -> list[str]:
    """A robust ``server.aggregation`` under an algorithm that does not combine tensors layer-wise."""
    aggregation = scenario.server.aggregation
    if aggregation == "mean" or scenario.algorithm not in algorithm_names():
        return []
    supported = robust_aggregation_algorithms()
    if scenario.algorithm in supported:
        return []
    return [
        f"server.aggregation: {aggregation!r} needs an algorithm that averages each tensor over its holders "
        f"({', '.join(supported)}); {scenario.algorithm} mixes updates by its own rule, so only 'mean' applies "
        "(server.outlier_norm_multiple and server.clip_norm apply to every algorithm)"
    ]


def _lora_problems(lora: LoraDefaults) -> list[str]:
    """``lora.targets`` must name module roles (``q k v o gate up down``) or ``all-linear``."""
    from .models.families import resolve_roles

    try:
        resolve_roles(lora.roles)
    except ValueError as error:
        return [f"lora.targets: {error}"]
    return []


def linear_probe_problems(scenario: Scenario) -> list[str]:
    """``train.freeze_lora`` under an algorithm whose server state needs every client's LoRA."""
    supported = linear_probe_algorithms()
    if not scenario.train.freeze_lora or scenario.algorithm not in algorithm_names() or scenario.algorithm in supported:
        return []
    return [
        f"train.freeze_lora: a federated linear probe keeps LoRA off the wire, which needs a layer-wise algorithm "
        f"({', '.join(supported)}); {scenario.algorithm} mixes every client's LoRA"
    ]


def objective_problems(scenario: Scenario) -> list[str]:
    """Generative tasks under an algorithm whose client half trains a classifier only."""
    if scenario.algorithm not in algorithm_names() or not classification_only(scenario.algorithm):
        return []
    return [
        f"tasks.{name}.kind: {scenario.algorithm} trains classifiers only, and this task is {task.kind}"
        for name, task in scenario.tasks.items()
        if task.kind != "classification"
    ]


def rank_problems(scenario: Scenario) -> list[str]:
    """Clients of one model with different LoRA ranks, under an algorithm that cannot mix ranks."""
    if scenario.algorithm not in algorithm_names() or mixes_ranks(scenario.algorithm):
        return []
    if one_rank(scenario.algorithm):
        effective = [p.rank or scenario.lora.rank for p in scenario.clients]
        if len(set(effective)) > 1:
            usual = max(sorted(set(effective)), key=effective.count)  # name the clients that differ from most
            ids = [f"clients[{i}].rank={rank}" for i, rank in enumerate(effective) if rank != usual]
            ranks = sorted(set(effective))
            return [f"{', '.join(ids)}: {scenario.algorithm} needs one LoRA rank across the federation, got {ranks}"]
    problems = []
    for model in sorted({profile.model for profile in scenario.clients}):
        ranked = [(p.rank or scenario.lora.rank, p.id) for p in scenario.clients if p.model == model]
        (low, low_id), (high, high_id) = min(ranked), max(ranked)
        if low != high:
            mixers = ", ".join(rank_mixing_algorithms()) or "none registered yet"
            problems.append(
                f"clients {low_id} (rank {low}) and {high_id} (rank {high}) share model {model}; "
                f"{scenario.algorithm} needs one rank per model (algorithms that mix ranks: {mixers})"
            )
    return problems


def _range_problems(scenario: Scenario) -> list[str]:
    """RANGES and CHOICES outside ``clients[]`` (each client's are checked with its profile)."""
    problems = []
    for path in (*RANGES, *CHOICES):
        head, _, name = path.rpartition(".")
        if head == "tasks.*":
            for key, task in scenario.tasks.items():
                problems += _value_problems(path, f"tasks.{key}.{name}", getattr(task, name))
        elif head != "clients[]":
            problems += _value_problems(path, path, getattr(getattr(scenario, head) if head else scenario, name))
    return problems


def _value_problems(path: str, where: str, value: Any) -> list[str]:
    if value is None:
        return []
    if path in RANGES and value not in RANGES[path]:
        return [f"{where}: must be {RANGES[path]}, got {value}"]
    choices = CHOICES.get(path, ())
    if choices and value not in choices and not (path == "clients[].device" and re.fullmatch(r"cuda:\d+", value)):
        hint = "" if path == "clients[].device" else did_you_mean(value, choices)  # 'gpu' is not a typo of 'cpu'
        return [f"{where}: {value!r} is not one of {', '.join(choices)}{hint}"]
    return []


def _profile_problems(profile: ClientProfile, where: str) -> list[str]:
    problems = []
    layers = profile.layers
    if isinstance(layers, int) and layers < 1:
        problems.append(f"{where}.layers: a depth budget must be >= 1, got {layers}")
    if isinstance(layers, tuple) and (not layers or min(layers) < 0 or len(set(layers)) != len(layers)):
        problems.append(f"{where}.layers: must be distinct non-negative layer indices, got {list(layers)}")
    for path in (*RANGES, *CHOICES):
        head, _, name = path.rpartition(".")
        if head == "clients[]":
            problems += _value_problems(path, f"{where}.{name}", getattr(profile, name))
    return problems + _profile_data_problems(profile, where)


def _data_problems(scenario: Scenario) -> list[str]:
    """The partitioner and its parameters, the overlong policy, every task's source and fields, and that each
    client of a data-less task names files of its own."""
    from .data.checks import OVERLONG_POLICIES
    from .data.partitioners import PARTITIONS, check_partition

    data, problems = scenario.data, []
    if data.partition not in PARTITIONS:
        hint = did_you_mean(data.partition, PARTITIONS)
        problems.append(f"data.partition: {data.partition!r} is not one of {', '.join(PARTITIONS)}{hint}")
    elif not isinstance(data.partition_params, dict):
        problems.append(f"data.partition_params: must be a mapping, got {data.partition_params!r}")
    elif not (data.partition == "dirichlet" and "alpha" not in data.partition_params and data.dirichlet_alpha <= 0):
        # (a non-positive ``dirichlet_alpha`` is reported once, under its own name, by the range check)
        try:
            check_partition(data.partition, data.partitioner_params())
        except ValueError as error:
            problems.append(str(error))
    if data.overlong not in OVERLONG_POLICIES:
        problems.append(f"data.overlong: {data.overlong!r} is not one of {list(OVERLONG_POLICIES)}")
    for key, spec in scenario.tasks.items():
        problems += _task_problems(spec, f"tasks.{key}")
    for index, profile in enumerate(scenario.clients):
        task = scenario.tasks.get(profile.task)
        if task is not None and not task.sources and profile.train is None:
            problems.append(
                f"clients[{index}].train: task {profile.task!r} names no data of its own, so its clients must name "
                "their own files"
            )
    return problems


def _task_problems(spec: TaskSpec, where: str) -> list[str]:
    from .data.instructions import packaged_kind
    from .data.sources import FILE_FORMATS, TASK_KINDS

    problems = []
    if spec.kind not in TASK_KINDS:
        problems.append(f"{where}.kind: {spec.kind!r} is not one of {list(TASK_KINDS)}")
    # A packaged dataset has one kind (the generative twin of a label set is its own dataset, ``NAME-gen``).
    packaged = packaged_kind(spec.dataset) if spec.dataset is not None else None
    if packaged is not None and packaged != spec.kind:
        problems.append(f"{where}.kind: dataset {spec.dataset!r} is a {packaged} task; set kind: {packaged}")
    if len(spec.sources) > 1:
        problems.append(f"{where}: give at most one of dataset, train, hf_dataset (got {spec.sources})")
    if spec.test is not None and spec.train is None:
        problems.append(f"{where}.test: a test file needs a train file")
    for name in ("hf_config", "hf_test_split"):
        if getattr(spec, name) is not None and spec.hf_dataset is None:
            problems.append(f"{where}.{name}: only for a task with hf_dataset")
    for name in ("train", "test"):
        problems += _data_file_problems(getattr(spec, name), f"{where}.{name}", FILE_FORMATS)
    if spec.labels is not None:
        if spec.dataset is not None:
            problems.append(f"{where}.labels: packaged dataset {spec.dataset!r} has its own label set")
        elif not spec.labels or len(set(spec.labels)) != len(spec.labels):
            problems.append(f"{where}.labels: must be distinct and non-empty, got {list(spec.labels)}")
    if not spec.sources and spec.kind == "classification" and spec.labels is None:
        problems.append(f"{where}.labels: a task whose data lives only on the devices must declare its labels")
    return problems


def _profile_data_problems(profile: ClientProfile, where: str) -> list[str]:
    from .data.sources import FILE_FORMATS

    problems = []
    if profile.test is not None and profile.train is None:
        problems.append(f"{where}.test: a test file needs a train file")
    for name in ("train", "test"):
        problems += _data_file_problems(getattr(profile, name), f"{where}.{name}", FILE_FORMATS)
    return problems


def _data_file_problems(path: str | None, where: str, formats: dict[str, str]) -> list[str]:
    if path is not None and Path(path).suffix.lower() not in formats:
        return [f"{where}: {path!r} is not one of the formats {sorted(formats)}"]
    return []


def did_you_mean(value: Any, allowed: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for a near miss or a prefix (``bbc`` -> ``bbc-news``), else nothing."""
    allowed, text = list(allowed), str(value)
    close = difflib.get_close_matches(text, allowed, n=1, cutoff=0.6)
    close = close or [name for name in allowed if text and name.lower().startswith(text.lower())][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    profile = _build(ClientProfile, entry, where)
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
    problems = _unknown_keys(raw, set(MODEL_KEYS), where)
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
    from .models.backbone import ModelSpec  # imports torch: only where a scenario names its models

    return ModelSpec(
        key=key, source=source, family=family, config=tuple(sorted(config.items())), tokenizer=raw.get("tokenizer")
    )


# ---------------------------------------------------------------------------------------------- typed building
def _build(cls: type[T], raw: Any, where: str) -> T:
    """A dataclass from a mapping: every unknown, missing or mistyped field is reported, not only the first."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a mapping of {_field_list(cls)}, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    problems = _unknown_keys(raw, {f.name for f in fields}, where)
    required = [f.name for f in fields if _is_required(f)]
    missing = [name for name in required if name not in raw]
    problems += [f"{where}.{name}: required field missing (required: {', '.join(required)})" for name in missing]
    values = {}
    for name, value in raw.items():
        if name in hints:
            try:
                values[name] = typed_value(value, hints[name], f"{where}.{name}")
            except ScenarioError as error:
                problems += error.problems
    if problems:
        raise ScenarioError(problems)
    return cls(**values)


def _is_required(spec: dataclasses.Field) -> bool:
    return spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING


def _field_list(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


def _section(problems: list[str], cls: type[T], raw: dict[str, Any], key: str) -> T:
    return _attempt(problems, lambda: _build(cls, raw.get(key), key), cls())


def _attempt(problems: list[str], build: Callable[[], T], fallback: T) -> T:
    """``build()``, or ``fallback`` with the build's problems added to ``problems``."""
    try:
        return build()
    except ScenarioError as error:
        problems += error.problems
        return fallback


def type_name(hint: Any) -> str:
    """A type hint as a reader writes it in YAML: ``int``, ``float or null``, ``list of int``."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    names = []
    for option in options:
        if option is type(None):
            names.append("null")
        elif typing.get_origin(option) is tuple:
            names.append(f"list of {type_name(typing.get_args(option)[0])}")
        else:
            names.append(getattr(option, "__name__", str(option)))
    return " or ".join(names)


def typed_value(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint (str, int, float, bool, tuple[int, ...], unions, None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        converted = _convert(value, option)
        if converted is not _MISMATCH:
            return converted
    advice = ""
    if isinstance(value, str) and any(typing.get_origin(o) is tuple for o in options):
        advice = f" (write a list: [{value}])"
    elif isinstance(value, str) and float in options:
        advice = " (a string: write the number without quotes, e.g. 0.0005 or 5.0e-4)"
    raise ScenarioError(f"{where}: expected {type_name(hint)}, got {value!r}{advice}")


_MISMATCH = object()


def _convert(value: Any, option: Any) -> Any:
    if option is type(None):
        return None if value is None else _MISMATCH
    if option is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if option is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
    if option is float:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _MISMATCH
    if option is str:
        return value if isinstance(value, str) else _MISMATCH
    if typing.get_origin(option) is tuple:
        item = typing.get_args(option)[0]
        if isinstance(value, list | tuple) and all(_convert(v, item) is not _MISMATCH for v in value):
            return tuple(_convert(v, item) for v in value)
        return _MISMATCH
    return value


def _unknown_keys(raw: dict[str, Any], allowed: set[str], where: str) -> list[str]:
    prefix = f"{where}." if where else ""
    return [
        f"{prefix}{name}: unknown field{did_you_mean(name, allowed)} (allowed: {', '.join(sorted(allowed))})"
        for name in sorted(set(raw) - allowed, key=str)
    ]


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
