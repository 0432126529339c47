"""H2Tune benchmark: each client's accuracy on its own test split under hybrid heterogeneity, mean ± std over seeds;
and its diagnosis: what the shared middles contribute on each device.

The federation is the built-in ``h2tune`` scenario (pretrained MiniLM-L6 at rank 4 on chatterbot topics, MPNet at
rank 16 on drug conditions, SmolLM2-135M at rank 8 on BBC News; two clients per family), SIZED DOWN to fit about
20 minutes on this 2-core machine: MPNet and SmolLM2 clients hold only their first layers (``--mpnet-layers``,
``--smollm2-layers``; the weights stay pretrained), and rounds, local steps and examples are small. Methods:

- ``local``: every client alone;
- ``fedavg``: layer-wise FedAvg, which federates within each family only (tensors of different models never mix);
- ``hetlora``: HetLoRA, also within each family (one rank per family here);
- ``h2tune``: H2Tune, the one method here that shares across families (the middle-matrix bank);
- ``h2tune-joint``: H2Tune without alternation (every round trains jointly, ``alternation: off``);
- ``h2tune-fixed-relation``: H2Tune with Π fixed at its relative-depth initialisation.

Add a method by a line in :data:`METHODS` (scenario overrides); FedMosaic is added by itself once an algorithm of
that name is registered. The runs go through the package's real round loop and ClientApp, with messages delivered
in this process (:mod:`fedbrick_flower.inprocess`) instead of Ray.

With ``--diagnose STEPS...`` it runs, for each local-step budget, ``--methods`` (default ``local``, ``fedavg``,
``h2tune``) on the first seed of the same federation and, after the H2Tune run, reads every device's state and
the server's bank to measure:

- ``t_over_identity``: mean over modules of ``||T||_2`` (spectral norm), the size of the shared middle against the
  identity residual it is added to (``B (T + I) A``);
- ``t_share_of_update``: ``||s B T A||_F / ||s B (T + I) A||_F``, the part of each module's weight update that
  goes through the shared middle at all;
- ``update_over_base``: ``||s B (T + I) A||_F / ||W0||_F``, how far the adapters moved the frozen weights;
- the server's ``update-cosine-same-model`` / ``update-cosine-cross-model`` rows: whether clients of the same and
  of different families push the bank the same way;
- ``t_moved_by_round``: per round, how far local training moved each device's active middles T from the ones the
  received bank gave it (``h2tune-t-moved`` of the train rows, mean over clients).

Usage::

    python bench/h2tune_bench.py                           # 3 seeds, the sizes below
    python bench/h2tune_bench.py --seeds 0 --methods local h2tune --rounds 2
    python bench/h2tune_bench.py --diagnose 5 15           # the diagnosis at 5 and 15 local steps

Writes ``bench/results/h2tune.json`` (``bench/results/h2tune-diagnosis.json`` with ``--diagnose``).
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
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedbrick_flower.adapters.triple import initial_relation
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.inprocess import InProcessGrid, InProcessRun, run_in_process
from fedbrick_flower.registry import algorithm_names
from fedbrick_flower.scenario import Scenario, load_scenario, parse_overrides

RESULTS = Path(__file__).resolve().parent / "results" / "h2tune.json"
DIAGNOSIS_RESULTS = RESULTS.with_name("h2tune-diagnosis.json")
METHODS: dict[str, dict[str, Any]] = {
    "local": {"algorithm": "local"},
    "fedavg": {"algorithm": "fedavg"},
    "hetlora": {"algorithm": "hetlora"},
    "h2tune": {"algorithm": "h2tune"},
    "h2tune-joint": {"algorithm": "h2tune", "algorithm_params.alternation": "off"},
    "h2tune-fixed-relation": {"algorithm": "h2tune", "algorithm_params.learn_relation": False},
}
if "fedmosaic" in algorithm_names():  # the hook: FedMosaic joins the table once it is registered
    METHODS["fedmosaic"] = {"algorithm": "fedmosaic"}
BASELINES = ("local", "fedavg", "hetlora", "fedmosaic")


def scenario_overrides(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The bench's size on top of the built-in scenario (see the module docstring)."""
    base = load_scenario("h2tune")
    overrides: dict[str, Any] = {
        "seed": seed,
        "rounds": args.rounds,
        "train.local_steps": args.local_steps,
        "server.evaluate_global": False,
        **{f"tasks.{task}.max_examples": args.max_examples for task in base.tasks},
    }
    for index, client in enumerate(base.clients):
        depth = {"mpnet": args.mpnet_layers, "smollm2": args.smollm2_layers}.get(client.model)
        if depth:
            overrides[f"clients.{index}.layers"] = depth
    return {**overrides, **parse_overrides(args.set)}


