"""Soak: many SuperNodes for many rounds on loopback, a random SuperNode SIGKILLed and restarted every few rounds.

A ``fedbrick-flower server`` (insecure, loopback) and ``--nodes`` SuperNodes of tiny random BERTs run ``--rounds``
FedAvg rounds; ``server.fraction_train`` of the nodes train in each round (all stay connected). After every
``--kill-every`` rounds (but not in the last two: a node that rejoins is asked for its profile when a round
starts) one node chosen at random (seeded) is SIGKILLed with what it started and started again at once, as a
device that crashed and rebooted. Nodes announce a 10 s heartbeat, so a dead one is declared lost
after about 20 s and the round goes on without it.

Checked and written to the JSON:
- every round completed, each exactly once (``rounds`` equals ``1..R``);
- every killed client registered again on a new node after its kill (the ServerApp's ``logs/server.log``);
- no process started here, nor any process they started (SuperExecs, ClientApps, the ServerApp), left running
  after the teardown (``strays``);
- the server's open file descriptors and resident memory, sampled as each round completes, for the SuperLink and
  the ServerApp: the mean of the first five rounds against the last five (``flat`` when within 10%).

Full size: ``python bench/soak_bench.py`` (16 nodes, 30 rounds) -> ``bench/results/soak.json``.
The integration test runs ``--nodes 3 --rounds 3 --kill-every 1`` (one kill, after round 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from fedbrick_flower.deployment.loopback_fleet import (
    LoopbackFleet,
    completed_rounds,
    family,
    run_context,
    tiny_scenario,
    wait_for,
)
from fedbrick_flower.run_files import SUMMARY_FILE

WINDOW = 5  # rounds compared at each end
TOLERANCE = 0.10
REGISTERED = re.compile(r"client (\S+) registered on node (\d+)")


def _server_processes(superlink_pid: int) -> dict[str, psutil.Process]:
    """The SuperLink and its ServerApp (``flwr-serverapp``), found among the SuperLink's descendants."""
    found = {"superlink": psutil.Process(superlink_pid)}
    for pid in family(superlink_pid)[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            if any("flwr-serverapp" in part for part in psutil.Process(pid).cmdline()[:2]):
                found["serverapp"] = psutil.Process(pid)
    return found


def _sample(processes: dict[str, psutil.Process]) -> dict[str, dict[str, float]]:
    sample = {}
    for name, process in processes.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            sample[name] = {"rss_mib": process.memory_info().rss / 2**20, "fds": process.num_fds()}
    return sample


def _trend(samples: list[dict], name: str, key: str) -> dict[str, Any]:
    """First-``WINDOW`` mean against last-``WINDOW`` mean of one figure of one process."""
    values = [sample[name][key] for sample in samples if name in sample]
    if len(values) < 2:
        return {"first": None, "last": None, "change": None, "flat": None}
    width = min(WINDOW, len(values) // 2)
    first, last = statistics.mean(values[:width]), statistics.mean(values[-width:])
    change = (last - first) / first
    return {
        "first": round(first, 2),
        "last": round(last, 2),
        "change": round(change, 4),
        "flat": abs(change) <= TOLERANCE,
    }


def _registrations(server_log: Path) -> list[tuple[str, int, int]]:
    """``(client, node, line number)`` of every registration in the ServerApp's log, in order."""
    if not server_log.is_file():
        return []
    lines = server_log.read_text().splitlines()
    return [(m.group(1), int(m.group(2)), i) for i, line in enumerate(lines) if (m := REGISTERED.search(line))]


def soak(folder: Path, nodes: int, rounds: int, kill_every: int, fraction: float, seed: int) -> dict[str, Any]:
    clients = [f"soak-{index:02d}" for index in range(nodes)]
    scenario = tiny_scenario(
        folder / "soak.yaml",
        clients,
        rounds,
        "fedavg",
        fraction_train=fraction,
        min_clients=max(1, nodes // 2),
        min_train_clients=1,
        round_timeout=180,
    )
    fleet = LoopbackFleet(folder, heartbeat=10.0)
    rng = random.Random(seed)
    samples: list[dict] = []
    kills: list[dict[str, Any]] = []
    server_log = fleet.run_dir / "logs" / "server.log"
    started = time.monotonic()
    with fleet.running():
        fleet.start_server(scenario)
        for cid in clients:
            fleet.start_node(cid)
        server = _server_processes(fleet.superlink_pid())
        for server_round in range(1, rounds + 1):
            done = lambda: len(completed_rounds(fleet.run_dir)) >= server_round  # noqa: B023, E731
            wait_for(done, 900, f"round {server_round}", fleet.server)
            if "serverapp" not in server:
                server = _server_processes(fleet.superlink_pid())
            samples.append({"round": server_round, "wall_s": round(time.monotonic() - started, 1), **_sample(server)})
            fleet.track()
            # A restarted node is asked for its profile at the start of a round: leave it two rounds to rejoin.
            if server_round % kill_every == 0 and server_round <= rounds - 2:
                victim = rng.choice(clients)
                old_pid = fleet.nodes[victim].pid
                fleet.kill_node(victim)
                fleet.start_node(victim)
                lines = len(server_log.read_text().splitlines())
                kills.append({"after_round": server_round, "client": victim, "old_pid": old_pid, "log_line": lines})
        fleet.server.wait(timeout=300)
        fleet.track()
    registrations = _registrations(server_log)
    for kill in kills:
        mine = [(node, line) for cid, node, line in registrations if cid == kill["client"]]
        before = [node for node, line in mine if line < kill["log_line"]]
        after = [node for node, line in mine if line >= kill["log_line"]]
        # Registered again, on a node id other than the one that died.
        kill["rejoined"] = bool(after) and after[0] not in before[-1:]
    summary = json.loads((fleet.run_dir / SUMMARY_FILE).read_text()) if (fleet.run_dir / SUMMARY_FILE).is_file() else {}
    return {
        "server_exit": fleet.server.returncode,
        "rounds": completed_rounds(fleet.run_dir),
        "rounds_completed": summary.get("rounds_completed"),
        "rejected_updates": summary.get("rejected_updates"),
        "kills": kills,
        "strays": fleet.strays(),
        "processes_tracked": len(fleet.seen),
        "wall_s": round(time.monotonic() - started, 1),
        "trend": {
            name: {key: _trend(samples, name, key) for key in ("rss_mib", "fds")} for name in ("superlink", "serverapp")
        },
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--kill-every", type=int, default=3)
    parser.add_argument("--fraction-train", type=float, default=0.25, help="share of the nodes training per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        result = soak(Path(folder), args.nodes, args.rounds, args.kill_every, args.fraction_train, args.seed)
    result = {
        "what": "loopback soak: SuperNodes of tiny random BERTs, FedAvg, a random node SIGKILLed and restarted every "
        "few rounds; server fds and RSS sampled as each round completes (SuperLink and ServerApp)",
        **run_context(),
        "nodes": args.nodes,
        "rounds_planned": args.rounds,
        "kill_every": args.kill_every,
        "fraction_train": args.fraction_train,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    flat = {name: {key: value["flat"] for key, value in trend.items()} for name, trend in result["trend"].items()}
    rounds, kills = len(result["rounds"]), len(result["kills"])
    print(f"{rounds} rounds in {result['wall_s']} s, {kills} kills, strays {result['strays']}")
    print(f"flat: {flat}")


if __name__ == "__main__":
    main()
