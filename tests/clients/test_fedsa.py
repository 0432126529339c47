"""FedSA-LoRA client half: it sends the A factors alone and keeps B and the head in its state handle."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import RecordDict

from fedbrick_flower.adapters.lora import adapter_tensors
from fedbrick_flower.clients.fedsa import PERSONAL_STATE, FedSAClient
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.models import model_family
from fedbrick_flower.scenario import load_scenario

CONFIG = {"layers": [0, 2], "server-round": 1, "local-steps": 2}


def _client(records: RecordDict) -> FedSAClient:
    scenario = load_scenario("fedbrick-tiny", {"algorithm": "fedsa"})
    return FedSAClient(client_session(scenario, scenario.clients[1]), ClientState(records))


def test_the_update_is_the_a_factors_and_b_with_the_head_stay_in_state() -> None:
    # Prepare
    records = RecordDict()

    # Execute
    update, metrics = _client(records).train({}, CONFIG)

    # Assert
    kept = ClientState(records).arrays(PERSONAL_STATE)
    assert update and all(name.endswith("lora_A") for name in update)
    assert kept and not any(name.endswith("lora_A") for name in kept)
    assert any(name.startswith("head.") for name in kept)
    assert any(np.abs(value).sum() > 0 for name, value in kept.items() if name.endswith("lora_B"))
    assert metrics["num-examples"] > 0


def test_the_next_message_starts_from_the_kept_b_and_the_received_a() -> None:
    # Prepare: one trained round leaves B and the head in the state; the server then sends A full of 0.01.
    records = RecordDict()
    _client(records).train({}, CONFIG)
    kept = ClientState(records).arrays(PERSONAL_STATE)
    client = _client(records)
    model = client.build_model(CONFIG["layers"], CONFIG)
    tensors = adapter_tensors(model, model_family(model.backbone))
    shared = {n: np.full(tuple(t.shape), 0.01, np.float32) for n, t in tensors.items() if n.endswith("lora_A")}

    # Execute
    client.receive(model, shared)

    # Assert
    loaded = adapter_tensors(model, model_family(model.backbone))
    for name, value in {**kept, **shared}.items():
        torch.testing.assert_close(loaded[name].detach(), torch.from_numpy(value))


def test_a_layer_not_held_this_round_keeps_its_b() -> None:
    # Prepare
    records = RecordDict()
    _client(records).train({}, CONFIG)
    before = ClientState(records).arrays(PERSONAL_STATE)

    # Execute: the next round holds layer 0 only
    _client(records).train({}, {**CONFIG, "layers": [0], "server-round": 2})

    # Assert
    after = ClientState(records).arrays(PERSONAL_STATE)
    layer_two = [name for name in before if name.startswith("layers.2.")]
    assert layer_two and all(np.array_equal(after[name], before[name]) for name in layer_two)
