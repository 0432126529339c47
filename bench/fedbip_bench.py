"""FedBip benchmark: local / FedIT (fedavg) / FedBip / FedBip-L on the task-shift scenario ``fedbip``, 3 seeds.

Every configuration is a real ``fedbrick-flower run`` (Flower's Simulation Engine) of the same scenario, started as
``python -m fedbrick_flower.cli run`` from the repository root, with ``--set`` overrides for the algorithm, the
seed and the run size. The script reads each run's ``metrics.jsonl`` and reports:

- ``accuracy``: the mean over clients of each client's accuracy on its own test split in the last round, from
  the ``evaluate`` rows: the model each client holds after the round's aggregation (FedBip: its personalized
  θ̄_i; FedIT: the global LoRA and its task's head; local: its own adapters). Mean ± std over seeds (std with
  ddof=1);
- ``accuracy_after_local_training``: the same from the ``eval-accuracy`` each client reports with its train
  reply (the network it has just trained, before aggregation);
- per round, both means, and for FedBip / FedBip-L the share of weight each client gives to clients of its own
  task: ``with_self`` (the heat map's diagonal blocks) and ``others`` (of the weight it gives to other clients,
  the part that goes to same-task clients; 1/7 of the others share a task in the 8-client scenario, so uniform
  mixing would give 0.143).

The target (issue 9): FedBip-L above both local and FedIT by more than one standard deviation, read here as
``mean(FedBip-L) - mean(X) > max(std(FedBip-L), std(X))``. Results go to ``bench/results/fedbip.json``, written
after every run, so an interrupted benchmark keeps what it measured; runs whose directory already holds a
``summary.json`` from the same command are read, not repeated (``--fresh`` repeats them).

Reference: Yang et al., FedBip, AAAI-26 (``docs/algorithms/fedbip.md``): NLP average FedBip-L 81.90 vs FedIT 79.05.

Usage::

    python bench/fedbip_bench.py                       # 4 algorithms x seeds 0 1 2 at the default size
    python bench/fedbip_bench.py --algorithms fedbip-l fedavg --seeds 0 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from fedbrick_flower.run_dir import SUMMARY_FILE, read_metrics
from fedbrick_flower.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fedbip.json"
ALGORITHMS = ("local", "fedavg", "fedbip", "fedbip-l")
# Sized for two shared CPU cores: MiniLM's first 3 layers, short sequences, few steps (about 2-3 min a run).
SIZE = {
    "rounds": 4,
    "train.local_steps": 8,
    "train.batch_size": 8,
    "train.lr": 0.002,
    "train.head_lr": 0.005,
    "data.max_length": 32,
}
LAYERS = 3


def overrides_for(
    algorithm: str, seed: int, size: dict[str, Any], layers: int, clients_count: int, extra: list[str]
) -> list[str]:
    clients = [f"clients.{i}.layers={layers}" for i in range(clients_count)]
    return [f"algorithm={algorithm}", f"seed={seed}", *(f"{k}={v}" for k, v in size.items()), *clients, *extra]


def run_one(out: Path, scenario: str, overrides: list[str], fresh: bool) -> dict[str, Any]:
    """One simulation run (reused when ``out`` already holds the finished run of the same command)."""
    command = [sys.executable, "-m", "fedbrick_flower.cli", "run", scenario, "--out", str(out)]
    for item in overrides:
        command += ["--set", item]
    marker = out / "bench-command.json"
    if not fresh and (out / SUMMARY_FILE).exists() and marker.exists() and json.loads(marker.read_text()) == command:
        return {"seconds": None, "reused": True, "command": command, **read_run(out)}
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "metrics.jsonl", out / SUMMARY_FILE):
        stale.unlink(missing_ok=True)
    started = time.monotonic()
    with (out.parent / f"{out.name}.log").open("w") as log:
        code = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if code != 0:
        return {"error": f"exit code {code}", "seconds": seconds, "command": command}
    marker.write_text(json.dumps(command))
    return {"seconds": seconds, "reused": False, "command": command, **read_run(out)}


def read_run(out: Path) -> dict[str, Any]:
    """Per-round and final accuracies, and FedBip's same-task weight shares, from ``metrics.jsonl``."""
    rows = read_metrics(out)
    by_round: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_round[row["round"]].append(row)
    rounds = []
    for server_round, round_rows in sorted(by_round.items()):
        evaluate = {r["client"]: r["accuracy"] for r in round_rows if r["phase"] == "evaluate"}
        train = [r for r in round_rows if r["phase"] == "train" and "eval-accuracy" in r]
        trained = {r["client"]: r["eval-accuracy"] for r in train}
        entry = {"round": server_round, "accuracy": _mean(evaluate.values()), "per_client": evaluate}
        entry["accuracy_after_local_training"] = _mean(trained.values())
        entry.update(same_task_share([r for r in round_rows if r["phase"] == "similarity"]))
        rounds.append(entry)
    last = rounds[-1]
    return {
        "accuracy": last["accuracy"],
        "accuracy_after_local_training": last["accuracy_after_local_training"],
        "per_client": last["per_client"],
        "rounds": rounds,
    }


