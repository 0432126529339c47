"""FedMosaic benchmark: Self and Others accuracy against local, FedAvg and FedBip within a family, 3 seeds.

Cross-family federation, sized for two shared CPU cores: pretrained MiniLM-L6 (BERT 6x384) and all-mpnet-base-v2
(MPNet 12x768), two clients each, on two tasks (BBC News topic, chatterbot topic), so every client has one
same-task partner in the OTHER family and one other-task partner in its own family. SmolLM2-135M is left out
of the trained clients to fit the time budget (it stays the frozen RELA probe); each client holds little data
(``max_examples`` per task), where collaboration can pay.

Configurations: ``local``; ``fedavg`` and ``fedbip`` (both mix only within a model: their state is scoped per
model); ``fedmosaic``; ``fedmosaic-uniform`` (RELA off: equal weights on the others); ``fedmosaic-no-cross``
(P and Q mixed within the same model only).

Each run drives the real strategy and the real client halves in one process, round by round: the server's
``payload`` -> the client half's ``train`` (with its own state handle) -> ``validate_update`` -> ``aggregate``.
It leaves out Flower's transport (the simulation and deployment tests cover it) so that, at the end, every
client's final network can be rebuilt from its state and scored on other clients' test splits:

- ``self``: each client's accuracy on its own test split with the model it runs after the last aggregation
  (FedMosaic: its personalised G, its own L, gates, head), averaged over clients;
- ``others``: the same model on the test splits of the other clients of the same task (other family included,
  each text tokenized by the evaluated model's tokenizer), averaged;
- ``bytes``: per round and part, what travelled (FedMosaic: P/Q, ordinary LoRA, sanitised gradient, aligned A/B).

Mean ± std (ddof=1) over seeds; target: ``mean(fedmosaic) - mean(best baseline) > max(std)`` on ``self``.
Writes ``bench/results/fedmosaic.json`` after every run.

Usage::

    python bench/fedmosaic_bench.py                 # 6 configurations x seeds 0 1 2
    python bench/fedmosaic_bench.py --configs fedmosaic local --seeds 0 --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from fedbrick_flower.assembly import task_examples
from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.records import array_bytes, validate_update
from fedbrick_flower.registry import client_class, server_class
from fedbrick_flower.scenario import parse_scenario
from fedbrick_flower.scoring import evaluate
from fedbrick_flower.strategies.fedmosaic import BYTES_PHASE, RELEVANCE_PHASE
from fedbrick_flower.strategies.replies import ClientUpdate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fedmosaic.json"
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "local": ("local", {}),
    "fedavg": ("fedavg", {}),
    "fedbip": ("fedbip", {}),
    "fedmosaic": ("fedmosaic", {}),
    "fedmosaic-uniform": ("fedmosaic", {"weighting": "uniform"}),
    "fedmosaic-no-cross": ("fedmosaic", {"share_across_models": False}),
    # A diagnostic beyond the paper's setting: RELA with a sharper softmax (the cosines of the sanitised gradients
    # are small, so at τ = 0.5 the weights stay close to uniform).
    "fedmosaic-tau0.05": ("fedmosaic", {"temperature": 0.05}),
}
BASELINES = ("local", "fedavg", "fedbip")
SCENARIO: dict[str, Any] = {
    "name": "fedmosaic-bench",
    "rounds": 4,
    "seed": 0,
    "models": {"minilm": {"source": "minilm"}, "mpnet-base": {"source": "mpnet-base"}},
    "tasks": {
        "news": {"dataset": "bbc-news", "max_examples": 160},
        "chat": {"dataset": "chatterbot", "max_examples": 160},
    },
    "data": {"partition": "iid", "max_length": 32, "proxy_fraction": 0.15, "client_test_fraction": 0.4},
    "train": {"local_steps": 6, "batch_size": 8, "lr": 0.002, "head_lr": 0.005},
    "lora": {"rank": 8, "alpha": 16},
    "server": {"evaluate_global": False},
    "algorithm_params": {},
    "clients": [
        {"id": "bert-news", "model": "minilm", "task": "news"},
        {"id": "bert-chat", "model": "minilm", "task": "chat"},
        {"id": "mpnet-news", "model": "mpnet-base", "task": "news"},
        {"id": "mpnet-chat", "model": "mpnet-base", "task": "chat"},
    ],
}
FEDMOSAIC_PARAMS = {"probe": "smollm2-135m", "gradient_every": 3, "align_steps": 100, "pq_lr": 0.005}


def _tiny(family: str, width: int, layers: int, **extra: Any) -> dict[str, Any]:
    config = {
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 2 * width,
    }
    return {"family": family, "tokenizer": "minilm", "config": {**config, **extra}}


# ``--size tiny``: three random-init (UNTRAINED) families of different widths and a random-init probe, for a run
# that fits a loaded machine; accuracies then come from the adapters and heads alone.
TINY_MODELS = {
    "tiny-bert": _tiny("bert", 32, 4),
    "tiny-llama": _tiny("llama", 48, 4, num_key_value_heads=1),
    "tiny-mpnet": _tiny("mpnet", 64, 6),
    "tiny-probe": _tiny("llama", 32, 2, num_key_value_heads=1, tie_word_embeddings=True),
}
TINY_CLIENTS = [
    {"id": "bert-news", "model": "tiny-bert", "task": "news"},
    {"id": "bert-chat", "model": "tiny-bert", "task": "chat"},
    {"id": "llama-news", "model": "tiny-llama", "task": "news"},
    {"id": "llama-chat", "model": "tiny-llama", "task": "chat"},
    {"id": "mpnet-news", "model": "tiny-mpnet", "task": "news"},
    {"id": "mpnet-chat", "model": "tiny-mpnet", "task": "chat"},
]


def sized(size: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scenario and FedMosaic parameters of a benchmark size (``pretrained`` or ``tiny``)."""
    scenario, params = copy.deepcopy(SCENARIO), dict(FEDMOSAIC_PARAMS)
    if size == "tiny":
        scenario.update(models=TINY_MODELS, clients=TINY_CLIENTS, name="fedmosaic-bench-tiny")
        scenario["train"] = {"local_steps": 8, "batch_size": 8, "lr": 0.01, "head_lr": 0.02}
        scenario["data"]["max_length"] = 24
        params.update(probe="tiny-probe", align_steps=100, pq_lr=0.02)
    return scenario, params


