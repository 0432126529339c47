"""Privacy benchmark: accuracy against ε under client-level differential privacy (DP-FedAvg) on ``hetero-depth``.

Configurations, each over several seeds: ``none`` (no privacy: the reference) and ``central-σ`` for each noise
multiplier σ (the server clips each client's update to ``--clip-norm`` and noises each tensor's mean over its
holders, docs/privacy.md), optionally ``local-σ`` (``--local``: the devices clip and noise). Reported per
configuration: the server-side accuracy of the global models after the last round, mean ± std over seeds, ε at δ
after the last round (Opacus's RDP accountant, the run's ``privacy`` row), and the median factor the clip scaled
the updates by (1: the bound did not bite).

The runs go through the package's real round loop and the real ClientApp on the in-process grid of
:mod:`fedbrick_flower.inprocess`. The scenario's 6/4/3/2-layer MiniLM clients are four: the noise on a mean over
n holders is σ C / n, so with four clients any σ that gives a small ε swamps the update. The default budget
(2 rounds of 4 local steps, 400 examples) is sized for a loaded 2-core machine and cannot settle small accuracy
differences; ``--rounds``, ``--local-steps`` and ``--set`` give the scenario's own.

    python bench/privacy_bench.py                     # writes bench/results/privacy.json
    python bench/privacy_bench.py --seeds 0 --noise 1.0 --out /tmp/privacy.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedbrick_flower.inprocess import run_in_process
from fedbrick_flower.scenario import load_scenario, parse_overrides

RESULTS = Path(__file__).resolve().parent / "results" / "privacy.json"


def config_overrides(config: str, args: argparse.Namespace) -> dict[str, Any]:
    """Scenario overrides of one configuration: ``none``, ``central-σ`` or ``local-σ``."""
    if config == "none":
        return {}
    mode, _, sigma = config.partition("-")
    return {
        "privacy": {"mode": mode, "noise_multiplier": float(sigma), "clip_norm": args.clip_norm, "delta": args.delta}
    }


def run_config(config: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One in-process run of ``config``; returns its figures."""
    overrides = {
        "seed": seed,
        "rounds": args.rounds,
        "train.local_steps": args.local_steps,
        "tasks.bbc.max_examples": args.max_examples,
        **parse_overrides(args.set),
        **config_overrides(config, args),
    }
    scenario = load_scenario(args.scenario, overrides)
    run = run_in_process(scenario, work, f"{config}-{seed}")
    privacy = sorted((r for r in run.rows if r["phase"] == "privacy"), key=lambda r: r["round"])
    # Each aggregated update's clip factor: its ``clipped`` row's, or 1 where the bound did not bite.
    clipped = [r["factor"] for r in run.rows if r["phase"] == "clipped"]
    updates = sum(1 for r in run.rows if r["phase"] == "train")
    factors = clipped + [1.0] * (updates - len(clipped))
    return {
        "config": config,
        "seed": seed,
        "global_accuracy": run.summary["global_accuracy"],
        "epsilon": privacy[-1]["epsilon"] if privacy else None,
        "epsilon_by_round": [r["epsilon"] for r in privacy],
        "median_clip_factor": statistics.median(factors) if privacy and factors else None,
        "wall_seconds": run.wall_seconds,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration: accuracy mean ± std over seeds, ε after the last round, the median clip factor."""
    table = {}
    for config in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == config]
        accuracies = [r["global_accuracy"] for r in mine]
        factors = [r["median_clip_factor"] for r in mine if r["median_clip_factor"] is not None]
        table[config] = {
            "seeds": len(mine),
            "global_accuracy": {
                "mean": statistics.mean(accuracies),
                "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            },
            "epsilon": mine[0]["epsilon"],
            "median_clip_factor": statistics.median(factors) if factors else None,
        }
    return table


def format_report(table: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'configuration':<16} {'global accuracy':>18} {'epsilon':>12} {'clip factor':>12}"]
    for config, row in table.items():
        accuracy = row["global_accuracy"]
        epsilon = "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
        factor = "-" if row["median_clip_factor"] is None else f"{row['median_clip_factor']:.3f}"
        lines.append(f"{config:<16} {accuracy['mean']:>9.4f} ± {accuracy['std']:.4f} {epsilon:>12} {factor:>12}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="hetero-depth")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="noise multipliers σ")
    parser.add_argument("--clip-norm", type=float, default=0.5)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--local", action="store_true", help="also run local DP at each σ")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--max-examples", type=int, default=400)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more scenario overrides")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = ("central", "local") if args.local else ("central",)
    configs = ["none", *(f"{mode}-{sigma:g}" for mode in modes for sigma in args.noise)]
    work = Path(tempfile.mkdtemp(prefix="privacy-bench-"))
    runs = []
    for seed in args.seeds:
        for config in configs:
            run = run_config(config, seed, args, work)
            runs.append(run)
            print(f"seed {seed} {config:<14} global {run['global_accuracy']:.4f} eps {run['epsilon']} "
                  f"({run['wall_seconds']:.0f}s)", flush=True)  # fmt: skip
            write_results(args, runs)  # after every run: a stopped benchmark keeps what it measured
    print(format_report(summarize(runs)))
    print(f"wrote {args.out}")
    return 0


def write_results(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    """The results file of the runs so far."""
    result = {
        "benchmark": "privacy",
        "measured": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "scenario": args.scenario,
            "seeds": args.seeds,
            "noise_multipliers": args.noise,
            "clip_norm": args.clip_norm,
            "delta": args.delta,
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "max_examples": args.max_examples,
            "overrides": args.set,
            "transport": "in-process InProcessGrid (real strategy round loop and ClientApp with its mods)",
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "configs": summarize(runs),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
