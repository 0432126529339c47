"""Thin Flower ServerApp: run_config -> scenario -> strategy from the registry -> rounds -> run directory."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .data import task_labels
from .preflight import check_scenario
from .registry import server_class
from .run_dir import SUMMARY_FILE, RunRecorder
from .runconfig import OUT_DIR_KEY, PREFLIGHT_KEY, RESUME_KEY, SCENARIO_KEY, scenario_overrides
from .scenario import Scenario
from .strategies.aggregation import Robustness
from .strategies.base import HeterogeneousStrategy, RoundCallback

app = ServerApp()
logger = logging.getLogger(__name__)


def runtime_arguments(scenario: Scenario, callbacks: list[RoundCallback], state_scope: str = "") -> dict[str, Any]:
    """The strategy arguments the ServerApp fills in from the scenario's server settings (not algorithm params).

    The server waits for ``server.min_clients`` connected clients (all of the scenario's by default) and then
    samples ``server.fraction_train`` of them for each round, at least ``server.min_train_clients``.
    """
    server = scenario.server
    return {
        "seed": scenario.seed,
        "fraction_train": server.fraction_train,
        "min_train_clients": server.min_train_clients,
        "min_clients": server.min_clients or len(scenario.clients),
        "expected_clients": len(scenario.clients),
        "state_scope": state_scope,
        "frozen_lora": scenario.train.freeze_lora,
        "task_labels": {key: task_labels(spec) for key, spec in scenario.tasks.items()},
        "node_wait_timeout": server.node_wait_timeout,
        "round_timeout": server.round_timeout,
        "wire_dtype": server.wire_dtype,
        "max_update_bytes": int(server.max_update_mb * 2**20),
        "robustness": Robustness(
            aggregation=server.aggregation,
            trim_fraction=server.trim_fraction,
            outlier_norm_multiple=server.outlier_norm_multiple,
            norm_scope=server.norm_scope,
            clip_norm=server.clip_norm,
            clip_norm_multiple=server.clip_norm_multiple,
        ),
        "callbacks": callbacks,
    }


def build_strategy(scenario: Scenario, callbacks: list[RoundCallback], state_scope: str = "") -> HeterogeneousStrategy:
    """The scenario's strategy: its registered class, the runtime arguments and the algorithm parameters."""
    return server_class(scenario.algorithm).from_scenario(
        scenario, **runtime_arguments(scenario, callbacks, state_scope), **scenario.algorithm_params
    )


def run_directory(run_config: dict, scenario: Scenario) -> Path:
    resume = str(run_config.get(RESUME_KEY, ""))
    if resume:
        return Path(resume)
    out = str(run_config.get(OUT_DIR_KEY, ""))
    return Path(out) if out else Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _state_scope(run_dir: Path) -> str:
    """Names this run for the clients' durable state; a resumed run keeps its run directory, hence its scope."""
    return hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]


def _log_to_file(path: Path) -> None:
    """Send Flower's and the package's log records to ``RUN_DIR/logs/server.log`` as well as the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("flwr", "fedbrick_flower"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("fedbrick_flower").setLevel(logging.INFO)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario named in ``run_config`` and write its run directory."""
    run_config = dict(context.run_config)
    # Every check before any client is asked: also for a run submitted with plain `flwr run .`; a scenario that
    # `fedbrick-flower run` checked before submitting it is not checked twice.
    scenario = check_scenario(
        str(run_config.get(SCENARIO_KEY, "smoke")),
        scenario_overrides(run_config),
        checked=str(run_config.get(PREFLIGHT_KEY, "")),
    )
    random.seed(scenario.seed)  # Flower's own node sampling uses the global RNG
    run_dir = run_directory(run_config, scenario).resolve()
    _log_to_file(run_dir / "logs" / "server.log")
    callbacks: list[RoundCallback] = []
    if scenario.server.evaluate_global:
        from .evaluation import GlobalModelEvaluator  # torch and the models load only when asked for

        callbacks.append(GlobalModelEvaluator(scenario))
    recorder = RunRecorder(run_dir, scenario)
    callbacks.append(recorder)
    strategy = build_strategy(scenario, callbacks, state_scope=_state_scope(run_dir))
    if run_config.get(RESUME_KEY):
        logger.info("resuming %s after round %d", run_dir, recorder.resume(strategy))
    try:
        strategy.start(grid, num_rounds=scenario.rounds, timeout=scenario.server.round_timeout)
    except Exception:
        logger.exception("the run stopped")  # the cause reaches RUN_DIR/logs/server.log, not only the terminal
        raise
    print(json.dumps(json.loads((run_dir / SUMMARY_FILE).read_text()), indent=2))
