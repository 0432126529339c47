"""Deterministic, seeded splitting of a task into server and client shares.

Every process of a federation (the server and each client) calls
:func:`split_federated` with the same arguments and must get the same indices, so
everything here draws from a :class:`numpy.random.Generator` built from an explicit
seed, iterates classes in sorted order and returns sorted index lists. The clients'
shares come from a Flower Datasets partitioner (:mod:`.partitioners`); the server's
stratified proxy and test hold-outs, and each client's train/test split, are here.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedbrick_flower.data.partitioners import check_partition, partition_pool
from fedbrick_flower.data.tasks import TextDataset

# Seeds derived per split_federated call: subsample, proxy, server test, partition,
# then one per client. SeedSequence streams are prefix-stable, so the server's splits
# do not change with the number of clients.
_NUM_STAGE_SEEDS = 4
# Salt of the validation carve-out's own seed stream: outside the stage seeds above, so that a split without
# validation (fraction 0) draws exactly what it drew before validation existed.
_VALIDATION_SALT = 0x56414C  # "VAL"


@dataclass(frozen=True)
class ClientSplit:
    """Indices of one client's local train, test and validation examples.

    ``validation`` is carved from what would otherwise be the client's training data (never from its test
    split); empty unless a validation fraction is asked for.
    """

    train: tuple[int, ...]
    test: tuple[int, ...]
    validation: tuple[int, ...] = ()


@dataclass(frozen=True)
class FederatedSplit:
    """Disjoint index sets of a federated task.

    Attributes
    ----------
    proxy : tuple of int
        The server's public proxy split (never given to clients).
    server_test : tuple of int
        The server's held-out evaluation split.
    clients : dict of str to ClientSplit
        Each client's local train/test/validation split, keyed by client id in input order.
    """

    proxy: tuple[int, ...]
    server_test: tuple[int, ...]
    clients: dict[str, ClientSplit]

    @property
    def server_validation(self) -> tuple[int, ...]:
        """The server's validation holdout: the union of the clients' validation splits, all carved from the
        training pool, so the global model is tuned on training data and never on a test split."""
        return tuple(sorted(index for split in self.clients.values() for index in split.validation))


def stratified_holdout(
    labels: Sequence[int], indices: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Hold out about ``fraction`` of each class.

    Each class of size ``n`` contributes ``round(fraction * n)`` examples (rounded
    half up), but at least 1 when ``fraction > 0`` and at most ``n - 1`` when
    ``n >= 2``, so every class with two or more examples appears on both sides.

    Parameters
    ----------
    labels : sequence of int
        Class id of every example of the task (indexed by example index).
    indices : sequence of int
        The examples to split.
    fraction : float
        Share to hold out, in ``[0, 1)``.
    seed : int
        Seed of the random choice within each class.

    Returns
    -------
    held, rest : list of int
        Sorted disjoint indices whose union is ``indices``.
    """
    _check_fraction("fraction", fraction)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for members in _by_class(labels, indices):
        shuffled = rng.permutation(members).tolist()
        held.extend(shuffled[: _holdout_size(len(members), fraction)])
    held_set = set(held)
    return sorted(held), sorted(index for index in indices if index not in held_set)


