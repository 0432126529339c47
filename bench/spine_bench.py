"""Spine benchmark: communication, compute and memory of one ``fedbrick-flower run``.

One run of a scenario (default ``hetero-depth``: MiniLM clients holding 6/4/3/2 layers) is measured from its
``metrics.jsonl`` and ``summary.json``:

* bytes per client and round (serialized messages, up and down) against the raw adapter tensors and against the
  client's own model and the full-depth model in float32;
* each client's pure local training seconds against the round's wall time;
* peak resident memory per client, by depth.

Usage::

    python bench/spine_bench.py --scenario hetero-depth --rounds 3 --local-steps 20

Writes ``bench/results/spine.json`` (command, scenario, date, cores, raw rows and derived numbers) and prints
a table. This is a benchmark, not a test: the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

import yaml

from fedbrick_flower.run_dir import SUMMARY_FILE, read_metrics

RESULTS = Path(__file__).resolve().parent / "results"
RSS_NOTE = (
    "peak-memory-mb is ru_maxrss of the process that ran the ClientApp. In simulation Ray reuses worker "
    "processes for several clients, so it is a per-process maximum that can mix clients (a shallow client "
    "run after a deep one in the same worker reports the deep one's peak); it is an upper bound per client."
)
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def main(argv: list[str] | None = None) -> int:
    """Run the scenario once, measure it, write ``--out/spine.json`` and print the table."""
    args = _parse(argv)
    run_dir = args.run_dir or Path("/tmp") / f"spine-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = run_command(args.scenario, run_dir, args.rounds, args.local_steps)
    started = time.monotonic()
    log = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:
        code = subprocess.run(command, env={**os.environ, **ENV}, stdout=sink, stderr=subprocess.STDOUT).returncode
    if code != 0:
        print(f"spine_bench: the run failed with exit code {code}; see {log}", file=sys.stderr)
        return code
    result = measure(run_dir)
    result.update(
        command=" ".join(command),
        scenario=args.scenario,
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine={"cores": os.cpu_count(), "platform": platform.platform(), "load_average_1m_after": os.getloadavg()[0]},
        total_seconds=time.monotonic() - started,
        run_dir=str(run_dir),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "spine.json"
    path.write_text(json.dumps(result, indent=2))
    print(format_report(result))
    print(f"\nwrote {path}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="hetero-depth", help="built-in scenario name or YAML path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for spine.json")
    parser.add_argument("--run-dir", type=Path, help="run directory of the measured run (default: under /tmp)")
    return parser.parse_args(argv)


def run_command(scenario: str, run_dir: Path, rounds: int, local_steps: int) -> list[str]:
    """The ``fedbrick-flower run`` command line of the measured run."""
    return [
        sys.executable,
        "-m",
        "fedbrick_flower.cli",
        "run",
        scenario,
        "--out",
        str(run_dir),
        "--set",
        f"rounds={rounds}",
        "--set",
        f"train.local_steps={local_steps}",
    ]


def measure(run_dir: Path) -> dict[str, Any]:
    """Raw rows and derived numbers of a finished run directory."""
    rows = read_metrics(run_dir)
    train = [r for r in rows if r["phase"] == "train"]
    wall = {r["round"]: r["wall_seconds"] for r in rows if r["phase"] == "round"}
    full_depth = full_depth_bytes(run_dir, train)
    per_round = [client_round(row, wall[row["round"]], full_depth[row["client"]]) for row in train]
    return {
        "rss_note": RSS_NOTE,
        "per_client_round": per_round,
        "per_client": per_client(per_round),
        "rounds": [
            {
                "round": n,
                "wall_seconds": seconds,
                "sum_train_seconds": sum(r["train_seconds"] for r in per_round if r["round"] == n),
            }
            for n, seconds in sorted(wall.items())
        ],
        "summary": json.loads((run_dir / SUMMARY_FILE).read_text()),
        "raw_rows": rows,
    }


def full_depth_bytes(run_dir: Path, train: list[dict]) -> dict[str, float]:
    """Per client, the float32 bytes of the deepest model any client of the same model family holds."""
    scenario = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    model_of = {client["id"]: client["model"] for client in scenario["clients"]}
    largest: dict[str, float] = {}
    for row in train:
        model = model_of[row["client"]]
        largest[model] = max(largest.get(model, 0.0), 4 * row["model-parameters"])
    return {client: largest[model] for client, model in model_of.items() if model in largest}


def client_round(row: dict, wall_seconds: float, full_depth: float) -> dict[str, Any]:
    """Bytes, ratios, time share and memory of one client's training in one round."""
    model_bytes = 4 * row["model-parameters"]
    return {
        "round": row["round"],
        "client": row["client"],
        "depth": len(row["layers"]),
        "bytes_up": row["bytes_up"],
        "bytes_down": row["bytes_down"],
        "adapter_bytes": row["adapter_bytes"],
        "client_model_bytes": model_bytes,
        "full_depth_model_bytes": full_depth,
        "up_over_adapter": row["bytes_up"] / row["adapter_bytes"],
        "up_over_client_model": row["bytes_up"] / model_bytes,
        "up_over_full_model": row["bytes_up"] / full_depth,
        "train_seconds": row["train-seconds"],
        "round_wall_seconds": wall_seconds,
        "train_share_of_wall": row["train-seconds"] / wall_seconds,
        "peak_rss_mb": row["peak-memory-mb"],
    }


