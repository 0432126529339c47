"""H2Tune client half: the two phases touch only their own parameters, and the device state survives a fresh
process per message (a state folder, as in deployment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedbrick_flower.adapters.triple import RELATION_NAME, initial_relation
from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.clients.h2tune import LOCAL_STATE, PREVIOUS_STATE, H2TuneClient, Objective, _optimizer
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.clients.trainer import cycle_batches
from fedbrick_flower.scenario import parse_scenario
from fedbrick_flower.strategies.h2tune import H2Tune
from tests.hybrid import TINY_HYBRID

SCENARIO = parse_scenario(TINY_HYBRID)


def _strategy(**kwargs) -> H2Tune:
    strategy = H2Tune(seed=0, **kwargs)
    for profile in SCENARIO.clients:
        described = client_session(SCENARIO, profile).describe(H2TuneClient.adapter_kinds)
        strategy.clients[profile.id] = ClientInfo.from_json(described.to_json(), 0)
    return strategy


def _client(client_id: str, records: RecordDict, folder: Path | None = None) -> H2TuneClient:
    profile = SCENARIO.client(client_id)
    return H2TuneClient(client_session(SCENARIO, profile), ClientState(records, folder, client_id, scope="run"))


def _message(strategy: H2Tune, client_id: str, server_round: int) -> tuple[dict, dict]:
    arrays, instructions = strategy.payload(strategy.clients[client_id], server_round, "train")
    return dict(arrays), {**instructions, "server-round": server_round}


def _snapshot(parameters: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


def _changed(after: list[torch.Tensor], before: list[torch.Tensor]) -> list[bool]:
    return [not torch.equal(a.detach(), b) for a, b in zip(after, before, strict=True)]


def test_phase_a_updates_only_shared_parameters_and_phase_b_only_task_specific_ones() -> None:
    # Prepare: a client in its second round (a previous T exists), one batch
    strategy = _strategy()
    client = _client("llama-a", RecordDict())
    arrays, config = _message(strategy, "llama-a", 1)
    model = client.build_model(config["layers"], config)
    client.receive(model, arrays)
    with torch.no_grad():  # B != 0 so that the middles and Π get a task gradient
        for name, parameter in model.named_parameters():
            if name.endswith("triple_B"):
                parameter.normal_(0.0, 0.1)
    previous = {f"{g}.{path}": torch.zeros(4, 4).numpy() for g, path in Objective(model, config, {}).modules}
    objective = Objective(model, config, previous)
    settings = SCENARIO.train
    phase_a = _optimizer(model, objective.shared, settings.lr, settings.head_lr, 0.0)
    phase_b = _optimizer(model, objective.specific, settings.lr, settings.head_lr, 0.0)
    batch = next(cycle_batches(client.session.examples("train"), 4, seed=0))
    shared, specific = _snapshot(objective.shared), _snapshot(objective.specific)

    # Execute: phase (a) steps inside the loss function; phase (b) is the trainer's step
    loss = objective.alternating(phase_a)(model, batch, 0)
    after_a_shared, after_a_specific = _snapshot(objective.shared), _snapshot(objective.specific)
    phase_b.zero_grad(set_to_none=True)
    loss.backward()
    phase_b.step()

    # Assert
    assert len(objective.shared) == 5 * 2 + 1  # D of q and v on 5 layers, and Π
    assert all(_changed(after_a_shared, shared)) and not any(_changed(after_a_specific, specific))
    assert not any(_changed(objective.shared, after_a_shared)) and all(_changed(objective.specific, after_a_specific))


def test_state_round_trips_through_a_state_folder_with_a_fresh_client_per_message(tmp_path: Path) -> None:
    # Prepare
    strategy = _strategy()
    folder = tmp_path / "device"

    # Execute: round 1 in one "process", round 2 in another (new records, only the folder persists)
    first = _client("mpnet-a", RecordDict(), folder)
    arrays, config = _message(strategy, "mpnet-a", 1)
    update, _ = first.train(arrays, config)
    first.state.save()
    saved = first.state.arrays(LOCAL_STATE)
    second = _client("mpnet-a", RecordDict(), folder)
    arrays, config = _message(strategy, "mpnet-a", 2)
    model = second.build_model(config["layers"], config)
    second.receive(model, arrays)
    loaded = {name: t.detach().numpy() for name, t in model.named_parameters()}

    # Assert: only the bank travelled; A, B, Π and the head came back from the folder as trained
    assert set(update) == {"bank.q", "bank.v"}
    assert set(second.state.keys()) >= {LOCAL_STATE, PREVIOUS_STATE}
    assert any(name.endswith("triple_A") for name in saved) and RELATION_NAME in saved and "head.weight" in saved
    np.testing.assert_array_equal(loaded["backbone.triple_bank.relation"], saved[RELATION_NAME])
    np.testing.assert_array_equal(loaded["head.weight"], saved["head.weight"])
    b_name = next(name for name in saved if name.endswith("triple_B"))
    assert np.abs(saved[b_name]).sum() > 0  # B moved off its zero initialisation in round 1
    assert not np.allclose(saved[RELATION_NAME], initial_relation(3, 5))  # Π learned


@pytest.mark.parametrize("learn_relation", [True, False])
def test_relation_is_learned_unless_fixed_at_its_relative_depth_init(learn_relation: bool) -> None:
    # Prepare
    strategy = _strategy(learn_relation=learn_relation)
    client = _client("llama-b", RecordDict())
    arrays, config = _message(strategy, "llama-b", 1)

    # Execute
    client.train(arrays, config)

    # Assert: llama-b holds 3 layers; the bank has 5 slots (llama-a's depth)
    relation = client.state.arrays(LOCAL_STATE)[RELATION_NAME]
    assert relation.shape == (5, 3)
    assert np.allclose(relation, initial_relation(3, 5)) is not learn_relation


@pytest.mark.parametrize("form", ["squared", "norm"])
def test_the_penalty_is_the_mean_squared_norm_by_default_or_the_codes_un_squared_one(form: str) -> None:
    # Prepare
    strategy = _strategy(norm_form=form)
    client = _client("llama-a", RecordDict())
    arrays, config = _message(strategy, "llama-a", 1)
    model = client.build_model(config["layers"], config)
    client.receive(model, arrays)
    objective = Objective(model, config, {})
    tensors = [m.middle() for m in objective.modules.values()] + [objective.relation]

    # Execute
    penalty = float(objective.penalty().detach())

    # Assert: by hand over the active middles and Π (fixed selection: no scores)
    norms = [float(t.detach().norm()) for t in tensors]
    expected = np.mean(np.square(norms)) if form == "squared" else np.mean(norms)
    assert penalty == pytest.approx(expected, rel=1e-5)
    assert config["h2tune-norm-form"] == form


def test_defaults_are_the_squared_penalty_at_a_weight_that_lets_the_task_through() -> None:
    # Execute
    _, config = _message(_strategy(), "llama-a", 1)

    # Assert
    assert config["h2tune-norm-form"] == "squared" and config["h2tune-norm-weight"] == 1e-4


def test_middles_get_no_task_gradient_while_b_is_zero_and_one_after_b_leaves_it() -> None:
    # Prepare: a first round's network (B = 0) and one batch; the task loss alone
    strategy = _strategy()
    client = _client("llama-a", RecordDict())
    arrays, config = _message(strategy, "llama-a", 1)
    model = client.build_model(config["layers"], config)
    client.receive(model, arrays)
    middles = [m.triple_D for m in Objective(model, config, {}).modules.values()]
    batch = next(cycle_batches(client.session.examples("train"), 4, seed=0))

    def middle_gradient() -> float:
        model.zero_grad(set_to_none=True)
        logits = model(batch["input_ids"], batch["attention_mask"])
        torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
        return sum(float(d.grad.abs().sum()) for d in middles if d.grad is not None)

    # Execute
    at_zero = middle_gradient()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("triple_B"):
                parameter.normal_(0.0, 0.1)
    after = middle_gradient()

    # Assert
    assert at_zero == 0.0 and after > 0.0


def test_a_training_message_reports_how_far_the_middles_moved() -> None:
    # Prepare
    strategy = _strategy()
    client = _client("llama-a", RecordDict())
    arrays, config = _message(strategy, "llama-a", 1)

    # Execute
    _, metrics = client.train(arrays, config)

    # Assert: the relative change of T over the round, positive and small
    assert 0.0 < metrics["h2tune-t-moved"] < 1.0
