"""bfloat16 on the CPU: step time and accuracy of ``dtype: bfloat16`` (bf16 autocast) against float32, 3 seeds.

Not a federated run: one client of a scenario trains alone, through the client's own code path
(``ClientSession.build``, ``train_steps``, the task's scoring), so that the two dtypes differ in nothing else.
For each seed the float32 and the bfloat16 client start from the same seeded adapters and see the same batches;
the model is scored on the task's server test split. The two dtypes alternate, so both see the same machine load.

Usage::

    python bench/bf16_bench.py                          # fedbrick scenario (MiniLM-L6, chatterbot), 3 seeds
    python bench/bf16_bench.py --steps 40 --seeds 0 1 2

Writes ``bench/results/bf16.json``: per seed and dtype the accuracy, loss and seconds per step; the mean and the
spread (min..max) of the float32 accuracies over the seeds, and whether each bf16 accuracy lies inside it. The
machine is shared: step times are upper bounds, their ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from fedbrick_flower.assembly import task_examples
from fedbrick_flower.clients.profile import ClientSession
from fedbrick_flower.clients.trainer import make_optimizer, seed_torch, train_steps
from fedbrick_flower.models.placement import cpu_computes_bf16
from fedbrick_flower.scenario import load_scenario

RESULTS = Path(__file__).resolve().parent / "results"


def one_run(scenario_name: str, seed: int, dtype: str, steps: int, layers: int) -> dict[str, Any]:
    """Train client 0 of the scenario alone for ``steps`` steps in ``dtype`` on the CPU, then score it."""
    overrides = {"seed": seed, "clients.0.device": "cpu", "clients.0.dtype": dtype, "clients.0.layers": layers}
    scenario = load_scenario(scenario_name, overrides)
    profile = scenario.clients[0]
    session = ClientSession(scenario, profile)
    settings = scenario.train
    seed_torch(seed)
    model = session.build(list(range(layers)))
    result = train_steps(
        model,
        session.examples("train"),
        steps=steps,
        batch_size=session.batch_size,
        optimizer=make_optimizer(model, settings.lr, settings.head_lr, settings.weight_decay),
        device=session.device,
        seed=seed,
        loss_fn=session.objective.loss,
    )
    examples = task_examples(scenario, profile.task, "server_test", None, session.spec.tokenizer_source)
    started = time.perf_counter()
    scores = session.objective.score(model, examples, settings.eval_batch_size, session.device)
    return {
        "seed": seed,
        "dtype": dtype,
        "accuracy": scores["accuracy"],
        "loss": scores["loss"],
        "train_loss_last": result.loss_last,
        "seconds_per_step": result.seconds / steps,
        "eval_seconds": time.perf_counter() - started,
        "test_examples": len(examples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="fedbrick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a simulated client's share here)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bf16.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    runs = []
    for seed in args.seeds:
        for dtype in ("float32", "bfloat16"):
            runs.append(one_run(args.scenario, seed, dtype, args.steps, args.layers))
            print(json.dumps(runs[-1]), flush=True)
    fp32 = [r for r in runs if r["dtype"] == "float32"]
    bf16 = [r for r in runs if r["dtype"] == "bfloat16"]
    low, high = min(r["accuracy"] for r in fp32), max(r["accuracy"] for r in fp32)
    record = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "cpu_computes_bf16": cpu_computes_bf16(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "setup": {
            "scenario": args.scenario,
            "client": "clients[0], alone (no federation), all layers",
            "layers": args.layers,
            "steps": args.steps,
            "threads": args.threads,
            "scored_on": "the task's server test split",
        },
        "runs": runs,
        "float32_accuracy_mean": mean(r["accuracy"] for r in fp32),
        "float32_accuracy_range": [low, high],
        "bfloat16_accuracy_mean": mean(r["accuracy"] for r in bf16),
        "bfloat16_inside_float32_range": [low <= r["accuracy"] <= high for r in bf16],
        "step_time_ratio_fp32_over_bf16": mean(r["seconds_per_step"] for r in fp32)
        / mean(r["seconds_per_step"] for r in bf16),
        "step_time_ratio_per_seed": [
            a["seconds_per_step"] / b["seconds_per_step"] for a, b in zip(fp32, bf16, strict=True)
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"fp32 {record['float32_accuracy_range']} bf16 {[r['accuracy'] for r in bf16]}; step time ratio "
          f"{record['step_time_ratio_fp32_over_bf16']:.2f}; wrote {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
