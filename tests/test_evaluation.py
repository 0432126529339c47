"""Server-side evaluation of the global model: which rounds it scores."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fedbrick_flower import evaluation
from fedbrick_flower.assembly import initial_adapters, scenario_lora
from fedbrick_flower.evaluation import GlobalModelEvaluator, without_lora
from fedbrick_flower.plateau import PlateauStop
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


def _numbered_scores(monkeypatch: pytest.MonkeyPatch, evaluator: GlobalModelEvaluator) -> list[str]:
    """Replace model building and scoring: each score is the number of the evaluation that gave it, and the
    splits asked for are recorded, ``-bare`` marking a model whose LoRA B is zeroed."""
    asked: list[str] = []
    built = SimpleNamespace(bare=False, backbone=None)
    monkeypatch.setattr(evaluator, "global_model", lambda model_key, task, tensors: SimpleNamespace(**vars(built)))

    def load(model: SimpleNamespace, family: str, tensors: dict) -> None:
        model.bare = True

    def score(model: SimpleNamespace, model_key: str, task: str, part: str) -> dict[str, float]:
        asked.append(part + ("-bare" if model.bare else ""))
        return {"accuracy": float(len(asked)), "loss": 1.0}

    monkeypatch.setattr(evaluation, "load_adapter_tensors", load)
    monkeypatch.setattr(evaluation, "model_family", lambda backbone: "bert")
    monkeypatch.setattr(evaluator, "score", score)
    return asked


def test_a_validation_split_is_scored_with_and_without_lora_beside_the_test_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    scenario = load_scenario(
        "fedbrick-tiny", {"data.validation_fraction": 0.2, "server.evaluate_without_lora": True, "rounds": 1}
    )
    evaluator = GlobalModelEvaluator(scenario, "cpu")
    asked = _numbered_scores(monkeypatch, evaluator)
    rows: list[dict] = []

    # Execute
    evaluator.on_round_end(_OneModel(), 1, rows)

    # Assert: four scores, each under its own key, the two without LoRA after the two with it
    assert asked == ["server_test", "server_validation", "server_test-bare", "server_validation-bare"]
    assert {key: rows[0][key] for key in rows[0] if "accuracy" in key} == {
        "accuracy": 1.0,
        "validation-accuracy": 2.0,
        "accuracy-without-lora": 3.0,
        "validation-accuracy-without-lora": 4.0,
    }


def test_under_a_global_plateau_rule_rounds_between_scored_ones_score_the_validation_split_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the validation loss never improves, so the plateau rule ends the run in round 3 (window 2)
    scenario = load_scenario(
        "fedbrick-tiny",
        {"data.validation_fraction": 0.2, "server.evaluate_without_lora": True, "rounds": 30,
         "server.evaluate_every": 10},
    )  # fmt: skip
    plateau = PlateauStop("global", window=2, tolerance=0.01)
    evaluator = GlobalModelEvaluator(scenario, "cpu", plateau=plateau)
    asked = _numbered_scores(monkeypatch, evaluator)
    by_round: dict[int, list[str]] = {}

    # Execute: what the strategy does each round (the evaluator, then the plateau rule)
    for server_round in (1, 2, 3):
        rows: list[dict] = []
        evaluator.on_round_end(_OneModel(), server_round, rows)
        plateau.on_round_end(_OneModel(), server_round, rows)
        by_round[server_round], asked[:] = list(asked), []

    # Assert: the last round has every figure, the others the plateau rule's loss alone
    assert by_round == {
        1: ["server_validation"],
        2: ["server_validation"],
        3: ["server_validation", "server_test", "server_test-bare", "server_validation-bare"],
    }
    assert plateau.stop_requested()
    assert {"accuracy", "loss", "accuracy-without-lora", "validation-loss-without-lora"} <= set(rows[0])


def test_without_lora_scores_equal_those_of_a_model_built_with_its_lora_b_zeroed() -> None:
    # Prepare: the tiny scenario's global adapters, with every B factor made non-zero so the LoRA matters
    scenario = load_scenario(
        "fedbrick-tiny", {"server.evaluate_without_lora": True, "data.validation_fraction": 0.2, "rounds": 1}
    )
    model_key, task = next(iter(scenario.models)), next(iter(scenario.tasks))
    start = initial_adapters(scenario, model_key, task, scenario_lora(scenario))
    rng = np.random.default_rng(0)
    noise = {k: rng.normal(0, 0.5, v.shape).astype(v.dtype) for k, v in start.items() if k.endswith("lora_B")}
    tensors = {k: v + noise[k] if k in noise else v for k, v in start.items()}
    evaluator = GlobalModelEvaluator(scenario, "cpu")
    rows: list[dict] = []

    # Execute
    evaluator.on_round_end(SimpleNamespace(global_adapters=lambda: {(model_key, task): tensors}), 1, rows)
    rebuilt = evaluator.evaluate(model_key, task, without_lora(tensors), "server_validation")
    with_lora = evaluator.evaluate(model_key, task, tensors, "server_validation")

    # Assert: the same figures as a model built without LoRA, and the LoRA changed them
    assert rows[0]["validation-loss-without-lora"] == rebuilt["loss"]
    assert rows[0]["validation-loss"] == with_lora["loss"]
    assert rebuilt["loss"] != with_lora["loss"]
