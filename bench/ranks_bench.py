"""Rank-heterogeneous LoRA benchmark: FedAvg at the smallest and largest rank, HetLoRA, FlexLoRA and FLoRA.

Every configuration runs the built-in ``ranks`` scenario (MiniLM clients at LoRA ranks 16, 8, 8, 4, 4, 2, 2, 2,
some of partial depth) for several seeds:

- ``fedavg-r{min}``: FedAvg with every client at the smallest rank of the mix (what a user does today);
- ``fedavg-r{max}``: FedAvg with every client at the largest rank (the ceiling if every device could afford it);
- ``hetlora``, ``flexlora``, ``flora``: the mix itself.

Per method it reports the server-side accuracy of the full-depth global model (last round), the clients'
on-device accuracy (mean over clients of their last evaluation), bytes per client and round up and down (the
serialized records), the server's aggregation seconds per round and the rank-collapse diagnostic; mean ± std
over seeds. It then times one aggregation of 1,000 synthetic clients (MiniLM shapes, the same rank mix) per
method, and reports the download FLoRA's stack would need per client at that scale.

The runs go through the package's real round loop (``HeterogeneousStrategy.start``, reply validation, byte
accounting, global evaluation, ``RunRecorder``) and the real ClientApp (``client_app.app``, state handles per
node), but messages are delivered in this process by :mod:`fedbrick_flower.inprocess` instead of Flower's
Simulation Engine: on 2 shared cores, starting Ray and a SuperLink for each of 15 runs would cost more than the
training.

Usage::

    python bench/ranks_bench.py                                     # 3 seeds, the sizes below
    python bench/ranks_bench.py --seeds 0 --rounds 2 --methods hetlora flora --synthetic-clients 100
    python bench/ranks_bench.py --set train.lr=0.003 --out bench/results/ranks-lr3e-3.json

Writes ``bench/results/ranks.json``.
"""

from __future__ import annotations

import os

# One BLAS thread, set before NumPy loads: on a shared 2-core machine OpenBLAS's spinning worker threads made a
# 384 x 384 SVD 200 times slower (measured here), which would swamp the aggregation seconds this reports.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.inprocess import run_in_process
from fedbrick_flower.scenario import load_scenario, parse_overrides, scenario_path
from fedbrick_flower.strategies.replies import ClientUpdate

RESULTS = Path(__file__).resolve().parent / "results" / "ranks.json"
MIX_METHODS = ("hetlora", "flexlora", "flora")


def method_overrides(method: str, rank_mix: list[int]) -> dict[str, Any]:
    """Scenario overrides of one method: the algorithm, and for FedAvg one rank for every client."""
    if method in MIX_METHODS:
        return {"algorithm": method}
    rank = min(rank_mix) if method == "fedavg-min" else max(rank_mix)
    overrides: dict[str, Any] = {"algorithm": "fedavg"}
    overrides.update({f"clients.{i}.rank": rank for i in range(len(rank_mix))})
    return overrides


def run_method(method: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One in-process run; returns its figures."""
    base = yaml.safe_load(scenario_path(args.scenario).read_text())
    rank_mix = [client["rank"] for client in base["clients"]]
    overrides = {
        "seed": seed,
        "rounds": args.rounds,
        "train.local_steps": args.local_steps,
        **{f"tasks.{task}.max_examples": args.max_examples for task in base["tasks"]},
        **parse_overrides(args.set),
        **method_overrides(method, rank_mix),
    }
    scenario = load_scenario(args.scenario, overrides)
    run = run_in_process(scenario, work, f"{method}-{seed}", before_start=_time_aggregation)
    rows, summary, seconds, run_dir = run.rows, run.summary, run.before_start, run.run_dir
    diagnostic = [r["energy-beyond-min-rank"] for r in rows if r["phase"] == "rank-diagnostic"]
    truncation = [r["discarded-energy"] for r in rows if r["phase"] == "flexlora-truncation"]
    return {
        "method": method,
        "seed": seed,
        "global_accuracy": summary["global_accuracy"],
        "on_device_accuracy": summary["final_accuracy"],
        "bytes_up_per_client_round": summary["bytes_up_per_client_round"],
        "bytes_down_per_client_round": summary["bytes_down_per_client_round"],
        "bytes_down_last_round": _mean(
            r["bytes_down"] for r in rows if r["phase"] == "train" and r["round"] == scenario.rounds
        ),
        "aggregation_seconds_per_round": statistics.mean(seconds) if seconds else None,
        "energy_beyond_min_rank_by_round": diagnostic,
        "flexlora_discarded_energy_mean": _mean(truncation),
        "global_accuracy_by_round": [
            r["accuracy"] for r in sorted(rows, key=lambda r: r["round"]) if r["phase"] == "server-eval"
        ],
        "wall_seconds": run.wall_seconds,
        "run_dir": str(run_dir),
    }


def _time_aggregation(strategy: Any) -> list[float]:
    """Wrap the strategy's ``aggregate`` verb to record its wall time per round (the server's own work)."""
    seconds: list[float] = []
    aggregate = strategy.aggregate

    def timed(server_round: int, updates: list[ClientUpdate]) -> None:
        started = time.perf_counter()
        aggregate(server_round, updates)
        seconds.append(time.perf_counter() - started)

    strategy.aggregate = timed
    return seconds


def synthetic_aggregation(method: str, num_clients: int, rank_mix: list[int], seed: int) -> dict[str, Any]:
    """Seconds of one ``aggregate`` over ``num_clients`` random updates of MiniLM's shapes (6 layers, query and
    value 384 x 384, an 8-class head), ranks cycling through ``rank_mix``; FedAvg at the mix's largest rank."""
    from fedbrick_flower.registry import server_class

    rng = np.random.default_rng(seed)
    width, depth, modules = 384, 6, ("attention.self.query", "attention.self.value")
    algorithm = "fedavg" if method.startswith("fedavg") else method
    strategy = server_class(algorithm)(seed=seed)
    updates = []
    for index in range(num_clients):
        rank = max(rank_mix) if algorithm == "fedavg" else rank_mix[index % len(rank_mix)]
        schema = {f"{m}.lora_A": [rank, width] for m in modules} | {f"{m}.lora_B": [width, rank] for m in modules}
        info = ClientInfo(
            client_id=f"c{index}",
            model="minilm",
            task="chat",
            group="chat",
            model_type="bert",
            num_layers=depth,
            budget=depth,
            fixed_layers=None,
            layer_schema=schema,
            head_schema={"head.weight": [8, width], "head.bias": [8]},
            num_train_examples=100,
        )
        strategy.clients[info.client_id] = info
        layers = strategy.layers_for(info, 1, "train")
        arrays = {
            name: (rng.standard_normal(shape) * 0.01).astype(np.float32) for name, shape in info.schema(layers).items()
        }
        updates.append(ClientUpdate(info, arrays, 100, {"num-examples": 100.0}))
    started = time.perf_counter()
    strategy.aggregate(1, updates)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"method": method, "clients": num_clients, "seed": seed, "seconds": seconds}
    if method == "flora":
        result["stack_download_bytes_per_client"] = int(
            sum(a.nbytes + b.nbytes for a, b in strategy.stacks[1].values())
        )
    return result


