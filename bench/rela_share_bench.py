"""The share of RELA weight that same-task clients get on the ``fedmosaic`` scenario: probe loss on the client's
text (``probe_loss: text``, before issue 21) against the paper's answer tokens (``probe_loss: answer``, now).

A client's probe gradient depends only on the frozen probe and the client's own data, never on its training, so
the RELA weights of a run are computed here without training: each client's sanitised probe samples over the
scenario's rounds (``max(1, local_steps // gradient_every)`` per round, averaged, EMA across rounds), then the
strategy's own similarity matrix and softmax. A client's same-task share is the weight its same-task partners get
(self excluded); uniform weights give partners / (clients - 1).

Run: ``python bench/rela_share_bench.py`` -> ``bench/results/fedmosaic-rela-share.json`` (``--set KEY=VALUE``
adds scenario overrides).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from flwr.app import RecordDict

from fedbrick_flower.clients.fedmosaic import FedMosaicClient
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.deployment.loopback_fleet import PACKAGE_ROOT, run_context
from fedbrick_flower.models.probe import ema
from fedbrick_flower.scenario import Scenario, load_scenario
from fedbrick_flower.strategies.fedmosaic import FedMosaic
from fedbrick_flower.strategies.similarity import softmax_weights


def probe_gradients(scenario: Scenario, strategy: FedMosaic) -> dict[str, np.ndarray]:
    """Every client's gradient EMA after the scenario's rounds, as its ClientApp would compute it."""
    options = {**strategy.rela, "probe": strategy.probe}
    samples = max(1, scenario.train.local_steps // int(options["every"]))
    gradients = {}
    for profile in scenario.clients:
        client = FedMosaicClient(client_session(scenario, profile), ClientState(RecordDict()))
        value = None
        for server_round in range(1, scenario.rounds + 1):
            config = {"server-round": server_round, "fedmosaic": options}
            mean = np.mean([client._probe_sample(config, sample) for sample in range(samples)], axis=0)
            value = ema(value, mean, float(options["alpha"]))
        gradients[profile.id] = value
    return gradients


def same_task_shares(overrides: dict[str, Any], probe_loss: str) -> dict[str, Any]:
    """RELA weights of one probe loss, and the share same-task partners get against uniform weights."""
    scenario = load_scenario("fedmosaic", {**overrides, "algorithm_params.probe_loss": probe_loss})
    strategy = FedMosaic.from_scenario(scenario, seed=scenario.seed, **scenario.algorithm_params)
    strategy.gradients = probe_gradients(scenario, strategy)
    members = sorted(strategy.gradients)
    similarity = strategy.similarity_matrix(members)
    weights = softmax_weights(similarity, strategy.temperature, None, include_self=False)
    tasks = [scenario.client(member).task for member in members]
    n = len(members)
    same = np.array([[j != i and tasks[j] == tasks[i] for j in range(n)] for i in range(n)])
    cross = np.array([[j != i and tasks[j] != tasks[i] for j in range(n)] for i in range(n)])
    shares = [float(weights[i][same[i]].sum()) for i in range(n)]
    return {
        "probe_loss": probe_loss,
        "members": members,
        "tasks": tasks,
        "same_task_share_mean": float(np.mean(shares)),
        "uniform_share_mean": float(np.mean(same.sum(axis=1) / (n - 1))),
        "per_client": dict(zip(members, [round(share, 4) for share in shares], strict=True)),
        "similarity_same_task": float(similarity[same].mean()),
        "similarity_cross_task": float(similarity[cross].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="scenario overrides")
    parser.add_argument("--out", type=Path, default=PACKAGE_ROOT / "bench" / "results" / "fedmosaic-rela-share.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    started = time.monotonic()
    results = {loss: same_task_shares(overrides, loss) for loss in ("text", "answer")}
    for loss, figures in results.items():
        print(loss, json.dumps({k: figures[k] for k in ("same_task_share_mean", "uniform_share_mean")}), flush=True)
    report = {
        "benchmark": "share of RELA weight on same-task clients, fedmosaic scenario",
        "overrides": overrides,
        "results": results,
        "seconds": round(time.monotonic() - started, 1),
        "context": run_context(),
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
