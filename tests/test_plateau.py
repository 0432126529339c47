"""The plateau stop: the rule on loss sequences, the callback's rows and stop request, and the strategy loop."""

from __future__ import annotations

import pytest

from fedbrick_flower.plateau import PlateauStop, plateaued, relative_improvement, round_loss


def test_relative_improvement_compares_best_recent_with_best_before() -> None:
    # Prepare: best before the last 2 rounds 2.0, best of the last 2 rounds 1.9 -> 5 % better
    losses = [3.0, 2.0, 1.95, 1.9]

    # Execute
    improvement = relative_improvement(losses, window=2)

    # Assert
    assert improvement == pytest.approx(0.05)
    assert relative_improvement(losses[:2], window=2) is None


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], False),  # still improving by far more than 1 %
        ([1.0, 1.0, 0.999, 0.998, 0.997, 0.996], True),  # 0.4 % over the last 5 rounds
        ([1.0, 1.1, 1.2, 1.3, 1.4, 1.5], True),  # worse: stop
        ([1.0, 0.99, 0.98, 0.97], False),  # fewer than window + 1 rounds: keep going
    ],
)
def test_plateaued_at_one_percent_over_five_rounds(losses: list[float], expected: bool) -> None:
    # Execute / Assert
    assert plateaued(losses, window=5, tolerance=0.01) is expected


def test_round_loss_reads_the_watched_rows() -> None:
    # Prepare
    rows = [
        {"phase": "server-eval", "validation-loss": 1.0},
        {"phase": "server-eval", "validation-loss": 2.0},
        {"phase": "evaluate", "client": "a", "validation-loss": 4.0},
        {"phase": "train", "client": "a"},
    ]

    # Execute / Assert
    assert round_loss(rows, "global") == 1.5
    assert round_loss(rows, "on-device") == 4.0
    assert round_loss(rows[3:], "global") is None


def test_callback_requests_the_stop_and_writes_a_row_each_round() -> None:
    # Prepare
    callback = PlateauStop("global", window=1, tolerance=0.1)
    rounds = [[{"phase": "server-eval", "validation-loss": loss}] for loss in (2.0, 1.0, 0.95)]

    # Execute
    requested = []
    for server_round, rows in enumerate(rounds, start=1):
        callback.on_round_end(None, server_round, rows)  # type: ignore[arg-type]
        requested.append(callback.stop_requested())

    # Assert: round 2 improved by 50 %, round 3 by 5 % < 10 %
    assert requested == [False, False, True]
    assert [rows[-1]["phase"] for rows in rounds] == ["plateau"] * 3
    assert rounds[2][-1]["stop"] is True and rounds[2][-1]["improvement"] == pytest.approx(0.05)


def test_prime_continues_from_the_rounds_already_run() -> None:
    # Prepare
    callback = PlateauStop("on-device", window=1, tolerance=0.1)
    earlier = [{"round": 1, "phase": "evaluate", "validation-loss": 1.0}, {"round": 1, "phase": "train"}]

    # Execute
    callback.prime(earlier)
    callback.on_round_end(None, 2, rows := [{"phase": "evaluate", "validation-loss": 0.99}])  # type: ignore[arg-type]

    # Assert
    assert callback.losses == [1.0, 0.99] and callback.stop_requested()
    assert rows[-1]["phase"] == "plateau"


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="stop_when_plateau"):
        PlateauStop("test", 5, 0.01)
