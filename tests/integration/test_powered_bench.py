"""The protocol end to end on a user's scenario file: tuning on the validation split, the plateau stop, the
seed-0 cell copied from its tuning run, the comparison's figures (paired statistics: unit tests on fake runs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fedbrick_flower.leaderboard.powered import run_powered
from fedbrick_flower.leaderboard.protocol import Protocol, suite_from_file, user_powered_suite

SCENARIO = """\
description: "a user's scenario: two tiny BERT clients on BBC"
algorithm: fedavg
models:
  tiny-bert:
    family: bert
    tokenizer: minilm
    config: {hidden_size: 64, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 128}
tasks:
  bbc: {dataset: bbc-news, max_examples: 160}
data: {partition: iid, max_length: 32, proxy_fraction: 0.1}
train: {batch_size: 8}
lora: {rank: 4, alpha: 8}
clients:
  - {id: bert-4, model: tiny-bert, task: bbc, layers: 4}
  - {id: bert-2, model: tiny-bert, task: bbc, layers: 2}
"""
# A tiny budget: one grid point, a 2-round cap, one local step, a window of one round.
TINY = Protocol(rounds_cap=2, local_steps=1, window=1, tolerance=0.5, grid={"train.lr": (1e-3,)}, seeds=1)


@pytest.mark.integration
def test_powered_bench_on_a_user_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "my-scenario.yaml"
    path.write_text(SCENARIO)
    powered = dataclasses.replace(user_powered_suite(suite_from_file(path, ["fedra"])), protocol=TINY)
    out = tmp_path / "powered"

    # Execute
    record = run_powered(powered, out, [0], echo=lambda _: None)

    # Assert
    assert [c["status"] for c in record["cells"]] == ["finished"], record["cells"]
    assert record["chosen"]["fedra"]["point"] == {"train.lr": 1e-3}
    assert set(record["rounds_run"].values()) <= {1, 2} and record["budgets"]["met"] is False
    rows = [json.loads(line) for line in (out / "fedra" / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    assert any(row["phase"] == "plateau" for row in rows)
    assert all("validation-loss" in row for row in rows if row["phase"] in ("server-eval", "evaluate"))
    assert (out / "tuning" / "lr-0.001" / "fedra" / "seed-0.log").is_file()
    assert not (out / "fedra" / "seed-0.log").exists()  # the seed-0 cell is the tuning run, copied, not rerun
    compare = json.loads((out / "compare.json").read_text())
    assert compare["methods"]["fedra"]["mean"]["on_device_micro_accuracy"] is not None
    assert compare["methods"]["fedra"]["mean"]["global_validation_loss"] is not None
