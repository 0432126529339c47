"""One tiny suite end to end: ``fedbrick-flower run`` children, resume, the comparison page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedbrick_flower.leaderboard.compare import write_comparison
from fedbrick_flower.leaderboard.runner import run_in_child, run_suite
from fedbrick_flower.leaderboard.suites import Method, Suite, expand

TINY = Suite(
    name="tiny",
    description="one FedAvg cell on the tiny random-init BERT",
    scenario="fedbrick-tiny",
    base={
        "rounds": 1,
        "train.local_steps": 1,
        "tasks.bbc.max_examples": 120,
        "server.evaluate_without_lora": True,
        "clients": [
            {"id": "bert-4", "model": "tiny-bert", "task": "bbc", "layers": 4},
            {"id": "bert-1", "model": "tiny-bert", "task": "bbc", "layers": 1},
        ],  # fmt: skip
    },
    methods=(Method("fedavg", "fedavg", {"algorithm_params": {}}),),
)


@pytest.mark.integration
def test_tiny_suite_runs_resumes_and_compares(tmp_path: Path) -> None:
    # Prepare
    cells = expand(TINY, [0])

    # Execute: run, then run again (nothing to do), then compare
    first = run_suite(cells, tmp_path, run_in_child, echo=lambda _: None)
    second = run_suite(cells, tmp_path, run_in_child, echo=lambda _: None)
    written = write_comparison([tmp_path], tmp_path / "compare")

    # Assert
    assert first[0]["status"] == "finished", (tmp_path / "fedavg" / "seed-0.log").read_text()[-3000:]
    assert second[0]["resumed"] is True
    rows = [json.loads(line) for line in (tmp_path / "fedavg" / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    phases = {row["phase"] for row in rows}
    assert {"train", "evaluate", "server-eval", "aggregate"} <= phases
    assert all("accuracy-without-lora" in row for row in rows if row["phase"] == "server-eval")
    memory = {row["client"]: row["peak-memory-mb"] for row in rows if row["phase"] == "train"}
    assert memory["bert-1"] < memory["bert-4"]
    table = json.loads(written[2].read_text())["methods"]["fedavg"]
    assert table["global_accuracy"]["n"] == 1 and table["aggregation_seconds"]["mean"] > 0
