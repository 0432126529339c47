"""Scenarios: one YAML file describes a whole run, validated on load with errors that name the field.

A scenario names the models, the tasks and how their data is split, each client's device profile, the
algorithm and its hyper-parameters, the rounds and the seed. Flower's ``run_config`` names the scenario and
may override single keys with dotted paths (``train.lr``, ``clients.0.layers``) or the short keys declared in
``pyproject.toml`` (``algorithm``, ``rounds``, ``seed``...).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .models.backbone import ModelSpec


class ScenarioError(ValueError):
    """A scenario or profile value is wrong; the message starts with the field's dotted path."""


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
    longer than ``max_length`` tokens: ``truncate`` or ``drop`` (both counted and logged).
    """

    partition: str = "iid"
    partition_params: dict[str, Any] = field(default_factory=dict)
    dirichlet_alpha: float = 0.5
    proxy_fraction: float = 0.05
    server_test_fraction: float = 0.2
    client_test_fraction: float = 0.2
    max_length: int = 64
    overlong: str = "truncate"

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


@dataclass(frozen=True)
class LoraDefaults:
    """LoRA settings shared by the clients unless a profile overrides the rank."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0


@dataclass(frozen=True)
class ServerSettings:
    """Round mechanics on the server."""

    fraction_train: float = 1.0
    min_clients: int | None = None
    wire_dtype: str = "float32"
    max_update_mb: float = 64.0
    evaluate_global: bool = True
    node_wait_timeout: float = 120.0
    round_timeout: float = 3600.0


@dataclass(frozen=True)
class FaultSettings:
    """Fault injection for resilience tests: the listed clients corrupt their training replies."""

    nan_update: tuple[str, ...] = ()


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


