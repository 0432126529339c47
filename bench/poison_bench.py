"""Poisoned-update benchmark: one of five MiniLM clients scales (x1000) or sign-flips its update.

Configurations, each over several seeds, on the built-in ``poison`` scenario (five pretrained MiniLM-L6 clients,
three full depth and two holding 4 layers, chatterbot topics split IID, layer-wise FedAvg):

- ``clean``: no fault, no defence (the reference; the default screening is turned off in every undefended run);
- ``clean+defence``: no fault, defence on (what the defence costs when nobody attacks);
- ``scaled``, ``scaled+defence``: client ``full-a`` multiplies its update by ``faults.scale_factor`` (1000);
- ``sign-flip``, ``sign-flip+defence``: client ``full-a`` negates its update;
- ``sign-flip-x4``, ``sign-flip-x4+defence``: client ``full-a`` sends -4 times its update.

The defence is ``server.outlier_norm_multiple=3`` with ``server.norm_scope=layer`` (reject an update whose norm
in some layer or head exceeds 3x the round's median) with ``server.aggregation=trimmed-mean`` (``trim_fraction``
0.2: with five holders one value is cut at each end of every coordinate). Reported per configuration: the
server-side accuracy of the full-depth global model after the last round, mean ± std over seeds, and which clients
the server rejected.

The runs go through the package's real round loop and the real ClientApp (its fault mod included) on the
in-process grid of :mod:`fedbrick_flower.inprocess`: no Flower engine, which on 2 shared cores would cost more
than the training. Sized for about 20 minutes on 2 cores: 2 rounds of 6 local steps, sequences of 32
tokens, 1,000 examples.

Usage::

    python bench/poison_bench.py                                   # 3 seeds, all configurations
    python bench/poison_bench.py --seeds 0 --configs clean scaled scaled+defence --rounds 2

    python bench/poison_bench.py --merge a.json b.json               # one table from earlier results files

Writes ``bench/results/poison.json``.
"""

from __future__ import annotations

import os

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
from pathlib import Path
from typing import Any

from fedbrick_flower.inprocess import run_in_process
from fedbrick_flower.scenario import load_scenario, parse_overrides

RESULTS = Path(__file__).resolve().parent / "results" / "poison.json"
POISONED = "full-a"
# The undefended runs turn off the default screening (docs/privacy.md); the defence compares layer norms.
NO_DEFENCE = {"server.outlier_norm_multiple": None}
DEFENCE = {
    "server.outlier_norm_multiple": 3.0,
    "server.norm_scope": "layer",
    "server.aggregation": "trimmed-mean",
    "server.trim_fraction": 0.2,
}
ATTACKS: dict[str, dict[str, Any]] = {
    "clean": {},
    "scaled": {"faults.scaled_update": [POISONED]},
    "sign-flip": {"faults.sign_flip": [POISONED]},
    "sign-flip-x4": {"faults.sign_flip": [POISONED], "faults.scaled_update": [POISONED], "faults.scale_factor": 4.0},
}
CONFIGS = tuple(f"{attack}{suffix}" for attack in ATTACKS for suffix in ("", "+defence"))
DEFAULT_CONFIGS = tuple(c for c in CONFIGS if not c.startswith("sign-flip-x4"))


def config_overrides(config: str) -> dict[str, Any]:
    """Scenario overrides of one configuration: its attack, and the defence where the name asks for it."""
    attack, _, defended = config.partition("+")
    return {**ATTACKS[attack], **(DEFENCE if defended else NO_DEFENCE)}


