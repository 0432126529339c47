"""Flower's SecAgg+ protocol driven from a Message-API strategy over the Grid: the server learns only the sum.

Flower's ``SecAggPlusWorkflow`` runs the four stages for a legacy strategy (it needs a ``LegacyContext``). Our
strategies build one message per client, so this module drives the same stages itself, with the same messages
(``secaggplus`` config records, ``Stage`` and ``Key`` constants) for Flower's client-side ``secaggplus_mod``, and
the same primitives (Shamir shares, key agreement, pseudo-random masks, quantisation):

1. ``setup``: each sampled client makes two key pairs and returns the public keys;
2. ``share-keys``: each client gets its neighbours' public keys and returns, encrypted for each neighbour, Shamir
   shares of its private mask seed and of its first secret key;
3. ``collect-masked-vectors``: each client gets the shares addressed to it together with its real training
   message, trains, and returns its update padded to the round's layout (:mod:`fedbrick_flower.secure_layout`),
   quantised, weighted and masked; the server sees nothing else of the update;
4. ``unmask``: each client that is still there returns its shares of the surviving clients' mask seeds and of
   the dropped clients' secret keys; with at least ``threshold`` shares per client the server removes every
   mask from the sum of the masked vectors.

A client that drops out after sharing its keys (stage 2) leaves pairwise masks in the others' vectors; its
neighbours' shares of its secret key rebuild them, so the round still aggregates the clients that remain.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import WARNING
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.supercore import log
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from ..records import ADAPTERS_KEY, METRICS_KEY, UpdateRejected
from .replies import reply_metrics, training_set_size
from .transport import pull

Vector = list[np.ndarray]


class SecureAggregationFailed(RuntimeError):
    """Too few clients are left to run or unmask the round (fewer than the protocol's threshold)."""


@dataclass(frozen=True)
class SecAggParameters:
    """The protocol's settings; the meaning and defaults of Flower's ``SecAggPlusWorkflow``.

    Parameters
    ----------
    num_shares : float (default: 1.0)
        Each client shares its secrets with this fraction of the round's clients (its neighbours, itself
        included): 1.0 is SecAgg's complete graph, less is SecAgg+.
    reconstruction_threshold : float (default: 0.5)
        Fraction of a client's shares needed to rebuild its secrets, at least 2. Fewer clients than that left in
        a round fails the round; as many colluding with the server could rebuild a client's mask.
    clipping_range : float (default: 8.0)
        Values are quantised within ±clipping_range; a client refuses to mask a value beyond it.
    quantization_range : int (default: 2**22)
        Integer levels of the quantisation.
    modulus_range : int (default: 2**32)
        Masked vectors are summed modulo this power of two (must exceed clients x quantization_range).
    """

    num_shares: float = 1.0
    reconstruction_threshold: float = 0.5
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32

    def shares_and_threshold(self, num_clients: int) -> tuple[int, int]:
        """How many neighbours each of ``num_clients`` clients has, and the reconstruction threshold (Flower's
        rules: an odd share count below the client count, a threshold of at least 2)."""
        shares = round(self.num_shares * num_clients)
        if shares < num_clients and shares % 2 == 0:
            shares += 1
        shares = num_clients if shares <= 2 else min(shares, num_clients)
        return shares, max(2, round(self.reconstruction_threshold * shares))

    def error_bound(self, min_weight: float) -> float:
        """Largest error of one value of the secure mean against the plain weighted mean, per element.

        Each holder's scaled value is rounded stochastically to a step of ``2 C / T`` (C: clipping range, T:
        quantization range) and its weight to a step of ``1 / T``; with k holders of total weight H >= k *
        ``min_weight`` and values and mean within ±C, the mean moves by at most
        ``k / (T H) * (2 C (1 + C) + C)``, which is at most ``(2 C (1 + C) + C) / (T * min_weight)``.
        """
        c = self.clipping_range
        return (2 * c * (1 + c) + c) / (self.quantization_range * min_weight)


@dataclass
class SecureRound:
    """One round of the protocol, as the server follows it.

    Attributes
    ----------
    threshold : int
        Shares needed to rebuild a client's secrets.
    neighbours : dict[int, set[int]]
        Node id -> the nodes it shares secrets with (itself included).
    public_keys : dict[int, tuple[bytes, bytes]]
        Node id -> its two public keys (setup stage).
    keyed : set[int]
        Nodes that shared their keys (their shares reached their neighbours).
    masked : dict[int, Vector]
        Node id -> the masked vector it returned: all the server holds of its update.
    rejected : dict[int, str]
        Node id -> why its reply to the collect stage is not in the sum (an error, a missing vector).
    shares : dict[int, list[bytes]]
        Node id -> the shares the unmask stage collected of its secret (mask seed if it stayed, key if it left).
    """

    parameters: SecAggParameters
    threshold: int
    neighbours: dict[int, set[int]]
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    keyed: set[int] = field(default_factory=set)
    masked: dict[int, Vector] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    shares: dict[int, list[bytes]] = field(default_factory=dict)


def run_protocol(
    grid: Grid,
    messages: Iterable[Message],
    parameters: SecAggParameters,
    max_weight: float,
    server_round: int,
    timeout: float,
    seed: str,
) -> tuple[SecureRound, dict[str, int], list[Message]]:
    """Run the four stages for the round's training ``messages`` (one per node, each with its layout).

    Returns
    -------
    tuple[SecureRound, dict[str, int], list[Message]]
        The round's protocol state (masked vectors and unmasking shares), the id of each training message pushed
        with the node it went to, and the replies to those messages: masked vectors and metrics, no update.

    Raises
    ------
    SecureAggregationFailed
        If fewer than the threshold of clients are left after a stage.
    """
    by_node = {message.metadata.dst_node_id: message for message in messages}
    num_shares, threshold = parameters.shares_and_threshold(len(by_node))
    if len(by_node) < 2:
        raise SecureAggregationFailed(f"secure aggregation needs at least 2 clients in a round, got {len(by_node)}")
    order = sorted(by_node)
    random.Random(seed).shuffle(order)
    half = num_shares // 2
    neighbours = {
        nid: {order[(index + offset) % len(order)] for offset in range(-half, num_shares - half)}
        for index, nid in enumerate(order)
    }
    secure = SecureRound(parameters, threshold, neighbours)
    setup = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: len(order),
        Key.SHARE_NUMBER: num_shares,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: float(parameters.clipping_range),
        Key.TARGET_RANGE: parameters.quantization_range,
        Key.MOD_RANGE: parameters.modulus_range,
        Key.MAX_WEIGHT: float(max_weight),
    }
    replies = _round_trip(grid, {nid: _stage_message(nid, setup, server_round) for nid in order}, timeout)
    for nid, reply in replies.items():
        keys = reply.content.config_records[RECORD_KEY_CONFIGS]
        secure.public_keys[nid] = (cast(bytes, keys[Key.PUBLIC_KEY_1]), cast(bytes, keys[Key.PUBLIC_KEY_2]))
    _check(secure, set(secure.public_keys), "setup")

    forward = _share_keys(grid, secure, server_round, timeout)
    sent, collected = _collect(grid, secure, by_node, forward, timeout)
    _unmask(grid, secure, server_round, timeout)
    return secure, sent, collected


