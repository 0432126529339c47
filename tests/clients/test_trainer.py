"""Per-client training memory (measured in the client's own process) and the linear-probe option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedbrick_flower.clients.fedavg import FedAvgClient
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.scenario import load_scenario

SIX_LAYERS = {"models.tiny-bert.config.num_hidden_layers": 6, "algorithm": "fedavg", "algorithm_params": {}}


def _client(**overrides) -> FedAvgClient:
    scenario = load_scenario("fedbrick-tiny", {**SIX_LAYERS, "train.local_steps": 2, **overrides})
    return FedAvgClient(client_session(scenario, scenario.clients[0]), ClientState(RecordDict()))


def _parameter_bytes(client: FedAvgClient, layers: list[int]) -> int:
    return sum(p.numel() * p.element_size() for p in client.build_model(layers, {}).parameters())


def test_two_layer_client_reports_less_memory_than_six_layer_client_in_one_process() -> None:
    # Prepare: both clients train in this one process, as two simulated clients share a Ray worker
    torch.manual_seed(0)
    client = _client()
    config = {"server-round": 1}

    # Execute
    _, deep = client.train({}, {**config, "layers": list(range(6))})
    _, shallow = client.train({}, {**config, "layers": [0, 1]})

    # Assert: the 6-layer client's figure exceeds the 2-layer one's by at least the 4 extra layers' weights, and
    # the process-wide figure (the old one) cannot tell them apart
    extra_weights = (_parameter_bytes(client, list(range(6))) - _parameter_bytes(client, [0, 1])) / 2**20
    assert shallow["peak-memory-mb"] > 0
    assert deep["peak-memory-mb"] - shallow["peak-memory-mb"] >= extra_weights
    assert shallow["process-peak-rss-mb"] >= deep["process-peak-rss-mb"]


def test_training_metrics_report_the_rounds_optimizer_steps_and_forward_passes() -> None:
    # Prepare
    client = _client(**{"train.local_steps": 3})

    # Execute
    _, metrics = client.train({}, {"server-round": 1, "layers": [0, 1]})

    # Assert
    assert metrics["optimizer-steps"] == 3.0 and metrics["forward-passes"] == 3.0


def test_an_objective_that_steps_its_own_optimizer_and_runs_twice_is_counted() -> None:
    # Prepare: an alternating objective (as H2Tune's): an inner step on a first forward, then the outer step
    from fedbrick_flower.clients.trainer import train_steps
    from fedbrick_flower.data import EncodedExamples

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    inner = torch.optim.SGD(model[0].parameters(), lr=0.1)
    outer = torch.optim.SGD(model[2].parameters(), lr=0.1)

    def loss_fn(net: torch.nn.Module, batch: dict, step: int) -> torch.Tensor:
        inner.zero_grad()
        net(batch["input_ids"]).square().mean().backward()
        inner.step()
        return torch.nn.functional.cross_entropy(net(batch["input_ids"]), batch["labels"])

    examples = EncodedExamples(torch.randint(0, 10, (8, 3)), torch.ones(8, 3).long(), torch.zeros(8).long())

    # Execute
    result = train_steps(
        model, examples, steps=4, batch_size=2, optimizer=outer, device=torch.device("cpu"), seed=0, loss_fn=loss_fn
    )

    # Assert
    assert result.steps == 4 and result.optimizer_steps == 8 and result.forward_passes == 8


def test_head_warmup_trains_the_head_alone_then_gives_back_every_flag() -> None:
    # Prepare
    torch.manual_seed(0)
    client = _client(**{"train.head_warmup_steps": 3})
    model = client.build_model([0, 1], {})
    client.receive(model, {})
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    # Execute
    result = client.head_warmup(model, {"server-round": 1})

    # Assert: only head tensors moved, in 3 optimizer steps; every parameter trains again as before
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert moved and all(name.startswith("head.") for name in moved)
    assert result is not None and result.optimizer_steps == 3
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_head_warmup_is_off_by_default_and_its_steps_count_in_the_round() -> None:
    # Prepare
    plain, warmed = _client(), _client(**{"train.head_warmup_steps": 4})
    config = {"server-round": 1, "layers": [0, 1]}

    # Execute
    off = plain.head_warmup(plain.build_model([0, 1], {}), config)
    _, metrics = warmed.train({}, config)

    # Assert: 4 warm-up steps before the 2 local steps
    assert off is None
    assert metrics["optimizer-steps"] == 6.0 and metrics["forward-passes"] == 6.0


def test_a_negative_head_warmup_is_refused_naming_the_field() -> None:
    # Execute / Assert
    from fedbrick_flower.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="train.head_warmup_steps"):
        load_scenario("fedbrick-tiny", {**SIX_LAYERS, "train.head_warmup_steps": -1})


def test_training_memory_counts_saved_activations_that_grow_with_the_batch() -> None:
    # Prepare
    from fedbrick_flower.clients.trainer import TrainingMemory

    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    measured = {}

    # Execute: one step at batch 8 and one at batch 64, each with a fresh meter
    for batch in (8, 64):
        memory = TrainingMemory(model, optimizer, torch.device("cpu"))
        with memory.step():
            model(torch.randn(batch, 16)).sum().backward()
            optimizer.step()
        measured[batch] = memory.peak_bytes

    # Assert: parameters and gradients (2 x 4 bytes per weight) are in both; the hidden activations saved for the
    # backward pass (at least the 64-wide ReLU output, 4 bytes each) grow with the batch
    weights = sum(p.numel() for p in model.parameters())
    assert measured[8] >= 2 * 4 * weights
    assert measured[64] - measured[8] >= (64 - 8) * 64 * 4


def test_a_measured_step_leaves_no_network_alive_behind_it() -> None:
    """A warm executor runs every message in one process: a step must not keep its network and activations."""
    # Prepare
    import gc
    import weakref

    from fedbrick_flower.clients.trainer import TrainingMemory

    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    memory = TrainingMemory(model, optimizer, torch.device("cpu"))
    with memory.step():
        outputs = model(torch.randn(8, 16))
        torch.sigmoid(outputs)  # a branch the loss does not use: its graph is never freed by a backward pass
        outputs.sum().backward()
        optimizer.step()
    alive = weakref.ref(model[0].weight)

    # Execute
    del model, optimizer, memory, outputs
    gc.collect()

    # Assert
    assert alive() is None


def test_a_client_reports_the_same_peak_memory_after_a_bigger_training_in_its_process() -> None:
    # Prepare: the figure of a 2-layer training alone
    torch.manual_seed(0)
    config = {"server-round": 1, "layers": [0, 1]}
    _, alone = _client().train({}, config)

    # Execute: a 6-layer training first, in the same process (as a persistent warm executor serves them)
    torch.manual_seed(0)
    client = _client()
    client.train({}, {**config, "layers": list(range(6))})
    _, after = client.train({}, config)

    # Assert: peak-memory-mb is the message's own (storages are told apart by address: allow allocator noise)
    assert after["peak-memory-mb"] == pytest.approx(alone["peak-memory-mb"], rel=0.01)


def test_freeze_lora_trains_the_head_only() -> None:
    # Prepare
    client = _client(**{"train.freeze_lora": True})
    layers = [0, 1]

    # Execute
    update, _ = client.train({}, {"server-round": 1, "layers": layers})

    # Assert: only the head travels (its unchanged LoRA stays home), and it moved away from its seeded start
    initial = client.update(client.build_model(layers, {}), {})
    assert any(name.endswith("lora_B") for name in initial)
    assert set(update) == {name for name in initial if name.startswith("head.")}
    assert any(not torch.allclose(update[n].detach(), initial[n].detach()) for n in update)


def test_without_lora_zeroes_b_factors_only() -> None:
    # Prepare
    from fedbrick_flower.evaluation import without_lora

    tensors = {
        "layers.0.attention.self.query.lora_A": np.ones((2, 4)),
        "layers.0.attention.self.query.lora_B": np.ones((4, 2)),
        "head.weight": np.full((3, 4), 2.0),
    }

    # Execute
    stripped = without_lora(tensors)

    # Assert
    assert not stripped["layers.0.attention.self.query.lora_B"].any()
    assert stripped["layers.0.attention.self.query.lora_A"].sum() == pytest.approx(8.0)
    assert stripped["head.weight"].sum() == pytest.approx(24.0)


def test_freeze_lora_holds_for_fedbrick_stage_one() -> None:
    # Prepare
    from fedbrick_flower.clients.fedbrick import FedBrickClient

    scenario = load_scenario("fedbrick-tiny", {"train.freeze_lora": True, "train.local_steps": 2})
    client = FedBrickClient(client_session(scenario, scenario.clients[1]), ClientState(RecordDict()))
    config = {"layers": [1, 3], "brick-rank": 4, "lambda-w": 0.01, "lambda-theta": 0.005, "server-round": 1}
    model = client.build_model([1, 3], config)

    # Execute
    client.stage_one(model, config, steps=2)

    # Assert
    update = client.update(model, {**config, "upload-bricks": False})
    assert all(not update[n].detach().any() for n in update if n.endswith("lora_B"))
