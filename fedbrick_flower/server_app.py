"""Thin Flower ServerApp: run_config -> scenario -> strategy from the registry -> rounds -> run directory."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .registry import server_class
from .run_dir import CHECKPOINT_DIR, SUMMARY_FILE, RunRecorder, load_checkpoint
from .runconfig import OUT_DIR_KEY, RESUME_KEY, scenario_from_run_config
from .scenario import Scenario
from .strategies.base import HeterogeneousStrategy, RoundCallback

app = ServerApp()
logger = logging.getLogger(__name__)


def build_strategy(scenario: Scenario, callbacks: list[RoundCallback]) -> HeterogeneousStrategy:
    """The scenario's strategy, configured from its server settings and algorithm parameters."""
    server = scenario.server
    return server_class(scenario.algorithm).from_scenario(
        scenario,
        seed=scenario.seed,
        fraction_train=server.fraction_train,
        min_clients=server.min_clients or len(scenario.clients),
        node_wait_timeout=server.node_wait_timeout,
        round_timeout=server.round_timeout,
        wire_dtype=server.wire_dtype,
        max_update_bytes=int(server.max_update_mb * 2**20),
        callbacks=callbacks,
        **scenario.algorithm_params,
    )


def run_directory(run_config: dict, scenario: Scenario) -> Path:
    resume = str(run_config.get(RESUME_KEY, ""))
    if resume:
        return Path(resume)
    out = str(run_config.get(OUT_DIR_KEY, ""))
    return Path(out) if out else Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario named in ``run_config`` and write its run directory."""
    run_config = dict(context.run_config)
    scenario = scenario_from_run_config(run_config)
    random.seed(scenario.seed)  # Flower's own node sampling uses the global RNG
    run_dir = run_directory(run_config, scenario).resolve()
    callbacks: list[RoundCallback] = []
    if scenario.server.evaluate_global:
        from .evaluation import GlobalModelEvaluator  # torch and the models load only when asked for

        callbacks.append(GlobalModelEvaluator(scenario))
    callbacks.append(RunRecorder(run_dir, scenario))
    strategy = build_strategy(scenario, callbacks)
    if run_config.get(RESUME_KEY) and (run_dir / CHECKPOINT_DIR).exists():
        completed = load_checkpoint(run_dir / CHECKPOINT_DIR, strategy)
        logger.info("resuming %s after round %d", run_dir, completed)
    strategy.start(grid, num_rounds=scenario.rounds)
    print(json.dumps(json.loads((run_dir / SUMMARY_FILE).read_text()), indent=2))
