"""Server scale: each strategy's ``aggregate`` time and memory for 100, 1,000 and 10,000 synthetic clients.

Synthetic updates with MiniLM-L6 shapes (6 layers, LoRA on query and value, 384 wide, an 8-class head): rank 8
for the single-rank strategies, the ``ranks`` scenario's mix (16, 8, 8, 4, 4, 2, 2, 2) for HetLoRA, FlexLoRA and
FLoRA. No model, no Flower: the strategy's ``aggregate`` verb is called once with every update, as the round loop
calls it after validation. Each point runs in its own child process (spawned: a fresh allocator), which reports

- ``seconds``: wall time of the one ``aggregate`` call;
- ``aggregate_peak_mb``: the process's peak resident memory during the call above its resident memory just
  before it (``/proc/self/clear_refs`` resets the high-water mark ``VmHWM``), i.e. what aggregation adds;
- ``updates_mb``: what N distinct updates would occupy. The child builds 16 distinct update sets and reuses
  them, so the inputs of 10,000 clients (3 GB) need not be resident on this shared machine; the strategy's
  work and its own allocations are the same as with distinct arrays.

A strategy's sweep stops at its first point over 10 s or 8 GiB (the limits the issue names). A point still
running after ``--timeout`` seconds is stopped and reported as over 10 s; a point whose process grows past
``--memory-cap-gb`` is stopped as well (this machine is shared: 8 GiB cannot be reached safely, so such a
point is reported as "over the cap", not as over 8 GiB).

FedBRICK is left out: its per-client aggregation is FedRA's layer-wise average (``fedra`` here) plus the same
average over BRICK tensors, and its distillation costs what the proxy split and the model cost, not N.

Usage::

    python bench/server_scale_bench.py                                  # all strategies, 100 / 1,000 / 10,000
    python bench/server_scale_bench.py --methods fedavg fedbip --clients 100 1000

Writes ``bench/results/server-scale.json``.
"""

from __future__ import annotations

import os

# One BLAS thread (see ranks_bench.py: OpenBLAS's spinning threads inflated SVD times 25-200 fold here).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import datetime as dt
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "server-scale.json"
RANK_MIX = (16, 8, 8, 4, 4, 2, 2, 2)
WIDTH, DEPTH, LABELS = 384, 6, 8
MODULES = ("attention.self.query", "attention.self.value")
POOL = 16


def seeded_start(client: Any) -> dict[str, np.ndarray]:
    """FedBip's starting adapters of a client (uniform A, zero B, small head; one draw per task), as the seeded
    LoRA initialisation every process shares would give them."""
    rng = np.random.default_rng(sum(map(ord, client.task)))
    return {
        name: np.zeros(shape, np.float32)
        if name.endswith("lora_B")
        else rng.uniform(-0.05, 0.05, shape).astype(np.float32)
        for name, shape in client.schema(range(DEPTH)).items()
    }


# name -> (registered algorithm, algorithm parameters, mixes ranks)
METHODS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "local": ("local", {}, False),
    "fedavg": ("fedavg", {}, False),
    "fedra": ("fedavg", {"resample_layers": True}, False),
    "fedbip": ("fedbip", {"initial_adapters": seeded_start}, False),
    "fedbip-l": ("fedbip-l", {"initial_adapters": seeded_start}, False),
    "hetlora": ("hetlora", {}, True),
    "flexlora": ("flexlora", {}, True),
    "flora": ("flora", {}, True),
}
TIME_LIMIT_S, MEMORY_LIMIT_GIB = 10.0, 8.0


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def synthetic_updates(method: str, num_clients: int, seed: int) -> tuple[Any, list[Any], int]:
    """The strategy and ``num_clients`` updates (a pool of :data:`POOL` distinct array sets, reused)."""
    from fedbrick_flower.client_info import ClientInfo
    from fedbrick_flower.registry import server_class
    from fedbrick_flower.strategies.replies import ClientUpdate

    algorithm, params, mixes = METHODS[method]
    strategy = server_class(algorithm)(seed=seed, **params)
    rng = np.random.default_rng(seed)
    tasks = ("news", "chat", "sentiment", "condition")  # FedBip compares task vectors; four tasks as in its scenario
    pool: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    updates, distinct_bytes = [], 0
    for index in range(num_clients):
        rank = RANK_MIX[index % len(RANK_MIX)] if mixes else 8
        schema = {f"{m}.lora_A": [rank, WIDTH] for m in MODULES} | {f"{m}.lora_B": [WIDTH, rank] for m in MODULES}
        info = ClientInfo(
            client_id=f"c{index}",
            model="minilm",
            task=tasks[index % len(tasks)],
            group=tasks[index % len(tasks)],
            model_type="bert",
            num_layers=DEPTH,
            budget=DEPTH,
            fixed_layers=None,
            layer_schema=schema,
            head_schema={"head.weight": [LABELS, WIDTH], "head.bias": [LABELS]},
            num_train_examples=100,
            rank=rank,
            alpha=16.0,
        )
        strategy.clients[info.client_id] = info
        shapes = info.schema(strategy.layers_for(info, 1, "train"))
        key = (rank, index % POOL)
        if key not in pool:
            pool[key] = {n: (rng.standard_normal(s) * 0.01).astype(np.float32) for n, s in shapes.items()}
        arrays = pool[key]
        distinct_bytes += sum(a.nbytes for a in arrays.values())
        updates.append(ClientUpdate(info, arrays, 100, {"num-examples": 100.0}))
    return strategy, updates, distinct_bytes


