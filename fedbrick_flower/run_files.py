"""Names of the files in a run directory, and printing its summary: no torch, so every command may use it.

:mod:`fedbrick_flower.run_dir` writes these files during a run; the command line and ``report`` read them
(``metrics.jsonl`` through :mod:`fedbrick_flower.metrics`).
"""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"
SCENARIO_INPUT_FILE = "scenario.input.yaml"  # the scenario as submitted, overrides baked in
SCENARIO_FILE = "scenario.yaml"  # the resolved scenario the run ran
VERSIONS_FILE = "versions.json"  # Python and library versions
LOGS_DIR = "logs"


def print_summary(run_dir: Path) -> None:
    """Print a run's headline numbers from its ``summary.json``."""
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    print(f"\nrun directory: {run_dir}")
    for key, value in summary.items():
        if key != "clients":
            print(f"  {key:32s} {value}")
    print("  per client:")
    for client_id, values in summary.get("clients", {}).items():
        print(f"    {client_id:16s} " + "  ".join(f"{k}={_short(v)}" for k, v in values.items()))


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