def split_federated(
    dataset: TextDataset,
    client_ids: Sequence[str],
    *,
    seed: int,
    proxy_fraction: float = 0.05,
    server_test_fraction: float = 0.2,
    client_test_fraction: float = 0.2,
    partition: str = "iid",
    partition_params: Mapping[str, Any] | None = None,
    max_examples: int | None = None,
    test_indices: Sequence[int] | None = None,
    validation_fraction: float = 0.0,
) -> FederatedSplit:
    """Split a task into a server proxy set, a server test set and client shares.

    Steps: optional stratified subsample to ``max_examples``; stratified hold-out
    of the proxy split, then of the server test split (both fractions are of the
    whole, subsampled, task) unless ``test_indices`` gives the server test split;
    partition of the remaining pool over ``client_ids``; stratified train/test
    split of each client's share.

    Parameters
    ----------
    dataset : TextDataset
        The task to split (unlabelled examples are stratified as one class).
    client_ids : sequence of str
        Distinct client ids; partition ``k`` goes to ``client_ids[k]``.
    seed : int
        Master seed; all randomness derives from it.
    proxy_fraction : float, default 0.05
        Share of the task given to the server as a public proxy set.
    server_test_fraction : float, default 0.2
        Share of the task held out for server-side evaluation.
    client_test_fraction : float, default 0.2
        Share of each client's data held out for local evaluation (at least 1
        example when > 0).
    partition : str, default "iid"
        The Flower Datasets partitioner that distributes the pool over the clients,
        one of :data:`~fedbrick_flower.data.partitioners.PARTITIONS`.
    partition_params : mapping, optional
        Its parameters (``{"alpha": 0.5}``, ``{"num_classes_per_partition": 2}``...).
    max_examples : int, optional
        Subsample the task to about this many examples first (per-class rounding
        may shift the total by at most one per class). ``test_indices`` are kept.
    test_indices : sequence of int, optional
        The server test split as given (a task's own test file); these examples
        are kept out of the proxy and the pool, and ``server_test_fraction`` is
        not used.
    validation_fraction : float, default 0.0
        Share of each client's training examples held out as its validation split (stratified, from its own
        seed stream); 0 keeps every split exactly as without it.

    Returns
    -------
    FederatedSplit
        Disjoint proxy, server test and client index sets.

    Raises
    ------
    ValueError
        On invalid parameters, or if a client would get too few examples.
    """
    _check_split_arguments(client_ids, proxy_fraction, server_test_fraction, client_test_fraction)
    params = check_partition(partition, partition_params)
    seeds = _derive_seeds(seed, _NUM_STAGE_SEEDS + len(client_ids))
    subsample_seed, proxy_seed, test_seed, partition_seed = seeds[:_NUM_STAGE_SEEDS]
    labels = dataset.strata
    fixed_test = sorted(set(test_indices)) if test_indices is not None else None
    held = set(fixed_test or ())
    candidates = [index for index in range(len(dataset)) if index not in held]
    pool = _subsample(labels, candidates, max_examples, subsample_seed)
    proxy, pool = stratified_holdout(labels, pool, proxy_fraction, proxy_seed)
    if fixed_test is None:
        # Rescaled so that server_test_fraction is a share of the whole task.
        server_test, pool = stratified_holdout(labels, pool, server_test_fraction / (1 - proxy_fraction), test_seed)
    else:
        server_test = fixed_test
    shares = partition_pool(partition, params, dataset.labels, pool, len(client_ids), partition_seed)
    clients = {
        client_id: _carve_validation(
            labels,
            _split_client(labels, share, client_test_fraction, client_seed, client_id),
            validation_fraction,
            client_seed,
        )
        for client_id, share, client_seed in zip(client_ids, shares, seeds[_NUM_STAGE_SEEDS:], strict=True)
    }
    return FederatedSplit(proxy=tuple(proxy), server_test=tuple(server_test), clients=clients)


def split_local(
    dataset: TextDataset,
    client_id: str,
    *,
    seed: int,
    test_fraction: float,
    num_test: int = 0,
    validation_fraction: float = 0.0,
) -> ClientSplit:
    """Train/test split of a device's own examples.

    Parameters
    ----------
    dataset : TextDataset
        The device's examples: its train file, followed by its test file when it has one.
    client_id : str
        The device's client id (its split's seed derives from it).
    seed : int
        The scenario seed.
    test_fraction : float
        Share of the examples held out for local evaluation (stratified) when the device has no test file.
    num_test : int, default 0
        How many of the last examples come from the device's test file; when > 0 they are the test split and
        every other example is for training.
    validation_fraction : float, default 0.0
        Share of the training examples held out as the device's validation split.

    Returns
    -------
    ClientSplit
        Sorted, disjoint train, test and validation indices into ``dataset``.
    """
    if num_test > 0:
        cut = len(dataset) - num_test
    client_seed = int(np.random.SeedSequence([seed, zlib.crc32(client_id.encode())]).generate_state(1)[0])
    if num_test > 0:
        cut = len(dataset) - num_test
        split = ClientSplit(train=tuple(range(cut)), test=tuple(range(cut, len(dataset))))
        return _carve_validation(dataset.strata, split, validation_fraction, client_seed)
    _check_fraction("client_test_fraction", test_fraction)
    split = _split_client(dataset.strata, list(range(len(dataset))), test_fraction, client_seed, client_id)
    return _carve_validation(dataset.strata, split, validation_fraction, client_seed)


