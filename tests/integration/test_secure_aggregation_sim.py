"""Secure aggregation on Flower's Simulation Engine: SecAgg+ under layer-wise FedAvg with clients at different
depths, through the real ``fedbrick-flower run`` (Ray, one ClientApp context per node, the package's mods)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedbrick_flower import cli
from fedbrick_flower.scenario import scenario_path
from tests.wire import audit_rows

pytestmark = pytest.mark.integration


def test_a_secure_round_completes_with_masked_uploads_only(tmp_path: Path) -> None:
    # Prepare: the smoke scenario's clients (4 layers, layers [1, 3], 2 layers of another family), one short round
    raw = yaml.safe_load(scenario_path("smoke").read_text())
    raw.update(rounds=1, privacy={"secure_aggregation": True})
    raw["train"]["local_steps"] = 1
    raw["tasks"]["bbc"]["max_examples"] = 120
    raw["server"] = {"evaluate_global": False}
    scenario = tmp_path / "secure.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"

    # Execute
    assert cli.main(["run", str(scenario), "--out", str(out), "--audit-wire"]) == 0

    # Assert: every client's update aggregated, no rejection, and no adapter tensor ever left a device
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["client"] for r in rows if r["phase"] == "train"} == {"bert-full", "bert-edge", "llama-edge"}
    assert [r for r in rows if r["phase"] == "rejected"] == []
    assert [r["updates"] for r in rows if r["phase"] == "aggregate"] == [3]
    uploads = [row for row in audit_rows(out) if row["direction"] == "up" and row["type"] == "train"]
    assert len(uploads) == 3 * 4  # four protocol stages per client
    for row in uploads:
        arrays = [record["arrays"] for record in row["records"].values() if "arrays" in record]
        assert all(not names for names in arrays), row
