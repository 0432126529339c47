"""GPU placement check: ``device: auto`` resolves to CUDA, a bf16 client trains, and short deployment runs of
``hetero-depth`` and ``fedbrick`` complete on the GPU and on the same machine's CPU, timed side by side.

Run it on a machine with a CUDA GPU (not part of the tests or CI). Models are random-init at MiniLM's shape
(BERT 6 x 384, the packaged tokenizer's vocabulary) so that no weights need to travel; timings are those of the
real architecture, accuracies are meaningless (untrained) and not reported. Writes ``OUT/gpu-check.json``::

    python bench/gpu_check.py --tokenizer PATH_TO_MINILM_TOKENIZER --out DIR [--old-code DIR]

``--old-code`` names a checkout of an earlier commit whose ``launch hetero-depth`` is timed the same way (on the
CPU), for a before/after comparison of the round wall time over the slowest client's training time.
"""

from __future__ import annotations

import argparse
import json
import os
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


def launch(code: Path, scenario: str, out: Path, overrides: list[str], env: dict[str, str], timeout: float) -> dict:
    """``fedbrick-flower launch`` (Deployment Engine on loopback, insecure) and its round timing."""
    command = [sys.executable, "-m", "fedbrick_flower.cli", "launch", scenario, "--out", str(out), "--insecure"]
    for item in overrides:
        command += ["--set", item]
    env = {**env, "PYTHONPATH": f"{code}{os.pathsep}{env.get('PYTHONPATH', '')}"}
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True, timeout=timeout)
        code_ = result.returncode
        tail = (result.stdout + result.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        code_, tail = None, f"timed out after {timeout:.0f}s"
    wall = time.perf_counter() - started
    rows = []
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rounds = []
    for row in (r for r in rows if r["phase"] == "round"):
        train = [r["train-seconds"] for r in rows if r["phase"] == "train" and r["round"] == row["round"]]
        slowest = max(train, default=float("nan"))
        rounds.append({"round": row["round"], "wall": row["wall_seconds"], "slowest_train": slowest,
                       "ratio": row["wall_seconds"] / slowest if train else None})  # fmt: skip
    return {"exit_code": code_, "wall_seconds": wall, "rounds": rounds, "tail": tail if code_ != 0 else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-check.json")
    parser.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check-runs")
    parser.add_argument("--old-code", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=150)
    args = parser.parse_args()
    args.tokenizer = args.tokenizer.resolve()  # the old code's launch runs in another folder
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
    cpu_env = {**env, "CUDA_VISIBLE_DEVICES": ""}
    common = [minilm_shaped(args.tokenizer), "tasks.bbc.dataset=chatterbot", f"rounds={args.rounds}"]
    runs = {
        "hetero-depth-gpu": ("hetero-depth", common, env),
        "hetero-depth-cpu": ("hetero-depth", common, cpu_env),
        "fedbrick-gpu": ("fedbrick", [minilm_shaped(args.tokenizer), f"rounds={args.rounds}"], env),
        "fedbrick-cpu": ("fedbrick", [minilm_shaped(args.tokenizer), f"rounds={args.rounds}"], cpu_env),
    }
    for name, (scenario, overrides, run_env) in runs.items():
        results[name] = launch(ROOT, scenario, args.runs / name, overrides, run_env, args.timeout)
        save()
    if args.old_code is not None:
        results["hetero-depth-cpu-before"] = launch(
            args.old_code, "hetero-depth", args.runs / "before", common, cpu_env, args.timeout
        )
        save()


if __name__ == "__main__":
    main()
