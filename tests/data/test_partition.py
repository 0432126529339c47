"""Tests for the deterministic federated split: stratified hold-outs, partitioned pool, device-local splits."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

import fedbrick_flower
from fedbrick_flower.data import (
    FederatedSplit,
    TextDataset,
    load_task,
    split_federated,
    split_local,
    stratified_holdout,
)

# 50 + 30 + 2 + 1 examples of four classes.
TOY_LABELS = [0] * 50 + [1] * 30 + [2] * 2 + [3]
CLIENTS = ["alice", "bob", "carol", "dave"]
DIRICHLET = {"alpha": 0.5}


def _toy_dataset(labels: Sequence[int]) -> TextDataset:
    return TextDataset(
        name="toy",
        texts=tuple(f"text {i}" for i in range(len(labels))),
        labels=tuple(labels),
        label_names=tuple(f"class {c}" for c in range(max(labels) + 1)),
    )


def _mean_label_entropy(labels: Sequence[int], parts: Sequence[Sequence[int]]) -> float:
    """Mean Shannon entropy (nats) of the label distribution of each part."""

    def entropy(part: Sequence[int]) -> float:
        counts = Counter(labels[i] for i in part).values()
        return -sum(c / len(part) * math.log(c / len(part)) for c in counts)

    return sum(entropy(part) for part in parts) / len(parts)


def _all_indices(split: FederatedSplit) -> list[int]:
    client_indices = [index for client in split.clients.values() for index in client.train + client.test]
    return list(split.proxy) + list(split.server_test) + client_indices


def test_stratified_holdout_rounds_per_class() -> None:
    # Prepare
    indices = list(range(len(TOY_LABELS)))

    # Execute
    held, rest = stratified_holdout(TOY_LABELS, indices, fraction=0.2, seed=0)

    # Assert
    held_counts = Counter(TOY_LABELS[i] for i in held)
    # 10 of 50, 6 of 30, at least 1 of a pair, none of a singleton.
    assert [held_counts[c] for c in range(4)] == [10, 6, 1, 0]
    assert held == sorted(held) and rest == sorted(rest)
    assert sorted(held + rest) == indices


def test_stratified_holdout_only_draws_from_given_indices() -> None:
    # Prepare
    indices = list(range(0, len(TOY_LABELS), 3))

    # Execute
    held, rest = stratified_holdout(TOY_LABELS, indices, fraction=0.5, seed=4)

    # Assert
    assert sorted(held + rest) == indices
    assert not set(held) & set(rest)


def test_stratified_holdout_zero_fraction_holds_nothing() -> None:
    # Execute
    held, rest = stratified_holdout(TOY_LABELS, range(10), fraction=0.0, seed=0)

    # Assert
    assert held == [] and rest == list(range(10))


def test_stratified_holdout_depends_on_seed_only() -> None:
    # Prepare
    indices = list(range(len(TOY_LABELS)))

    # Execute
    first = stratified_holdout(TOY_LABELS, indices, 0.3, seed=1)
    again = stratified_holdout(TOY_LABELS, indices, 0.3, seed=1)
    other = stratified_holdout(TOY_LABELS, indices, 0.3, seed=2)

    # Assert
    assert first == again
    assert first != other


def test_split_federated_is_disjoint_and_complete() -> None:
    # Prepare
    dataset = load_task("bbc-news")

    # Execute
    split = split_federated(dataset, CLIENTS, seed=0)

    # Assert
    everything = _all_indices(split)
    assert len(everything) == len(set(everything)) == len(dataset)
    assert list(split.clients) == CLIENTS
    assert abs(len(split.proxy) - 0.05 * len(dataset)) <= dataset.num_labels
    assert abs(len(split.server_test) - 0.2 * len(dataset)) <= dataset.num_labels
    assert {dataset.labels[i] for i in split.proxy} == set(range(dataset.num_labels))
    assert all(client.test and client.train for client in split.clients.values())


def test_split_federated_is_deterministic_per_seed() -> None:
    # Prepare
    dataset = load_task("chatterbot")

    # Execute
    first = split_federated(dataset, CLIENTS, seed=3, partition="dirichlet", partition_params=DIRICHLET)
    again = split_federated(dataset, CLIENTS, seed=3, partition="dirichlet", partition_params=DIRICHLET)
    other = split_federated(dataset, CLIENTS, seed=4, partition="dirichlet", partition_params=DIRICHLET)

    # Assert
    assert first == again
    assert first.proxy != other.proxy
    assert first.clients != other.clients


def test_server_splits_do_not_depend_on_the_clients() -> None:
    # Prepare
    dataset = load_task("drug-sentiment")

    # Execute
    few = split_federated(dataset, CLIENTS[:2], seed=5)
    many = split_federated(dataset, CLIENTS, seed=5, partition="dirichlet", partition_params=DIRICHLET)

    # Assert
    assert few.proxy == many.proxy
    assert few.server_test == many.server_test


def test_split_federated_matches_across_processes() -> None:
    # Prepare: another interpreter with a different string-hash seed, as a client
    # process would have.
    code = (
        "import json; from fedbrick_flower.data import load_task, split_federated\n"
        "s = split_federated(load_task('drug-condition'), "
        f"{CLIENTS!r}, seed=9, partition='dirichlet', partition_params={{'alpha': 0.5}})\n"
        "print(json.dumps([s.proxy, s.server_test, "
        "{k: [c.train, c.test] for k, c in s.clients.items()}]))"
    )
    source_root = Path(fedbrick_flower.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(source_root)}

    # Execute
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    local = split_federated(
        load_task("drug-condition"), CLIENTS, seed=9, partition="dirichlet", partition_params=DIRICHLET
    )

    # Assert
    proxy, server_test, clients = json.loads(result.stdout)
    assert tuple(proxy) == local.proxy
    assert tuple(server_test) == local.server_test
    assert clients == {k: [list(c.train), list(c.test)] for k, c in local.clients.items()}


def test_dirichlet_clients_are_more_skewed_than_iid_clients() -> None:
    # Prepare
    dataset = load_task("bbc-news")

    # Execute
    iid = split_federated(dataset, CLIENTS, seed=0)
    skewed = split_federated(dataset, CLIENTS, seed=0, partition="dirichlet", partition_params={"alpha": 0.1})

    # Assert
    def shares(split: FederatedSplit) -> list[tuple[int, ...]]:
        return [client.train + client.test for client in split.clients.values()]

    iid_entropy = _mean_label_entropy(dataset.labels, shares(iid))
    skewed_entropy = _mean_label_entropy(dataset.labels, shares(skewed))
    assert skewed_entropy < 0.8 * iid_entropy


def test_max_examples_subsamples_with_stratification() -> None:
    # Prepare
    dataset = load_task("drug-sentiment")

    # Execute
    split = split_federated(dataset, CLIENTS[:2], seed=0, max_examples=200)

    # Assert
    everything = _all_indices(split)
    assert abs(len(everything) - 200) <= dataset.num_labels
    positive_share = sum(dataset.labels[i] == 2 for i in everything) / len(everything)
    assert abs(positive_share - 633 / 979) < 0.02


def test_client_with_only_singleton_classes_still_gets_a_test_example() -> None:
    # Prepare
    dataset = _toy_dataset(range(6))

    # Execute
    split = split_federated(dataset, ["solo"], seed=0, proxy_fraction=0.0, server_test_fraction=0.0)

    # Assert
    client = split.clients["solo"]
    assert len(client.test) == 1 and len(client.train) == 5


def test_too_many_clients_for_the_data_is_an_error() -> None:
    # Prepare
    dataset = _toy_dataset([0, 1] * 5)

    # Execute / Assert
    with pytest.raises(ValueError, match="client"):
        split_federated(dataset, [f"c{i}" for i in range(8)], seed=0)


@pytest.mark.parametrize(
    ("arguments", "parameter"),
    [
        ({"proxy_fraction": 1.0}, "proxy_fraction"),
        ({"server_test_fraction": -0.1}, "server_test_fraction"),
        ({"client_test_fraction": 1.5}, "client_test_fraction"),
        (
            {"proxy_fraction": 0.5, "server_test_fraction": 0.5},
            "proxy_fraction + server_test_fraction",
        ),
        ({"partition": "shards"}, "partition"),
        ({"partition": "dirichlet", "partition_params": {"alpha": 0.0}}, "partition_params.alpha"),
        ({"max_examples": 0}, "max_examples"),
    ],
)
def test_invalid_arguments_name_the_parameter(arguments: dict[str, object], parameter: str) -> None:
    # Prepare
    dataset = _toy_dataset(TOY_LABELS)

    # Execute
    with pytest.raises(ValueError) as error:
        split_federated(dataset, CLIENTS, seed=0, **arguments)  # type: ignore[arg-type]

    # Assert
    assert parameter in str(error.value)
    value = list(arguments.values())[-1]
    shown = next(iter(value.values())) if isinstance(value, dict) else value
    assert repr(shown) in str(error.value) or str(shown) in str(error.value)


@pytest.mark.parametrize("client_ids", [[], ["a", "b", "a"]], ids=["empty", "repeated"])
def test_client_ids_must_be_distinct_and_non_empty(client_ids: list[str]) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="client_ids"):
        split_federated(_toy_dataset(TOY_LABELS), client_ids, seed=0)


def test_a_given_test_split_is_the_server_test_and_stays_out_of_the_pool() -> None:
    # Prepare: 60 train examples, then 10 from a test file
    dataset = _toy_dataset([0, 1, 2] * 20 + [0, 1] * 5)
    test_indices = list(range(60, 70))

    # Execute
    split = split_federated(dataset, CLIENTS[:2], seed=0, server_test_fraction=0.2, test_indices=test_indices)

    # Assert
    assert split.server_test == tuple(test_indices)
    client_indices = {i for client in split.clients.values() for i in client.train + client.test}
    assert not client_indices & set(test_indices) and not set(split.proxy) & set(test_indices)
    assert len(client_indices) + len(split.proxy) == 60


def test_unlabelled_examples_are_split_by_iid_but_not_by_label_partitioners() -> None:
    # Prepare
    dataset = TextDataset("gen", tuple(f"p{i}" for i in range(40)), None, (), responses=tuple("r" * 40))

    # Execute
    split = split_federated(dataset, CLIENTS[:2], seed=0)

    # Assert
    assert (
        sum(len(c.train) + len(c.test) for c in split.clients.values()) + len(split.proxy) + len(split.server_test)
        == 40
    )
    with pytest.raises(ValueError, match="partitions by label"):
        split_federated(
            dataset, CLIENTS[:2], seed=0, partition="pathological", partition_params={"num_classes_per_partition": 1}
        )


def test_local_split_holds_out_a_stratified_share_or_uses_the_test_file() -> None:
    # Prepare
    dataset = _toy_dataset([0] * 10 + [1] * 10)

    # Execute
    held = split_local(dataset, "alice", seed=0, test_fraction=0.2)
    again = split_local(dataset, "alice", seed=0, test_fraction=0.2)
    other = split_local(dataset, "bob", seed=0, test_fraction=0.2)
    given = split_local(dataset, "alice", seed=0, test_fraction=0.2, num_test=5)

    # Assert
    assert held == again and held != other
    assert sorted(dataset.labels[i] for i in held.test) == [0, 0, 1, 1]
    assert sorted(held.train + held.test) == list(range(20))
    assert given.train == tuple(range(15)) and given.test == tuple(range(15, 20))


def test_validation_fraction_zero_is_the_split_without_validation() -> None:
    # Prepare
    dataset = _toy_dataset(TOY_LABELS)

    # Execute
    before = split_federated(dataset, CLIENTS, seed=3)
    zero = split_federated(dataset, CLIENTS, seed=3, validation_fraction=0.0)

    # Assert
    assert zero == before
    assert all(client.validation == () for client in zero.clients.values())
    assert zero.server_validation == ()


def test_validation_split_is_carved_from_training_data_and_disjoint_from_test() -> None:
    # Prepare
    dataset = _toy_dataset(TOY_LABELS)
    without = split_federated(dataset, CLIENTS, seed=3)

    # Execute
    split = split_federated(dataset, CLIENTS, seed=3, validation_fraction=0.25)

    # Assert: each client's validation + train is its old train; test, proxy and server test are unchanged
    for client_id, client in split.clients.items():
        old = without.clients[client_id]
        assert client.validation, client_id
        assert sorted(client.train + client.validation) == list(old.train)
        assert not set(client.validation) & set(client.train)
        assert client.test == old.test
    assert split.proxy == without.proxy and split.server_test == without.server_test
    held_out = set(split.server_test) | set(split.proxy) | {i for c in split.clients.values() for i in c.test}
    assert not set(split.server_validation) & held_out
    assert set(split.server_validation) == {i for c in split.clients.values() for i in c.validation}


def test_validation_split_follows_the_seed() -> None:
    # Prepare
    dataset = _toy_dataset(TOY_LABELS)

    # Execute
    again = [split_federated(dataset, CLIENTS, seed=s, validation_fraction=0.25).server_validation for s in (1, 1, 2)]

    # Assert
    assert again[0] == again[1]
    assert again[0] != again[2]


def test_split_local_carves_validation_from_train_only() -> None:
    # Prepare
    dataset = _toy_dataset(TOY_LABELS)

    # Execute
    plain = split_local(dataset, "alice", seed=0, test_fraction=0.2)
    carved = split_local(dataset, "alice", seed=0, test_fraction=0.2, validation_fraction=0.2)
    own_test = split_local(dataset, "alice", seed=0, test_fraction=0.2, num_test=10, validation_fraction=0.2)

    # Assert
    assert carved.test == plain.test
    assert sorted(carved.train + carved.validation) == list(plain.train) and carved.validation
    assert own_test.test == tuple(range(len(TOY_LABELS) - 10, len(TOY_LABELS)))
    assert not set(own_test.validation) & set(own_test.test)
