"""Early stop on a validation-loss plateau (``server.stop_when_plateau``): the budget rule of the leaderboard
protocol, as a round callback any algorithm's run can use.

Each round the callback reads the validation loss the round wrote (the server's ``server-eval`` rows for
``global``, the clients' ``evaluate`` rows for ``on-device``), and asks the strategy to stop once the best loss
of the last ``window`` rounds is less than ``tolerance`` (a share) below the best loss before them. It writes
one ``plateau`` row per round, so the run directory says why and when it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from statistics import mean

from .strategies.base import HeterogeneousStrategy, RoundCallback

logger = logging.getLogger(__name__)

# Which rows hold the watched loss, by ``server.stop_when_plateau``.
PHASES = {"global": "server-eval", "on-device": "evaluate"}
LOSS_KEY = "validation-loss"


def relative_improvement(losses: Sequence[float], window: int) -> float | None:
    """How far the best of the last ``window`` losses lies below the best before them, as a share of the latter.

    None until there are more than ``window`` losses (there is nothing to compare with yet). Negative when the
    recent losses are all worse.
    """
    if len(losses) <= window:
        return None
    before, recent = min(losses[:-window]), min(losses[-window:])
    return (before - recent) / before if before > 0 else 0.0


def plateaued(losses: Sequence[float], window: int, tolerance: float) -> bool:
    """True once the loss improved by less than ``tolerance`` over the last ``window`` rounds."""
    improvement = relative_improvement(losses, window)
    return improvement is not None and improvement < tolerance


def round_loss(rows: Iterable[dict], metric: str) -> float | None:
    """The round's watched validation loss: mean over its global models, or over its clients; None without one."""
    values = [row[LOSS_KEY] for row in rows if row.get("phase") == PHASES[metric] and row.get(LOSS_KEY) is not None]
    return float(mean(values)) if values else None


class PlateauStop(RoundCallback):
    """Ends the run when the validation loss has plateaued (see the module docstring).

    Parameters
    ----------
    metric : str
        ``global`` or ``on-device``.
    window : int
        Rounds over which the improvement is measured.
    tolerance : float
        Smallest relative improvement over ``window`` rounds that keeps the run going.
    """

    def __init__(self, metric: str, window: int, tolerance: float) -> None:
        if metric not in PHASES:
            raise ValueError(f"server.stop_when_plateau: {metric!r} is not one of {sorted(PHASES)}")
        self.metric, self.window, self.tolerance = metric, window, tolerance
        self.losses: list[float] = []
        self.stop = False

    def prime(self, rows: Iterable[dict]) -> None:
        """On resume: the losses of the rounds already run, from the run directory's rows."""
        by_round: dict[int, list[dict]] = {}
        for row in rows:
            if "round" in row:
                by_round.setdefault(row["round"], []).append(row)
        self.losses = [loss for k in sorted(by_round) if (loss := round_loss(by_round[k], self.metric)) is not None]

    def stops_with(self, rows: Iterable[dict]) -> bool:
        """Whether a round with these rows would end the run (this rule's state is left as it is)."""
        loss = round_loss(rows, self.metric)
        return loss is not None and plateaued([*self.losses, loss], self.window, self.tolerance)

    def on_round_end(self, strategy: HeterogeneousStrategy, server_round: int, log_rows: list[dict]) -> None:
        loss = round_loss(log_rows, self.metric)
        if loss is None:
            logger.warning("round %d: no %s %s row; the plateau rule waits", server_round, self.metric, LOSS_KEY)
            return
        self.losses.append(loss)
        improvement = relative_improvement(self.losses, self.window)
        self.stop = plateaued(self.losses, self.window, self.tolerance)
        log_rows.append(
            {
                "round": server_round,
                "phase": "plateau",
                "metric": self.metric,
                LOSS_KEY: loss,
                "improvement": improvement,
                "stop": self.stop,
            }
        )

    def stop_requested(self) -> bool:
        return self.stop