def as_numpy(tensors: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        n: (v.detach().float().cpu().numpy() if torch.is_tensor(v) else np.asarray(v, np.float32))
        for n, v in tensors.items()
    }


def run_one(config: str, seed: int, rounds: int, size: str) -> dict[str, Any]:
    """One federation, in process: real strategy and client halves, no transport (see the module docstring)."""
    algorithm, extra = CONFIGS[config]
    raw, params = sized(size)
    raw.update(algorithm=algorithm, seed=seed, rounds=rounds)
    raw["algorithm_params"] = {**(params if algorithm == "fedmosaic" else {}), **extra}
    scenario = parse_scenario(raw)
    strategy = server_class(algorithm).from_scenario(scenario, seed=seed, **scenario.algorithm_params)
    half = client_class(algorithm)
    sessions = {p.id: client_session(scenario, p) for p in scenario.clients}
    records = {cid: RecordDict() for cid in sessions}
    for cid, session in sessions.items():
        strategy.clients[cid] = ClientInfo.from_json(session.describe(half.adapter_kinds).to_json(), node_id=0)
    started, per_round = time.monotonic(), []
    for server_round in range(1, rounds + 1):
        updates, down, up = [], 0, 0
        for cid, session in sessions.items():
            info = strategy.clients[cid]
            arrays, config_values = strategy.payload(info, server_round, "train")
            instructions = {
                **json.loads(json.dumps(config_values)),
                "server-round": server_round,
                "wire-dtype": "float32",
            }
            update, metrics = half(session, ClientState(records[cid])).train(arrays, instructions)
            update = as_numpy(update)
            validate_update(update, strategy.expected_update(info, server_round), 1 << 30)
            updates.append(ClientUpdate(info, update, int(metrics["num-examples"]), metrics))
            down, up = down + array_bytes(arrays), up + array_bytes(update)
        strategy.aggregate(server_round, updates)
        parts = [r for r in strategy._log_rows if r.get("phase") == BYTES_PHASE and r["round"] == server_round]
        per_round.append({"round": server_round, "bytes_down": down, "bytes_up": up, **(parts[0] if parts else {})})
    self_accuracy, others_accuracy = {}, {}
    for cid, session in sessions.items():
        info = strategy.clients[cid]
        arrays, config_values = strategy.payload(info, rounds, "evaluate")
        instructions = {**json.loads(json.dumps(config_values)), "server-round": rounds}
        client = half(session, ClientState(records[cid]))
        model = client.build_model(list(instructions["layers"]), instructions)
        client.receive(model, arrays)
        self_accuracy[cid] = client.score(model)["accuracy"]
        scores = []
        for other in scenario.clients:
            if other.id != cid and other.task == session.profile.task:
                examples = task_examples(scenario, other.task, "test", other, session.spec.tokenizer_source)
                scores.append(evaluate(model, examples, 32, session.device)[0])
        others_accuracy[cid] = float(np.mean(scores))
    alignment = getattr(strategy, "alignment_report", None)
    mixes = [r for r in strategy._log_rows if r.get("phase") == RELEVANCE_PHASE][-1:]
    return {
        "self": float(np.mean(list(self_accuracy.values()))),
        "others": float(np.mean(list(others_accuracy.values()))),
        "self_per_client": self_accuracy,
        "others_per_client": others_accuracy,
        "rounds": per_round,
        "similarity": mixes,
        "same_task_weight_share": same_task_share(mixes[0]) if mixes else None,
        "alignment": alignment,
        "seconds": time.monotonic() - started,
    }