def per_client(per_round: list[dict]) -> list[dict[str, Any]]:
    """Per client, sorted by depth (deepest first): means over rounds, and the peak RSS maximum."""
    clients = sorted({r["client"] for r in per_round}, key=lambda c: (-_of(per_round, c)[0]["depth"], c))
    table = []
    for client in clients:
        rs = _of(per_round, client)
        table.append(
            {
                "client": client,
                "depth": rs[-1]["depth"],
                "bytes_up": mean(r["bytes_up"] for r in rs),
                "bytes_down_after_round_1": _mean_or_none([r["bytes_down"] for r in rs if r["round"] > 1]),
                "adapter_bytes": mean(r["adapter_bytes"] for r in rs),
                "up_over_adapter": mean(r["up_over_adapter"] for r in rs),
                "up_over_client_model": mean(r["up_over_client_model"] for r in rs),
                "up_over_full_model": mean(r["up_over_full_model"] for r in rs),
                "train_seconds": mean(r["train_seconds"] for r in rs),
                "train_share_of_wall": mean(r["train_share_of_wall"] for r in rs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            }
        )
    return table


def format_report(result: dict[str, Any]) -> str:
    """The printed table: one line per client, then the rounds' wall time, then the RSS caveat."""
    header = (
        f"{'client':>12} {'depth':>5} {'up KiB':>8} {'down KiB':>8} {'adapt KiB':>9} {'up/adapt':>8} "
        f"{'up/model':>8} {'up/full':>8} {'train s':>7} {'train/wall':>10} {'peak RSS MB':>11}"
    )
    lines = [f"scenario {result['scenario']}, {result['machine']['cores']} cores, {result['date']}", header]
    for c in result["per_client"]:
        down = c["bytes_down_after_round_1"]
        lines.append(
            f"{c['client']:>12} {c['depth']:>5} {c['bytes_up'] / 1024:>8.1f} "
            f"{down / 1024 if down is not None else float('nan'):>8.1f} {c['adapter_bytes'] / 1024:>9.1f} "
            f"{c['up_over_adapter']:>8.4f} {c['up_over_client_model']:>8.4f} {c['up_over_full_model']:>8.4f} "
            f"{c['train_seconds']:>7.2f} {c['train_share_of_wall']:>10.2f} {c['peak_rss_mb']:>11.0f}"
        )
    lines.append(
        "rounds: "
        + ", ".join(
            f"{r['round']}: wall {r['wall_seconds']:.1f}s, sum of train {r['sum_train_seconds']:.1f}s"
            for r in result["rounds"]
        )
    )
    lines.append(f"note: {RSS_NOTE}")
    return "\n".join(lines)


def _of(per_round: list[dict], client: str) -> list[dict]:
    return sorted((r for r in per_round if r["client"] == client), key=lambda r: r["round"])


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return mean(present) if present else None


if __name__ == "__main__":
    sys.exit(main())