def same_task_share(similarity_rows: list[dict]) -> dict[str, float | None]:
    """Mean over receivers of the weight on same-task clients: with self, and among the others only."""
    with_self, others = [], []
    for row in similarity_rows:
        task = dict(zip(row["clients"], row["tasks"], strict=True))
        for receiver, weights in zip(row["receivers"], row["weights"], strict=True):
            same = [w for cid, w in zip(row["clients"], weights, strict=True) if task[cid] == task[receiver]]
            to_others = sum(w for cid, w in zip(row["clients"], weights, strict=True) if cid != receiver)
            own = weights[row["clients"].index(receiver)]
            with_self.append(sum(same))
            if to_others > 0:
                others.append((sum(same) - own) / to_others)
    if not similarity_rows:
        return {}
    return {"same_task_share_with_self": _mean(with_self), "same_task_share_others": _mean(others)}


def summarize(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Mean ± std over seeds per algorithm, per-round curves, and the target's verdict."""
    table: dict[str, Any] = {}
    for algorithm, by_seed in runs.items():
        done = [r for r in by_seed.values() if "error" not in r]
        if not done:
            continue
        finals = [r["accuracy"] for r in done]
        after_training = [r["accuracy_after_local_training"] for r in done]
        table[algorithm] = {
            "seeds": sorted(s for s, r in by_seed.items() if "error" not in r),
            "accuracy_mean": statistics.mean(finals),
            "accuracy_std": statistics.stdev(finals) if len(finals) > 1 else None,
            "accuracy_after_local_training_mean": statistics.mean(after_training),
            "accuracy_after_local_training_std": statistics.stdev(after_training) if len(done) > 1 else None,
            "per_round": _curves(done),
        }
    verdict = {}
    target = table.get("fedbip-l")
    for other in ("local", "fedavg"):
        if target and other in table and target["accuracy_std"] is not None:
            gap = target["accuracy_mean"] - table[other]["accuracy_mean"]
            bar = max(target["accuracy_std"], table[other]["accuracy_std"] or 0.0)
            verdict[f"fedbip-l_vs_{other}"] = {"gap": gap, "one_std": bar, "met": gap > bar}
    return {"algorithms": table, "target": verdict}


def _curves(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("accuracy", "accuracy_after_local_training", "same_task_share_with_self", "same_task_share_others")
    curves = []
    for position in range(min(len(r["rounds"]) for r in done)):
        entries = [r["rounds"][position] for r in done]
        curve = {"round": entries[0]["round"]}
        for key in keys:
            values = [e[key] for e in entries if e.get(key) is not None]
            if values:
                curve[key] = statistics.mean(values)
        curves.append(curve)
    return curves


def _mean(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def print_table(summary: dict[str, Any]) -> None:
    print(f"\n{'algorithm':10s} {'seeds':>6s} {'accuracy (mean ± std)':>22s} {'after local training':>22s}")
    for algorithm, row in summary["algorithms"].items():
        std = row["accuracy_std"] or 0.0
        std_t = row["accuracy_after_local_training_std"] or 0.0
        print(
            f"{algorithm:10s} {len(row['seeds']):6d} {row['accuracy_mean']:14.4f} ± {std:.4f} "
            f"{row['accuracy_after_local_training_mean']:14.4f} ± {std_t:.4f}"
        )
    for name, check in summary["target"].items():
        print(f"{name}: gap {check['gap']:+.4f}, one std {check['one_std']:.4f}, met: {check['met']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="fedbip")
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=SIZE["rounds"])
    parser.add_argument("--local-steps", type=int, default=SIZE["train.local_steps"])
    parser.add_argument("--layers", type=int, default=LAYERS, help="layers of MiniLM each client holds")
    parser.add_argument("--out-root", type=Path, default=ROOT / "runs" / "fedbip-bench")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--fresh", action="store_true", help="repeat runs whose directory is already complete")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra scenario override")
    args = parser.parse_args()
    size = {**SIZE, "rounds": args.rounds, "train.local_steps": args.local_steps}
    config = {
        "scenario": args.scenario,
        "size": size,
        "layers": args.layers,
        "extra": args.set,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    clients_count = len(load_scenario(args.scenario).clients)
    runs: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in args.algorithms}
    started = time.monotonic()
    for seed in args.seeds:  # seed after seed, so an interrupted benchmark still compares every algorithm
        for algorithm in args.algorithms:
            out = args.out_root / f"{algorithm}-seed{seed}"
            print(f"[{time.monotonic() - started:6.0f}s] {algorithm} seed {seed} -> {out}", flush=True)
            overrides = overrides_for(algorithm, seed, size, args.layers, clients_count, args.set)
            runs[algorithm][seed] = run_one(out, args.scenario, overrides, args.fresh)
            result = runs[algorithm][seed]
            print(f"         accuracy {result.get('accuracy')} ({result.get('seconds')} s)", flush=True)
            config["load_average"] = os.getloadavg()
            config["wall_seconds"] = time.monotonic() - started
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(
                json.dumps({"config": config, "summary": summarize(runs), "runs": runs}, indent=2, default=str)
            )
    print_table(summarize(runs))
    print(f"\nwritten: {args.results}")


if __name__ == "__main__":
    main()
