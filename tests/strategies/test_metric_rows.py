"""The rows every strategy writes to ``metrics.jsonl`` and the round's aggregated metrics."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.strategies import metric_rows
from fedbrick_flower.strategies.replies import ClientUpdate

from .loopback import client_info


def _update(client_id: str, examples: int, metrics: dict[str, float]) -> ClientUpdate:
    arrays = {"head.bias": np.zeros(3, np.float32), "layers.0.q.lora_A": np.zeros((2, 4), np.float32)}
    return ClientUpdate(client_info(client_id, node_id=1), arrays, examples, metrics)


def test_a_train_reply_gives_its_train_row_and_the_evaluation_it_carried() -> None:
    # Prepare
    update = _update("a", 10, {"num-examples": 10.0, "train-loss": 0.7, "eval-accuracy": 0.5, "eval-num-examples": 4.0})

    # Execute
    train, evaluation = metric_rows.train_rows(3, update, layers=[0, 2], bytes_up=900, bytes_down=800)

    # Assert
    assert train == {
        "round": 3,
        "phase": "train",
        "client": "a",
        "layers": [0, 2],
        "bytes_up": 900,
        "bytes_down": 800,
        "adapter_bytes": 4 * (3 + 8),
        "num-examples": 10.0,
        "train-loss": 0.7,
    }
    assert evaluation == {
        "round": 3,
        "phase": "evaluate",
        "client": "a",
        "source": "train-message",
        "bytes_up": 0,
        "bytes_down": 0,
        "accuracy": 0.5,
        "num-examples": 4.0,
    }


def test_a_train_reply_without_evaluation_gives_one_row() -> None:
    # Execute
    rows = metric_rows.train_rows(1, _update("a", 5, {"num-examples": 5.0}), None, 10, None)

    # Assert
    assert [row["phase"] for row in rows] == ["train"]


def test_an_evaluate_message_row_counts_its_own_bytes() -> None:
    # Execute
    row = metric_rows.evaluation_row(2, "b", {"accuracy": 0.75, "num-examples": 8.0}, bytes_up=120, bytes_down=4000)

    # Assert
    assert (row["source"], row["bytes_up"], row["bytes_down"], row["accuracy"]) == ("evaluate-message", 120, 4000, 0.75)


def test_event_rows_carry_round_phase_and_their_subject() -> None:
    # Execute
    rejected = metric_rows.rejected_row(4, "c", "train", "node error: gone")
    failed = metric_rows.registration_failed_row(1, 7, "no data file")
    clipped = metric_rows.clipped_rows(2, {"z": 0.5, "a": 0.25})

    # Assert
    assert rejected == {"round": 4, "phase": "rejected", "client": "c", "stage": "train", "reason": "node error: gone"}
    assert failed == {"round": 1, "phase": "registration-failed", "node": 7, "reason": "no data file"}
    assert [(row["phase"], row["client"], row["factor"]) for row in clipped] == [
        ("clipped", "a", 0.25),
        ("clipped", "z", 0.5),
    ]
    assert metric_rows.aggregate_row(3, 0.5, 2) == {"round": 3, "phase": "aggregate", "seconds": 0.5, "updates": 2}
    assert metric_rows.round_row(3, 9.0) == {"round": 3, "phase": "round", "wall_seconds": 9.0}


def test_train_metrics_are_weighted_by_training_set_size() -> None:
    # Prepare
    updates = [
        _update("a", 10, {"train-loss": 1.0, "eval-accuracy": 0.2}),
        _update("b", 30, {"train-loss": 3.0, "eval-accuracy": 0.6}),
    ]

    # Execute
    metrics = metric_rows.train_metrics(updates)

    # Assert: (10 * 1 + 30 * 3) / 40 = 2.5 and (10 * 0.2 + 30 * 0.6) / 40 = 0.5
    assert metrics == {"num-updates": 2, "train-loss": pytest.approx(2.5), "eval-accuracy": pytest.approx(0.5)}


def test_a_round_without_updates_reports_only_their_count() -> None:
    assert metric_rows.train_metrics([]) == {"num-updates": 0}


def test_the_round_accuracy_weights_this_rounds_evaluations_by_test_set_size() -> None:
    # Prepare
    rows = [
        metric_rows.evaluation_row(2, "a", {"accuracy": 1.0, "num-examples": 1.0}, 0, 0),
        metric_rows.evaluation_row(2, "b", {"accuracy": 0.0, "num-examples": 3.0}, 0, 0),
        metric_rows.evaluation_row(1, "a", {"accuracy": 0.9, "num-examples": 100.0}, 0, 0),
        metric_rows.rejected_row(2, "c", "evaluate", "gone"),
    ]

    # Execute / Assert
    assert metric_rows.evaluation_accuracy(rows, 2) == pytest.approx(0.25)
    assert metric_rows.evaluation_accuracy(rows, 3) is None