def unmasked_sum(secure: SecureRound) -> Vector:
    """The sum of the masked vectors with every mask removed, dequantised: ``[sum_i w_i x_i, sum_i w_i h_i]``.

    Raises
    ------
    SecureAggregationFailed
        If a client's secret has fewer than ``threshold`` shares.
    """
    p = secure.parameters
    total = None
    for vector in secure.masked.values():
        total = vector if total is None else parameters_addition(total, vector)
    if total is None:
        raise SecureAggregationFailed("no masked vector to unmask")
    total = parameters_mod(total, p.modulus_range)
    shapes = get_parameters_shape(total)
    active = set(secure.masked)
    for nid in sorted(secure.keyed):
        shares = secure.shares.get(nid, [])
        if len(shares) < secure.threshold:
            raise SecureAggregationFailed(
                f"node {nid}: {len(shares)} shares of its secret, the threshold is {secure.threshold}"
            )
        secret = combine_shares(shares)
        if nid in active:  # its private mask seed
            total = parameters_subtraction(total, pseudo_rand_gen(secret, p.modulus_range, shapes))
            continue
        # A node that left after sharing its keys: rebuild the pairwise masks its active neighbours added.
        for other in sorted(secure.neighbours[nid] & active):
            shared = generate_shared_key(
                bytes_to_private_key(secret), bytes_to_public_key(secure.public_keys[other][0])
            )
            mask = pseudo_rand_gen(shared, p.modulus_range, shapes)
            total = parameters_addition(total, mask) if nid > other else parameters_subtraction(total, mask)
    _, vectors = factor_extract(parameters_mod(total, p.modulus_range))
    summed = dequantize(vectors, p.clipping_range, p.quantization_range)
    # Each vector was quantised with an offset of +C; dequantising the sum removed one of them.
    return [vector - (len(active) - 1) * p.clipping_range for vector in summed]


def read_masked(reply: Message) -> Vector:
    """The masked vector of a collect-stage reply.

    Raises
    ------
    UpdateRejected
        If the reply is an error, carries tensors in the clear, or lacks its masked vector or its training-set
        size (the weight the strategy reports it with).
    """
    if reply.has_error():
        raise UpdateRejected(f"node error: {reply.error.reason}")
    if any(len(record) for record in reply.content.array_records.values()):
        raise UpdateRejected(f"a masked reply carries tensors in the clear ({ADAPTERS_KEY} or other arrays)")
    configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None or Key.MASKED_PARAMETERS not in configs or METRICS_KEY not in reply.content.metric_records:
        raise UpdateRejected("reply has no masked vector or no metrics")
    training_set_size(reply_metrics(reply))
    return [bytes_to_ndarray(blob) for blob in cast(list[bytes], configs[Key.MASKED_PARAMETERS])]


