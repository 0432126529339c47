"""Tests for the FedBRICK client half: network assembly, Stage I / Stage II trainable sets, blending, upload."""

from __future__ import annotations

import pytest
import torch
from flwr.app import RecordDict
from torch import nn

from fedbrick_flower.adapters.brick import Brick, brick_schema
from fedbrick_flower.adapters.lora import adapter_tensors
from fedbrick_flower.clients.fedbrick import BlendedLayer, FedBrickClient, blended_layers, model_bricks
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.models import LayerShim, layer_stack, model_family
from fedbrick_flower.scenario import load_scenario

KEPT = [1, 3]


@pytest.fixture(scope="module")
def client() -> FedBrickClient:
    scenario = load_scenario("fedbrick-tiny")
    return FedBrickClient(client_session(scenario, scenario.clients[1]), ClientState(RecordDict()))


def _config(**overrides) -> dict:
    config = {
        "layers": KEPT,
        "brick-rank": 4,
        "upload-bricks": True,
        "lambda-w": 0.01,
        "lambda-theta": 0.005,
        "lambda-d": 0.01,
        "stage-two-fraction": 0.2,
        "stage-two-min-steps": 3,
        "server-round": 1,
    }
    return {**config, **overrides}


def _values(model) -> dict[str, torch.Tensor]:
    family = model_family(model.backbone)
    tensors = {name: t.detach().clone() for name, t in adapter_tensors(model, family).items()}
    for g, brick in model_bricks(model).items():
        tensors.update({f"bricks.{g}.{n}": p.detach().clone() for n, p in brick.named_parameters()})
    return tensors


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def test_network_runs_kept_layers_and_bricks_elsewhere(client: FedBrickClient) -> None:
    # Execute
    model = client.build_model(KEPT, _config())

    # Assert
    stack = layer_stack(model.backbone, model_family(model.backbone))
    bricks = model_bricks(model)
    assert len(stack) == 4 and sorted(bricks) == [0, 1, 2, 3]
    for g in (0, 2):
        assert isinstance(stack[g], LayerShim) and stack[g].inner is bricks[g]
    for g in KEPT:
        assert not isinstance(stack[g], LayerShim)
        assert all(bricks[g] is not m for m in model.modules())


def test_stage_one_trains_kept_lora_head_and_missing_bricks(client: FedBrickClient) -> None:
    # Prepare
    model = client.build_model(KEPT, _config())
    before = _values(model)

    # Execute
    result = client.stage_one(model, _config(), steps=4)

    # Assert: LoRA B of kept layers moves; A too after the first step; kept-layer BRICKs do not.
    changed = _changed(before, _values(model))
    assert result.steps == 4
    assert {"head.weight", "head.bias"} <= changed
    assert {n for n in changed if n.startswith("layers.")} == {n for n in before if n.startswith("layers.")}
    assert {n.split(".")[1] for n in changed if n.startswith("bricks.")} == {"0", "2"}


def test_stage_two_trains_only_kept_bricks_and_restores_stack(client: FedBrickClient) -> None:
    # Prepare
    model = client.build_model(KEPT, _config())
    stack_before = list(layer_stack(model.backbone, model_family(model.backbone)))
    before = _values(model)

    # Execute
    result = client.stage_two(model, _config(), steps=4)

    # Assert
    changed = _changed(before, _values(model))
    assert result.steps == 4
    assert changed and {n.split(".")[1] for n in changed} == {"1", "3"}
    assert all(n.startswith("bricks.") for n in changed)
    assert list(layer_stack(model.backbone, model_family(model.backbone))) == stack_before


def test_stage_two_distillation_term_falls(client: FedBrickClient) -> None:
    # Prepare: a model whose kept BRICKs are fitted by Stage II with a strong distillation weight.
    model = client.build_model(KEPT, _config())
    examples = client.session.examples("train")
    batch = {"input_ids": examples.input_ids[:16], "attention_mask": examples.attention_mask[:16]}

    def distill_term() -> float:
        with torch.no_grad(), blended_layers(model, KEPT) as shims:
            model(batch["input_ids"], batch["attention_mask"])
            return sum(float(((s.last_pair[0] - s.last_pair[1]) ** 2).mean()) for s in shims)

    before = distill_term()

    # Execute
    client.stage_two(model, _config(**{"lambda-d": 100.0}), steps=10)

    # Assert
    assert distill_term() < before


def test_blended_layer_handles_tuple_outputs() -> None:
    # Prepare
    class TupleLayer(nn.Module):
        def forward(self, hidden, mask=None):  # noqa: ANN001, ANN201
            return (2 * hidden, "extra")

    torch.manual_seed(0)
    brick = Brick(8, 2)
    shim = BlendedLayer(TupleLayer(), brick, returns_tuple=True)
    x = torch.randn(2, 3, 8)
    shim.alpha = 0.25

    # Execute
    out = shim(x, None)

    # Assert
    assert isinstance(out, tuple) and out[1] == "extra"
    torch.testing.assert_close(out[0], 0.25 * 2 * x + 0.75 * brick(x))
    torch.testing.assert_close(shim.last_pair[1], 2 * x)


def test_train_uploads_kept_lora_head_and_all_bricks(client: FedBrickClient) -> None:
    # Prepare
    config = _config(**{"local-steps": 2})

    # Execute
    update, metrics = client.train({}, config)
    no_bricks, _ = client.train({}, _config(**{"local-steps": 2, "upload-bricks": False}))

    # Assert
    layers = {name.split(".")[1] for name in update if name.startswith("layers.")}
    assert layers == {"1", "3"} and {"head.weight", "head.bias"} <= set(update)
    assert set(update) - set(no_bricks) == set(brick_schema(range(4), 64, 4))
    assert metrics["brick-parameters"] == 2 * 4 * 4 * 64
    assert metrics["num-examples"] > 0


def test_evaluate_runs_the_on_device_network(client: FedBrickClient) -> None:
    # Execute
    metrics = client.evaluate({}, _config())

    # Assert
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["num-examples"] > 0


def test_training_metrics_count_both_stages_optimizer_steps_and_forward_passes(client: FedBrickClient) -> None:
    # Prepare: 2 Stage-I steps, then max(3, 20 % of 2) = 3 Stage-II steps
    config = _config(**{"local-steps": 2})

    # Execute
    _, metrics = client.train({}, config)

    # Assert: one optimizer step and one forward pass per batch in each stage
    assert metrics["optimizer-steps"] == 5.0
    assert metrics["forward-passes"] == 5.0