def _by_class(labels: Sequence[int], indices: Sequence[int]) -> list[list[int]]:
    """Group ``indices`` by label, classes in ascending label order."""
    groups: dict[int, list[int]] = {}
    for index in indices:
        groups.setdefault(labels[index], []).append(index)
    return [groups[label] for label in sorted(groups)]


def _holdout_size(class_size: int, fraction: float) -> int:
    """Per-class hold-out size: rounded half up, keeping both sides non-empty."""
    size = int(fraction * class_size + 0.5)
    if fraction > 0 and class_size >= 2:
        size = min(max(size, 1), class_size - 1)
    return size


def _subsample(labels: Sequence[int], candidates: list[int], max_examples: int | None, seed: int) -> list[int]:
    """``candidates``, or a stratified sample of about ``max_examples`` of them."""
    if max_examples is None:
        return candidates
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    if max_examples >= len(candidates):
        return candidates
    sample, _ = stratified_holdout(labels, candidates, max_examples / len(candidates), seed)
    return sample


def _split_client(
    labels: Sequence[int],
    share: list[int],
    test_fraction: float,
    seed: int,
    client_id: str,
) -> ClientSplit:
    """Stratified train/test split of a client's share, at least one test example."""
    minimum = 2 if test_fraction > 0 else 1
    if len(share) < minimum:
        raise ValueError(
            f"client {client_id!r} got {len(share)} examples, fewer than {minimum}; "
            f"use fewer clients or a larger max_examples"
        )
    test, train = stratified_holdout(labels, share, test_fraction, seed)
    # When every class of the share is a singleton, per-class rounding holds out
    # nothing; move one seeded example so the client can still evaluate.
    if test_fraction > 0 and not test:
        moved = train.pop(int(np.random.default_rng(seed).integers(len(train))))
        test = [moved]
    return ClientSplit(train=tuple(train), test=tuple(test))


def _carve_validation(labels: Sequence[int], split: ClientSplit, fraction: float, client_seed: int) -> ClientSplit:
    """``split`` with about ``fraction`` of its training examples moved to its validation split (stratified).

    The draw comes from the client's seed salted into a stream of its own, so it is the same in every process
    and leaves every other draw of the split untouched; a fraction of 0 returns ``split`` unchanged.
    """
    _check_fraction("validation_fraction", fraction)
    if fraction == 0 or len(split.train) < 2:
        return split
    seed = int(np.random.SeedSequence([client_seed, _VALIDATION_SALT]).generate_state(1)[0])
    validation, train = stratified_holdout(labels, split.train, fraction, seed)
    return ClientSplit(train=tuple(train), test=split.test, validation=tuple(validation))


def _derive_seeds(seed: int, count: int) -> list[int]:
    """Independent per-stage seeds from one master seed."""
    return [int(value) for value in np.random.SeedSequence(seed).generate_state(count)]


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _check_split_arguments(
    client_ids: Sequence[str],
    proxy_fraction: float,
    server_test_fraction: float,
    client_test_fraction: float,
) -> None:
    """Validate :func:`split_federated` arguments, naming the offending parameter."""
    if not client_ids:
        raise ValueError("client_ids must not be empty")
    if len(set(client_ids)) != len(client_ids):
        raise ValueError(f"client_ids must be distinct, got {list(client_ids)}")
    _check_fraction("proxy_fraction", proxy_fraction)
    _check_fraction("server_test_fraction", server_test_fraction)
    _check_fraction("client_test_fraction", client_test_fraction)
    if proxy_fraction + server_test_fraction >= 1:
        raise ValueError(
            f"proxy_fraction + server_test_fraction must be < 1, got {proxy_fraction} + {server_test_fraction}"
        )
