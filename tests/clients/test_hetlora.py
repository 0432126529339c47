"""HetLoRA client half: the pruning step, the tail's share, zeroing it, and loading fewer components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbrick_flower.adapters.lora import LoraSettings, attach_lora, lora_tensors
from fedbrick_flower.clients.hetlora import lora_pairs, pruned_rank, tail_penalty, tail_share, zero_tail
from fedbrick_flower.clients.rank_methods import load_leading_components
from fedbrick_flower.models import SequenceClassifier, family_of
from tests.conftest import tiny_model


def _model(rank: int) -> SequenceClassifier:
    family = family_of("bert")
    return SequenceClassifier(attach_lora(tiny_model("bert"), family, LoraSettings(rank=rank), seed=1), 3)


@pytest.mark.parametrize(("rank", "gamma", "expected"), [(8, 0.5, 4), (4, 0.99, 3), (1, 0.5, 1), (16, 0.3, 4)])
def test_pruned_rank_is_floor_gamma_r_at_least_one(rank: int, gamma: float, expected: int) -> None:
    # Execute / Assert
    assert pruned_rank(rank, gamma) == expected


def test_tail_share_penalty_and_zeroing_by_hand() -> None:
    # Prepare: B A = diag-like components of norms 3 (kept) and 1 (tail): energy 9 + 1
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    pairs = [(a, b)]

    # Execute
    share = tail_share(pairs, keep=1)
    penalty = float(tail_penalty(pairs, keep=1))
    zero_tail(pairs, keep=1)

    # Assert
    assert share == pytest.approx(0.1)
    assert penalty == pytest.approx(1.0)  # ||A[1:]|| * ||B[:, 1:]|| = 1 * 1
    assert torch.equal(a, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(b, torch.tensor([[3.0, 0.0], [0.0, 0.0]]))


def test_lora_pairs_are_the_models_live_factors() -> None:
    # Prepare
    model = _model(rank=4)

    # Execute
    pairs = lora_pairs(model)

    # Assert: 4 layers x 2 modules (query, value), rank 4
    assert len(pairs) == 8 and all(a.shape[0] == 4 and b.shape[1] == 4 for a, b in pairs)


def test_leading_components_load_into_a_higher_rank_model_and_the_rest_keeps_its_init() -> None:
    # Prepare
    model = _model(rank=4)
    family = family_of("bert")
    before = {name: tensor.detach().clone() for name, tensor in lora_tensors(model.backbone, family).items()}
    a = np.ones((2, 32), np.float32)
    b = np.full((32, 2), 2.0, np.float32)

    # Execute
    load_leading_components(
        model, {"layers.0.attention.self.query.lora_A": a, "layers.0.attention.self.query.lora_B": b}
    )

    # Assert
    after = lora_tensors(model.backbone, family)
    loaded_a, loaded_b = after["layers.0.attention.self.query.lora_A"], after["layers.0.attention.self.query.lora_B"]
    assert torch.equal(loaded_a[:2], torch.ones(2, 32)) and torch.equal(
        loaded_a[2:], before["layers.0.attention.self.query.lora_A"][2:]
    )
    assert torch.equal(loaded_b[:, :2], torch.full((32, 2), 2.0)) and torch.equal(loaded_b[:, 2:], torch.zeros(32, 2))
    with pytest.raises(KeyError, match="expected at most"):
        load_leading_components(model, {"layers.0.attention.self.query.lora_A": np.ones((5, 32), np.float32)})


@pytest.mark.parametrize(("alpha", "expected_scale"), [(2.0, 1.0), (16.0, 8.0)])
def test_the_client_builds_its_lora_with_the_alpha_the_server_sends(alpha: float, expected_scale: float) -> None:
    # Prepare: the smoke scenario's bert-edge at rank 2
    from flwr.app import RecordDict

    from fedbrick_flower.adapters.lora import ADAPTER_NAME, lora_modules
    from fedbrick_flower.clients.hetlora import HetLoRAClient
    from fedbrick_flower.clients.profile import ClientSession
    from fedbrick_flower.clients.state import ClientState
    from fedbrick_flower.models import model_family
    from fedbrick_flower.records import LORA_RANK_KEY
    from fedbrick_flower.registry import HETLORA_ALPHA_KEY
    from fedbrick_flower.scenario import load_scenario

    scenario = load_scenario("smoke")
    client = HetLoRAClient(ClientSession(scenario, scenario.client("bert-edge")), ClientState(RecordDict()))

    # Execute
    model = client.build_model([1, 3], {"layers": [1, 3], LORA_RANK_KEY: 2, HETLORA_ALPHA_KEY: alpha})

    # Assert: peft's scale alpha / r of every adapted module
    modules = lora_modules(model.backbone, model_family(model.backbone)).values()
    assert {m.scaling[ADAPTER_NAME] for m in modules} == {expected_scale}