def run(method: str, seed: int, args: argparse.Namespace, work: Path) -> tuple[Scenario, InProcessRun]:
    """One in-process run of ``method`` at ``seed`` in ``work/{method}-{seed}-{local steps}``."""
    scenario = load_scenario("h2tune", {**scenario_overrides(args, seed), **METHODS[method]})
    return scenario, run_in_process(scenario, work, f"{method}-{seed}-{args.local_steps}")


def run_method(method: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One in-process run; each client's accuracy on its own test split after the last round."""
    _, result = run(method, seed, args, work)
    rows = result.rows
    evaluations = [r for r in rows if r["phase"] == "evaluate"]
    last = max(r["round"] for r in evaluations)
    accuracy = final_accuracy(rows)
    trained = [r for r in rows if r["phase"] == "train"]
    return {
        "method": method,
        "seed": seed,
        "client_accuracy": accuracy,
        "mean_accuracy": statistics.mean(accuracy.values()),
        "accuracy_by_round": [
            statistics.mean(r["accuracy"] for r in evaluations if r["round"] == n) for n in range(1, last + 1)
        ],
        "bytes_up_per_client_round": statistics.mean(r["bytes_up"] for r in trained),
        "bytes_down_per_client_round": statistics.mean(r["bytes_down"] for r in trained),
        "rejected": sum(1 for r in rows if r["phase"] == "rejected"),
        "wall_seconds": result.wall_seconds,
    }


def final_accuracy(rows: list[dict]) -> dict[str, float]:
    """Each client's accuracy on its own test split in the last round it evaluated."""
    evaluations = [r for r in rows if r["phase"] == "evaluate"]
    last = max(r["round"] for r in evaluations)
    return {r["client"]: r["accuracy"] for r in evaluations if r["round"] == last}


def summarize(runs: list[dict[str, Any]], clients: dict[str, str]) -> dict[str, Any]:
    """Per method: mean ± std over seeds of the client-mean accuracy, per family and per client; the target."""
    summary: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        done = [r for r in runs if r["method"] == method]
        families = sorted(set(clients.values()))
        summary[method] = {
            "accuracy": _mean_std([r["mean_accuracy"] for r in done]),
            "by_family": {
                family: _mean_std(
                    [statistics.mean(a for c, a in r["client_accuracy"].items() if clients[c] == family) for r in done]
                )
                for family in families
            },
            "by_client": {c: _mean_std([r["client_accuracy"][c] for r in done]) for c in sorted(clients)},
            "bytes_up_per_client_round": statistics.mean(r["bytes_up_per_client_round"] for r in done),
            "wall_seconds": statistics.mean(r["wall_seconds"] for r in done),
            "seeds": [r["seed"] for r in done],
        }
    baselines = {m: s for m, s in summary.items() if m in BASELINES}
    if "h2tune" in summary and baselines:
        best = max(baselines, key=lambda m: baselines[m]["accuracy"]["mean"])
        h2, base = summary["h2tune"]["accuracy"], baselines[best]["accuracy"]
        margin = h2["mean"] - base["mean"]
        summary["target"] = {
            "rule": "h2tune mean above the best baseline mean by more than one std (the larger of the two stds)",
            "best_baseline": best,
            "margin": margin,
            "std": max(h2["std"], base["std"]),
            "met": margin > max(h2["std"], base["std"]),
        }
    return summary


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def write_results(args: argparse.Namespace, runs: list[dict[str, Any]], seconds: float, planned: int) -> dict:
    """The results file as it stands (``complete`` once every planned run is in)."""
    clients = {c.id: c.model for c in load_scenario("h2tune").clients}
    result = {
        "benchmark": "h2tune",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, CPU",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "scenario_overrides": scenario_overrides(args, args.seeds[0]),
        "models": "pretrained MiniLM-L6 (6 layers), MPNet and SmolLM2 truncated to their first layers (see settings)",
        "complete": len(runs) == planned,
        "summary": summarize(runs, clients),
        "runs": runs,
        "total_seconds": seconds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


def device_figures(grid: InProcessGrid, scenario: Scenario) -> dict[str, dict[str, float]]:
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


def t_moved_by_round(rows: list[dict]) -> dict[int, float]:
    """Per round, the mean over clients of how far training moved their active middles (``h2tune-t-moved``:
    ``||T_end - T_received||_F / ||T_received||_F``, mean over modules)."""
    moved: dict[int, list[float]] = {}
    for row in rows:
        if row["phase"] == "train" and row.get("h2tune-t-moved") is not None:
            moved.setdefault(row["round"], []).append(row["h2tune-t-moved"])
    return {server_round: statistics.mean(values) for server_round, values in sorted(moved.items())}


def diagnose(args: argparse.Namespace) -> None:
    """The diagnosis: per local-step budget, each method's final accuracies; H2Tune's device and bank figures."""
    started, results, seed = time.monotonic(), [], args.seeds[0]
    with tempfile.TemporaryDirectory(prefix="h2tune-diagnose-") as folder:
        for steps in args.diagnose:
            args.local_steps = steps
            entry: dict[str, Any] = {"local_steps": steps, "accuracy": {}}
            for method in args.methods:
                scenario, result = run(method, seed, args, Path(folder))
                entry["accuracy"][method] = final_accuracy(result.rows)
                if method == "h2tune":
                    entry["devices"] = device_figures(result.grid, scenario)
                    entry["bank_rows"] = [r for r in result.rows if r["phase"] == "h2tune"]
                    entry["t_moved_by_round"] = t_moved_by_round(result.rows)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), help="default: all; the diagnosis's: local fedavg h2tune"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--max-examples", type=int, default=240, help="per task, before the client splits")
    parser.add_argument("--mpnet-layers", type=int, default=2, help="first layers MPNet clients hold (of 12)")
    parser.add_argument("--smollm2-layers", type=int, default=3, help="first layers SmolLM2 clients hold (of 30)")
    parser.add_argument("--set", nargs="*", default=[], help="more scenario overrides, KEY=VALUE")
    parser.add_argument(
        "--diagnose",
        type=int,
        nargs="+",
        metavar="LOCAL_STEPS",
        help="run the diagnosis instead, at these local-step budgets, on the first of --seeds",
    )
    parser.add_argument("--out", type=Path, help=f"default: {RESULTS} ({DIAGNOSIS_RESULTS.name} with --diagnose)")
    args = parser.parse_args()
    args.methods = args.methods or (["local", "fedavg", "h2tune"] if args.diagnose else list(METHODS))
    args.out = args.out or (DIAGNOSIS_RESULTS if args.diagnose else RESULTS)
    torch.set_num_threads(1)
    if args.diagnose:
        diagnose(args)
        return
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="h2tune-bench-") as folder:
        for seed in args.seeds:
            for method in args.methods:
                runs.append(run_method(method, seed, args, Path(folder)))
                accuracy, seconds = runs[-1]["mean_accuracy"], runs[-1]["wall_seconds"]
                print(f"{method:24s} seed {seed}: {accuracy:.4f} ({seconds:.0f}s)", flush=True)
                # Written after every run, so an interrupted benchmark still leaves what it measured.
                result = write_results(args, runs, time.monotonic() - started, len(args.seeds) * len(args.methods))
    for method, figures in result["summary"].items():
        if method != "target":
            print(f"{method:24s} {figures['accuracy']['mean']:.4f} ± {figures['accuracy']['std']:.4f}")
    print(json.dumps(result["summary"].get("target"), indent=2))


if __name__ == "__main__":
    main()
