"""FedBRICK end to end on Flower's Simulation Engine (Ray, a local SuperLink): slow, marked ``integration``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedbrick_flower import cli
from fedbrick_flower.run_dir import METRICS_FILE, SUMMARY_FILE, read_metrics

pytestmark = pytest.mark.integration


def _run(tmp_path: Path, scenario: str, *overrides: str) -> tuple[dict, list[dict]]:
    args = ["run", scenario, "--out", str(tmp_path)]
    for item in overrides:
        args += ["--set", item]
    assert cli.main(args) == 0
    assert (tmp_path / METRICS_FILE).exists()
    return json.loads((tmp_path / SUMMARY_FILE).read_text()), read_metrics(tmp_path)


def test_fedbrick_tiny_two_rounds(tmp_path: Path) -> None:
    # Execute
    summary, rows = _run(tmp_path, "fedbrick-tiny")

    # Assert: every update accepted, BRICKs distilled each round, overhead reported per client.
    assert summary["rounds_completed"] == 2 and summary["rejected_updates"] == 0
    assert set(summary["brick_storage_overhead"]) == {"bert-4", "bert-2", "bert-1"}
    assert summary["brick_storage_overhead"]["bert-4"] == 0.0
    # Overhead = the BRICKs a client runs (4 r d each, one per missing layer; r = 4, d = 64) over the rest of
    # the network it reports, recomputed from its last training row.
    for client, budget in (("bert-2", 2), ("bert-1", 1)):
        last = [r for r in rows if r["phase"] == "train" and r["client"] == client][-1]
        bricks = (4 - budget) * 4 * 4 * 64
        expected = bricks / (last["model-parameters"] - bricks)
        assert summary["brick_storage_overhead"][client] == pytest.approx(expected)
    distill = [r for r in rows if r["phase"] == "distill"]
    assert sorted({(r["round"], r["layer"]) for r in distill}) == [(r, g) for r in (1, 2) for g in range(4)]
    assert all(r["mse_after"] < r["mse_before"] for r in distill)


def test_fedbrick_minilm_mixed_depth(tmp_path: Path) -> None:
    # Execute: the pretrained MiniLM scenario, cut to one short round to stay under two minutes.
    summary, rows = _run(tmp_path, "fedbrick", "rounds=1", "train.local_steps=5")

    # Assert: a 2-of-6 MiniLM client runs 4 BRICKs of 4 * 8 * 384 parameters: well under the paper's 1.44 %.
    assert summary["rounds_completed"] == 1 and summary["rejected_updates"] == 0
    assert summary["brick_storage_overhead_max"] == summary["brick_storage_overhead"]["edge-2"]
    edge = next(r for r in rows if r["phase"] == "train" and r["client"] == "edge-2")
    bricks = 4 * 4 * 8 * 384  # four missing layers, one BRICK of 4 r d each (r = 8, d = 384)
    assert summary["brick_storage_overhead_max"] == pytest.approx(bricks / (edge["model-parameters"] - bricks))
    assert summary["brick_storage_overhead_max"] < 0.0144  # the paper's bound, met with room to spare
    assert any(r["phase"] == "distill" for r in rows)
