"""Server restart with the clients still running: the SuperLink crashes after round K and comes back on its database.

Two SuperNodes (tiny random BERTs, a node-local state folder each) join a ``fedbrick-flower server`` (TLS and
SuperNode authentication) whose SuperLink keeps its state in a file (``--database``). After round K the SuperLink,
its SuperExec and its ServerApp are SIGKILLed; ``server --resume RUN_DIR --database FILE`` starts again on the same
ports. The SuperNodes are not touched: they retry until the SuperLink answers, and the run continues from the
checkpoint of round K.

Measured: seconds from the restart command to the next completed round (``restart_to_round_s``; of it, from the
restarted SuperLink answering: ``superlink_ready_to_round_s``), and from the first start to round 1
(``start_to_round_s``) for scale. The SuperNodes' reconnection backs off exponentially up to 20 s (Flower's
``MAX_RETRY_DELAY``), so a node may sleep that long after the SuperLink is back.
Run: ``python bench/restart_bench.py`` (about 3 minutes on 2 cores) -> ``bench/results/restart.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fedbrick_flower.deployment.loopback_fleet import (
    LoopbackFleet,
    completed_rounds,
    run_context,
    tiny_scenario,
    wait_for,
)
from fedbrick_flower.metrics import read_metrics
from fedbrick_flower.run_dir import checkpoint_round
from fedbrick_flower.run_files import CHECKPOINT_DIR, SUMMARY_FILE

CLIENTS = ["node-a", "node-b"]


def restart_once(folder: Path, rounds: int, crash_after: int) -> dict[str, Any]:
    """One run with one SuperLink crash after round ``crash_after``; the figures and what the checks need."""
    scenario = tiny_scenario(folder / "restart.yaml", CLIENTS, rounds, "fedavg", round_timeout=120)
    fleet = LoopbackFleet(folder, database=True, tls_clients=CLIENTS)
    with fleet.running():
        started = time.monotonic()
        fleet.start_server(scenario)
        node_pids = {cid: fleet.start_node(cid, folder / "state" / cid).pid for cid in CLIENTS}
        wait_for(lambda: completed_rounds(fleet.run_dir), 600, "round 1", fleet.server)
        first_round = time.monotonic() - started
        checkpoint = fleet.run_dir / CHECKPOINT_DIR  # its round is saved after the round's rows: crash after both
        wait_for(lambda: checkpoint_round(checkpoint) >= crash_after, 600, f"round {crash_after}", fleet.server)
        fleet.track()

        killed = fleet.crash_superlink()
        crashed_exit = fleet.server.returncode
        restarted = time.monotonic()
        fleet.start_server(resume=True)
        ready = time.monotonic()
        wait_for(
            lambda: len(completed_rounds(fleet.run_dir)) > crash_after, 600, "round after the restart", fleet.server
        )
        restart_to_round, ready_to_round = time.monotonic() - restarted, time.monotonic() - ready
        fleet.track()
        fleet.server.wait(timeout=900)
        output = fleet.server_output()
        nodes_alive = {cid: fleet.nodes[cid].poll() is None for cid in CLIENTS}
    rows = read_metrics(fleet.run_dir)
    return {
        "server_exit": fleet.server.returncode,
        "crashed_server_exit": crashed_exit,
        "killed_pids": killed,
        "node_pids_before": node_pids,
        "node_pids_after": {cid: node.pid for cid, node in fleet.nodes.items()},
        "nodes_alive_at_end": nodes_alive,
        "rounds": completed_rounds(fleet.run_dir),
        "rounds_completed": json.loads((fleet.run_dir / SUMMARY_FILE).read_text())["rounds_completed"]
        if (fleet.run_dir / SUMMARY_FILE).is_file()
        else None,
        "local_rounds": {cid: _local_rounds(rows, cid) for cid in CLIENTS},
        # What each client received per round: after the restart, the global adapters restored from the
        # checkpoint (round 1 sends none: nothing is aggregated yet; so would a resumed server that started over)
        "bytes_down_by_round": _bytes_down(rows),
        "strays": fleet.strays(),
        "start_to_round_s": round(first_round, 1),
        "restart_to_round_s": round(restart_to_round, 1),
        "superlink_ready_to_round_s": round(ready_to_round, 1),
        "resumed_log": "resuming" in output or f"rounds {crash_after + 1}.." in output,
    }


def _bytes_down(rows: list[dict]) -> dict[int, list[int]]:
    """Round -> the bytes each training client received in it."""
    received: dict[int, list[int]] = {}
    for row in rows:
        if row["phase"] == "train":
            received.setdefault(row["round"], []).append(int(row["bytes_down"]))
    return received


def _local_rounds(rows: list[dict], client_id: str) -> dict[int, int]:
    """Round -> the ``local-rounds`` count that the client reported (its state handle's own counter)."""
    return {
        row["round"]: int(row["local-rounds"]) for row in rows if row["phase"] == "train" and row["client"] == client_id
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--crash-after", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "restart.json")
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="restart-") as folder:
            runs.append(restart_once(Path(folder), args.rounds, args.crash_after))
        print(json.dumps(runs[-1]), flush=True)
    times = [run["restart_to_round_s"] for run in runs]
    ready = [run["superlink_ready_to_round_s"] for run in runs]
    result = {
        "what": "SuperLink SIGKILLed after round K with 2 SuperNodes connected; `server --resume --database` on the "
        "same ports; seconds from the restart command to the next completed round",
        **run_context(),
        "rounds": args.rounds,
        "crash_after": args.crash_after,
        "restart_to_round_s": {"mean": statistics.mean(times), "std": statistics.pstdev(times), "runs": times},
        "superlink_ready_to_round_s": {"mean": statistics.mean(ready), "std": statistics.pstdev(ready), "runs": ready},
        "start_to_round_s": [run["start_to_round_s"] for run in runs],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    summary = result["restart_to_round_s"]
    print(f"restart -> next round: {summary['mean']:.1f} ± {summary['std']:.1f} s")


if __name__ == "__main__":
    main()
