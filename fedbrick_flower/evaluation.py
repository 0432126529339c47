"""Server-side evaluation of the full-depth global model on each task's server test split.

This is the metric the FedRA and FedBRICK papers report. The server holds the test split itself (computed
from the scenario like every other split), so no client data is involved.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .adapters.lora import load_adapter_tensors
from .assembly import build_global_model, task_examples
from .metrics import SERVER_EVAL
from .models import model_family, resolve_device
from .objectives import task_objective
from .plateau import PlateauStop
from .scenario import Scenario
from .scoring import scored_round
from .strategies.base import HeterogeneousStrategy, RoundCallback

logger = logging.getLogger(__name__)


TEST, VALIDATION = ("", "server_test"), ("validation-", "server_validation")
"""(row key prefix, split) of the two splits the server scores."""


class GlobalModelEvaluator(RoundCallback):
    """After each round (every ``server.evaluate_every``-th and the last), evaluate every ``(model, task)`` global
    adapter the strategy exposes.

    A run that stops on a plateau of the global validation loss (``plateau``) needs that loss every round: the
    rounds in between score the validation split alone, and a round the plateau rule ends the run on is scored in
    full, so the run's last row has every figure whatever ``evaluate_every`` is.

    Parameters
    ----------
    scenario : Scenario
        The run's scenario (models, tasks, server test splits).
    device : str (default: "auto")
        Where the server evaluates.
    plateau : PlateauStop | None (default: None)
        The run's plateau rule, when it watches the global validation loss.
    """

    def __init__(self, scenario: Scenario, device: str = "auto", plateau: PlateauStop | None = None) -> None:
        self.scenario = scenario
        self.device = resolve_device(device)
        self.plateau = plateau if plateau is not None and plateau.metric == "global" else None

    def on_round_end(self, strategy: HeterogeneousStrategy, server_round: int, log_rows: list[dict]) -> None:
        server = self.scenario.server
        full = scored_round(server_round, server.evaluate_every, self.scenario.rounds)
        if not full and self.plateau is None:
            return
        adapters = strategy.global_adapters()
        rows = {key: {"round": server_round, "phase": SERVER_EVAL, "model": key[0], "task": key[1]} for key in adapters}
        with_lora = self._splits()
        if not full:  # the plateau rule's loss first: it tells whether this round is the run's last
            for key, tensors in adapters.items():
                self._score_into(rows[key], key, tensors, [VALIDATION], [])
            if not self.plateau.stops_with(list(rows.values())):
                self._emit(rows, server_round, log_rows)
                return
            with_lora = [TEST]
        bare = self._splits() if server.evaluate_without_lora else []
        for key, tensors in adapters.items():
            self._score_into(rows[key], key, tensors, with_lora, bare)
        self._emit(rows, server_round, log_rows)

    def _splits(self) -> list[tuple[str, str]]:
        """The splits scored: the test split, and the validation split when there is one (carved from the
        clients' training pool, never from the test split)."""
        return [TEST, VALIDATION] if self.scenario.data.validation_fraction > 0 else [TEST]

    def _score_into(
        self,
        row: dict[str, Any],
        key: tuple[str, str],
        tensors: dict[str, Any],
        with_lora: list[tuple[str, str]],
        without: list[tuple[str, str]],
    ) -> None:
        """Add the scores of ``key``'s global model on the ``with_lora`` splits, then on the ``without`` splits with
        its LoRA B zeroed, to ``row``; one model is built for both, and its compute time is added to the row."""
        started = time.perf_counter()
        model = self.global_model(*key, tensors)
        for prefix, part in with_lora:
            row.update({f"{prefix}{name}": value for name, value in self.score(model, *key, part).items()})
        if without:
            load_adapter_tensors(model, model_family(model.backbone), without_lora(tensors))
            for prefix, part in without:
                scores = self.score(model, *key, part)
                row.update({f"{prefix}{name}-without-lora": value for name, value in scores.items()})
        row["seconds"] = row.get("seconds", 0.0) + time.perf_counter() - started

    def _emit(self, rows: dict[tuple[str, str], dict[str, Any]], server_round: int, log_rows: list[dict]) -> None:
        for row in rows.values():
            logger.info("round %d: global %s on %s: %s", server_round, row["model"], row["task"], _describe(row))
            log_rows.append(row)
        logger.info("round %d: server evaluation done", server_round)

    def global_model(self, model_key: str, task: str, tensors: dict[str, Any]) -> Any:
        """The full-depth model of ``model_key`` with ``tensors`` loaded, on the evaluation device."""
        return build_global_model(self.scenario, model_key, task, tensors, self.device)

    def score(self, model: Any, model_key: str, task: str, part: str) -> dict[str, float]:
        """The task objective's metrics (``accuracy``, ``loss``; ``perplexity`` and more for a generative task) of
        ``model`` on the task's split ``part`` (``server_test`` or ``server_validation``)."""
        tokenizer = self.scenario.models[model_key].tokenizer_source
        examples = task_examples(self.scenario, task, part, None, tokenizer)
        objective = task_objective(self.scenario, task, tokenizer)
        return objective.score(model, examples, self.scenario.train.eval_batch_size, self.device)

    def evaluate(
        self, model_key: str, task: str, tensors: dict[str, Any], part: str = "server_test"
    ) -> dict[str, float]:
        """:meth:`score` of a model built from ``tensors``."""
        return self.score(self.global_model(model_key, task, tensors), model_key, task, part)


def _describe(row: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in row.items() if isinstance(value, float))


def without_lora(tensors: dict[str, Any]) -> dict[str, Any]:
    """The same adapters with every LoRA B factor zeroed: the backbone as pretrained (plus any BRICKs the model
    runs only for missing layers) under the aggregated head, which shows what the aggregated LoRA adds."""
    return {name: value * 0 if name.endswith("lora_B") else value for name, value in tensors.items()}