def run_config(config: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One in-process run of ``config``; returns its figures."""
    overrides = {
        "seed": seed,
        "rounds": args.rounds,
        "train.local_steps": args.local_steps,
        **parse_overrides(args.set),
        **config_overrides(config),
    }
    scenario = load_scenario(args.scenario, overrides)
    run = run_in_process(scenario, work, f"{config}-{seed}")
    rows, summary = run.rows, run.summary
    rejected = [r for r in rows if r["phase"] == "rejected"]
    return {
        "config": config,
        "seed": seed,
        "global_accuracy": summary["global_accuracy"],
        "global_accuracy_by_round": [
            r["accuracy"] for r in sorted(rows, key=lambda r: r["round"]) if r["phase"] == "server-eval"
        ],
        "rejected": [{"round": r["round"], "client": r["client"], "reason": r["reason"]} for r in rejected],
        "wall_seconds": run.wall_seconds,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration: global accuracy mean ± std over seeds, and the clients the server rejected."""
    table = {}
    for config in dict.fromkeys(r["config"] for r in runs):
        accuracies = [r["global_accuracy"] for r in runs if r["config"] == config]
        table[config] = {
            "seeds": len(accuracies),
            "global_accuracy": {
                "mean": statistics.mean(accuracies),
                "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            },
            "rejected_clients": sorted({x["client"] for r in runs if r["config"] == config for x in r["rejected"]}),
            "rejections": sum(len(r["rejected"]) for r in runs if r["config"] == config),
        }
    return table


def targets(table: dict[str, dict[str, Any]], clean: float | None) -> dict[str, dict[str, Any]]:
    """The issue's targets per attack: defended within 2 points of clean; undefended below clean.

    "Within 2 points" is read both ways: ``defended_within_2_points`` is |defended - clean| <= 2 points, and
    ``defended_at_most_2_points_below`` allows the defended run to do better than the clean one.
    """
    if clean is None:
        return {}
    checks = {}
    for attack in ATTACKS:
        if attack == "clean" or attack not in table or f"{attack}+defence" not in table:
            continue
        defended = table[f"{attack}+defence"]["global_accuracy"]["mean"]
        undefended = table[attack]["global_accuracy"]["mean"]
        checks[attack] = {
            "defended_minus_clean_points": 100 * (defended - clean),
            "defended_within_2_points": abs(defended - clean) <= 0.02,
            "defended_at_most_2_points_below": defended >= clean - 0.02,
            "undefended_minus_clean_points": 100 * (undefended - clean),
            "undefended_falls": undefended < clean - 0.02,
        }
    return checks


def clean_accuracy(table: dict[str, dict[str, Any]], reference: Path | None) -> float | None:
    """The clean run's mean accuracy: from this run, else from an earlier results file of the same settings."""
    if "clean" in table:
        return table["clean"]["global_accuracy"]["mean"]
    if reference is None:
        return None
    return json.loads(reference.read_text())["configs"]["clean"]["global_accuracy"]["mean"]


def format_report(result: dict[str, Any]) -> str:
    lines = [f"{'configuration':<20} {'global accuracy':>18} {'rejected (runs x rounds)':>26}"]
    for config, row in result["configs"].items():
        accuracy = row["global_accuracy"]
        rejected = f"{row['rejections']} {','.join(row['rejected_clients'])}".strip()
        lines.append(f"{config:<20} {accuracy['mean']:>9.4f} ± {accuracy['std']:.4f} {rejected:>26}")
    for attack, check in result["targets"].items():
        lines.append(
            f"{attack}: defended {check['defended_minus_clean_points']:+.1f} points vs clean "
            f"(within 2: {check['defended_within_2_points']}, at most 2 below: "
            f"{check['defended_at_most_2_points_below']}), undefended "
            f"{check['undefended_minus_clean_points']:+.1f} points (falls: {check['undefended_falls']})"
        )
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every configuration for every seed; print one line per run."""
    work = Path(tempfile.mkdtemp(prefix="poison-bench-"))
    runs = []
    for seed in args.seeds:
        for config in args.configs:
            run = run_config(config, seed, args, work)
            runs.append(run)
            print(
                f"seed {seed} {config:<18} global {run['global_accuracy']:.4f} "
                f"rejected {len(run['rejected'])} ({run['wall_seconds']:.0f}s)",
                flush=True,
            )
    return runs


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the measured runs share, for the results file."""
    return {
        "scenario": args.scenario,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "seeds": args.seeds,
        "poisoned_client": POISONED,
        "defence": DEFENCE,
        "overrides": args.set,
        "transport": "in-process InProcessGrid (real strategy round loop and ClientApp with its mods)",
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="poison", help="built-in scenario name or YAML path")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=CONFIGS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more scenario overrides")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="RESULTS",
        help="run nothing: summarize the runs of earlier results files (of the same settings) into --out",
    )
    parser.add_argument(
        "--reference", type=Path, help="results file whose clean accuracy the targets use when --configs has no clean"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    sources = [json.loads(path.read_text()) for path in args.merge or []]
    runs = [run for source in sources for run in source["runs"]] if sources else measure(args)
    table = summarize(runs)
    clean = clean_accuracy(table, args.reference)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "torch_threads": args.threads},
        "merged_from": [{k: source[k] for k in ("command", "date", "total_seconds")} for source in sources],
        "settings": sources[0]["settings"] if sources else run_settings(args),
        "configs": table,
        "clean_reference": str(args.reference) if "clean" not in table and args.reference else "this run",
        "targets": targets(table, clean),
        "runs": runs,
        "total_seconds": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(format_report(result))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
