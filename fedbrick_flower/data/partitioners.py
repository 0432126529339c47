"""Flower Datasets partitioners by name, with their parameters checked before any data is read.

A scenario names a partitioner (``data.partition``) and its parameters (``data.partition_params``).
:func:`check_partition` validates both without importing ``flwr_datasets`` (the scenario is checked in every
process, the client's import path included); :func:`partition_pool` imports it only when a pool is split.

Every partition is drawn from an explicit seed: the pool is shuffled with it first (IID and the size-based
partitioners cut the pool in order) and the label-based partitioners receive it as their own seed, so every
process of a federation computes the same partitions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedbrick_flower.cache import default_cache_dir


@dataclass(frozen=True)
class Param:
    """One user-settable parameter of a partitioner.

    Attributes
    ----------
    kind : type
        ``int``, ``float``, ``bool`` or ``str``.
    default : Any
        Value when not given; ``REQUIRED`` when the user must give it.
    check : str
        ``"positive"`` (> 0), ``"non-negative"`` (>= 0), ``"at-least-1"`` or ``""`` (no range check).
    choices : tuple of str
        Allowed values of a ``str`` parameter.
    """

    kind: type
    default: Any
    check: str = ""
    choices: tuple[str, ...] = ()


REQUIRED = object()


@dataclass(frozen=True)
class PartitionerKind:
    """A Flower Datasets partitioner class and what the scenario may set on it.

    Attributes
    ----------
    class_name : str
        Name in ``flwr_datasets.partitioner``.
    params : dict of str to Param
        The parameters a scenario may give, by their ``flwr_datasets`` keyword.
    by_label : bool
        Partitions by the label column (``partition_by="label"``, ``seed=...``, ``shuffle=True``).
    """

    class_name: str
    params: dict[str, Param] = field(default_factory=dict)
    by_label: bool = False


PARTITIONERS: dict[str, PartitionerKind] = {
    "iid": PartitionerKind("IidPartitioner"),
    "dirichlet": PartitionerKind(
        "DirichletPartitioner",
        {
            "alpha": Param(float, REQUIRED, "positive"),
            "min_partition_size": Param(int, 10, "non-negative"),
            "self_balancing": Param(bool, False),
        },
        by_label=True,
    ),
    "pathological": PartitionerKind(
        "PathologicalPartitioner",
        {
            "num_classes_per_partition": Param(int, REQUIRED, "at-least-1"),
            "class_assignment_mode": Param(str, "random", choices=("random", "deterministic", "first-deterministic")),
        },
        by_label=True,
    ),
    "shard": PartitionerKind(
        "ShardPartitioner",
        {
            "num_shards_per_partition": Param(int, None, "at-least-1"),
            "shard_size": Param(int, None, "at-least-1"),
            "keep_incomplete_shard": Param(bool, False),
        },
        by_label=True,
    ),
    "linear": PartitionerKind("LinearPartitioner"),
    "square": PartitionerKind("SquarePartitioner"),
    "exponential": PartitionerKind("ExponentialPartitioner"),
}
PARTITIONS: tuple[str, ...] = tuple(PARTITIONERS)


def check_partition(name: str, params: Mapping[str, Any] | None, where: str = "data") -> dict[str, Any]:
    """Validate a partitioner name and its parameters; return the parameters with defaults filled in.

    Parameters
    ----------
    name : str
        One of :data:`PARTITIONS`.
    params : mapping or None
        Keyword parameters of the partitioner (``alpha``, ``num_classes_per_partition``...).
    where : str, default "data"
        Dotted path of the settings, for error messages (``data.partition_params.alpha: ...``).

    Returns
    -------
    dict
        Every parameter of the partitioner, given or default (a parameter whose default is None is left out).

    Raises
    ------
    ValueError
        Naming the field: an unknown partitioner, an unknown, missing or ill-typed parameter, or a value out
        of range.
    """
    if name not in PARTITIONERS:
        raise ValueError(f"{where}.partition: {name!r} is not one of {list(PARTITIONS)}")
    params = dict(params or {})
    allowed = PARTITIONERS[name].params
    prefix = f"{where}.partition_params"
    for key in params:
        if key not in allowed:
            raise ValueError(f"{prefix}.{key}: not a parameter of partitioner {name!r} (allowed: {sorted(allowed)})")
    resolved = {}
    for key, param in allowed.items():
        value = params.get(key, param.default)
        if value is REQUIRED:
            raise ValueError(f"{prefix}.{key}: required by partitioner {name!r}")
        if value is not None:
            resolved[key] = _checked(value, param, f"{prefix}.{key}")
    if name == "shard" and ("num_shards_per_partition" in resolved) == ("shard_size" in resolved):
        raise ValueError(f"{prefix}: partitioner 'shard' needs exactly one of num_shards_per_partition, shard_size")
    return resolved


def _checked(value: Any, param: Param, where: str) -> Any:
    if param.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, param.kind) or (param.kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: expected {param.kind.__name__}, got {value!r}")
    if param.choices and value not in param.choices:
        raise ValueError(f"{where}: {value!r} is not one of {list(param.choices)}")
    if param.check and not _LIMITS[param.check][0](value):
        raise ValueError(f"{where}: must be {_LIMITS[param.check][1]}, got {value!r}")
    return value


_LIMITS = {
    "positive": (lambda value: value > 0, "> 0"),
    "non-negative": (lambda value: value >= 0, ">= 0"),
    "at-least-1": (lambda value: value >= 1, ">= 1"),
}


def partition_pool(
    name: str,
    params: Mapping[str, Any],
    labels: Sequence[int] | None,
    pool: Sequence[int],
    num_partitions: int,
    seed: int,
) -> list[list[int]]:
    """:func:`split_pool`, memoized in the cache folder.

    The shares are a pure function of the arguments, but computing them imports Flower Datasets (``datasets``
    and pyarrow: 5 to 6 s on this machine), and in deployment every message is a fresh process. The first
    process of a node writes the result (atomically); the later ones read a small JSON file instead.
    """
    held_labels = None if labels is None else [int(labels[i]) for i in pool]
    key = json.dumps([name, dict(params), held_labels, [int(i) for i in pool], num_partitions, seed], sort_keys=True)
    path = default_cache_dir() / "partitions" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    shares = split_pool(name, params, labels, pool, num_partitions, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(json.dumps(shares))
    os.replace(staging, path)
    return shares


def split_pool(
    name: str,
    params: Mapping[str, Any],
    labels: Sequence[int] | None,
    pool: Sequence[int],
    num_partitions: int,
    seed: int,
) -> list[list[int]]:
    """Split ``pool`` into ``num_partitions`` parts with the Flower Datasets partitioner ``name``.

    Parameters
    ----------
    name : str
        One of :data:`PARTITIONS`.
    params : mapping
        Its parameters, as returned by :func:`check_partition`.
    labels : sequence of int or None
        Class id of every example of the task (indexed by example index); None for unlabelled tasks, which
        only the partitioners that ignore labels can split.
    pool : sequence of int
        The example indices to distribute.
    num_partitions : int
        Number of parts, at least 1.
    seed : int
        Seed of the shuffle and of the partitioner's own draws.

    Returns
    -------
    list of list of int
        ``num_partitions`` sorted, disjoint lists of example indices, all drawn from ``pool`` (the
        pathological and shard partitioners may leave examples unassigned).

    Raises
    ------
    ValueError
        When the partitioner cannot split this pool (too few examples or classes), with its own explanation.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    kind = PARTITIONERS[name]
    if kind.by_label and labels is None:
        raise ValueError(f"data.partition: {name!r} partitions by label, and this task has no labels")
    order = np.random.default_rng(seed).permutation(np.asarray(pool, dtype=np.int64))
    if len(order) < num_partitions:
        raise ValueError(
            f"data.partition: {len(order)} examples cannot fill {num_partitions} partitions (one per client); "
            f"use fewer clients or more data"
        )
    partitioner = _partitioner(kind, dict(params), num_partitions, seed)
    columns: dict[str, list[int]] = {"index": order.tolist()}
    if kind.by_label:
        assert labels is not None
        columns["label"] = [labels[index] for index in columns["index"]]
    partitioner.dataset = _dataset(columns)
    try:
        return [sorted(partitioner.load_partition(pid)["index"]) for pid in range(num_partitions)]
    except ValueError as error:
        raise ValueError(f"data.partition: {name!r} cannot split {len(order)} examples: {error}") from None


def _partitioner(kind: PartitionerKind, params: dict[str, Any], num_partitions: int, seed: int) -> Any:
    from flwr_datasets import partitioner as partitioners

    cls = getattr(partitioners, kind.class_name)
    if kind.by_label:
        params.update(partition_by="label", shuffle=True, seed=seed)
    return cls(num_partitions=num_partitions, **params)


def _dataset(columns: dict[str, list[int]]) -> Any:
    import datasets

    # In memory only: no cache files, no progress bars in a client's log.
    datasets.disable_progress_bars()
    return datasets.Dataset.from_dict(columns)
