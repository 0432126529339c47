"""Why H2Tune does or does not beat its baselines here: what the shared middles contribute on each device.

Runs ``local``, ``fedavg`` and ``h2tune`` on the benchmark's federation (``h2tune_bench.py``'s sizing, one seed,
``--local-steps`` configurable to see whether a longer budget separates them) and, after the H2Tune run, reads every
device's state and the server's bank to measure:

- ``t_over_identity``: mean over modules of ``||T||_2`` (spectral norm), the size of the shared middle against the
  identity residual it is added to (``B (T + I) A``);
- ``t_share_of_update``: ``||s B T A||_F / ||s B (T + I) A||_F``, the part of each module's weight update that
  goes through the shared middle at all;
- ``update_over_base``: ``||s B (T + I) A||_F / ||W0||_F``, how far the adapters moved the frozen weights;
- the server's ``update-cosine-same-model`` / ``update-cosine-cross-model`` rows: whether clients of the same and
  of different families push the bank the same way.

Usage::

    python bench/h2tune_diagnose.py --local-steps-list 5 15

Writes ``bench/results/h2tune-diagnosis.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from flwr.supercore.task_identity import TaskIdentity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from h2tune_bench import METHODS, scenario_overrides  # noqa: E402
from ranks_bench import LoopbackGrid  # noqa: E402

from fedbrick_flower.adapters.triple import initial_relation  # noqa: E402
from fedbrick_flower.clients.state import ClientState  # noqa: E402
from fedbrick_flower.run_dir import RunRecorder, read_metrics  # noqa: E402
from fedbrick_flower.scenario import load_scenario  # noqa: E402
from fedbrick_flower.server_app import build_strategy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "h2tune-diagnosis.json"


def run(method: str, args: argparse.Namespace, work: Path) -> tuple[Any, LoopbackGrid, list[dict], Any]:
    scenario = load_scenario("h2tune", {**scenario_overrides(args, args.seed), **METHODS[method]})
    path = work / f"{method}-{args.local_steps}.yaml"
    path.write_text(yaml.safe_dump(scenario.raw, sort_keys=False))
    run_dir = work / f"{method}-{args.local_steps}"
    strategy = build_strategy(scenario, [RunRecorder(run_dir, scenario)])
    grid = LoopbackGrid({"scenario": str(path)}, len(scenario.clients))
    strategy.start(grid, num_rounds=scenario.rounds)
    return strategy, grid, read_metrics(run_dir), scenario


def device_figures(grid: LoopbackGrid, scenario: Any) -> dict[str, dict[str, float]]:
    """Per client: the size of its last active middles and of the updates they take part in (its state)."""
    from fedbrick_flower.assembly import cached_backbone
    from fedbrick_flower.models import model_family

    figures = {}
    for node, context in grid.contexts.items():
        profile = scenario.clients[node - 1]
        handle = ClientState(context.state)
        state, middles = handle.arrays("h2tune-local"), handle.arrays("h2tune-previous-t")
        backbone = cached_backbone(scenario.models[profile.model], scenario.seed)
        weights = dict(backbone.named_parameters())
        stack = model_family(backbone).layer_stack
        scale = scenario.lora.alpha / profile.rank
        t_norms, shares, moves = [], [], []
        for key, middle in middles.items():
            t = torch.as_tensor(middle).double()
            a = torch.as_tensor(state[f"layers.{key}.triple_A"]).double()
            b = torch.as_tensor(state[f"layers.{key}.triple_B"]).double()
            through_t, update = scale * b @ t @ a, scale * b @ (t + torch.eye(len(t), dtype=t.dtype)) @ a
            w0 = weights[f"{stack}.{key}.weight"].double()
            t_norms.append(float(torch.linalg.matrix_norm(t, 2)))
            shares.append(float(through_t.norm() / update.norm()) if update.norm() > 0 else 0.0)
            moves.append(float(update.norm() / w0.norm()))
        relation = state["triple.relation"]
        figures[profile.id] = {
            "t_over_identity": statistics.mean(t_norms),
            "t_share_of_update": statistics.mean(shares),
            "update_over_base": statistics.mean(moves),
            "relation_moved": float(np.abs(relation - initial_relation(relation.shape[1], relation.shape[0])).max()),
        }
    return figures


def final_accuracy(rows: list[dict]) -> dict[str, float]:
    evaluations = [r for r in rows if r["phase"] == "evaluate"]
    last = max(r["round"] for r in evaluations)
    return {r["client"]: r["accuracy"] for r in evaluations if r["round"] == last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local-steps-list", type=int, nargs="+", default=[5, 15])
    parser.add_argument("--methods", nargs="+", default=["local", "fedavg", "h2tune"], choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-examples", type=int, default=240)
    parser.add_argument("--mpnet-layers", type=int, default=2)
    parser.add_argument("--smollm2-layers", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    started, results = time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="h2tune-diagnose-") as folder:
        for steps in args.local_steps_list:
            args.local_steps = steps
            entry: dict[str, Any] = {"local_steps": steps, "accuracy": {}}
            for method in args.methods:
                strategy, grid, rows, scenario = run(method, args, Path(folder))
                entry["accuracy"][method] = final_accuracy(rows)
                if method == "h2tune":
                    entry["devices"] = device_figures(grid, scenario)
                    entry["bank_rows"] = [r for r in rows if r["phase"] == "h2tune"]
                print(steps, method, statistics.mean(entry["accuracy"][method].values()), flush=True)
            if {"local", "h2tune"} <= set(entry["accuracy"]):
                local, h2 = entry["accuracy"]["local"], entry["accuracy"]["h2tune"]
                entry["same_accuracy_as_local"] = sum(local[c] == h2[c] for c in local) / len(local)
            results.append(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"settings": settings, "results": results, "total_seconds": time.monotonic() - started}
    args.out.write_text(json.dumps(payload, indent=2))
    print(json.dumps(results, indent=1)[:4000])


if __name__ == "__main__":
    main()
