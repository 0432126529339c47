"""A run under central differential privacy through the real strategy, recorder and ClientApp (one in-process node
per client), then ``report`` and ``compare`` on it. Marked integration."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from fedbrick_flower.inprocess import run_in_process
from fedbrick_flower.leaderboard.compare import write_comparison
from fedbrick_flower.report import main as report_main
from fedbrick_flower.scenario import parse_scenario

pytestmark = pytest.mark.integration

TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}


def test_a_central_dp_run_writes_a_growing_epsilon_each_round_and_report_and_compare_show_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: two clients of a tiny BERT, one at half depth; the privacy section
    raw = {
        "name": "private",
        "algorithm": "fedavg",
        "rounds": 2,
        "models": {"bert": {"family": "bert", "tokenizer": "minilm", "config": TINY}},
        "tasks": {"news": {"dataset": "bbc-news", "max_examples": 60}},
        "data": {"max_length": 12},
        "train": {"local_steps": 1, "batch_size": 8},
        "lora": {"rank": 2, "alpha": 4},
        "server": {"evaluate_global": False},
        "privacy": {"mode": "central", "noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5},
        "clients": [{"id": f"c{i}", "model": "bert", "task": "news", "layers": 1 + (i > 0)} for i in range(2)],
    }
    scenario = parse_scenario(yaml.safe_load(yaml.safe_dump(raw)))

    # Execute
    run = run_in_process(scenario, tmp_path, "private")
    code = report_main(argparse.Namespace(run_dir=run.run_dir))
    output = capsys.readouterr().out
    page = write_comparison([run.run_dir], tmp_path / "compare")[0].read_text()

    # Assert: one privacy row per round, epsilon growing; the round-1 updates counted from the seeded start
    rows = [row for row in run.rows if row["phase"] == "privacy"]
    assert [row["round"] for row in rows] == [1, 2]
    epsilons = [row["epsilon"] for row in rows]
    assert 0 < epsilons[0] < epsilons[1]
    assert len([row for row in run.rows if row["phase"] == "train"]) == 4
    assert code == 0 and "epsilon" in next(line for line in output.splitlines() if line.startswith("round "))
    assert "Client-level privacy loss over rounds" in page
