"""FedBRICK benchmark: AllLayers / FedRA / FedBRICK / FedRA + BRICKs (no distillation) on one scenario and seed.

Every configuration is a ``fedbrick-flower run`` of the same scenario (default: the MiniLM ``fedbrick`` scenario
on chatterbot) with ``--set`` overrides, in two depth settings:

- ``mixed``: six clients holding 6, 5, 4, 3, 2 and 2 of the 6 layers;
- ``2of6``: six clients holding 2 of the 6 layers each.

AllLayers (every client holds every layer) is the ceiling and does not depend on the setting; it runs once. The
script reads each run's ``metrics.jsonl`` and reports, per round, the server-side accuracy of the full-depth
global model (phase ``server-eval``, the papers' metric), the clients' on-device accuracy (phase ``evaluate``,
weighted by test examples) and the bytes that travelled (up + down, all clients). Results go to
``bench/results/fedbrick.json``.

Reference: FedBRICK, AAAI-26 (``docs/algorithms/fedbrick.md``); FedRA, ECCV 2024.

Usage::

    python bench/fedbrick_bench.py --rounds 3 --local-steps 10
    python bench/fedbrick_bench.py --settings mixed --algorithms fedra fedbrick
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from fedbrick_flower import cli
from fedbrick_flower.run_dir import read_metrics

RESULTS = Path(__file__).parent / "results" / "fedbrick.json"
SETTINGS: dict[str, list[int]] = {"mixed": [6, 5, 4, 3, 2, 2], "2of6": [2, 2, 2, 2, 2, 2]}
ALGORITHMS: dict[str, list[str]] = {
    "alllayers": ["algorithm=fedavg", "algorithm_params={}"],
    "fedra": ["algorithm=fedavg", "algorithm_params={resample_layers: true}"],
    "fedbrick": [],
    "fedra+bricks": ["algorithm_params.distill=false"],
}


def clients_override(budgets: list[int], model: str, task: str) -> str:
    """A ``--set clients=[...]`` value: one client per budget."""
    entries = ", ".join(f"{{id: c{i}-{b}, model: {model}, task: {task}, layers: {b}}}" for i, b in enumerate(budgets))
    return f"clients=[{entries}]"


def jobs(algorithms: list[str], settings: list[str]) -> list[tuple[str, str]]:
    """(algorithm, setting) pairs, one whole setting after the other; AllLayers (every client holds every
    layer) does not depend on the setting and runs once, first, as ``full``."""
    pairs = [("alllayers", "full")] if "alllayers" in algorithms else []
    return pairs + [(a, s) for s in settings for a in algorithms if a != "alllayers"]


def run_one(out: Path, scenario: str, overrides: list[str]) -> dict[str, Any]:
    """One simulation run; returns its per-round table and wall time."""
    started = time.monotonic()
    args = ["run", scenario, "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    code = cli.main(args)
    seconds = time.monotonic() - started
    if code != 0:
        return {"error": f"exit code {code}", "seconds": seconds, "overrides": overrides}
    return {"seconds": seconds, "overrides": overrides, "rounds": per_round(read_metrics(out))}


def per_round(rows: list[dict]) -> list[dict[str, Any]]:
    """Server-eval accuracy (mean over tasks), on-device accuracy (example-weighted) and bytes, per round."""
    by_round: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_round[row["round"]].append(row)
    table = []
    for server_round, round_rows in sorted(by_round.items()):
        server = [r["accuracy"] for r in round_rows if r["phase"] == "server-eval"]
        local = [(r["accuracy"], r["num-examples"]) for r in round_rows if r["phase"] == "evaluate"]
        train = [r for r in round_rows if r["phase"] == "train"]
        distill = [r for r in round_rows if r["phase"] == "distill"]
        table.append(
            {
                "round": server_round,
                "server_accuracy": sum(server) / len(server) if server else None,
                "device_accuracy": sum(a * n for a, n in local) / sum(n for _, n in local) if local else None,
                "bytes": sum(r["bytes_up"] + (r.get("bytes_down") or 0) for r in train),
                "distill_mse_before": _mean(r["mse_before"] for r in distill),
                "distill_mse_after": _mean(r["mse_after"] for r in distill),
            }
        )
    return table


def _mean(values: Any) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'run':24s} {'round':>5s} {'server acc':>10s} {'device acc':>10s} {'MB/round':>9s} {'wall s':>7s}")
    for name, result in results.items():
        if "error" in result:
            print(f"{name:24s} failed: {result['error']}")
            continue
        for row in result["rounds"]:
            print(
                f"{name:24s} {row['round']:5d} {_fmt(row['server_accuracy'])} {_fmt(row['device_accuracy'])} "
                f"{row['bytes'] / 2**20:9.3f} {result['seconds']:7.0f}"
            )


def _fmt(value: float | None) -> str:
    return f"{value:10.4f}" if value is not None else f"{'-':>10s}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="fedbrick")
    parser.add_argument("--model", default="minilm", help="model key of the scenario")
    parser.add_argument("--task", default="chat", help="task key of the scenario")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--out-root", type=Path, default=Path("runs/fedbrick-bench"))
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON file the results go to")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra scenario override")
    args = parser.parse_args()
    common = [f"rounds={args.rounds}", f"train.local_steps={args.local_steps}", f"seed={args.seed}", *args.set]
    results: dict[str, dict[str, Any]] = {}
    config = {k: v for k, v in vars(args).items() if k not in {"out_root", "results"}}
    for algorithm, setting in jobs(args.algorithms, args.settings):
        budgets = [6] * 6 if setting == "full" else SETTINGS[setting]
        name = f"{algorithm}/{setting}"
        overrides = [*common, *ALGORITHMS[algorithm], clients_override(budgets, args.model, args.task)]
        results[name] = run_one(args.out_root / name.replace("/", "-"), args.scenario, overrides)
        # Written after every run, so an interrupted benchmark keeps what it measured.
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps({"config": config, "runs": results}, indent=2, default=str))
    print_table(results)
    print(f"\nwritten: {args.results}")


if __name__ == "__main__":
    main()
