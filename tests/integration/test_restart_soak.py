"""Server restart with the clients still running, and a short soak, on loopback.

Both run the benchmark scripts (``bench/restart_bench.py``, ``bench/soak_bench.py``) at a small size and check
the JSON they write: the scripts start every process, record them by PID, and tear them down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedbrick_flower import runtime

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench(script: str, out: Path, *args: str, timeout: float) -> dict:
    env = runtime.flower_env(out.parent / ".flwr-home")
    command = [sys.executable, str(BENCH / script), "--out", str(out), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return json.loads(out.read_text())


def test_superlink_restart_keeps_the_supernodes_and_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    # Execute: 2 rounds; the SuperLink, its SuperExec and its ServerApp are SIGKILLed after round 1
    result = _bench("restart_bench.py", tmp_path / "restart.json", "--rounds", "2", "--crash-after", "1",
                    "--repeats", "1", timeout=600)  # fmt: skip
    run = result["runs"][0]
    print(f"restart -> next round: {run['restart_to_round_s']} s")

    # Assert: the crashed server failed fast; the same SuperNode processes served both SuperLinks
    assert run["crashed_server_exit"] == 2 and len(run["killed_pids"]) >= 3
    assert run["node_pids_after"] == run["node_pids_before"]
    assert all(run["nodes_alive_at_end"].values())
    # The run completed, no round was lost or run twice, and the resumed ServerApp started after round 1
    assert run["server_exit"] == 0 and run["rounds"] == [1, 2] and run["rounds_completed"] == 2
    assert run["resumed_log"]
    # The resumed server sent the aggregate restored from its checkpoint; round 1 sends no tensors (none yet)
    received = run["bytes_down_by_round"]
    assert min(received["2"]) > max(received["1"]) + 1000, received
    # Each client's own counter (its state handle, kept in its state folder) went on counting: 2 in round 2, or 3
    # when the client had already trained the round that the crash cut short (it runs again); 1 would be a reset
    local_rounds = run["local_rounds"]
    assert all(counts["1"] == 1 and counts["2"] in (2, 3) for counts in local_rounds.values()), local_rounds
    assert run["strays"] == []


def test_short_soak_kills_and_restarts_a_supernode_and_leaves_nothing_behind(tmp_path: Path) -> None:
    # Execute: 3 SuperNodes, 3 rounds with one trainer each, one node SIGKILLed and restarted after round 1
    result = _bench("soak_bench.py", tmp_path / "soak.json", "--nodes", "3", "--rounds", "3", "--kill-every", "1",
                    "--fraction-train", "0.34", timeout=600)  # fmt: skip
    print(f"short soak: {result['wall_s']} s")

    # Assert
    assert result["server_exit"] == 0
    assert result["rounds"] == [1, 2, 3] and result["rounds_completed"] == 3
    assert len(result["kills"]) == 1 and all(kill["rejoined"] for kill in result["kills"]), result["kills"]
    assert result["strays"] == [] and result["processes_tracked"] > 4
    assert [sample["round"] for sample in result["samples"]] == [1, 2, 3]
