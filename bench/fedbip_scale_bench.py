"""FedBip server state at scale: its size for N MiniLM clients and the time of one aggregation step.

The server keeps one personalized adapter set θ̄_i and the last task vector τ_i per client. For MiniLM-L6 with
LoRA r=8 on q and v of all 6 layers plus a task head, this script builds a FedBip / FedBip-L strategy for N
synthetic clients (four tasks with the packaged label counts 5, 3, 8 and 8; task vectors drawn around one
direction per task, so the weights have structure), runs one round of payloads and one aggregation, and
measures:

- the state: bytes of the arrays ``state_dict()`` returns, and of the checkpoint written by ``run_dir``;
- the time of one ``aggregate`` call (similarity, weights, mixing, metric row) for N updates, per variant;
- the time to write and read the checkpoint, and that every value survives it.

No model, no Flower run: the shapes are MiniLM's, the values synthetic. Results go to
``bench/results/fedbip-scale.json``.

Usage::

    python bench/fedbip_scale_bench.py --clients 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.run_dir import load_checkpoint, save_checkpoint
from fedbrick_flower.strategies.fedbip import FedBip, FedBipL
from fedbrick_flower.strategies.replies import ClientUpdate

RESULTS = Path(__file__).parent / "results" / "fedbip-scale.json"
HIDDEN, RANK, LAYERS = 384, 8, 6
LAYER_SCHEMA = {
    f"attention.self.{module}.{param}": shape
    for module in ("query", "value")
    for param, shape in (("lora_A", [RANK, HIDDEN]), ("lora_B", [HIDDEN, RANK]))
}
TASK_LABELS = {"news": 5, "sentiment": 3, "condition": 8, "chat": 8}


def make_clients(count: int) -> list[ClientInfo]:
    tasks = list(TASK_LABELS)
    return [
        ClientInfo(
            client_id=f"c{i:04d}",
            model="minilm",
            task=(task := tasks[i % len(tasks)]),
            group=task,
            model_type="bert",
            num_layers=LAYERS,
            budget=LAYERS,
            fixed_layers=None,
            layer_schema=LAYER_SCHEMA,
            head_schema={"head.weight": [TASK_LABELS[task], HIDDEN], "head.bias": [TASK_LABELS[task]]},
            num_train_examples=100,
            node_id=i + 1,
        )
        for i in range(count)
    ]


def seeded_start(client: ClientInfo) -> dict[str, np.ndarray]:
    """A stand-in for the seeded LoRA initialisation: uniform A, zero B, small head (shared per task)."""
    rng = np.random.default_rng(abs(hash(client.task)) % 2**32)
    start = {}
    for name, shape in client.schema(range(LAYERS)).items():
        start[name] = np.zeros(shape, np.float32) if name.endswith("lora_B") else rng.uniform(-0.05, 0.05, shape)
    return {name: value.astype(np.float32) for name, value in start.items()}


def task_vectors(clients: list[ClientInfo], seed: int) -> list[dict[str, np.ndarray]]:
    """One τ per client: a per-task direction plus client noise, at LoRA-update scale."""
    rng = np.random.default_rng(seed)
    directions: dict[str, dict[str, np.ndarray]] = {}
    vectors = []
    for client in clients:
        schema = client.schema(range(LAYERS))
        base = directions.setdefault(client.task, {n: rng.normal(size=s) for n, s in schema.items()})
        vectors.append({n: (1e-3 * (base[n] + rng.normal(size=s))).astype(np.float32) for n, s in schema.items()})
    return vectors


def measure(variant: type[FedBip], clients: list[ClientInfo], taus: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    strategy = variant(seed=0, initial_adapters=seeded_start)
    strategy.clients = {c.client_id: c for c in clients}
    started = time.perf_counter()
    for client in clients:
        strategy.payload(client, 1, "train")
    payload_seconds = time.perf_counter() - started
    updates = [ClientUpdate(c, tau, 100, {}) for c, tau in zip(clients, taus, strict=True)]
    started = time.perf_counter()
    strategy.aggregate(1, updates)
    aggregate_seconds = time.perf_counter() - started
    row = strategy._log_rows[-1]
    return {
        "strategy": strategy,
        "payload_seconds_all_clients": payload_seconds,
        "aggregate_seconds": aggregate_seconds,
        "similarity_row_json_bytes": len(json.dumps(row)),
        "same_task_weight_share": strategy.same_task_share["1"],
    }


def checkpoint_round_trip(strategy: FedBip, folder: Path) -> dict[str, Any]:
    arrays, _ = strategy.state_dict()
    started = time.perf_counter()
    save_checkpoint(folder, strategy, 1)
    write_seconds = time.perf_counter() - started
    restored = FedBip(seed=0, initial_adapters=seeded_start)
    started = time.perf_counter()
    load_checkpoint(folder, restored)
    read_seconds = time.perf_counter() - started
    restored_arrays, _ = restored.state_dict()
    identical = sorted(arrays) == sorted(restored_arrays) and all(
        np.array_equal(arrays[k], restored_arrays[k]) for k in arrays
    )
    return {
        "state_arrays": len(arrays),
        "state_bytes": int(sum(v.nbytes for v in arrays.values())),
        "personalized_bytes": int(sum(v.nbytes for k, v in arrays.items() if k.startswith("personal/"))),
        "task_vector_bytes": int(sum(v.nbytes for k, v in arrays.items() if k.startswith("tau/"))),
        "checkpoint_file_bytes": sum(p.stat().st_size for p in folder.iterdir()),
        "checkpoint_write_seconds": write_seconds,
        "checkpoint_read_seconds": read_seconds,
        "round_trip_identical": identical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    clients = make_clients(args.clients)
    taus = task_vectors(clients, args.seed)
    per_client = sum(int(np.prod(s)) * 4 for s in clients[0].schema(range(LAYERS)).values())
    results: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "clients": args.clients,
        "adapter": f"MiniLM-L6 LoRA r={RANK} on q, v of {LAYERS} layers + head (5/3/8/8 labels by task)",
        "adapter_bytes_per_client_5_labels": per_client,
        "load_average_before": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "variants": {},
    }
    for variant in (FedBip, FedBipL):
        print(f"{variant.__name__}: {args.clients} clients ...", flush=True)
        measured = measure(variant, clients, taus)
        strategy = measured.pop("strategy")
        results["variants"][variant.__name__] = measured
        if variant is FedBipL:
            with tempfile.TemporaryDirectory() as folder:
                results["state"] = checkpoint_round_trip(strategy, Path(folder) / "checkpoint")
        print(json.dumps(measured, indent=2), flush=True)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["state"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
