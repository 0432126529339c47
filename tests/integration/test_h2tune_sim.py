"""H2Tune on Flower's Simulation Engine: three tiny random-init families of different widths (32, 48, 64), depths
(2, 5 with one client holding 3, and 3) and ranks (2, 4, 8), one task per family, two rounds, wire audit on.
Four clients (one per family, and a partial-depth second Llama) keep it under a minute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedbrick_flower import cli
from tests.hybrid import TINY_HYBRID
from tests.wire import DECLARED_METRICS, array_names, audit_rows, metric_names

pytestmark = pytest.mark.integration


def test_three_families_federate_through_the_bank_and_only_the_bank_travels(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "hybrid.yaml"
    clients = [c for c in TINY_HYBRID["clients"] if c["id"] in {"bert-a", "llama-a", "llama-b", "mpnet-a"}]
    path.write_text(yaml.safe_dump({**TINY_HYBRID, "clients": clients, "server": {"evaluate_global": False}}))
    out = tmp_path / "run"

    # Execute
    code = cli.main(["run", str(path), "--out", str(out), "--audit-wire"])

    # Assert
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["rounds_completed"] == 2 and summary["rejected_updates"] == 0
    trained = {(r["round"], r["client"]) for r in rows if r["phase"] == "train"}
    assert trained == {(n, c["id"]) for n in (1, 2) for c in clients}
    assert summary["bank_rank"] == 8 and summary["bank_slots"] == 5 and summary["bank_roles"] == ["q", "v"]
    assert summary["bank_bytes"] == 2 * 5 * 8 * 8 * 4
    audit = audit_rows(out)
    assert {row["direction"] for row in audit} == {"up", "down"}
    assert array_names(audit) == {"bank.q", "bank.v"}  # A, B, Π, scores and heads never left a device
    assert metric_names(audit) <= DECLARED_METRICS
    up = {r["client"]: r["adapter_bytes"] for r in rows if r["phase"] == "train" and r["round"] == 2}
    assert set(up.values()) == {2 * 5 * 8 * 8 * 4}  # every family, width and rank sends the same bank
