"""The same job as a plain Flower app and as a fedbrick-flower run, back to back on the Simulation Engine.

``bench/peers/plain_lora`` is a minimal Flower app written the way Flower's Hugging Face and PEFT examples write one
(a ClientApp with a plain torch loop that rebuilds the model for every message, ``FedAvg`` from
``flwr.serverapp.strategy``, a central ``evaluate_fn``). ``bench/peers/equivalent.yaml`` is the same job for
``fedbrick-flower run``: 4 MiniLM clients at full depth, LoRA r=8 on query/value plus a head, FedAvg, the same
data split (the plain app reads it through ``task_split``), local steps, batch and rounds. Both start their own
SuperLink, so both pay the same fixed cost.

Reported per side: the command's wall time, bytes per client and round (up and down; the plain app's are its
ArrayRecord's), the global model's accuracy on the server test split after the last round, and the ratio of the
wall times (ours over plain). Appends the pair to ``bench/results/peers.json`` (``throughput_bench.py --targets``
reads the last one). The machine is shared: the wall times are upper bounds, read the ratio with the load recorded
beside it.

Usage::

    python bench/peers_bench.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedbrick_flower import runtime
from fedbrick_flower.metrics import read_metrics
from fedbrick_flower.run_files import SUMMARY_FILE
from fedbrick_flower.scenario import load_scenario

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "peers" / "equivalent.yaml"
PLAIN_APP = HERE / "peers" / "plain_lora"
RESULTS = HERE / "results" / "peers.json"


def run_ours(work: Path) -> dict[str, Any]:
    run_dir = work / "ours"
    command = [sys.executable, "-m", "fedbrick_flower.cli", "run", str(SCENARIO), "--out", str(run_dir)]
    load_before, started = list(os.getloadavg()), time.monotonic()
    with (work / "ours.log").open("w") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"fedbrick-flower run failed ({code}); see {work / 'ours.log'}")
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    train = [r for r in read_metrics(run_dir) if r["phase"] == "train"]
    return {
        "command": " ".join(command),
        "wall_seconds": wall,
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "bytes_up_per_client_round": summary["bytes_up_per_client_round"],
        "bytes_down_per_client_round": summary["bytes_down_per_client_round"],
        "global_accuracy": summary["global_accuracy"],
        "train_seconds_total": sum(r["train-seconds"] for r in train),
    }


def run_plain(work: Path) -> dict[str, Any]:
    clients = len(load_scenario(str(SCENARIO)).clients)
    home, out = work / "plain-home", work / "plain.json"
    env = runtime.flower_env(home)
    port = runtime.free_port()
    runtime.write_connection(home, "plain", f"127.0.0.1:{port}", num_supernodes=clients)
    config = runtime.run_config_arg({"scenario": str(SCENARIO), "out": str(out)})
    command = ["flwr", "run", str(PLAIN_APP), "plain", "--stream", "--run-config", config]
    load_before, started = list(os.getloadavg()), time.monotonic()
    log = work / "plain.log"
    superlink = runtime.start(runtime.simulation_superlink_command(port), work / "plain-superlink.log", env)
    with runtime.running([superlink]), log.open("w") as sink:
        runtime.wait_for_http(port, superlink, work / "plain-superlink.log")
        code = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT).returncode
        deadline = time.monotonic() + 120
        while not out.is_file() and time.monotonic() < deadline:
            time.sleep(0.5)
    wall = time.monotonic() - started
    if code != 0 or not out.is_file():
        raise RuntimeError(f"the plain app failed ({code}); see {log}")
    result = json.loads(out.read_text())
    return {
        "command": " ".join(command),
        "wall_seconds": wall,
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "bytes_up_per_client_round": result["arrays_bytes"],
        "bytes_down_per_client_round": result["arrays_bytes"],
        "global_accuracy": result["rounds"][-1]["accuracy"],
        "server_evaluations": result["rounds"],
    }


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options: --help says what it does
    work = Path(tempfile.mkdtemp(prefix="peers-bench-"))
    plain = run_plain(work)
    print(f"plain Flower app: {plain['wall_seconds']:.1f}s, accuracy {plain['global_accuracy']:.4f}", flush=True)
    ours = run_ours(work)
    print(f"fedbrick-flower: {ours['wall_seconds']:.1f}s, accuracy {ours['global_accuracy']:.4f}", flush=True)
    run = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "order": "plain first, then ours, back to back",
        "plain": plain,
        "ours": ours,
        "wall_ratio_ours_over_plain": ours["wall_seconds"] / plain["wall_seconds"],
        "work_dir": str(work),
    }
    earlier = json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() else []
    record = {
        "job": str(SCENARIO.relative_to(HERE.parent)),
        "plain_app": str(PLAIN_APP.relative_to(HERE.parent)),
        "runs": [*earlier, run],
        "wall_ratio_ours_over_plain": run["wall_ratio_ours_over_plain"],
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"ratio ours/plain {record['wall_ratio_ours_over_plain']:.2f}; wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
