"""FedBip client half: it trains from the received θ̄_i and uploads the task vector τ_i = θ_i − θ̄_i."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedbrick_flower.adapters.lora import adapter_tensors
from fedbrick_flower.clients.fedbip import FedBipClient
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.models import model_family
from fedbrick_flower.scenario import load_scenario


def test_update_is_the_trained_adapters_minus_the_received_ones() -> None:
    # Prepare: a payload that differs from the seeded start (B = 0.01 everywhere), so the base is visible.
    scenario = load_scenario("fedbrick-tiny", {"algorithm": "fedbip"})
    client = FedBipClient(client_session(scenario, scenario.clients[1]), ClientState(RecordDict()))
    config = {"layers": [0, 2], "server-round": 1, "local-steps": 2}
    model = client.build_model(config["layers"], config)
    family = model_family(model.backbone)
    payload = {name: np.full(tuple(t.shape), 0.01, np.float32) for name, t in adapter_tensors(model, family).items()}

    # Execute
    client.receive(model, payload)
    client.local_training(model, config)
    tau = client.update(model, config)

    # Assert: θ_i − τ_i is exactly what was received, and training moved every LoRA B and the head.
    trained = adapter_tensors(model, family)
    assert set(tau) == set(payload)
    for name, value in tau.items():
        torch.testing.assert_close(trained[name].detach() - value, torch.from_numpy(payload[name]))
    assert all(value.abs().sum() > 0 for name, value in tau.items() if name.endswith("lora_B") or "head" in name)


def test_train_scores_the_received_mix_before_training_and_the_trained_model_after() -> None:
    # Prepare: the payload is the server's mixed θ̄_i (here B = 0.01 everywhere, a head of 0.01)
    torch.set_num_threads(1)
    scenario = load_scenario("fedbrick-tiny", {"algorithm": "fedbip"})
    session = client_session(scenario, scenario.clients[1])
    config = {"layers": [0, 2], "server-round": 1, "local-steps": 2}
    probe = FedBipClient(session, ClientState(RecordDict()))
    model = probe.build_model(config["layers"], config)
    payload = {
        name: np.full(tuple(t.shape), 0.01, np.float32)
        for name, t in adapter_tensors(model, model_family(model.backbone)).items()
    }
    probe.receive(model, payload)
    received = probe.score(model)

    # Execute
    _, metrics = FedBipClient(session, ClientState(RecordDict())).train(payload, config)

    # Assert: the first score is θ̄_i's, as received; the trained one is scored apart under the usual names
    assert metrics["eval-received-accuracy"] == received["accuracy"]
    assert metrics["eval-received-loss"] == pytest.approx(received["loss"])
    assert metrics["eval-loss"] != pytest.approx(received["loss"])
    assert "eval-received-num-examples" not in metrics and metrics["eval-num-examples"] == received["num-examples"]
