"""Throughput benchmark: where the wall time of a ``fedbrick-flower run`` goes, and how much of it is training.

Two runs are measured, each a ``python -m fedbrick_flower.cli run`` of this checkout (Flower's Simulation Engine):

* ``hetero-depth``: ``fedbrick-flower run hetero-depth --set rounds=5`` (4 MiniLM clients, 20 local steps);
* ``depth-fedra``: one cell of the ``depth`` leaderboard suite, FedRA at seed 0, with the budget of
  ``bench/results/leaderboard-depth-mixed`` (8 rounds x 5 local steps, 6 clients), as one ``fedbrick-flower run``;
* ``depth-suite``: ``fedbrick-flower bench depth`` with the FedRA cells of seeds 0 and 1 at that budget: each cell's
  wall time (``suite.json``), its rounds, and the rest (the cell's fixed cost), so what a suite's cells share shows.

From the run's ``metrics.jsonl`` and the timestamps of ``RUN_DIR/logs/server.log`` it reports:

* the command's wall time split into start-up (command start to round 1), rounds, and tear-down (end of the last
  round to the command's exit: exports, Flower and Ray shutting down);
* per round: wall time, each client's training seconds, client evaluation seconds, server evaluation seconds,
  aggregation seconds and the remainder (scheduling, serialisation, model builds), where
  ``remainder = wall - server eval - aggregation - sum(client train + eval) / min(cores, clients)``;
* training efficiency: ``sum of the clients' train-seconds / (min(cores, clients) x command wall time)``.

Usage::

    python bench/throughput_bench.py --label before            # both runs
    python bench/throughput_bench.py --label after --runs depth-fedra

Results are merged into ``bench/results/throughput.json`` under ``measurements[LABEL][RUN]``, with the load average
before and after each run. ``--targets`` then writes the issue's targets (``targets``) from the measurements, from
``instruct-eval.json`` (``instruct_eval_bench.py``), ``peers.json`` (``peers_bench.py``) and ``bf16.json``
(``bf16_bench.py``), and copies those three beside them. This machine is shared with other jobs: every timing is an
upper bound of what the code costs on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

from fedbrick_flower.leaderboard.suites import DEPTH, expand
from fedbrick_flower.metrics import read_metrics
from fedbrick_flower.run_files import SUMMARY_FILE

RESULTS = Path(__file__).resolve().parent / "results"
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
# The budget of bench/results/leaderboard-depth-mixed (the 79 s FedRA cell of issue 24).
DEPTH_CELL_OVERRIDES = {
    "rounds": 8,
    "train.local_steps": 5,
    "tasks.chat.max_examples": 1464,
    "data.proxy_fraction": 0.2,
}
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
_SERVER_EVAL_DONE = re.compile(r"round (\d+): server evaluation done")
_RUN_END = re.compile(r"run directory: ")


def suite_arguments(out: Path) -> list[str]:
    """The ``bench`` arguments of the ``depth-suite`` measurement."""
    sets = [item for key, value in DEPTH_CELL_OVERRIDES.items() for item in ("--set", f"{key}={value}")]
    return ["bench", "depth", "--seed", "0", "1", "--methods", "fedra", "--out", str(out), *sets]


def run_arguments(name: str) -> list[str]:
    """The ``run`` arguments (scenario and overrides) of a measured run."""
    if name == "hetero-depth":
        return ["hetero-depth", "--set", "rounds=5"]
    if name == "depth-fedra":
        (cell,) = expand(DEPTH, [0], DEPTH_CELL_OVERRIDES, ["fedra"])
        return [cell.scenario, *cell.set_arguments()]
    raise ValueError(f"unknown run {name!r} (known: hetero-depth, depth-fedra)")


def load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def measure_suite(out: Path, extra: list[str]) -> dict[str, Any]:
    """Run the two-cell suite, then split each cell's wall time into its rounds and the rest."""
    command = [sys.executable, "-m", "fedbrick_flower.cli", *suite_arguments(out), *extra]
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    load_before = load()
    started = time.time()
    with log.open("w") as sink:
        code = subprocess.run(command, env={**os.environ, **ENV}, stdout=sink, stderr=subprocess.STDOUT).returncode
    wall = time.time() - started
    if code != 0:
        raise RuntimeError(f"depth-suite: the suite failed with exit code {code}; see {log}")
    cells = []
    for entry in json.loads((out / "suite.json").read_text())["cells"]:
        run_dir = Path(entry["run_dir"])
        events = log_events(run_dir / "logs" / "server.log")
        rounds = max(events["evaluated"].values()) - min(events["starts"].values())
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        cells.append(
            {
                "seed": entry["seed"],
                "wall_seconds": entry["seconds"],
                "rounds_seconds": rounds,
                "fixed_seconds": entry["seconds"] - rounds,
                "train_seconds_total": sum(r["train-seconds"] for r in read_metrics(run_dir) if r["phase"] == "train"),
                "global_accuracy": summary.get("global_accuracy"),
            }
        )
    return {
        "command": " ".join(command),
        "load_average_before": load_before,
        "load_average_after": load(),
        "wall_seconds": wall,
        "cells": cells,
    }


