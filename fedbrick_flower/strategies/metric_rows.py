"""The rows every strategy writes to ``metrics.jsonl``, and the round's aggregated metrics Flower records.

Pure builders for :class:`~fedbrick_flower.strategies.base.HeterogeneousStrategy`: each returns plain dicts
(one row each) with ``round`` and ``phase`` first; an algorithm's own phases are built in its own module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..metrics import AGGREGATE, CLIPPED, EVALUATE, PRIVACY, REGISTRATION_FAILED, REJECTED, ROUND, TRAIN
from ..records import EVAL_PREFIX, array_bytes
from ..scenario.schema import PrivacySettings
from .aggregation import weighted_mean
from .dp import epsilon
from .replies import ClientUpdate

Row = dict[str, Any]


def train_rows(
    server_round: int, update: ClientUpdate, layers: list[int] | None, bytes_up: int, bytes_down: int | None
) -> list[Row]:
    """The ``train`` row of an update that is aggregated, and the ``evaluate`` row of the evaluation it carried
    (a client evaluates inside its train message, under ``eval-`` metric names)."""
    metrics = update.metrics
    train = {
        "round": server_round,
        "phase": TRAIN,
        "client": update.client.client_id,
        "layers": layers,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "adapter_bytes": array_bytes(update.arrays),
        **{k: v for k, v in metrics.items() if not k.startswith(EVAL_PREFIX)},
    }
    evaluation = {k[len(EVAL_PREFIX) :]: v for k, v in metrics.items() if k.startswith(EVAL_PREFIX)}
    if not evaluation:
        return [train]
    return [train, evaluation_row(server_round, update.client.client_id, evaluation, 0, 0, inside_train=True)]


def evaluation_row(
    server_round: int,
    client_id: str,
    metrics: Mapping[str, float],
    bytes_up: int,
    bytes_down: int | None,
    inside_train: bool = False,
) -> Row:
    """One ``evaluate`` row: the client's accuracy on its own test split, and what its message cost (an
    evaluation inside a train message costs nothing of its own)."""
    return {
        "round": server_round,
        "phase": EVALUATE,
        "client": client_id,
        "source": "train-message" if inside_train else "evaluate-message",
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        **metrics,
    }


def rejected_row(server_round: int, client_id: str, stage: str, reason: str) -> Row:
    """A reply of ``stage`` (``train`` or ``evaluate``) that was turned down, with the reason."""
    return {"round": server_round, "phase": REJECTED, "client": client_id, "stage": stage, "reason": reason}


def rejected_reasons(rows: Iterable[Row], server_round: int, stage: str) -> dict[str, str]:
    """Client id -> why its ``stage`` reply of ``server_round`` was rejected, from the round's rows."""
    return {
        row["client"]: row["reason"]
        for row in rows
        if row["phase"] == REJECTED and row["round"] == server_round and row["stage"] == stage
    }


def registration_failed_row(server_round: int, node: int, reason: str) -> Row:
    """A node that could not register (its client failed to set itself up, or was refused)."""
    return {"round": server_round, "phase": REGISTRATION_FAILED, "node": node, "reason": reason}


def clipped_rows(server_round: int, factors: Mapping[str, float]) -> list[Row]:
    """One row per clipped client, with the smallest factor its update was scaled by, in client-id order."""
    return [
        {"round": server_round, "phase": CLIPPED, "client": client_id, "factor": factor}
        for client_id, factor in sorted(factors.items())
    ]


def privacy_row(server_round: int, privacy: PrivacySettings, sample_rate: float) -> Row:
    """Epsilon at ``privacy.delta`` after ``server_round`` rounds (every round counted from the first).

    Central: the subsampled Gaussian mechanism of sensitivity ``clip_norm`` (one client added or removed) at
    ``sample_rate``. Local: one client's own releases, the noise over a sensitivity of ``2 * clip_norm`` (its
    clipped delta replaced by any other) in every round, at rate 1 (docs/privacy.md).
    """
    multiplier = privacy.noise_multiplier / (2.0 if privacy.mode == "local" else 1.0)
    return {
        "round": server_round,
        "phase": PRIVACY,
        "mode": privacy.mode,
        "epsilon": epsilon(multiplier, sample_rate, server_round, privacy.delta),
        "delta": privacy.delta,
        "noise_multiplier": privacy.noise_multiplier,
        "clip_norm": privacy.clip_norm,
        "sample_rate": sample_rate,
    }


def aggregate_row(server_round: int, seconds: float, updates: int) -> Row:
    """The server's own work in a round, apart from waiting for clients (compared across methods)."""
    return {"round": server_round, "phase": AGGREGATE, "seconds": seconds, "updates": updates}


def round_row(server_round: int, wall_seconds: float) -> Row:
    """A round's wall time, from registration to the last callback's input."""
    return {"round": server_round, "phase": ROUND, "wall_seconds": wall_seconds}


def train_metrics(updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """The round's aggregated training metrics: the update count and the n_k-weighted mean train loss and
    in-train evaluation accuracy over the updates that report them."""
    weights = [u.num_examples for u in updates]
    metrics: dict[str, float] = {"num-updates": len(updates)}
    for key in ("train-loss", EVAL_PREFIX + "accuracy"):
        mean = weighted_mean([u.metrics[key] for u in updates if key in u.metrics], weights)
        if mean is not None:
            metrics[key] = mean
    return metrics


def evaluation_accuracy(rows: Iterable[Row], server_round: int) -> float | None:
    """The round's accuracy over its ``evaluate`` rows, weighted by each client's test-set size."""
    evaluated = [r for r in rows if r["phase"] == EVALUATE and r["round"] == server_round]
    return weighted_mean([r["accuracy"] for r in evaluated], [r["num-examples"] for r in evaluated])
