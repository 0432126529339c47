"""Checks across fields: ranges, choices, ids, references between sections, and the capabilities each algorithm
declares in its registry entry (rank mixing, robust aggregation, linear probe, task kinds).

What needs the installed packages or this machine (dataset names, model sources and depths, devices, an
algorithm's own checks) is the pre-flight's, :mod:`fedbrick_flower.preflight`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry import (  # entries only: no strategy import
    algorithm_names,
    central_dp_algorithms,
    classification_only,
    linear_probe_algorithms,
    mixes_ranks,
    one_rank,
    rank_mixing_algorithms,
    robust_aggregation_algorithms,
    secure_aggregation_algorithms,
)
from .building import did_you_mean
from .schema import AGGREGATIONS, NORM_SCOPES, PRIVACY_MODES, ClientProfile, LoraDefaults, Scenario, TaskSpec


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
    "data.validation_fraction": Range(0, 1, high_open=True),
    "data.max_length": Range(2),
    "data.short_answer_tokens": Range(0),
    "train.local_steps": _AT_LEAST_1,
    "train.batch_size": _AT_LEAST_1,
    "train.lr": _POSITIVE,
    "train.head_lr": _POSITIVE,
    "train.head_warmup_steps": Range(0),
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
    "server.plateau_window": _AT_LEAST_1,
    "server.plateau_tolerance": Range(0, 1, high_open=True),
    "privacy.noise_multiplier": _POSITIVE,
    "privacy.clip_norm": _POSITIVE,
    "privacy.delta": _OPEN_UNIT,
    "clients[].rank": _AT_LEAST_1,
    "clients[].batch_size": _AT_LEAST_1,
}
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "mps", "cuda", "cuda:N")
WIRE_DTYPES = ("float32", "float16")
PLATEAU_METRICS = ("off", "global", "on-device")
# Fields whose value is one of a fixed list known without importing torch; dataset, partition and model names
# come from their registries in :mod:`fedbrick_flower.preflight`.
CHOICES: dict[str, tuple[str, ...]] = {
    "server.wire_dtype": WIRE_DTYPES,
    "server.aggregation": AGGREGATIONS,
    "server.norm_scope": NORM_SCOPES,
    "server.stop_when_plateau": PLATEAU_METRICS,
    "privacy.mode": PRIVACY_MODES,
    "clients[].dtype": DTYPES,
    "clients[].device": DEVICES,
}


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
    if server.stop_when_plateau != "off" and data.validation_fraction == 0:
        problems.append(
            f"server.stop_when_plateau: {server.stop_when_plateau!r} watches a validation loss; "
            "set data.validation_fraction > 0"
        )
    if server.min_clients is not None and scenario.clients and server.min_clients > len(scenario.clients):
        problems.append(f"server.min_clients: must be <= the {len(scenario.clients)} clients, got {server.min_clients}")
    for index, profile in enumerate(scenario.clients):
        problems += profile_problems(profile, f"clients[{index}]")
    for fault in FAULT_LISTS:
        for client_id in getattr(scenario.faults, fault):
            if client_id not in ids:
                problems.append(f"faults.{fault}: {client_id!r} is not a client id of this scenario {ids}")
    problems += rank_problems(scenario) + aggregation_problems(scenario) + objective_problems(scenario)
    problems += linear_probe_problems(scenario) + secure_aggregation_problems(scenario) + privacy_problems(scenario)
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


def secure_aggregation_problems(scenario: Scenario) -> list[str]:
    """``privacy.secure_aggregation`` where the server would need an individual update: an algorithm that mixes
    updates by its own rule, a robust aggregation, clipping, an explicit norm screening, or one client."""
    if not scenario.privacy.secure_aggregation or scenario.algorithm not in algorithm_names():
        return []
    why = "the server learns only the sum of the masked updates"
    supported = secure_aggregation_algorithms()
    problems = []
    if scenario.algorithm not in supported:
        problems.append(
            f"privacy.secure_aggregation: {scenario.algorithm} needs each client's individual update; {why}, "
            f"which only algorithms averaging each tensor over its holders can use ({', '.join(supported)})"
        )
    server = scenario.server
    if server.aggregation != "mean":
        problems.append(f"privacy.secure_aggregation: server.aggregation {server.aggregation!r} needs every "
                        f"update; {why}, so only 'mean' applies")  # fmt: skip
    for key in ("clip_norm", "clip_norm_multiple"):
        if getattr(server, key) is not None:
            problems.append(f"privacy.secure_aggregation: server.{key} needs each update's norm; {why}")
    written = scenario.raw.get("server")
    if isinstance(written, dict) and written.get("outlier_norm_multiple") is not None:
        problems.append(
            f"privacy.secure_aggregation: server.outlier_norm_multiple screens each update's norm; {why} "
            "(left unset, the screening is off under secure aggregation)"
        )
    if 0 < len(scenario.clients) < 2:
        problems.append(f"privacy.secure_aggregation: needs at least 2 clients, got {len(scenario.clients)}")
    if scenario.privacy.mode == "central":
        problems.append(
            f"privacy.secure_aggregation: privacy.mode 'central' clips each individual update on the server; {why} "
            "(use privacy.mode: local, whose noise is added on the device before masking)"
        )
    return problems


def privacy_problems(scenario: Scenario) -> list[str]:
    """``privacy.mode: central`` under an algorithm whose server math is not a mean over holders, or with server
    options that read the raw updates across clients (robust means, clipping by the round's median)."""
    if scenario.privacy.mode != "central" or scenario.algorithm not in algorithm_names():
        return []
    supported = central_dp_algorithms()
    if scenario.algorithm not in supported:
        return [
            f"privacy.mode: 'central' needs an algorithm whose server averages each tensor over its holders "
            f"({', '.join(supported)}); {scenario.algorithm} combines individual updates by its own rule, so the "
            "sensitivity of what it releases is not bounded by privacy.clip_norm (use privacy.mode: local)"
        ]
    server, problems = scenario.server, []
    if server.aggregation != "mean":
        problems.append(
            f"server.aggregation: {server.aggregation!r} cannot run under privacy.mode: central (the noise is "
            "calibrated to a mean over holders); use 'mean'"
        )
    for key in ("clip_norm", "clip_norm_multiple"):
        if getattr(server, key) is not None:
            problems.append(
                f"server.{key}: cannot be set under privacy.mode: central (privacy.clip_norm clips every update)"
            )
    return problems


def _lora_problems(lora: LoraDefaults) -> list[str]:
    """``lora.targets`` must name module roles (``q k v o gate up down``) or ``all-linear``."""
    from ..models.families import resolve_roles

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
    """Different LoRA ranks where the algorithm's registry entry refuses them: across the whole federation
    (``one_rank``), or among the clients of one model (unless it ``mixes_ranks``)."""
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


def profile_problems(profile: ClientProfile, where: str) -> list[str]:
    """One device profile on its own: its depth budget or layer list, ranges, choices and data files."""
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
    from ..data.checks import OVERLONG_POLICIES
    from ..data.partitioners import PARTITIONS, check_partition

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
    from ..data.instructions import packaged_kind
    from ..data.sources import FILE_FORMATS, TASK_KINDS

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
    from ..data.sources import FILE_FORMATS

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
