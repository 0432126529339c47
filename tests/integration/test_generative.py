"""Generative tasks end to end: every algorithm, a tiny random Llama and the pretrained SmolLM2. Marked integration.

The tests drive the real strategy (with the server's global evaluation) and the real ClientApp through real Flower
``Message`` objects on an in-process grid (:func:`fedbrick_flower.inprocess.client_app_grid`): a federation in one
process, seconds rather than a Ray start. The Simulation Engine itself does not depend on the
task's kind; ``fedbrick-flower run instruct`` runs a generative task on it (README, "Instruction tuning").
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from fedbrick_flower.evaluation import GlobalModelEvaluator
from fedbrick_flower.inprocess import client_app_grid
from fedbrick_flower.runconfig import SCENARIO_KEY
from fedbrick_flower.scenario import load_scenario
from fedbrick_flower.server_app import build_strategy
from fedbrick_flower.strategies.base import RoundCallback

pytestmark = pytest.mark.integration

TINY_LLAMA = {
    "family": "llama",
    "tokenizer": "smollm2-135m",  # a chat template, so the templated path runs end to end
    "config": {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "tie_word_embeddings": True,
    },
}
FEDBRICK_PARAMS = {"brick_rank": 2, "distill_epochs": 1, "distill_batch_size": 8, "stage_two_min_steps": 1}


def _scenario(algorithm: str, model: dict, clients: list[dict], **extra) -> dict:
    return {
        "algorithm": algorithm,
        "rounds": 2,
        "seed": 0,
        "models": {"lm": model},
        "tasks": {
            "sentiment": {"dataset": "drug-sentiment-gen", "kind": "generative", "max_examples": 40},
            "chat": {"dataset": "chat-pairs", "kind": "generative", "max_examples": 40},
        },
        "data": {"max_length": 112, "server_test_fraction": 0.1, "proxy_fraction": 0.1},
        "train": {"local_steps": 2, "batch_size": 4, "lr": 0.003, "eval_batch_size": 16},
        "lora": {"rank": 4, "alpha": 8},
        "clients": clients,
        **extra,
    }


class _Rows(RoundCallback):
    """Keeps the rows the strategy and the server evaluation log each round."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_round_end(self, strategy, server_round: int, log_rows: list[dict]) -> None:  # noqa: ANN001
        self.rows += log_rows


def _drive(tmp_path: Path, raw: dict) -> tuple[list[dict], object]:
    """Run ``raw`` with the real strategy and the real ClientApp, one in-process node per client."""
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(raw))
    scenario = load_scenario(str(path))
    rows = _Rows()
    callbacks = [GlobalModelEvaluator(scenario, "cpu"), rows] if scenario.server.evaluate_global else [rows]
    strategy = build_strategy(scenario, callbacks)
    grid = client_app_grid({SCENARIO_KEY: str(path)}, len(scenario.clients))
    strategy.start(grid, num_rounds=scenario.rounds, timeout=600)
    return rows.rows, strategy


# FedAvg/FedRA, local and FedBRICK run two rounds (a payload built from aggregated generative LoRA comes back in
# round 2). The others run one, to keep CI short: what is particular to a generative task (updates and global
# adapters without a head, the server's perplexity) happens in round 1.
ALGORITHMS = {
    "fedavg": {},
    "local": {},
    "fedbrick": {"algorithm_params": FEDBRICK_PARAMS},
    "fedbip": {"rounds": 1},
    "hetlora": {"rounds": 1},
    "flexlora": {"rounds": 1},
    "flora": {"rounds": 1},
}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_trains_a_tiny_llama_on_generative_tasks(tmp_path: Path, algorithm: str) -> None:
    # Prepare: two depths, two generative tasks (short label answers, open chat answers); two LoRA ranks for the
    # methods that mix ranks.
    mixed = algorithm in {"hetlora", "flexlora", "flora"}
    clients = [
        {"id": "deep", "model": "lm", "task": "sentiment", "layers": 4, **({"rank": 4} if mixed else {})},
        {"id": "shallow", "model": "lm", "task": "chat", "layers": 2, **({"rank": 2} if mixed else {})},
    ]

    # Execute
    rows, strategy = _drive(tmp_path, _scenario(algorithm, TINY_LLAMA, clients, **ALGORITHMS[algorithm]))

    # Assert: every update accepted; each client reports response-token loss and perplexity = exp(loss) in every
    # round; the label task (answers of 2-3 tokens) is also scored by generation.
    rounds = range(1, ALGORITHMS[algorithm].get("rounds", 2) + 1)
    assert not [r for r in rows if r["phase"] == "rejected"]
    train = [r for r in rows if r["phase"] == "train"]
    assert sorted((r["round"], r["client"]) for r in train) == [(n, c) for n in rounds for c in ("deep", "shallow")]
    assert all(math.isfinite(r["train-loss"]) and {"data-truncated", "data-dropped"} <= set(r) for r in train)
    evaluations = [r for r in rows if r["phase"] == "evaluate"]
    assert {(r["round"], r["client"]) for r in evaluations} == {(n, c) for n in rounds for c in ("deep", "shallow")}
    assert all(r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-6) for r in evaluations)
    assert all("exact-match" in r for r in evaluations if r["client"] == "deep")
    server = [r for r in rows if r["phase"] == "server-eval"]
    if strategy.global_adapters():
        assert {(r["round"], r["task"]) for r in server} == {(n, t) for n in rounds for t in ("sentiment", "chat")}
        assert all(r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-6) for r in server)
    if algorithm == "fedbrick":
        distill = [r for r in rows if r["phase"] == "distill"]
        assert {(r["round"], r["layer"]) for r in distill} >= {(n, g) for n in rounds for g in range(4)}


def test_smollm2_at_4_of_30_layers_under_fedbrick(tmp_path: Path) -> None:
    # Prepare: the pretrained SmolLM2-135M-Instruct, one client holding 4 of its 30 layers, BRICKs standing in
    # for the 26 it lacks, distilled on the server's proxy split.
    raw = _scenario(
        "fedbrick",
        {"source": "smollm2-135m"},
        [{"id": "edge", "model": "lm", "task": "sentiment", "layers": 4}],
        rounds=1,
        algorithm_params={**FEDBRICK_PARAMS, "distill_batch_size": 4},
        server={"evaluate_global": False},
    )
    raw["tasks"] = {"sentiment": {**raw["tasks"]["sentiment"], "max_examples": 40}}
    raw["data"] = {**raw["data"], "proxy_fraction": 0.1, "server_test_fraction": 0.1}
    raw["train"] = {**raw["train"], "local_steps": 1, "batch_size": 2}

    # Execute
    rows, strategy = _drive(tmp_path, raw)

    # Assert: the update holds LoRA of the 4 held layers (no head) and the 30 BRICKs; the loss is finite.
    (train,) = [r for r in rows if r["phase"] == "train"]
    (evaluation,) = [r for r in rows if r["phase"] == "evaluate"]
    assert math.isfinite(train["train-loss"]) and evaluation["perplexity"] > 1.0
    assert {r["layer"] for r in rows if r["phase"] == "distill"} == set(range(30))
    layers = {int(name.split(".")[1]) for name in strategy.layer_adapters("lm")}
    assert len(layers) == 4
