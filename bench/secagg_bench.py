"""Secure-aggregation benchmark: bytes and seconds per round with and without SecAgg+, 4 and 16 clients.

Each configuration runs layer-wise FedAvg on a federation of tiny random-init BERT clients (hidden size 128, 4
layers, LoRA rank 8 on q and v) at mixed depths (4, 3, 2, 1 layers in turn), on a BBC News sample, through the
package's real round loop and real ClientApp (the secure-aggregation mod included) on the in-process grid of
:mod:`fedbrick_flower.inprocess`: no Flower engine, every client's training and cryptography run one after the
other in this process, so a round's seconds are the sum of the clients' work plus the server's. Tiny models keep
16 clients affordable on 2 shared cores; the figures are protocol costs, not accuracy.

Reported per configuration and round (the first round also registers the clients and builds their models, so
the later rounds are the steady state):

- ``bytes_up_per_client`` / ``bytes_down_per_client``: every ``train`` message of the round and its reply, all
  four SecAgg+ stages counted (``records.content_bytes``), per client;
- ``round_seconds``: the round's wall time; ``aggregate_seconds``: the server's aggregation step (unmasking the
  sum and dividing by the holder counts under SecAgg+);
- ``max_abs_error``: under SecAgg+, the largest difference between the global LoRA and heads and the plain
  layer-wise weighted mean of the very updates the clients masked (captured on the clients before masking), with
  ``error_bound``, the stated bound (``SecAggParameters.error_bound``).

Usage::

    python bench/secagg_bench.py                      # 4 and 16 clients, with and without, 2 rounds
    python bench/secagg_bench.py --clients 4 --rounds 2

Writes ``bench/results/secagg.json`` (a ``secure-aggregation`` section the privacy results can merge).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import datetime as dt
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, MessageType

from fedbrick_flower import mods
from fedbrick_flower.inprocess import InProcessRun, run_in_process
from fedbrick_flower.records import ADAPTERS_KEY, CONFIG_KEY, content_bytes, decode_config, from_array_record
from fedbrick_flower.scenario import parse_scenario
from fedbrick_flower.strategies.aggregation import layerwise_average
from fedbrick_flower.strategies.fedavg import LayerwiseFedAvg

RESULTS = Path(__file__).resolve().parent / "results" / "secagg.json"
DEPTHS = (4, 3, 2, 1)


def scenario_raw(num_clients: int, secure: bool, rounds: int, seed: int) -> dict[str, Any]:
    """The benchmark federation: tiny BERT clients at depths 4, 3, 2, 1 in turn."""
    return {
        "name": f"secagg-{num_clients}-{'secure' if secure else 'plain'}",
        "algorithm": "fedavg",
        "rounds": rounds,
        "seed": seed,
        "models": {
            "tiny-bert": {
                "family": "bert",
                "tokenizer": "minilm",
                "config": {
                    "hidden_size": 128,
                    "num_hidden_layers": 4,
                    "num_attention_heads": 4,
                    "intermediate_size": 256,
                },
            }
        },
        "tasks": {"bbc": {"dataset": "bbc-news", "max_examples": 40 * num_clients}},
        "data": {"partition": "iid", "max_length": 32},
        "train": {"local_steps": 1, "batch_size": 8},
        "lora": {"rank": 8, "alpha": 16},
        "server": {"evaluate_global": False},
        "privacy": {"secure_aggregation": secure},
        "clients": [
            {"id": f"c{index:02d}", "model": "tiny-bert", "task": "bbc", "layers": DEPTHS[index % len(DEPTHS)]}
            for index in range(num_clients)
        ],
    }


def message_round(message: Message) -> int:
    """The round of a ``train`` message: its ``server-round``, or the ``group_id`` of a SecAgg+ stage message."""
    if CONFIG_KEY in message.content.config_records:
        return int(decode_config(message.content[CONFIG_KEY])["server-round"])
    return int(message.metadata.group_id)


def round_bytes(run: InProcessRun, num_clients: int, rounds: int) -> list[tuple[float, float]]:
    """Per round, the bytes of every ``train`` message and of its reply (all SecAgg+ stages), per client."""
    down = [0] * rounds
    up = [0] * rounds
    replies = {reply.metadata.reply_to_message_id: reply for reply in run.grid.replies}
    for message in run.grid.pushed:
        if message.metadata.message_type != MessageType.TRAIN:
            continue
        current = message_round(message) - 1
        down[current] += content_bytes(message.content)
        reply = replies.get(message.metadata.message_id)
        if reply is not None and not reply.has_error():
            up[current] += content_bytes(reply.content)
    return [(u / num_clients, d / num_clients) for u, d in zip(up, down, strict=True)]


def run_config(num_clients: int, secure: bool, rounds: int, seed: int, work: Path) -> dict[str, Any]:
    """One in-process run; returns its per-round figures."""
    scenario = parse_scenario(scenario_raw(num_clients, secure, rounds, seed))
    captured: dict[int, dict[int, dict[str, np.ndarray]]] = {}  # round -> node -> the update before masking
    masking_input = mods.masking_input

    def spy(msg: Message, reply: Message) -> Message:  # the plain updates, for the error (they never leave)
        tensors = from_array_record(reply.content[ADAPTERS_KEY])
        captured.setdefault(message_round(msg), {})[msg.metadata.dst_node_id] = tensors
        return masking_input(msg, reply)

    mods.masking_input = spy
    states: dict[int, dict[str, np.ndarray]] = {}
    try:

        def keep_states(strategy: LayerwiseFedAvg) -> LayerwiseFedAvg:
            aggregate_means = strategy.aggregate_means

            def recorded(server_round: int, means: dict[str, np.ndarray], updates: list) -> None:
                aggregate_means(server_round, means, updates)
                states[server_round] = dict(strategy.state)

            strategy.aggregate_means = recorded
            return strategy

        run = run_in_process(scenario, work, scenario.name, before_start=keep_states)
    finally:
        mods.masking_input = masking_input
    strategy = run.before_start
    by_node = {info.node_id: info for info in strategy.clients.values()}
    per_round = []
    for index, (bytes_up, bytes_down) in enumerate(round_bytes(run, num_clients, rounds)):
        server_round = index + 1
        row = {
            "round": server_round,
            "bytes_up_per_client": bytes_up,
            "bytes_down_per_client": bytes_down,
            "round_seconds": next(
                r["wall_seconds"] for r in run.rows if r["phase"] == "round" and r["round"] == server_round
            ),
            "aggregate_seconds": next(
                r["seconds"] for r in run.rows if r["phase"] == "aggregate" and r["round"] == server_round
            ),
        }
        if secure:
            updates = captured[server_round]
            weights = {nid: float(by_node[nid].num_train_examples) for nid in updates}
            plain = layerwise_average(
                (str(nid), {strategy.aggregation_key(by_node[nid], n): v for n, v in tensors.items()}, weights[nid])
                for nid, tensors in updates.items()
            )
            state = states[server_round]
            row["max_abs_error"] = max(float(np.max(np.abs(state[key] - value))) for key, value in plain.items())
            row["error_bound"] = strategy.secure_aggregation.error_bound(min(weights.values()) / max(weights.values()))
        per_round.append(row)
    return {"clients": num_clients, "secure_aggregation": secure, "rounds": per_round}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for num_clients in args.clients:
            for secure in (False, True):
                result = run_config(num_clients, secure, args.rounds, args.seed, Path(folder))
                print(json.dumps(result), flush=True)
                results.append(result)
    document = {
        "secure-aggregation": {
            "what": "bytes and seconds per round with and without SecAgg+ (layer-wise FedAvg, tiny random-init "
            "BERT clients at depths 4/3/2/1, in-process harness: clients run one after the other in one process)",
            "started": started.isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "results": results,
        }
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
