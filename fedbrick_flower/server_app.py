"""Thin Flower ServerApp: run_config -> scenario -> strategy from the registry -> rounds -> run directory."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .plateau import PlateauStop
from .preflight import check_scenario
from .run_dir import SUMMARY_FILE, RunRecorder
from .runconfig import OUT_DIR_KEY, PREFLIGHT_KEY, RESUME_KEY, SCENARIO_KEY, scenario_overrides
from .scenario import Scenario
from .strategies.base import RoundCallback
from .strategies.build import build_strategy
from .strategies.registration import RunStoppedError

app = ServerApp()
logger = logging.getLogger(__name__)


def plateau_stop(scenario: Scenario) -> PlateauStop | None:
    """The early stop of ``server.stop_when_plateau``, or None when it is off."""
    server = scenario.server
    if server.stop_when_plateau == "off":
        return None
    return PlateauStop(server.stop_when_plateau, server.plateau_window, server.plateau_tolerance)


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
    plateau = plateau_stop(scenario)
    if scenario.server.evaluate_global:
        from .evaluation import GlobalModelEvaluator  # torch and the models load only when asked for

        callbacks.append(GlobalModelEvaluator(scenario, plateau=plateau))
    recorder = RunRecorder(run_dir, scenario)
    callbacks += [plateau, recorder] if plateau is not None else [recorder]  # the recorder writes its rows
    strategy = build_strategy(scenario, callbacks, state_scope=_state_scope(run_dir))
    if run_config.get(RESUME_KEY):
        logger.info("resuming %s after round %d", run_dir, recorder.resume(strategy))
        if plateau is not None:
            plateau.prime(recorder.rows)  # the plateau rule continues from the rounds already run
    try:
        strategy.start(grid, num_rounds=scenario.rounds, timeout=scenario.server.round_timeout)
    except RunStoppedError:
        raise  # a one-line reason: Flower logs it (to server.log too), the command prints it once, no traceback
    except Exception:
        logger.exception("the run stopped")  # the cause reaches RUN_DIR/logs/server.log, not only the terminal
        raise
    print(json.dumps(json.loads((run_dir / SUMMARY_FILE).read_text()), indent=2))
