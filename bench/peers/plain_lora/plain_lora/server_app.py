"""plain-lora ServerApp: FedAvg from flwr.serverapp.strategy, plus a central evaluation of the global model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from plain_lora.task import get_model, get_weights, load_data, set_weights
from plain_lora.task import test as test_fn

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    scenario_path, out = str(context.run_config["scenario"]), Path(str(context.run_config["out"]))
    model, info = get_model(scenario_path)
    clients = len(info["scenario"].clients)
    arrays = ArrayRecord(get_weights(model))
    rounds: list[dict] = []

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """The global model on the scenario's server test split (what fedbrick-flower's server evaluation scores)."""
        started = time.perf_counter()
        model, info = get_model(scenario_path)
        set_weights(model, arrays.to_torch_state_dict())
        loss, accuracy = test_fn(model, *load_data(info, "server_test", None), info)
        rounds.append(
            {"round": server_round, "accuracy": accuracy, "loss": loss, "seconds": time.perf_counter() - started}
        )
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=clients, min_evaluate_nodes=clients,
                      min_available_nodes=clients)  # fmt: skip
    torch.manual_seed(info["scenario"].seed)
    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=info["scenario"].rounds,
        train_config=ConfigRecord({}),
        evaluate_fn=global_evaluate,
    )
    out.write_text(json.dumps({"rounds": rounds, "arrays_bytes": arrays.count_bytes(), "clients": clients}, indent=2))
