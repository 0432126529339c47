"""The run directory on resume: the checkpoint's round decides which metric rows stay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedbrick_flower.metrics import read_metrics
from fedbrick_flower.run_dir import RunRecorder, checkpoint_round, save_checkpoint
from fedbrick_flower.run_files import CHECKPOINT_DIR, METRICS_FILE
from fedbrick_flower.scenario import load_scenario
from fedbrick_flower.strategies.fedavg import LayerwiseFedAvg


def _run_dir_with_rows(tmp_path: Path, rounds: list[int]) -> Path:
    rows = [{"round": r, "phase": phase, "client": "a"} for r in rounds for phase in ("train", "round")]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path


@pytest.mark.parametrize(("checkpointed", "kept"), [(1, [1]), (None, [])])
def test_resume_forgets_the_rows_past_the_checkpoint(tmp_path: Path, checkpointed: int | None, kept: list) -> None:
    # Prepare: rows of rounds 1 and 2 were written; the checkpoint holds round 1, or the crash came before any
    run_dir = _run_dir_with_rows(tmp_path, [1, 2])
    saved = LayerwiseFedAvg(seed=0)
    saved.state = {"m/layers.0.q.lora_A": np.ones((2, 4), np.float32)}
    if checkpointed is not None:
        save_checkpoint(run_dir / CHECKPOINT_DIR, saved, checkpointed)
    recorder = RunRecorder(run_dir, load_scenario("smoke"))
    strategy = LayerwiseFedAvg(seed=0)

    # Execute
    completed = recorder.resume(strategy)

    # Assert: the rounds past the checkpoint will run again, so their rows are gone from memory and from disk
    assert completed == (checkpointed or 0) == checkpoint_round(run_dir / CHECKPOINT_DIR)
    assert sorted({row["round"] for row in read_metrics(run_dir)}) == kept
    assert sorted({row["round"] for row in recorder.rows}) == kept
    assert sorted(strategy.state) == (sorted(saved.state) if checkpointed else [])
