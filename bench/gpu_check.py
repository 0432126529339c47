"""GPU placement check: ``device: auto`` resolves to CUDA, a bf16 client trains, and short deployment runs of
``hetero-depth`` and ``fedbrick`` runs complete on the GPU and on the same machine's CPU, timed side by side (the
Simulation Engine where Ray is installed, else the Deployment Engine on loopback).

Run it on a machine with a CUDA GPU (not part of the tests or CI). Models are random-init at MiniLM's shape
(BERT 6 x 384, the packaged tokenizer's vocabulary) so that no weights need to travel; timings are those of the
real architecture, accuracies are meaningless (untrained) and not reported. Writes ``OUT/gpu-check.json``::

    python bench/gpu_check.py --tokenizer PATH_TO_MINILM_TOKENIZER --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def minilm_shaped(tokenizer: Path) -> str:
    """A ``--set`` value: a random-init BERT with MiniLM-L6's shape and the packaged tokenizer."""
    config = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
    return "models.minilm=" + json.dumps({"family": "bert", "tokenizer": str(tokenizer), "config": config})


def client_check(tokenizer: Path, device: str, dtype: str, steps: int) -> dict[str, Any]:
    """One client's training message on ``device``/``dtype`` through the package's own client half."""
    import torch
    from flwr.app import RecordDict

    from fedbrick_flower.clients.fedavg import FedAvgClient
    from fedbrick_flower.clients.profile import client_session
    from fedbrick_flower.clients.state import ClientState
    from fedbrick_flower.models import resolve_device
    from fedbrick_flower.scenario import load_scenario

    raw = yaml.safe_load((ROOT / "fedbrick_flower/scenarios/hetero-depth.yaml").read_text())
    raw["tasks"] = {"bbc": {"dataset": "chatterbot"}}
    raw["clients"] = [{"id": "gpu", "model": "minilm", "task": "bbc", "layers": 6, "device": device, "dtype": dtype}]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(raw, handle)
    key, _, value = minilm_shaped(tokenizer).partition("=")
    scenario = load_scenario(handle.name, {key: json.loads(value), "train.local_steps": steps})
    session = client_session(scenario, scenario.clients[0])
    client = FedAvgClient(session, ClientState(RecordDict()))
    started = time.perf_counter()
    update, metrics = client.train({}, {"layers": list(range(6)), "server-round": 1})
    model = session.build([0])
    return {
        "device_requested": device,
        "resolved_device": str(resolve_device(device)),
        "backbone_dtype": str(next(model.backbone.parameters()).dtype),
        "adapter_dtype": str(next(iter(update.values())).dtype),
        "cuda_device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "steps": steps,
        "train_seconds": metrics["train-seconds"],
        "message_seconds": time.perf_counter() - started,
        "loss_first": metrics["train-loss-first"],
        "loss_last": metrics["train-loss-last"],
        "peak_memory_mb": metrics["peak-memory-mb"],
    }


def engine() -> str:
    """``run`` (Simulation Engine) where Ray is installed, else ``launch`` (Deployment Engine on loopback)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "launch"
    return "run"


def launch(
    code: Path, command_name: str, scenario: str, out: Path, overrides: list[str], env: dict[str, str], timeout: float
) -> dict:
    """One ``fedbrick-flower run`` or ``launch`` of a scenario, its round timing, and its logs' tails on failure."""
    command = [sys.executable, "-m", "fedbrick_flower.cli", command_name, scenario, "--out", str(out)]
    if command_name == "launch":
        command.append("--insecure")
    for item in overrides:
        command += ["--set", item]
    env = {**env, "PYTHONPATH": f"{code}{os.pathsep}{env.get('PYTHONPATH', '')}"}
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    return {"process": process, "started": started, "out": out, "timeout": timeout, "engine": command_name}


def finish(run: dict) -> dict:
    """Wait for a started run (killing its process group past the timeout) and read its metrics."""
    process: subprocess.Popen = run["process"]
    remaining = max(1.0, run["timeout"] - (time.perf_counter() - run["started"]))
    try:
        output, _ = process.communicate(timeout=remaining)
        code_ = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate()
        code_ = None
    wall = time.perf_counter() - run["started"]
    out: Path = run["out"]
    rows = []
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rounds = []
    for row in (r for r in rows if r["phase"] == "round"):
        train = [r["train-seconds"] for r in rows if r["phase"] == "train" and r["round"] == row["round"]]
        # peak-memory-mb is CUDA's allocator peak on a GPU client and the process RSS on a CPU one
        peaks = [r.get("peak-memory-mb") for r in rows if r["phase"] == "train" and r["round"] == row["round"]]
        slowest = max(train, default=float("nan"))
        rounds.append({"round": row["round"], "wall": row["wall_seconds"], "slowest_train": slowest,
                       "sum_train": sum(train), "peak_memory_mb": peaks})  # fmt: skip
    logs = {}
    if code_ != 0:
        logs = {path.name: path.read_text(errors="replace")[-3000:] for path in sorted((out / "logs").glob("*.log"))}
    return {"engine": run["engine"], "exit_code": code_, "wall_seconds": wall, "rounds": rounds,
            "tail": (output or "")[-2000:] if code_ != 0 else "", "logs": logs}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-check.json")
    parser.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check-runs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=150)
    args = parser.parse_args()
    args.tokenizer = args.tokenizer.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"rounds": args.rounds}
    path = args.out / "gpu-check.json"

    def save() -> None:
        path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2), flush=True)

    results["client_cuda_bf16"] = client_check(args.tokenizer, "auto", "bfloat16", 20)
    results["client_cpu_fp32"] = client_check(args.tokenizer, "cpu", "float32", 20)
    save()
    env = dict(os.environ)
    # The CPU runs see no GPU; their clients' threads split the cores so that two runs side by side do not thrash.
    cpu_env = {**env, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 4) // 8))}
    name = engine()
    results["engine"] = name
    results["cpu_count"] = os.cpu_count()
    common = [minilm_shaped(args.tokenizer), f"rounds={args.rounds}"]
    pairs = {
        "hetero-depth": ("hetero-depth", [*common, "tasks.bbc.dataset=chatterbot"]),
        "fedbrick": ("fedbrick", common),
    }
    # GPU and CPU runs of one scenario go side by side (the device's time is short); both are reported as such.
    for scenario_name, (scenario, overrides) in pairs.items():
        gpu = launch(ROOT, name, scenario, args.runs / f"{scenario_name}-gpu", overrides, env, args.timeout)
        cpu = launch(ROOT, name, scenario, args.runs / f"{scenario_name}-cpu", overrides, cpu_env, args.timeout)
        results[f"{scenario_name}-gpu"] = finish(gpu)
        results[f"{scenario_name}-cpu"] = finish(cpu)
        save()


if __name__ == "__main__":
    main()