def load_scenario(name_or_path: str, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read, override and validate a scenario."""
    path = scenario_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ScenarioError(f"scenario: {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"scenario: {path} must hold a mapping at the top level")
    raw.setdefault("name", path.stem)
    return parse_scenario(apply_overrides(raw, overrides or {}))


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
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def parse_scenario(raw: dict[str, Any]) -> Scenario:
    """Validate a raw scenario mapping; every error names the offending field and value."""
    _reject_unknown(raw, {f.name for f in dataclasses.fields(Scenario)} - {"raw"}, "")
    models = {key: _model_spec(key, value) for key, value in _mapping(raw, "models").items()}
    tasks = {key: _build(TaskSpec, value, f"tasks.{key}") for key, value in _mapping(raw, "tasks").items()}
    lora = _build(LoraDefaults, raw.get("lora", {}), "lora")
    clients = tuple(_client(entry, index, models, tasks) for index, entry in enumerate(_list(raw, "clients")))
    scenario = Scenario(
        name=_typed(raw.get("name", "scenario"), str, "name"),
        algorithm=_typed(raw.get("algorithm"), str, "algorithm"),
        models=models,
        tasks=tasks,
        clients=clients,
        rounds=_typed(raw.get("rounds", 3), int, "rounds"),
        seed=_typed(raw.get("seed", 0), int, "seed"),
        algorithm_params=dict(raw.get("algorithm_params") or {}),
        data=_build(DataSettings, raw.get("data", {}), "data"),
        train=_build(TrainSettings, raw.get("train", {}), "train"),
        lora=lora,
        server=_build(ServerSettings, raw.get("server", {}), "server"),
        faults=_build(FaultSettings, raw.get("faults", {}), "faults"),
        raw=raw,
    )
    _check_semantics(scenario)
    return scenario


def parse_profile(raw: dict[str, Any], where: str = "profile") -> ClientProfile:
    """Validate a stand-alone device profile (e.g. ``deploy/profiles/edge-2layer.yaml``)."""
    profile = _build(ClientProfile, raw, where)
    _check_profile(profile, where)
    return profile


# ---------------------------------------------------------------------------------------------- validation
def _check_semantics(scenario: Scenario) -> None:
    if scenario.rounds < 1:
        raise ScenarioError(f"rounds: must be >= 1, got {scenario.rounds}")
    if not scenario.clients:
        raise ScenarioError("clients: a scenario needs at least one client")
    ids = [c.id for c in scenario.clients]
    duplicates = sorted({cid for cid in ids if ids.count(cid) > 1})
    if duplicates:
        raise ScenarioError(f"clients: duplicate ids {duplicates}")
    from .registry import algorithm_names

    if scenario.algorithm not in algorithm_names():
        raise ScenarioError(f"algorithm: {scenario.algorithm!r} is not one of {algorithm_names()}")
    _check_data(scenario)
    _positive(scenario.train, "train", ("local_steps", "batch_size", "eval_batch_size", "lr", "head_lr"))
    _positive(scenario.lora, "lora", ("rank", "alpha"))
    server = scenario.server
    if not 0.0 < server.fraction_train <= 1.0:
        raise ScenarioError(f"server.fraction_train: must be in (0, 1], got {server.fraction_train}")
    if server.wire_dtype not in {"float32", "float16"}:
        raise ScenarioError(f"server.wire_dtype: {server.wire_dtype!r} is not one of ['float16', 'float32']")
    if server.min_clients is not None and not 1 <= server.min_clients <= len(scenario.clients):
        raise ScenarioError(f"server.min_clients: must be in 1..{len(scenario.clients)}, got {server.min_clients}")
    for index, profile in enumerate(scenario.clients):
        _check_profile(profile, f"clients[{index}]")
    for client_id in scenario.faults.nan_update:
        if client_id not in ids:
            raise ScenarioError(f"faults.nan_update: {client_id!r} is not a client id of this scenario")


def _check_profile(profile: ClientProfile, where: str) -> None:
    layers = profile.layers
    if isinstance(layers, int) and layers < 1:
        raise ScenarioError(f"{where}.layers: a depth budget must be >= 1, got {layers}")
    if isinstance(layers, tuple) and (not layers or min(layers) < 0 or len(set(layers)) != len(layers)):
        raise ScenarioError(f"{where}.layers: must be distinct non-negative layer indices, got {list(layers)}")
    if profile.rank is not None and profile.rank < 1:
        raise ScenarioError(f"{where}.rank: must be >= 1, got {profile.rank}")
    if profile.batch_size is not None and profile.batch_size < 1:
        raise ScenarioError(f"{where}.batch_size: must be >= 1, got {profile.batch_size}")
    if profile.dtype not in {"auto", "float32", "float16", "bfloat16"}:
        raise ScenarioError(f"{where}.dtype: {profile.dtype!r} is not one of auto, float32, float16, bfloat16")
    if not (profile.device in {"auto", "cpu", "mps", "cuda"} or profile.device.startswith("cuda:")):
        raise ScenarioError(f"{where}.device: {profile.device!r} is not one of auto, cpu, mps, cuda, cuda:N")
    _check_profile_data(profile, where)


def _check_data(scenario: Scenario) -> None:
    """The data settings, every task's source and fields, and that each client of a data-less task has files."""
    from .data.checks import OVERLONG_POLICIES
    from .data.partitioners import check_partition

    data = scenario.data
    if not isinstance(data.partition_params, dict):
        raise ScenarioError(f"data.partition_params: must be a mapping, got {data.partition_params!r}")
    try:
        check_partition(data.partition, data.partitioner_params())
    except ValueError as error:
        raise ScenarioError(str(error)) from None
    for name in ("proxy_fraction", "server_test_fraction", "client_test_fraction"):
        value = getattr(data, name)
        if not 0.0 <= value < 1.0:
            raise ScenarioError(f"data.{name}: must be in [0, 1), got {value}")
    if data.max_length < 1:
        raise ScenarioError(f"data.max_length: must be >= 1, got {data.max_length}")
    if data.overlong not in OVERLONG_POLICIES:
        raise ScenarioError(f"data.overlong: {data.overlong!r} is not one of {list(OVERLONG_POLICIES)}")
    for key, spec in scenario.tasks.items():
        _check_task(spec, f"tasks.{key}")
    for index, profile in enumerate(scenario.clients):
        if not scenario.tasks[profile.task].sources and profile.train is None:
            raise ScenarioError(
                f"clients[{index}].train: task {profile.task!r} names no data of its own, so its clients must name "
                f"their own files"
            )


def _check_task(spec: TaskSpec, where: str) -> None:
    from .data.sources import FILE_FORMATS, TASK_KINDS

    if spec.kind not in TASK_KINDS:
        raise ScenarioError(f"{where}.kind: {spec.kind!r} is not one of {list(TASK_KINDS)}")
    if len(spec.sources) > 1:
        raise ScenarioError(f"{where}: give at most one of dataset, train, hf_dataset (got {spec.sources})")
    if spec.test is not None and spec.train is None:
        raise ScenarioError(f"{where}.test: a test file needs a train file")
    for name in ("hf_config", "hf_test_split"):
        if getattr(spec, name) is not None and spec.hf_dataset is None:
            raise ScenarioError(f"{where}.{name}: only for a task with hf_dataset")
    for name in ("train", "test"):
        _check_data_file(getattr(spec, name), f"{where}.{name}", FILE_FORMATS)
    if spec.labels is not None:
        if spec.dataset is not None:
            raise ScenarioError(f"{where}.labels: packaged dataset {spec.dataset!r} has its own label set")
        if not spec.labels or len(set(spec.labels)) != len(spec.labels):
            raise ScenarioError(f"{where}.labels: must be distinct and non-empty, got {list(spec.labels)}")
    if not spec.sources and spec.kind == "classification" and spec.labels is None:
        raise ScenarioError(f"{where}.labels: a task whose data lives only on the devices must declare its labels")
    if spec.max_examples is not None and spec.max_examples < 1:
        raise ScenarioError(f"{where}.max_examples: must be >= 1, got {spec.max_examples}")


def _check_profile_data(profile: ClientProfile, where: str) -> None:
    from .data.sources import FILE_FORMATS

    if profile.test is not None and profile.train is None:
        raise ScenarioError(f"{where}.test: a test file needs a train file")
    for name in ("train", "test"):
        _check_data_file(getattr(profile, name), f"{where}.{name}", FILE_FORMATS)


def _check_data_file(path: str | None, where: str, formats: dict[str, str]) -> None:
    if path is not None and Path(path).suffix.lower() not in formats:
        raise ScenarioError(f"{where}: {path!r} is not one of the formats {sorted(formats)}")


def _positive(settings: Any, where: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(settings, name)
        if value <= 0:
            raise ScenarioError(f"{where}.{name}: must be > 0, got {value}")


def _client(entry: Any, index: int, models: dict[str, ModelSpec], tasks: dict[str, TaskSpec]) -> ClientProfile:
    where = f"clients[{index}]"
    profile = _build(ClientProfile, entry, where)
    if profile.model not in models:
        raise ScenarioError(f"{where}.model: {profile.model!r} is not one of the scenario's models {sorted(models)}")
    if profile.task not in tasks:
        raise ScenarioError(f"{where}.task: {profile.task!r} is not one of the scenario's tasks {sorted(tasks)}")
    return profile


def _model_spec(key: str, raw: Any) -> ModelSpec:
    where = f"models.{key}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a mapping, got {raw!r}")
    _reject_unknown(raw, {"source", "family", "config", "tokenizer"}, where)
    source, family = raw.get("source"), raw.get("family")
    if (source is None) == (family is None):
        raise ScenarioError(f"{where}: give exactly one of 'source' (pretrained) or 'family' (random init)")
    config = raw.get("config") or {}
    if not isinstance(config, dict):
        raise ScenarioError(f"{where}.config: must be a mapping, got {config!r}")
    if family is not None and raw.get("tokenizer") is None:
        raise ScenarioError(f"{where}.tokenizer: a random-init model needs a tokenizer source (e.g. 'minilm')")
    return ModelSpec(
        key=key, source=source, family=family, config=tuple(sorted(config.items())), tokenizer=raw.get("tokenizer")
    )


# ---------------------------------------------------------------------------------------------- typed building
def _build(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    _reject_unknown(raw, names, where)
    values = {name: _typed(value, hints[name], f"{where}.{name}") for name, value in raw.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise ScenarioError(f"{where}: {error}") from None


def _typed(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint (str, int, float, bool, tuple[int, ...], unions, None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        converted = _convert(value, option)
        if converted is not _MISMATCH:
            return converted
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ScenarioError(f"{where}: expected {expected}, got {value!r}")


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
            return tuple(value)
        return _MISMATCH
    return value


def _reject_unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ScenarioError(f"{prefix}{unknown[0]}: unknown field (allowed: {sorted(allowed)})")


def _mapping(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict) or not value:
        raise ScenarioError(f"{key}: must be a non-empty mapping, got {value!r}")
    return value


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list):
        raise ScenarioError(f"{key}: must be a list, got {value!r}")
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
