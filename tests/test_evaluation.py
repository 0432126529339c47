"""Server-side evaluation of the global model: which rounds it scores."""

from __future__ import annotations

import pytest

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


class _OneModel(_Strategy):
    def global_adapters(self) -> dict:
        return {("minilm", "chat"): {"head.weight": 1.0}}


def test_a_validation_split_is_scored_with_and_without_lora_beside_the_test_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: each score is the number of the evaluation that gave it
    scenario = load_scenario(
        "fedbrick-tiny", {"data.validation_fraction": 0.2, "server.evaluate_without_lora": True, "rounds": 1}
    )
    evaluator = GlobalModelEvaluator(scenario, "cpu")
    asked: list[str] = []

    def evaluate(model_key: str, task: str, tensors: dict, part: str = "server_test") -> dict[str, float]:
        asked.append(part)
        return {"accuracy": float(len(asked))}

    monkeypatch.setattr(evaluator, "evaluate", evaluate)
    rows: list[dict] = []

    # Execute
    evaluator.on_round_end(_OneModel(), 1, rows)

    # Assert: four scores, each under its own key
    assert asked == ["server_test", "server_test", "server_validation", "server_validation"]
    assert {key: rows[0][key] for key in rows[0] if "accuracy" in key} == {
        "accuracy": 1.0,
        "accuracy-without-lora": 2.0,
        "validation-accuracy": 3.0,
        "validation-accuracy-without-lora": 4.0,
    }
