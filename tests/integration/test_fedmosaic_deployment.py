"""FedMosaic on the Deployment Engine: three tiny families as SuperNodes over TLS with node auth, one round.

Every message is a fresh ClientApp process here, so the client's local adapter, gates, head, optimizer state and
gradient EMA must come from its state handle; the run finishing with all updates accepted shows they do.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from tests.integration.test_deployment import fedbrick, finish
from tests.integration.test_fedmosaic_sim import SCENARIO
from tests.wire import ADAPTER_NAME, array_names, audit_rows

pytestmark = pytest.mark.integration


def test_fedmosaic_launch_sends_p_q_from_every_family_and_finishes(tmp_path: Path) -> None:
    # Prepare: one client per family, one round with two local steps
    raw = copy.deepcopy(SCENARIO)
    raw.update(name="fedmosaic-deploy", rounds=1)
    raw["clients"] = [c for c in raw["clients"] if c["id"] in ("bert-news", "llama-chat", "mpnet-chat")]
    scenario = tmp_path / "fedmosaic-deploy.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    run_dir, log_file = tmp_path / "run", tmp_path / "launch.out"

    # Execute
    process = fedbrick(["launch", str(scenario), "--out", str(run_dir), "--audit-wire"], log_file, tmp_path)
    output = finish(process, log_file, timeout=600)

    # Assert
    assert process.returncode == 0, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 1 and summary["rejected_updates"] == 0
    rows = audit_rows(run_dir)
    uploads: dict[str, set[str]] = {}
    for row in rows:
        if row["type"] == "train" and row["direction"] == "up":
            uploads.setdefault(row["client"], set()).update(row["records"]["adapters"]["arrays"])
    pq = [frozenset(n for n in names if n.startswith("colora.")) for names in uploads.values()]
    assert len(uploads) == 3 and len(set(pq)) == 1 and pq[0]
    assert all(ADAPTER_NAME.match(n) for n in array_names(rows))
