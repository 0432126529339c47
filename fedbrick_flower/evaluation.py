"""Server-side evaluation of the full-depth global model on each task's server test split.

This is the metric the FedRA and FedBRICK papers report. The server holds the test split itself (computed
from the scenario like every other split), so no client data is involved.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .assembly import build_global_model, task_examples
from .metrics import SERVER_EVAL
from .models import resolve_device
from .objectives import task_objective
from .scenario import Scenario
from .scoring import scored_round
from .strategies.base import HeterogeneousStrategy, RoundCallback

logger = logging.getLogger(__name__)


class GlobalModelEvaluator(RoundCallback):
    """After each round (every ``server.evaluate_every``-th and the last), evaluate every ``(model, task)`` global
    adapter the strategy exposes.

    Parameters
    ----------
    scenario : Scenario
        The run's scenario (models, tasks, server test splits).
    device : str (default: "auto")
        Where the server evaluates.
    """

    def __init__(self, scenario: Scenario, device: str = "auto") -> None:
        self.scenario = scenario
        self.device = resolve_device(device)

    def on_round_end(self, strategy: HeterogeneousStrategy, server_round: int, log_rows: list[dict]) -> None:
        if not scored_round(server_round, self.scenario.server.evaluate_every, self.scenario.rounds):
            return
        for (model_key, task), tensors in strategy.global_adapters().items():
            started = time.perf_counter()
            row: dict[str, Any] = {"round": server_round, "phase": SERVER_EVAL, "model": model_key, "task": task}
            for prefix, part in self._splits():
                scores = self.evaluate(model_key, task, tensors, part)
                row.update({f"{prefix}{name}": value for name, value in scores.items()})
                if self.scenario.server.evaluate_without_lora:
                    bare = self.evaluate(model_key, task, without_lora(tensors), part)
                    row.update({f"{prefix}{name}-without-lora": value for name, value in bare.items()})
            logger.info("round %d: global %s on %s: %s", server_round, model_key, task, _describe(row))
            row["seconds"] = time.perf_counter() - started  # compute time of this row's evaluations
            log_rows.append(row)
        logger.info("round %d: server evaluation done", server_round)

    def _splits(self) -> list[tuple[str, str]]:
        """(row key prefix, split) of the splits scored: the test split, and the validation split when there is
        one (carved from the clients' training pool, never from the test split)."""
        if self.scenario.data.validation_fraction > 0:
            return [("", "server_test"), ("validation-", "server_validation")]
        return [("", "server_test")]

    def evaluate(
        self, model_key: str, task: str, tensors: dict[str, Any], part: str = "server_test"
    ) -> dict[str, float]:
        """The task objective's metrics (``accuracy``, ``loss``; ``perplexity`` and more for a generative task) of
        the full-depth model with ``tensors`` loaded, on the task's server test split (or ``part``)."""
        model = build_global_model(self.scenario, model_key, task, tensors, self.device)
        tokenizer = self.scenario.models[model_key].tokenizer_source
        examples = task_examples(self.scenario, task, part, None, tokenizer)
        objective = task_objective(self.scenario, task, tokenizer)
        return objective.score(model, examples, self.scenario.train.eval_batch_size, self.device)


def _describe(row: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in row.items() if isinstance(value, float))


def without_lora(tensors: dict[str, Any]) -> dict[str, Any]:
    """The same adapters with every LoRA B factor zeroed: the backbone as pretrained (plus any BRICKs the model
    runs only for missing layers) under the aggregated head, which shows what the aggregated LoRA adds."""
    return {name: value * 0 if name.endswith("lora_B") else value for name, value in tensors.items()}