# ------------------------------------------------------------------------------------------------ the stages
Forward = dict[int, list[tuple[int, bytes]]]  # node id -> (source node, ciphertext) of each share addressed to it


def _share_keys(grid: Grid, secure: SecureRound, server_round: int, timeout: float) -> Forward:
    """Forward each node its neighbours' public keys; returns, per node, the encrypted shares addressed to it."""
    live = set(secure.public_keys)

    def config(nid: int) -> dict:
        keys = {str(other): list(secure.public_keys[other]) for other in secure.neighbours[nid] & live}
        return {**keys, Key.STAGE: Stage.SHARE_KEYS}

    replies = _round_trip(grid, {nid: _stage_message(nid, config(nid), server_round) for nid in live}, timeout)
    secure.keyed = set(replies)
    _check(secure, secure.keyed, "share-keys")
    forward: Forward = {nid: [] for nid in secure.keyed}
    for src, reply in sorted(replies.items()):
        result = reply.content.config_records[RECORD_KEY_CONFIGS]
        destinations = cast(list[int], result[Key.DESTINATION_LIST])
        for dst, ciphertext in zip(destinations, cast(list[bytes], result[Key.CIPHERTEXT_LIST]), strict=True):
            if dst in forward:
                forward[dst].append((src, ciphertext))
    return forward


def _collect(
    grid: Grid,
    secure: SecureRound,
    by_node: Mapping[int, Message],
    forward: Forward,
    timeout: float,
) -> tuple[dict[str, int], list[Message]]:
    """Send each keyed node its training message with its shares; keep the masked vectors that come back."""
    messages = []
    for nid in sorted(forward):
        message = by_node[nid]
        message.content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(
            {
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                Key.CIPHERTEXT_LIST: [ciphertext for _, ciphertext in forward[nid]],
                Key.SOURCE_LIST: [src for src, _ in forward[nid]],
            }
        )
        messages.append(message)
    message_ids = list(grid.push_messages(messages))
    sent = {mid: message.metadata.dst_node_id for mid, message in zip(message_ids, messages, strict=True)}
    replies = pull(grid, message_ids, timeout)
    for reply in replies:
        nid = sent[reply.metadata.reply_to_message_id]
        try:
            secure.masked[nid] = read_masked(reply)
        except UpdateRejected as error:
            secure.rejected[nid] = str(error)
    _check(secure, set(secure.masked), "collect-masked-vectors")
    return sent, replies


def _unmask(grid: Grid, secure: SecureRound, server_round: int, timeout: float) -> None:
    """Ask the nodes whose vectors are in the sum for their shares: mask seeds of those that stayed, secret keys
    of those that left after sharing their keys."""
    active, dead = set(secure.masked), secure.keyed - set(secure.masked)

    def config(nid: int) -> dict:
        mates = secure.neighbours[nid]
        return {
            Key.STAGE: Stage.UNMASK,
            Key.ACTIVE_NODE_ID_LIST: sorted(mates & active),
            Key.DEAD_NODE_ID_LIST: sorted(mates & dead),
        }

    replies = _round_trip(grid, {nid: _stage_message(nid, config(nid), server_round) for nid in active}, timeout)
    secure.shares = {nid: [] for nid in secure.keyed}
    for _, reply in sorted(replies.items()):
        result = reply.content.config_records[RECORD_KEY_CONFIGS]
        owners = cast(list[int], result[Key.NODE_ID_LIST])
        for owner, share in zip(owners, cast(list[bytes], result[Key.SHARE_LIST]), strict=True):
            secure.shares[owner].append(share)


def _stage_message(node_id: int, config: dict, server_round: int) -> Message:
    """A protocol message: only the ``secaggplus`` config record, handled by the client's mod alone."""
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(config)})
    return Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN, group_id=str(server_round))


def _round_trip(grid: Grid, messages: Mapping[int, Message], timeout: float) -> dict[int, Message]:
    """Push one message per node and return the successful replies by node; errors and silence are logged."""
    message_ids = list(grid.push_messages(messages.values()))
    sent = dict(zip(message_ids, messages, strict=True))
    answered = {sent[reply.metadata.reply_to_message_id]: reply for reply in pull(grid, message_ids, timeout)}
    for nid in sorted(set(messages) - set(answered)):
        log(WARNING, "secure aggregation: node %s did not answer within %.0fs", nid, timeout)
    for nid, reply in sorted(answered.items()):
        if reply.has_error():
            log(WARNING, "secure aggregation: node %s left the round: %s", nid, reply.error.reason)
    return {nid: reply for nid, reply in answered.items() if not reply.has_error()}


def _check(secure: SecureRound, left: set[int], stage: str) -> None:
    if len(left) < secure.threshold:
        raise SecureAggregationFailed(
            f"secure aggregation: {len(left)} clients left after the {stage} stage, the threshold is {secure.threshold}"
        )