def summarize(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation over seeds of each key, per method."""
    table: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        own = [r for r in runs if r["method"] == method]
        table[method] = {"seeds": len(own)}
        for key in keys:
            values = [r[key] for r in own if r.get(key) is not None]
            table[method][key] = {
                "mean": statistics.mean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
            }
    return table


QUALITY_KEYS = (
    "global_accuracy",
    "on_device_accuracy",
    "bytes_up_per_client_round",
    "bytes_down_per_client_round",
    "bytes_down_last_round",
    "aggregation_seconds_per_round",
    "flexlora_discarded_energy_mean",
)


def format_report(result: dict[str, Any]) -> str:
    """A plain-text table of the per-method means ± std and the 1,000-client timings."""
    lines = [
        f"{'method':<12} {'global acc':>16} {'on-device acc':>16} {'up KiB':>10} {'down KiB':>12} {'agg s':>16}",
    ]
    for method, row in result["methods"].items():

        def cell(key: str, scale: float = 1.0, digits: int = 3, row: dict = row) -> str:
            value = row[key]
            if value["mean"] is None:
                return "-"
            return f"{value['mean'] / scale:.{digits}f} ± {value['std'] / scale:.{digits}f}"

        lines.append(
            f"{method:<12} {cell('global_accuracy'):>16} {cell('on_device_accuracy'):>16} "
            f"{cell('bytes_up_per_client_round', 1024, 0):>10} {cell('bytes_down_per_client_round', 1024, 0):>12} "
            f"{cell('aggregation_seconds_per_round', 1.0, 4):>16}"
        )
    lines.append("")
    for method, row in result["synthetic"].items():
        extra = row.get("stack_download_bytes_per_client")
        note = f"  (FLoRA download per client: {extra / 2**20:.0f} MiB)" if extra else ""
        lines.append(
            f"{row['clients']} synthetic clients, {method:<10}: aggregation {row['seconds_mean']:.2f} ± "
            f"{row['seconds_std']:.2f} s{note}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ranks-bench-"))
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            run = run_method(method, seed, args, work)
            runs.append(run)
            print(
                f"seed {seed} {method:<10} global {run['global_accuracy']:.4f} on-device "
                f"{run['on_device_accuracy']:.4f} ({run['wall_seconds']:.0f}s)",
                flush=True,
            )
    rank_mix = [c["rank"] for c in yaml.safe_load(scenario_path(args.scenario).read_text())["clients"]]
    synthetic_runs = [
        synthetic_aggregation(method, args.synthetic_clients, rank_mix, seed)
        for seed in args.seeds
        for method in ("fedavg", *MIX_METHODS)
    ]
    synthetic = {}
    for method in ("fedavg", *MIX_METHODS):
        own = [r for r in synthetic_runs if r["method"] == method]
        seconds = [r["seconds"] for r in own]
        synthetic[method] = {
            "clients": args.synthetic_clients,
            "seconds_mean": statistics.mean(seconds),
            "seconds_std": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
            **(
                {"stack_download_bytes_per_client": own[0]["stack_download_bytes_per_client"]}
                if method == "flora"
                else {}
            ),
        }
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "torch_threads": args.threads},
        "settings": {
            "scenario": args.scenario,
            "rank_mix": rank_mix,
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "max_examples": args.max_examples,
            "overrides": args.set,
            "seeds": args.seeds,
            "transport": "in-process InProcessGrid (real strategy round loop and ClientApp; no Flower engine)",
        },
        "methods": summarize(runs, QUALITY_KEYS),
        "synthetic": synthetic,
        "runs": runs,
        "synthetic_runs": synthetic_runs,
        "total_seconds": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(format_report(result))
    print(f"\nwrote {args.out} in {result['total_seconds']:.0f}s")
    return 0


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="ranks", help="built-in scenario name or YAML path")
    parser.add_argument("--methods", nargs="+", default=["fedavg-min", "fedavg-max", *MIX_METHODS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=6)
    parser.add_argument("--max-examples", type=int, default=1000, help="per task, before the federated split")
    parser.add_argument("--synthetic-clients", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more scenario overrides")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
