"""Deterministic, seeded splitting of a task into server and client shares.

Every process of a federation (the server and each client) calls
:func:`split_federated` with the same arguments and must get the same indices, so
everything here draws from a :class:`numpy.random.Generator` built from an explicit
seed, iterates classes in sorted order and returns sorted index lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedbrick_flower.data.tasks import TextDataset

PARTITIONS: tuple[str, ...] = ("iid", "dirichlet")
# Seeds derived per split_federated call: subsample, proxy, server test, partition,
# then one per client. SeedSequence streams are prefix-stable, so the server's splits
# do not change with the number of clients.
_NUM_STAGE_SEEDS = 4


@dataclass(frozen=True)
class ClientSplit:
    """Indices of one client's local train and test examples."""

    train: tuple[int, ...]
    test: tuple[int, ...]


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
        Each client's local train/test split, keyed by client id in input order.
    """

    proxy: tuple[int, ...]
    server_test: tuple[int, ...]
    clients: dict[str, ClientSplit]


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


def iid_partition(indices: Sequence[int], num_partitions: int, seed: int) -> list[list[int]]:
    """Shuffle ``indices`` and deal them into partitions of near-equal size.

    Parameters
    ----------
    indices : sequence of int
        The examples to distribute.
    num_partitions : int
        Number of partitions, at least 1.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    list of list of int
        ``num_partitions`` sorted, disjoint partitions whose sizes differ by at most 1.
    """
    _check_num_partitions(num_partitions)
    shuffled = np.random.default_rng(seed).permutation(np.asarray(indices, dtype=np.int64))
    return [sorted(part.tolist()) for part in np.array_split(shuffled, num_partitions)]


def dirichlet_partition(
    labels: Sequence[int],
    indices: Sequence[int],
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 10,
    max_tries: int = 100,
) -> list[list[int]]:
    """Distribute each class over the partitions with Dirichlet(alpha) proportions.

    Small ``alpha`` gives label-skewed (non-IID) partitions; large ``alpha``
    approaches IID. Draws are repeated until every partition holds at least
    ``min_partition_size`` examples.

    Parameters
    ----------
    labels : sequence of int
        Class id of every example of the task (indexed by example index).
    indices : sequence of int
        The examples to distribute.
    num_partitions : int
        Number of partitions, at least 1.
    alpha : float
        Dirichlet concentration, greater than 0.
    seed : int
        Seed of the draws.
    min_partition_size : int, default 10
        Smallest acceptable partition.
    max_tries : int, default 100
        Number of draws before giving up.

    Returns
    -------
    list of list of int
        ``num_partitions`` sorted, disjoint partitions whose union is ``indices``.

    Raises
    ------
    ValueError
        On invalid parameters, or if no draw satisfies ``min_partition_size``.
    """
    _check_num_partitions(num_partitions)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    if len(indices) < num_partitions * min_partition_size:
        raise ValueError(
            f"min_partition_size={min_partition_size} is unreachable: "
            f"{len(indices)} examples cannot give {num_partitions} partitions "
            f"that many each"
        )
    rng = np.random.default_rng(seed)
    classes = _by_class(labels, indices)
    for _ in range(max_tries):
        parts = _dirichlet_draw(classes, num_partitions, alpha, rng)
        if min(len(part) for part in parts) >= min_partition_size:
            return [sorted(part) for part in parts]
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) draw in max_tries={max_tries} gave every "
        f"partition min_partition_size={min_partition_size} examples; raise alpha, "
        f"lower min_partition_size or use fewer partitions"
    )


def split_federated(
    dataset: TextDataset,
    client_ids: Sequence[str],
    *,
    seed: int,
    proxy_fraction: float = 0.05,
    server_test_fraction: float = 0.2,
    client_test_fraction: float = 0.2,
    partition: str = "iid",
    dirichlet_alpha: float = 0.5,
    max_examples: int | None = None,
) -> FederatedSplit:
    """Split a task into a server proxy set, a server test set and client shares.

    Steps: optional stratified subsample to ``max_examples``; stratified hold-out
    of the proxy split, then of the server test split (both fractions are of the
    whole, subsampled, task); partition of the remaining pool over ``client_ids``;
    stratified train/test split of each client's share.

    Parameters
    ----------
    dataset : TextDataset
        The task to split.
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
    partition : {"iid", "dirichlet"}, default "iid"
        How the pool is distributed over the clients.
    dirichlet_alpha : float, default 0.5
        Concentration for ``partition="dirichlet"``.
    max_examples : int, optional
        Subsample the task to about this many examples first (per-class rounding
        may shift the total by at most one per class).

    Returns
    -------
    FederatedSplit
        Disjoint proxy, server test and client index sets.

    Raises
    ------
    ValueError
        On invalid parameters, or if a client would get too few examples.
    """
    _check_split_arguments(
        client_ids,
        proxy_fraction,
        server_test_fraction,
        client_test_fraction,
        partition,
        dirichlet_alpha,
    )
    seeds = _derive_seeds(seed, _NUM_STAGE_SEEDS + len(client_ids))
    subsample_seed, proxy_seed, test_seed, partition_seed = seeds[:_NUM_STAGE_SEEDS]
    labels = dataset.labels
    pool = _subsample(labels, max_examples, subsample_seed)
    proxy, pool = stratified_holdout(labels, pool, proxy_fraction, proxy_seed)
    # Rescaled so that server_test_fraction is a share of the whole task.
    server_test, pool = stratified_holdout(labels, pool, server_test_fraction / (1 - proxy_fraction), test_seed)
    if partition == "iid":
        shares = iid_partition(pool, len(client_ids), partition_seed)
    else:
        shares = dirichlet_partition(labels, pool, len(client_ids), dirichlet_alpha, partition_seed)
    clients = {
        client_id: _split_client(labels, share, client_test_fraction, client_seed, client_id)
        for client_id, share, client_seed in zip(client_ids, shares, seeds[_NUM_STAGE_SEEDS:], strict=True)
    }
    return FederatedSplit(proxy=tuple(proxy), server_test=tuple(server_test), clients=clients)


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


def _dirichlet_draw(
    classes: list[list[int]],
    num_partitions: int,
    alpha: float,
    rng: np.random.Generator,
) -> list[list[int]]:
    """One Dirichlet assignment of every class's (shuffled) members to partitions."""
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    for members in classes:
        proportions = rng.dirichlet(np.full(num_partitions, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
        shuffled = rng.permutation(members)
        for part, chunk in zip(parts, np.split(shuffled, cuts), strict=True):
            part.extend(chunk.tolist())
    return parts


def _subsample(labels: Sequence[int], max_examples: int | None, seed: int) -> list[int]:
    """All example indices, or a stratified sample of about ``max_examples`` of them."""
    everything = list(range(len(labels)))
    if max_examples is None:
        return everything
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    if max_examples >= len(everything):
        return everything
    sample, _ = stratified_holdout(labels, everything, max_examples / len(everything), seed)
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


def _derive_seeds(seed: int, count: int) -> list[int]:
    """Independent per-stage seeds from one master seed."""
    return [int(value) for value in np.random.SeedSequence(seed).generate_state(count)]


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _check_num_partitions(num_partitions: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")


def _check_split_arguments(
    client_ids: Sequence[str],
    proxy_fraction: float,
    server_test_fraction: float,
    client_test_fraction: float,
    partition: str,
    dirichlet_alpha: float,
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
    if partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
    if partition == "dirichlet" and not dirichlet_alpha > 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
