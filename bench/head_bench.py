"""The head's learning rate and an LP-FT head warm-up, measured on one ``depth`` cell (issue 21, item 7).

Heads trained on 2-layer networks are averaged and scored at full depth; at 10x the LoRA learning rate they may
absorb most of the learning of a short run. Each configuration runs the ``depth`` suite's FedRA cell (6/4/2/2/2/2
of MiniLM's 6 layers, chatterbot) with ``data.validation_fraction`` carved from the clients' training data, and
reads the last round's global scores on that validation split, with the aggregated LoRA and with it zeroed
(``server.evaluate_without_lora``). The test split is never read here: the defaults are chosen on validation.

Configurations (same seeds, data split and budgets):

- ``today``: ``head_lr`` 10x ``lr`` (the default before this measurement), no warm-up;
- ``head-lr-eq-lr``: ``head_lr = lr``;
- ``warmup``: ``head_warmup_steps`` head-only steps at today's ``head_lr`` before each local training;
- ``warmup-head-lr-eq-lr``: the warm-up at ``head_lr = lr``.

Each cell is a ``fedbrick-flower bench depth --methods fedra`` run on Flower's Simulation Engine.
Run: ``python bench/head_bench.py`` -> ``bench/results/head-warmup.json`` (12 cells; resumes: finished cells
are not run again).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedbrick_flower.deployment.loopback_fleet import PACKAGE_ROOT, run_context
from fedbrick_flower.leaderboard.stats import paired
from fedbrick_flower.metrics import read_metrics
from fedbrick_flower.scenario import load_scenario

SCORES = ("validation-accuracy", "validation-loss", "validation-accuracy-without-lora", "validation-loss-without-lora")


def configurations(lr: float, head_lr: float, warmup: int) -> dict[str, dict[str, Any]]:
    """The overrides of each configuration."""
    return {
        "today": {"train.head_lr": head_lr},
        "head-lr-eq-lr": {"train.head_lr": lr},
        "warmup": {"train.head_lr": head_lr, "train.head_warmup_steps": warmup},
        "warmup-head-lr-eq-lr": {"train.head_lr": lr, "train.head_warmup_steps": warmup},
    }


def run_cell(work: Path, name: str, overrides: dict[str, Any], seed: int, validation: float) -> dict[str, Any]:
    """One FedRA cell of the ``depth`` suite; its last server-eval row on the validation split."""
    out = work / name
    command = [sys.executable, "-m", "fedbrick_flower.cli", "bench", "depth", "--methods", "fedra"]
    command += ["--seed", str(seed), "--out", str(out), "--set", f"data.validation_fraction={validation}"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    subprocess.run(command, check=True, cwd=PACKAGE_ROOT)
    rows = [row for row in read_metrics(out / "fedra" / f"seed-{seed}") if row["phase"] == "server-eval"]
    last = max(rows, key=lambda row: row["round"])
    return {"config": name, "seed": seed, "round": last["round"], **{key: last[key] for key in SCORES}}


def summarise(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per configuration: mean and spread of each score, and the paired difference against ``today``."""
    by_config = {name: {run["seed"]: run for run in runs if run["config"] == name} for name in names}
    summary: dict[str, Any] = {}
    for name, cells in by_config.items():
        figures: dict[str, Any] = {"seeds": sorted(cells)}
        for key in SCORES:
            values = [cell[key] for cell in cells.values()]
            figures[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0}
            if name != "today":
                today = {seed: cell[key] for seed, cell in by_config["today"].items()}
                figures[key]["minus_today"] = paired({s: c[key] for s, c in cells.items()}, today).as_dict()
        lora_gain = paired({s: c["validation-accuracy"] for s, c in cells.items()},
                           {s: c["validation-accuracy-without-lora"] for s, c in cells.items()})  # fmt: skip
        figures["lora_accuracy_gain"] = lora_gain.as_dict()
        summary[name] = figures
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warmup", type=int, default=10, help="head-only warm-up steps of the warm-up configs")
    parser.add_argument("--validation", type=float, default=0.2, help="data.validation_fraction")
    parser.add_argument("--head-lr", type=float, default=5e-3, help="today's head learning rate (10x lr)")
    parser.add_argument("--configs", nargs="+", help="only these configurations (default: all four)")
    parser.add_argument("--work", type=Path, default=Path("runs/head-bench"))
    parser.add_argument("--out", type=Path, default=PACKAGE_ROOT / "bench" / "results" / "head-warmup.json")
    args = parser.parse_args()
    lr = load_scenario("fedbrick").train.lr
    configs = configurations(lr, args.head_lr, args.warmup)
    configs = {name: overrides for name, overrides in configs.items() if name in (args.configs or configs)}
    runs = [
        run_cell(args.work, name, overrides, seed, args.validation)
        for seed in args.seeds
        for name, overrides in configs.items()
    ]
    results = {
        "benchmark": "head learning rate and warm-up on the depth suite's FedRA cell (validation split)",
        "settings": {"lr": lr, "configs": configs, "seeds": args.seeds, "validation_fraction": args.validation},
        "summary": summarise(runs, list(configs)),
        "runs": runs,
        "context": run_context(),
    }
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["summary"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
