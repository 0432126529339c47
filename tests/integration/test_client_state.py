"""Client state on the Deployment Engine: kept by the SuperNode between messages, and with a node-local state
folder, across a restart of the SuperNode itself. State never crosses the link.

Every client half counts the rounds it has trained in its state handle (``local-rounds``) and reports the count
with its update, so the rows of ``metrics.jsonl`` show what each SuperNode remembered.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from fedbrick_flower import runtime
from fedbrick_flower.deployment.processes import supernode_command
from fedbrick_flower.run_dir import read_metrics
from tests.integration.test_deployment import fedbrick, finish, smoke_subset, wait_for
from tests.wire import RECORD_NAMES, audit_rows

pytestmark = pytest.mark.integration

DURABLE, VOLATILE = "bert-edge", "llama-edge"


def _supernode(client_id: str, fleet: str, tmp_path: Path, state_dir: Path | None) -> subprocess.Popen:
    node_config = {"client-id": client_id}
    if state_dir is not None:
        node_config["state-dir"] = str(state_dir)
    command = supernode_command(fleet, node_config, port=runtime.free_port())
    home = tmp_path / "nodes" / client_id
    home.mkdir(parents=True, exist_ok=True)
    return runtime.start(command, tmp_path / "logs" / f"{client_id}.log", runtime.flower_env(home))


def _local_rounds(rows: list[dict], client_id: str) -> dict[int, int]:
    return {
        row["round"]: int(row["local-rounds"]) for row in rows if row["phase"] == "train" and row["client"] == client_id
    }


def test_state_lasts_between_messages_and_a_state_folder_survives_a_supernode_restart(tmp_path: Path) -> None:
    # Prepare: two clients on an insecure loopback deployment; only DURABLE has a node-local state folder
    scenario = smoke_subset(tmp_path, [DURABLE, VOLATILE], rounds=3)
    run_dir, state_dir = tmp_path / "run", tmp_path / "device-state"
    fleet = f"127.0.0.1:{runtime.free_port()}"
    args = ["server", "--scenario", str(scenario), "--out", str(run_dir), "--insecure", "--audit-wire"]
    args += ["--fleet-address", fleet, "--control-port", str(runtime.free_port()), "--set", "server.round_timeout=180"]
    server = fedbrick(args, tmp_path / "server.out", tmp_path)
    nodes: list[subprocess.Popen] = []
    try:
        wait_for(lambda: "waiting for SuperNodes" in (tmp_path / "server.out").read_text(), 120, "SuperLink", server)
        nodes = [_supernode(DURABLE, fleet, tmp_path, state_dir), _supernode(VOLATILE, fleet, tmp_path, None)]
        round_done = lambda: any(r["phase"] == "round" for r in read_metrics(run_dir))  # noqa: E731
        wait_for(round_done, 600, "round 1", server)

        # Execute: restart both SuperNodes after round 1 (SIGTERM: they deregister at once)
        for node in nodes:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=60)
        nodes = [_supernode(DURABLE, fleet, tmp_path, state_dir), _supernode(VOLATILE, fleet, tmp_path, None)]
        output = finish(server, tmp_path / "server.out", timeout=900)
    finally:
        for process in [server, *nodes]:
            runtime.stop(process)

    # Assert
    assert server.returncode == 0, output[-3000:]
    rows = read_metrics(run_dir)
    durable, volatile = _local_rounds(rows, DURABLE), _local_rounds(rows, VOLATILE)
    assert durable[1] == volatile[1] == 1
    # The state folder carried the count across the restart: no reset, one more per round trained.
    assert sorted(durable.values()) == list(range(1, len(durable) + 1)) and len(durable) >= 2, durable
    # Without a folder the restarted SuperNode started from nothing, then kept its state between messages.
    after = [volatile[r] for r in sorted(volatile) if r > 1]
    assert after and after == list(range(1, len(after) + 1)), volatile
    assert (state_dir / f"{DURABLE}.state.npz").is_file()
    assert {name for row in audit_rows(run_dir) for name in row.get("records", {})} <= RECORD_NAMES
    assert not any(
        "local-rounds" in json.dumps(row.get("records", {}).get("config", {})) for row in audit_rows(run_dir)
    )
