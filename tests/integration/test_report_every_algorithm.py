"""``report`` and ``compare`` on a one-round run of every registered algorithm. Marked integration.

Each run is the real strategy (with the server's global evaluation and the real ``RunRecorder``) and the real
ClientApp, one in-process node per client: the rows in ``metrics.jsonl`` are those the algorithm writes, so a
phase its strategy writes but its registry entry does not declare, or a declared plot that cannot read the real
rows, fails here. A newly registered algorithm runs with its defaults.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fedbrick_flower.evaluation import GlobalModelEvaluator
from fedbrick_flower.inprocess import client_app_grid
from fedbrick_flower.leaderboard.compare import write_comparison
from fedbrick_flower.metrics import MatrixPlot, read_metrics
from fedbrick_flower.registry import algorithm_entry, algorithm_names, compare_curves, declared_phases
from fedbrick_flower.report import main as report_main
from fedbrick_flower.run_dir import RunRecorder
from fedbrick_flower.runconfig import SCENARIO_KEY
from fedbrick_flower.scenario import load_scenario
from fedbrick_flower.server_app import build_strategy

pytestmark = pytest.mark.integration


def _tiny(family: str, **extra: object) -> dict:
    config = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
    return {"family": family, "tokenizer": "minilm", "config": {**config, **extra}}


# Only what keeps a run short, or what an algorithm needs to run at all: FedBRICK distils one quick epoch,
# FedMosaic probes with a tiny model and takes full-depth clients only.
CHANGES: dict[str, dict] = {
    "fedbrick": {"algorithm_params": {"brick_rank": 2, "distill_epochs": 1, "stage_two_min_steps": 1}},
    "fedmosaic": {
        "models": {"probe": _tiny("llama", num_hidden_layers=1, num_key_value_heads=1, tie_word_embeddings=True)},
        "algorithm_params": {"probe": "probe", "gradient_every": 1, "n_blocks": 2},
        "full_depth": True,
    },
}


def _scenario(algorithm: str) -> dict:
    """Two clients of one tiny BERT on two tasks, the second at half depth (so FedBRICK distils), at two ranks
    where the algorithm mixes ranks."""
    changes = CHANGES.get(algorithm, {})
    ranks = [4, 2] if algorithm_entry(algorithm).mixes_ranks else [2, 2]
    return {
        "algorithm": algorithm,
        "rounds": 1,
        "seed": 0,
        "models": {"bert": _tiny("bert"), **changes.get("models", {})},
        "tasks": {
            "news": {"dataset": "bbc-news", "max_examples": 48},
            "chat": {"dataset": "chatterbot", "max_examples": 48},
        },
        "data": {"partition": "iid", "max_length": 12, "proxy_fraction": 0.2},
        "train": {"local_steps": 1, "batch_size": 8},
        "lora": {"rank": 2, "alpha": 4},
        "algorithm_params": changes.get("algorithm_params", {}),
        "clients": [
            {"id": "news", "model": "bert", "task": "news", "rank": ranks[0]},
            {
                "id": "chat",
                "model": "bert",
                "task": "chat",
                "rank": ranks[1],
                "layers": 2 if changes.get("full_depth") else 1,
            },
        ],
    }


def _run(folder: Path, algorithm: str) -> Path:
    """One round of ``algorithm`` through the real strategy, recorder and ClientApp; its run directory."""
    path = folder / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(_scenario(algorithm)))
    scenario = load_scenario(str(path))
    run_dir = folder / algorithm
    evaluator = [GlobalModelEvaluator(scenario, "cpu")] if scenario.server.evaluate_global else []
    strategy = build_strategy(scenario, [*evaluator, RunRecorder(run_dir, scenario)])

    grid = client_app_grid({SCENARIO_KEY: str(path)}, len(scenario.clients))
    strategy.start(grid, num_rounds=scenario.rounds, timeout=600)
    return run_dir


@pytest.fixture(scope="module")
def run_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The run directory of an algorithm, run once per module."""
    folder, runs = tmp_path_factory.mktemp("every-algorithm"), {}

    def get(algorithm: str) -> Path:
        if algorithm not in runs:
            runs[algorithm] = _run(folder, algorithm)
        return runs[algorithm]

    return get


@pytest.mark.parametrize("algorithm", algorithm_names())
def test_report_reads_every_row_of_a_one_round_run(
    run_of: Callable[[str], Path], algorithm: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run_dir = run_of(algorithm)
    rows = read_metrics(run_dir)
    declarations = algorithm_entry(algorithm).metrics

    # Execute
    code = report_main(argparse.Namespace(run_dir=run_dir))

    # Assert: every row is of a declared phase and holds its declared keys; nothing is left out of the report;
    # each declared plot and column the run has rows for is drawn
    output = capsys.readouterr().out
    assert code == 0
    phases = declared_phases()
    for row in rows:
        assert row["phase"] in phases, f"{algorithm} writes undeclared phase {row['phase']!r}"
        assert set(phases[row["phase"]].keys) <= set(row), f"{algorithm}: a {row['phase']!r} row lacks keys"
    assert "note: " not in output.replace("note: round 1 downloads", "")
    written = {path.name for path in (run_dir / "plots").iterdir()}
    for plot in declarations.report_plots:
        stem = plot.name + ("-" if isinstance(plot, MatrixPlot) and plot.group_key else ".png")
        assert any(name.startswith(stem) for name in written), f"{plot.name} not drawn: {sorted(written)}"
    header = next(line for line in output.splitlines() if line.startswith("round "))
    for column in declarations.report_columns:
        if any(row["phase"] == column.phase for row in rows):
            assert column.name in header


def test_compare_draws_the_declared_curves_of_every_algorithms_run(
    run_of: Callable[[str], Path], tmp_path: Path
) -> None:
    # Prepare
    runs = [run_of(algorithm) for algorithm in algorithm_names()]

    # Execute
    written = write_comparison(runs, tmp_path / "compare")

    # Assert: one table line per algorithm; each declared curve with rows in some run is on the page
    table = written[1].read_text()
    page = written[0].read_text()
    assert all(f"| {algorithm} | 1 |" in table for algorithm in algorithm_names())
    for plot in compare_curves():
        if any(row["phase"] == plot.curves[0].phase for run in runs for row in read_metrics(run)):
            assert plot.title in page
