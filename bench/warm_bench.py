"""Flower's ClientApp executor against the warm one (fork and persistent), back to back on this machine.

Each cell is ``fedbrick-flower launch SCENARIO --insecure --set rounds=N`` with ``--executor flower``,
``--warm fork`` or ``--warm persistent``. From its ``metrics.jsonl``, per round: the round's wall time, the
slowest client's ``train-seconds``, the per-round overhead (the difference) and the ratio (their quotient);
round 1 (which includes every node's first start) is reported but left out of the means. For the warm
executor the SuperNode logs also give each task's duration, so the overhead splits into the part inside the
slowest task (the app's own work outside training: building the network, scoring, the reply) and the part
outside every task (Flower's polls: a SuperNode waits 3 s between two pulls when it finds no message, and
0.5 s between two looks for the reply; then the server's aggregation).

A last cell runs the persistent executor over ``--rss-messages`` messages of one client and reads the
executor's resident set size after the first and the last message from its log.

The machine is shared: every cell records the load average before and after it, and ``--append`` adds a
pass to the results file instead of replacing it (to measure again when the machine is quieter).
Run: ``python bench/warm_bench.py`` (40 minutes to 2 hours on 2 cores, with the load) ->
``bench/results/warm-executor.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from fedbrick_flower import runtime
from fedbrick_flower.deployment.loopback_fleet import PACKAGE_ROOT as ROOT
from fedbrick_flower.deployment.loopback_fleet import run_context
from fedbrick_flower.metrics import read_metrics
from fedbrick_flower.scenario import scenario_path

EXECUTORS = {"flower": ["--executor", "flower"], "fork": ["--warm", "fork"], "persistent": ["--warm", "persistent"]}
TASK_LINE = re.compile(r"task (\d+) \((\w+)\) took ([\d.]+) s; executor RSS (\d+) MB")


def launch(folder: Path, scenario: str, rounds: int, executor: str) -> dict[str, Any]:
    """One ``launch`` and what its files say about each round."""
    run_dir = folder / f"{Path(scenario).stem}-{executor}"
    command = [sys.executable, "-m", "fedbrick_flower.cli", "launch", scenario, "--insecure", "--out", str(run_dir)]
    command += ["--set", f"rounds={rounds}", *EXECUTORS[executor]]
    env = runtime.flower_env(folder / "home", {"PYTHONPATH": str(ROOT)})
    load_before = os.getloadavg()
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    rows = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    tasks = _train_tasks(run_dir)
    return {
        "executor": executor,
        "exit_code": result.returncode,
        "wall_seconds": round(wall, 1),
        "load_average_before": [round(load, 2) for load in load_before],
        "load_average_after": [round(load, 2) for load in os.getloadavg()],
        "rounds": [_round(rows, row, tasks) for row in rows if row["phase"] == "round"],
        "tail": "" if result.returncode == 0 else (result.stdout + result.stderr)[-3000:],
    }


def _train_tasks(run_dir: Path) -> dict[str, list[float]]:
    """Per node, the durations of its training tasks in order (the k-th is round k: every client trains)."""
    tasks = {}
    for log in sorted((run_dir / "logs").glob("supernode-*.log")):
        client = log.stem.removeprefix("supernode-")
        tasks[client] = [float(m.group(3)) for m in TASK_LINE.finditer(log.read_text()) if m.group(2) == "train"]
    return tasks


def _round(rows: list[dict[str, Any]], row: dict[str, Any], tasks: dict[str, list[float]]) -> dict[str, Any]:
    number, wall = row["round"], row["wall_seconds"]
    trained = [r for r in rows if r["phase"] == "train" and r["round"] == number]
    slowest = max(trained, key=lambda r: r["train-seconds"])
    figures = {
        "round": number,
        "clients": len(trained),
        "wall": round(wall, 2),
        "slowest_train": round(slowest["train-seconds"], 2),
        "overhead": round(wall - slowest["train-seconds"], 2),
        "ratio": round(wall / slowest["train-seconds"], 3),
    }
    durations = [seconds[number - 1] for seconds in tasks.values() if len(seconds) >= number]
    if durations and len(durations) == len(trained):
        own_task = tasks[slowest["client"]][number - 1]
        figures["slowest_task"] = round(own_task, 2)
        figures["in_task_overhead"] = round(own_task - slowest["train-seconds"], 2)
        figures["outside_tasks"] = round(wall - max(durations), 2)
    return figures


def summary(cell: dict[str, Any]) -> dict[str, Any]:
    """Means over rounds 2 and later."""
    later = [r for r in cell["rounds"] if r["round"] >= 2]
    if not later:
        return {}
    means = {key: round(statistics.mean(r[key] for r in later), 3) for key in ("overhead", "ratio", "wall")}
    if all("outside_tasks" in r for r in later):
        means["outside_tasks"] = round(statistics.mean(r["outside_tasks"] for r in later), 2)
        means["in_task_overhead"] = round(statistics.mean(r["in_task_overhead"] for r in later), 2)
    means["max_overhead"] = max(r["overhead"] for r in later)
    return means


def rss_cell(folder: Path, messages: int) -> dict[str, Any]:
    """The persistent executor's RSS after its first and its last message (one client, ``messages`` messages)."""
    raw = yaml.safe_load(scenario_path("smoke").read_text())
    raw.update(name="rss", rounds=messages - 1)  # a query, then one training message per round
    raw["clients"] = [client for client in raw["clients"] if client["id"] == "bert-full"]
    raw["train"]["local_steps"] = 2
    raw.setdefault("server", {}).update(evaluate_global=False, min_clients=1)
    scenario = folder / "rss.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    cell = launch(folder, str(scenario), messages - 1, "persistent")
    log = (folder / "rss-persistent" / "logs" / "supernode-bert-full.log").read_text()
    rss = [int(m.group(4)) for m in TASK_LINE.finditer(log)]
    return {
        "messages": len(rss),
        "rss_mb_after_message": {"1": rss[0], str(len(rss)): rss[-1]} if rss else {},
        "rss_mb_each_message": rss,
        "exit_code": cell["exit_code"],
        "load_average_before": cell["load_average_before"],
        "load_average_after": cell["load_average_after"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["smoke", "hetero-depth"])
    parser.add_argument(
        "--rounds", nargs="+", type=int, default=[4, 3], help="rounds of each scenario (round 1 is not averaged)"
    )
    parser.add_argument("--executors", nargs="+", default=list(EXECUTORS), choices=list(EXECUTORS))
    parser.add_argument("--rss-messages", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "warm-executor.json")
    parser.add_argument("--append", action="store_true", help="add this pass to the passes already in --out")
    args = parser.parse_args()
    results: dict[str, Any] = {"cells": {}, "summary": {}}
    with tempfile.TemporaryDirectory(prefix="warm-bench-") as tmp:
        folder = Path(tmp)
        for scenario, rounds in zip(args.scenarios, args.rounds, strict=True):
            for executor in args.executors:  # back to back, scenario by scenario
                cell = launch(folder, scenario, rounds, executor)
                key = f"{scenario}/{executor}"
                results["cells"][key] = cell
                results["summary"][key] = {**summary(cell), "load_average_after": cell["load_average_after"]}
                print(key, json.dumps(results["summary"][key]), flush=True)
        if args.rss_messages:
            results["rss"] = rss_cell(folder, args.rss_messages)
            print("rss", json.dumps(results["rss"]["rss_mb_after_message"]), flush=True)
    results["context"] = {
        **run_context(),
        "rounds": dict(zip(args.scenarios, args.rounds, strict=True)),
        "note": "overhead = round wall - slowest client's train-seconds; means over rounds 2+; a 2-core machine "
        "shared with other jobs (load averages per cell)",
    }
    passes = json.loads(args.out.read_text())["passes"] if args.append and args.out.is_file() else []
    args.out.write_text(json.dumps({"passes": [*passes, results]}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
