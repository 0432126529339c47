"""Tests for the Flower Datasets partitioners by name: validation, determinism, label skew and sizes."""

from collections import Counter

import numpy as np
import pytest

from fedbrick_flower.data import PARTITIONS, check_partition, partition_pool
from fedbrick_flower.data import partitioners as partitioners_module

# 5 classes x 40 examples; the pool leaves out the first 10 examples.
LABELS = [i % 5 for i in range(200)]
POOL = list(range(10, 200))
PARAMS = {
    "iid": {},
    "dirichlet": {"alpha": 0.5},
    "pathological": {"num_classes_per_partition": 2},
    "shard": {"num_shards_per_partition": 2},
    "linear": {},
    "square": {},
    "exponential": {},
}


@pytest.mark.parametrize("name", PARTITIONS)
def test_every_partitioner_is_deterministic_disjoint_and_inside_the_pool(name: str) -> None:
    # Prepare
    params = check_partition(name, PARAMS[name])

    # Execute
    first = partitioners_module.split_pool(name, params, LABELS, POOL, 4, seed=7)
    again = partitioners_module.split_pool(name, params, LABELS, POOL, 4, seed=7)
    other = partitioners_module.split_pool(name, params, LABELS, POOL, 4, seed=8)

    # Assert
    assert first == again
    assert first != other
    flat = [index for part in first for index in part]
    assert len(flat) == len(set(flat)) and set(flat) <= set(POOL)
    assert all(part == sorted(part) and part for part in first)


def test_iid_and_size_partitioners_assign_every_example() -> None:
    # Execute
    parts = {name: partition_pool(name, {}, LABELS, POOL, 4, seed=0) for name in ("iid", "linear", "square")}

    # Assert
    for part in parts.values():
        assert sorted(index for p in part for index in p) == POOL


def test_pathological_gives_each_client_exactly_k_classes() -> None:
    # Prepare
    params = check_partition("pathological", {"num_classes_per_partition": 2, "class_assignment_mode": "deterministic"})

    # Execute
    parts = partition_pool("pathological", params, LABELS, POOL, 4, seed=0)

    # Assert: deterministic mode gives client k the classes k and k+1
    assert [sorted({LABELS[i] for i in part}) for part in parts] == [[0, 1], [1, 2], [2, 3], [3, 4]]


@pytest.mark.parametrize("k", [1, 3])
def test_pathological_random_assignment_gives_k_classes(k: int) -> None:
    # Execute
    parts = partition_pool("pathological", {"num_classes_per_partition": k}, LABELS, POOL, 5, seed=3)

    # Assert
    assert [len({LABELS[i] for i in part}) for part in parts] == [k] * 5


@pytest.mark.parametrize(
    ("name", "units"),
    [("linear", [1, 2, 3, 4]), ("square", [1, 4, 9, 16]), ("exponential", list(np.exp([1, 2, 3, 4])))],
)
def test_size_partitioners_grow_with_the_partition_id(name: str, units: list[float]) -> None:
    # Execute
    parts = partition_pool(name, {}, LABELS, POOL, 4, seed=0)

    # Assert: size k is floor(len * units[k] / sum), the remainder goes to the last partition
    expected = [int(len(POOL) * unit / sum(units)) for unit in units]
    expected[-1] += len(POOL) - sum(expected)
    assert [len(part) for part in parts] == expected


def test_dirichlet_small_alpha_skews_labels() -> None:
    # Execute
    skewed = partition_pool("dirichlet", {"alpha": 0.05, "min_partition_size": 5}, LABELS, POOL, 4, seed=1)

    # Assert: the largest class of each partition holds most of it
    dominance = [max(Counter(LABELS[i] for i in part).values()) / len(part) for part in skewed]
    assert np.mean(dominance) > 0.6


def test_shard_gives_equal_shards() -> None:
    # Execute
    parts = partition_pool("shard", {"shard_size": 20}, LABELS, POOL, 4, seed=0)

    # Assert: 190 examples make 9 whole shards of 20 (the incomplete one is dropped); 4 partitions get 2 each
    # and one of them the ninth
    assert sorted(len(part) for part in parts) == [40, 40, 40, 60]


def test_label_partitioners_need_labels() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="'dirichlet' partitions by label"):
        partition_pool("dirichlet", {"alpha": 1.0}, None, POOL, 2, seed=0)


def test_a_partitioner_that_cannot_split_the_pool_says_why() -> None:
    # Execute / Assert: 6 classes asked of a 5-class pool
    with pytest.raises(ValueError, match="data.partition: 'pathological' cannot split 190 examples.*greater"):
        partition_pool("pathological", {"num_classes_per_partition": 6}, LABELS, POOL, 2, seed=0)


def test_check_fills_defaults() -> None:
    # Execute
    params = check_partition("pathological", {"num_classes_per_partition": 2})

    # Assert
    assert params == {"num_classes_per_partition": 2, "class_assignment_mode": "random"}
    assert check_partition("dirichlet", {"alpha": 1}) == {
        "alpha": 1.0,
        "min_partition_size": 10,
        "self_balancing": False,
    }


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("shards", {}, "data.partition: 'shards' is not one of"),
        ("dirichlet", {}, "data.partition_params.alpha: required by partitioner 'dirichlet'"),
        ("dirichlet", {"alpha": -1}, "data.partition_params.alpha: must be > 0, got -1.0"),
        ("dirichlet", {"alpha": "big"}, "data.partition_params.alpha: expected float, got 'big'"),
        ("iid", {"alpha": 1.0}, "data.partition_params.alpha: not a parameter of partitioner 'iid'"),
        ("pathological", {}, "data.partition_params.num_classes_per_partition: required"),
        ("pathological", {"num_classes_per_partition": 0}, "num_classes_per_partition: must be >= 1, got 0"),
        ("pathological", {"num_classes_per_partition": True}, "num_classes_per_partition: expected int, got True"),
        (
            "pathological",
            {"num_classes_per_partition": 1, "class_assignment_mode": "fixed"},
            "class_assignment_mode: 'fixed' is not one of",
        ),
        ("shard", {}, "data.partition_params: partitioner 'shard' needs exactly one of"),
    ],
)
def test_invalid_names_and_parameters_name_the_field(name: str, params: dict, message: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError) as error:
        check_partition(name, params)
    assert message in str(error.value)


def test_partition_pool_is_memoized_on_disk_and_equals_the_direct_split(monkeypatch, tmp_path) -> None:
    # Prepare: an empty cache folder
    monkeypatch.setenv("FEDBRICK_CACHE", str(tmp_path))
    direct = partitioners_module.split_pool("dirichlet", {"alpha": 0.5}, LABELS, POOL, 4, seed=3)

    # Execute: the first call computes and writes; the second must not compute (Flower Datasets is not imported)
    first = partition_pool("dirichlet", {"alpha": 0.5}, LABELS, POOL, 4, seed=3)
    monkeypatch.setattr(partitioners_module, "split_pool", lambda *args: pytest.fail("recomputed"))
    second = partition_pool("dirichlet", {"alpha": 0.5}, LABELS, POOL, 4, seed=3)

    # Assert
    assert first == second == direct
    assert len(list((tmp_path / "partitions").glob("*.json"))) == 1