def measure(method: str, num_clients: int, seed: int, sink: Any) -> None:
    """Child process: one ``aggregate`` of ``num_clients`` updates; sends its figures through ``sink``."""
    strategy, updates, distinct_bytes = synthetic_updates(method, num_clients, seed)
    before_kb = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    started = time.perf_counter()
    strategy.aggregate(1, updates)
    seconds = time.perf_counter() - started
    sink.send(
        {
            "seconds": seconds,
            "aggregate_peak_mb": (_status_kb("VmHWM") - before_kb) / 1024,
            "updates_mb": distinct_bytes / 2**20,
        }
    )


def run_point(method: str, num_clients: int, seed: int, timeout: float, memory_cap_gb: float) -> dict[str, Any]:
    """One point in a spawned child, stopped past ``timeout`` seconds or ``memory_cap_gb`` resident."""
    import psutil

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=measure, args=(method, num_clients, seed, sender))
    started = time.monotonic()
    child.start()
    peak_rss = 0
    outcome: dict[str, Any] | None = None
    while child.is_alive() or receiver.poll():
        if receiver.poll(0.2):
            outcome = receiver.recv()
            break
        try:
            peak_rss = max(peak_rss, psutil.Process(child.pid).memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if time.monotonic() - started > timeout:
            child.kill()
            outcome = {"stopped": f"still running after {timeout:.0f} s (setup included): over {TIME_LIMIT_S:.0f} s"}
            break
        if peak_rss > memory_cap_gb * 2**30:
            child.kill()
            outcome = {"stopped": f"resident memory over the {memory_cap_gb:g} GiB cap of this shared machine"}
            break
    child.join()
    if outcome is None:
        outcome = {"stopped": f"child exited with code {child.exitcode}"}
    return {"method": method, "clients": num_clients, "process_peak_rss_mb": peak_rss / 2**20, **outcome}


def breaks(point: dict[str, Any]) -> str | None:
    """Why a point breaks the limits (10 s, 8 GiB), or None."""
    if "stopped" in point:
        return point["stopped"]
    if point["seconds"] > TIME_LIMIT_S:
        return f"aggregate took {point['seconds']:.1f} s > {TIME_LIMIT_S:.0f} s"
    if point["aggregate_peak_mb"] > MEMORY_LIMIT_GIB * 1024:
        return f"aggregate added {point['aggregate_peak_mb'] / 1024:.1f} GiB > {MEMORY_LIMIT_GIB:.0f} GiB"
    return None


def growth(points: list[dict[str, Any]], key: str) -> float | None:
    """The exponent b of ``key ~ N^b`` between the first and the last measured point (1: linear, 2: quadratic)."""
    measured = [p for p in points if key in p and p[key] > 0]
    if len(measured) < 2:
        return None
    first, last = measured[0], measured[-1]
    return float(np.log(last[key] / first[key]) / np.log(last["clients"] / first["clients"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--clients", nargs="+", type=int, default=[100, 1000, 10000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per point, setup included")
    parser.add_argument("--memory-cap-gb", type=float, default=3.0, help="stop a point whose process grows past it")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.monotonic()
    load_before = list(os.getloadavg())
    table: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        points: list[dict[str, Any]] = []
        first_break = None
        for num_clients in sorted(args.clients):
            point = run_point(method, num_clients, args.seed, args.timeout, args.memory_cap_gb)
            points.append(point)
            reason = breaks(point)
            print(json.dumps(point), flush=True)
            if reason:
                first_break = {"clients": num_clients, "reason": reason}
                break
        table[method] = {
            "points": points,
            "first_break": first_break,
            "time_growth_exponent": growth(points, "seconds"),
            "memory_growth_exponent": growth(points, "aggregate_peak_mb"),
        }
    result = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "shapes": {"width": WIDTH, "layers": DEPTH, "modules": MODULES, "labels": LABELS, "rank_mix": RANK_MIX},
        "limits": {"seconds": TIME_LIMIT_S, "gib": MEMORY_LIMIT_GIB, "memory_cap_gb": args.memory_cap_gb},
        "wall_seconds": time.monotonic() - started,
        "methods": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'method':<10} {'N':>6} {'agg s':>9} {'agg MB':>9}  first break")
    for method, entry in table.items():
        for point in entry["points"]:
            print(
                f"{method:<10} {point['clients']:>6} {point.get('seconds', float('nan')):>9.3f} "
                f"{point.get('aggregate_peak_mb', float('nan')):>9.1f}  {breaks(point) or ''}"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