def measure_run(name: str, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    """Run one command, then split its wall time from its run directory."""
    if name == "depth-suite":
        return measure_suite(run_dir, extra)
    command = [sys.executable, "-m", "fedbrick_flower.cli", "run", *run_arguments(name), "--out", str(run_dir), *extra]
    log = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    load_before = load()
    started = time.time()
    with log.open("w") as sink:
        code = subprocess.run(command, env={**os.environ, **ENV}, stdout=sink, stderr=subprocess.STDOUT).returncode
    ended = time.time()
    if code != 0:
        raise RuntimeError(f"{name}: the run failed with exit code {code}; see {log}")
    result = split_wall_time(run_dir, started, ended)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    return {
        "command": " ".join(command),
        "run_dir": str(run_dir),
        "load_average_before": load_before,
        "load_average_after": load(),
        **result,
        "final_accuracy": summary.get("final_accuracy"),
        "global_accuracy": summary.get("global_accuracy"),
    }


def log_events(server_log: Path) -> dict[str, Any]:
    """Wall-clock times (``time.time()`` seconds) of round starts, server-evaluation ends and the run's end."""
    starts: dict[int, float] = {}
    evaluated: dict[int, float] = {}
    run_end = None
    for line in server_log.read_text(errors="replace").splitlines():
        stamp = _STAMP.match(line)
        if stamp is None:
            continue
        when = dt.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if found := _ROUND.search(line):
            starts.setdefault(int(found.group(1)), when)
        elif found := _SERVER_EVAL_DONE.search(line):
            evaluated[int(found.group(1))] = when
        elif _RUN_END.search(line):
            run_end = when
    return {"starts": starts, "evaluated": evaluated, "run_end": run_end}


def split_wall_time(run_dir: Path, started: float, ended: float) -> dict[str, Any]:
    """Start-up, rounds, tear-down and the per-round breakdown of one finished run."""
    rows = read_metrics(run_dir)
    events = log_events(run_dir / "logs" / "server.log")
    starts, evaluated = events["starts"], events["evaluated"]
    by_round: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_round[row.get("round", 0)][row["phase"]].append(row)
    rounds = sorted(starts)
    clients = {row["client"] for row in rows if row["phase"] == "train"}
    cores = os.cpu_count() or 1
    lanes = min(cores, len(clients))
    per_round = []
    for index, number in enumerate(rounds):
        phases = by_round[number]
        loop_seconds = phases["round"][0]["wall_seconds"]
        if index + 1 < len(rounds):
            end = starts[rounds[index + 1]]
        else:
            end = evaluated.get(number, starts[number] + loop_seconds)
        wall = end - starts[number]
        train = {r["client"]: r["train-seconds"] for r in phases["train"]}
        client_eval = {r["client"]: r.get("seconds", 0.0) for r in phases["evaluate"]}
        server_eval = sum(r.get("seconds", 0.0) for r in phases["server-eval"])
        aggregation = sum(r["seconds"] for r in phases["aggregate"])
        client_work = sum(train.values()) + sum(client_eval.values())
        per_round.append(
            {
                "round": number,
                "wall_seconds": wall,
                "train_seconds": train,
                "client_eval_seconds": client_eval,
                "server_eval_seconds": server_eval,
                "aggregation_seconds": aggregation,
                "remainder_seconds": wall - server_eval - aggregation - client_work / lanes,
            }
        )
    first, last_end = starts[rounds[0]], starts[rounds[-1]] + per_round[-1]["wall_seconds"]
    wall = ended - started
    train_total = sum(sum(r["train_seconds"].values()) for r in per_round)
    return {
        "wall_seconds": wall,
        "startup_seconds": first - started,
        "rounds_seconds": last_end - first,
        "teardown_seconds": ended - last_end,
        "exports_seconds": (events["run_end"] - last_end) if events["run_end"] else None,
        "cores": cores,
        "clients": len(clients),
        "train_seconds_total": train_total,
        "training_efficiency": train_total / (lanes * wall),
        "round_1_seconds": per_round[0]["wall_seconds"],
        "later_round_seconds_mean": mean(r["wall_seconds"] for r in per_round[1:]) if len(per_round) > 1 else None,
        "per_round": per_round,
    }


def targets(record: dict[str, Any], results: Path) -> dict[str, Any]:
    """The issue's targets against what was measured, each with its load: the runs of ``after-b2b`` (measured right
    after ``before-b2b``) where they exist, else of ``after``; the suite's cells from ``after``."""
    measurements = record["measurements"]

    def latest(name: str) -> tuple[str, dict[str, Any]] | None:
        for label in ("after-b2b", "after"):
            if name in measurements.get(label, {}):
                return label, measurements[label][name]
        return None

    found: dict[str, Any] = {}
    if hetero := latest("hetero-depth"):
        label, run = hetero
        found["hetero_depth_training_efficiency"] = {
            "target": ">= 0.7",
            "measured": run["training_efficiency"],
            "from": label,
            "met": run["training_efficiency"] >= 0.7,
            "load_average": [run["load_average_before"], run["load_average_after"]],
        }
    fedra, suite = latest("depth-fedra"), latest("depth-suite")
    no_run = ("", {})
    if fedra or suite:
        walls = {f"{fedra[0]} depth-fedra (one run)": fedra[1]["wall_seconds"]} if fedra else {}
        if suite:
            cells = suite[1]["cells"]
            walls.update({f"{suite[0]} depth-suite cell seed {c['seed']}": c["wall_seconds"] for c in cells})
        found["depth_fedra_cell_seconds"] = {
            "target": "<= 40 on a quiet machine (half of the 79 s of bench/results/leaderboard-depth-mixed)",
            "measured": walls,
            "met": min(walls.values()) <= 40.0,
            "load_average": {
                f"{label} {name}": [run["load_average_before"], run["load_average_after"]]
                for name, (label, run) in (("depth-fedra", fedra or no_run), ("depth-suite", suite or no_run))
                if run
            },
            "note": "this machine was not quiet: the load is recorded beside each figure",
        }
    sections = {"instruct_server_eval": "instruct-eval.json", "peers": "peers.json", "bf16": "bf16.json"}
    for key, name in sections.items():
        if (results / name).is_file():
            record[key] = json.loads((results / name).read_text())
    if "instruct_server_eval" in record:
        evaluation = record["instruct_server_eval"]
        speedup = evaluation["total_seconds_without_cache"] / evaluation["total_seconds_with_cache"]
        found["instruct_server_eval_speedup"] = {
            "target": ">= 5",
            "measured_all_tasks": speedup,
            "measured_tasks_with_greedy_answers": evaluation["speedup_where_answers_are_generated"],
            "met": speedup >= 5,
        }
    if "peers" in record:
        ratio = record["peers"]["wall_ratio_ours_over_plain"]
        found["wall_ratio_ours_over_plain_flower"] = {"target": "<= 1.0", "measured": ratio, "met": ratio <= 1.0}
    return found


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", help="where the figures go in the results file (before, after...); required to run")
    parser.add_argument("--runs", nargs="+", default=["hetero-depth", "depth-fedra", "depth-suite"])
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/throughput-bench"), help="run directories")
    parser.add_argument("--set", action="append", default=[], help="extra --set KEY=VALUE for every run")
    parser.add_argument("--note", default="", help="a line stored with the measurement")
    parser.add_argument("--targets", action="store_true", help="only write the targets from what was measured")
    args = parser.parse_args(argv)
    if args.targets:
        record = json.loads(args.out.read_text())
        record["targets"] = targets(record, args.out.parent)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record["targets"], indent=2))
        return 0
    if not args.label:
        parser.error("--label is required to run the measurements")
    extra = [item for value in args.set for item in ("--set", value)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in args.runs:
        print(f"{args.label}: {name} ...", flush=True)
        result = measure_run(name, args.work / f"{args.label}-{name}-{stamp}", extra)
        result.update(
            date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            machine=machine(),
            git_commit=_git_commit(),
            note=args.note,
        )
        # Read just before writing: the other benchmarks merge their own sections into the same file.
        record = json.loads(args.out.read_text()) if args.out.is_file() else {"measurements": {}}
        record["measurements"].setdefault(args.label, {})[name] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(format_line(name, result), flush=True)
    print(f"wrote {args.out}")
    return 0


def format_line(name: str, result: dict[str, Any]) -> str:
    if "cells" in result:
        cells = "; ".join(
            f"seed {c['seed']}: {c['wall_seconds']:.1f}s = rounds {c['rounds_seconds']:.1f} "
            f"+ fixed {c['fixed_seconds']:.1f}"
            for c in result["cells"]
        )
        return f"{name}: wall {result['wall_seconds']:.1f}s; {cells}; load {result['load_average_after']}"
    return (
        f"{name}: wall {result['wall_seconds']:.1f}s = start-up {result['startup_seconds']:.1f} + rounds "
        f"{result['rounds_seconds']:.1f} + tear-down {result['teardown_seconds']:.1f}; round 1 "
        f"{result['round_1_seconds']:.1f}s; train {result['train_seconds_total']:.1f}s; efficiency "
        f"{result['training_efficiency']:.2f}; load {result['load_average_before']} -> {result['load_average_after']}"
    )


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
