"""How close honest clients come to the default norm screen: each update's RMS entry over its round's median, in
the built-in scenarios (issue 23 item 1; the screen rejects above ``server.outlier_norm_multiple``, 10).

Each scenario runs at its own seed, with ``server.evaluate_global: false`` (the server's scores play no part in
the screen) and, with ``--rounds``, fewer rounds than its own, through the package's real round loop and ClientApp
on the in-process grid (:mod:`fedbrick_flower.inprocess`). The screen is wrapped to record, before it decides,
every update's ratio exactly as it computes it (:func:`group_norms` under ``rms``, over the median of the round).

Run: ``python bench/honest_ratios_bench.py smoke ranks:flora ...`` (``SCENARIO[:ALGORITHM]``; default: every
built-in scenario) -> ``bench/results/honest-ratios.json``; finished entries are kept and not run again.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedbrick_flower.deployment.loopback_fleet import PACKAGE_ROOT, run_context
from fedbrick_flower.inprocess import run_in_process
from fedbrick_flower.scenario import builtin_scenarios, load_scenario
from fedbrick_flower.strategies import base
from fedbrick_flower.strategies.aggregation import Robustness, group_norms, median_norms
from fedbrick_flower.strategies.replies import ClientUpdate
from fedbrick_flower.strategies.screening import Screened, scoped_arrays

RMS_GROUP = "update-rms"


class RatioRecorder:
    """Wraps the strategy's screen: records every update's RMS ratio to its round's median, then screens."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []
        self.screen = base.screen_updates

    def __call__(self, robustness: Robustness, updates: Sequence[ClientUpdate]) -> Screened:
        norms = {client: group_norms(tensors, "rms") for client, tensors in scoped_arrays(updates).items()}
        median = median_norms(norms)[RMS_GROUP][0]
        self.rounds.append({client: groups[RMS_GROUP] / median for client, groups in norms.items()})
        return self.screen(robustness, updates)


def measure(entry: str, rounds: int | None) -> dict[str, Any]:
    """One ``SCENARIO[:ALGORITHM]``: its updates' ratios per round and its rejections."""
    name, _, algorithm = entry.partition(":")
    overrides: dict[str, Any] = {"server.evaluate_global": False}
    if algorithm:
        overrides["algorithm"] = algorithm
    scenario = load_scenario(name, overrides)
    if rounds is not None and rounds < scenario.rounds:
        scenario = load_scenario(name, {**overrides, "rounds": rounds})
    recorder = RatioRecorder()
    base.screen_updates = recorder
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as work:
            run = run_in_process(scenario, Path(work), "honest")
    finally:
        base.screen_updates = recorder.screen
    ratios = [ratio for round_ in recorder.rounds for ratio in round_.values()]
    return {
        "algorithm": scenario.algorithm,
        "rounds": scenario.rounds,
        "updates_per_round": [len(round_) for round_ in recorder.rounds],
        "max_ratio": max(ratios, default=None),
        "min_ratio": min(ratios, default=None),
        "rejected": [row for row in run.rows if row["phase"] == "rejected"],
        "per_round": recorder.rounds,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entries", nargs="*", help="SCENARIO[:ALGORITHM] (default: every built-in scenario)")
    parser.add_argument("--rounds", type=int, default=None, help="at most this many rounds per scenario")
    parser.add_argument("--out", type=Path, default=PACKAGE_ROOT / "bench" / "results" / "honest-ratios.json")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"scenarios": {}}
    for entry in args.entries or builtin_scenarios():
        if entry in results["scenarios"]:
            continue
        figures = measure(entry, args.rounds)
        results["scenarios"][entry] = figures
        results["context"] = run_context()
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(entry, figures["max_ratio"], figures["min_ratio"], len(figures["rejected"]), flush=True)


if __name__ == "__main__":
    main()
