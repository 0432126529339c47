"""Simulation Engine runs of the rank-heterogeneous methods: one model at LoRA ranks 1, 4 and 8, mixed depths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedbrick_flower import cli

pytestmark = pytest.mark.integration

SCENARIO = {
    "rounds": 2,
    "seed": 0,
    "models": {
        "tiny": {
            "family": "bert",
            "tokenizer": "minilm",
            "config": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128},
        }
    },
    "tasks": {"bbc": {"dataset": "bbc-news", "max_examples": 240}},
    "data": {"partition": "iid", "max_length": 32},
    "train": {"local_steps": 3, "batch_size": 8, "lr": 0.001, "head_lr": 0.005},
    "lora": {"rank": 8, "alpha": 16},
    "clients": [
        {"id": "r1", "model": "tiny", "task": "bbc", "layers": 4, "rank": 1},
        {"id": "r4", "model": "tiny", "task": "bbc", "layers": [1, 3], "rank": 4},
        {"id": "r8", "model": "tiny", "task": "bbc", "layers": 2, "rank": 8},
    ],
}


@pytest.mark.parametrize("algorithm", ["hetlora", "flexlora", "flora"])
def test_ranks_1_4_8_federate_for_two_rounds(tmp_path: Path, algorithm: str) -> None:
    # Prepare
    path = tmp_path / "ranks.yaml"
    path.write_text(yaml.safe_dump({**SCENARIO, "algorithm": algorithm}))
    out = tmp_path / "run"

    # Execute
    code = cli.main(["run", str(path), "--out", str(out)])

    # Assert
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = {(r["round"], r["client"]) for r in rows if r["phase"] == "train"}
    diagnostics = [r for r in rows if r["phase"] == "rank-diagnostic"]
    assert summary["rounds_completed"] == 2 and summary["rejected_updates"] == 0
    assert trained == {(rnd, cid) for rnd in (1, 2) for cid in ("r1", "r4", "r8")}
    assert [(r["round"], r["min-rank"], r["max-rank"]) for r in diagnostics] == [(1, 1, 8), (2, 1, 8)]
    assert summary["global_accuracy"] is not None and 0.0 <= summary["final_accuracy"] <= 1.0
    up = {r["client"]: r["adapter_bytes"] for r in rows if r["phase"] == "train" and r["round"] == 2}
    assert up["r8"] > up["r4"] > up["r1"]  # each client sends its own rank (r4 holds 2 of 4 layers)
    if algorithm == "flora":
        down = {r["round"]: r["bytes_down"] for r in rows if r["phase"] == "train" and r["client"] == "r1"}
        assert down[2] > 2 * down[1]  # round 2 carries the stack of ranks 1 + 4 + 8 on the layers they share