def same_task_share(mix: dict[str, Any]) -> dict[str, float]:
    """Mean weight a client gives to the OTHER clients of its task, and what uniform weights would give."""
    tasks, weights = mix["tasks"], np.asarray(mix["weights"])
    same = np.array([[a == b for b in tasks] for a in tasks]) & ~np.eye(len(tasks), dtype=bool)
    return {
        "rela": float((weights * same).sum(axis=1).mean()),
        "uniform": float((same.sum(axis=1) / (len(tasks) - 1)).mean()),
    }


def summarize(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for config, by_seed in runs.items():
        done = [r for r in by_seed.values() if "error" not in r]
        if not done:
            continue
        entry = {"seeds": len(done)}
        for metric in ("self", "others"):
            values = [r[metric] for r in done]
            entry[metric] = {
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
        table[config] = entry
    verdict: dict[str, Any] = {}
    baselines = [b for b in BASELINES if b in table]
    if "fedmosaic" in table and baselines:
        best = max(baselines, key=lambda b: table[b]["self"]["mean"])
        mosaic, base = table["fedmosaic"]["self"], table[best]["self"]
        margin = mosaic["mean"] - base["mean"]
        verdict = {
            "best_baseline": best,
            "self_margin": margin,
            "threshold": max(mosaic["std"], base["std"]),
            "target_met": margin > max(mosaic["std"], base["std"]),
        }
    return {"table": table, "target": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=[c for c in CONFIGS if "tau" not in c], choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=SCENARIO["rounds"])
    parser.add_argument("--size", choices=("pretrained", "tiny"), default="pretrained")
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default bench/results/fedmosaic[-tiny].json)"
    )
    args = parser.parse_args()
    results = args.out or RESULTS.with_name("fedmosaic.json" if args.size == "pretrained" else "fedmosaic-tiny.json")
    torch.set_num_threads(1)
    runs: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for seed in args.seeds:
        for config in args.configs:
            try:
                result = run_one(config, seed, args.rounds, args.size)
            except Exception as error:  # noqa: BLE001 - a failed run is reported, the others go on
                result = {"error": repr(error)}
            runs.setdefault(config, {})[str(seed)] = result
            print(config, seed, {k: result.get(k) for k in ("self", "others", "seconds", "error")}, flush=True)
            scenario, params = sized(args.size)
            output = {
                "size": args.size,
                "command": " ".join(["python", "bench/fedmosaic_bench.py", *sys.argv[1:]]),
                "scenario": scenario,
                "fedmosaic_params": params,
                "rounds": args.rounds,
                "wall_seconds": time.monotonic() - started,
                **summarize(runs),
                "runs": runs,
            }
            results.write_text(json.dumps(output, indent=1))


if __name__ == "__main__":
    main()
