"""Server-side evaluation of the global model: which rounds it scores."""

from __future__ import annotations

from fedbrick_flower.evaluation import GlobalModelEvaluator
from fedbrick_flower.scenario import load_scenario
from fedbrick_flower.scoring import scored_round


class _Strategy:
    """Counts the rounds the evaluator asks for the global adapters (it holds none)."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.round = 0

    def global_adapters(self) -> dict:
        self.asked.append(self.round)
        return {}


def test_the_server_evaluates_every_kth_round_and_the_last() -> None:
    # Prepare
    scenario = load_scenario("fedbrick-tiny", {"rounds": 7, "server.evaluate_every": 3})
    evaluator = GlobalModelEvaluator(scenario, "cpu")
    strategy = _Strategy()

    # Execute
    for server_round in range(1, 8):
        strategy.round = server_round
        evaluator.on_round_end(strategy, server_round, [])

    # Assert
    assert strategy.asked == [3, 6, 7]
    assert [r for r in range(1, 8) if scored_round(r, 1, 7)] == list(range(1, 8))
