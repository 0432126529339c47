"""FLoRA client half: merging stacked blocks into per-module deltas, and deltas into the base weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedbrick_flower.adapters.lora import LoraSettings, attach_lora, lora_modules, lora_tensors
from fedbrick_flower.clients.flora import add_to_base_weights, merge_segments
from fedbrick_flower.models import SequenceClassifier, family_of
from tests.conftest import tiny_model


def _block(a_rows: list[float], b_cols: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Rank-len factors of a 2 x 1 module: A = column vector of rows, B = row of columns."""
    return np.array(a_rows, np.float32)[:, None], np.array([b_cols, b_cols], np.float32)


def test_merge_adds_new_rounds_skips_merged_ones_and_replaces_on_a_cumulative_block() -> None:
    # Prepare: layer 0 stacks round 1 (rank 1: B A = 2 * 3) and round 2 (rank 1: B A = 1 * 5)
    a, b = _block([3.0, 5.0], [2.0, 1.0])
    arrays = {"layers.0.q.lora_A": a, "layers.0.q.lora_B": b}
    segments = {"0": [[1, 1, 1], [2, 2, 1]]}

    # Execute
    fresh, fresh_rounds = merge_segments({}, {}, arrays, segments)
    resent, resent_rounds = merge_segments({"layers.0.q": np.full((2, 1), 6.0)}, {"0": 1}, arrays, segments)
    cumulative, _ = merge_segments({"layers.0.q": np.full((2, 1), 100.0)}, {"0": 1}, arrays, {"0": [[1, 2, 2]]})

    # Assert
    np.testing.assert_allclose(fresh["layers.0.q"], [[11.0], [11.0]])
    assert fresh_rounds == {"0": 2}
    np.testing.assert_allclose(resent["layers.0.q"], [[11.0], [11.0]])  # round 1 was merged already
    assert resent_rounds == {"0": 2}
    np.testing.assert_allclose(cumulative["layers.0.q"], [[11.0], [11.0]])  # replaces, not adds


def test_merge_refuses_a_gap() -> None:
    # Prepare
    a, b = _block([1.0], [1.0])

    # Execute / Assert
    with pytest.raises(ValueError, match="layer 0: received rounds 3..3 but merged only up to round 1"):
        merge_segments({}, {"0": 1}, {"layers.0.q.lora_A": a, "layers.0.q.lora_B": b}, {"0": [[3, 3, 1]]})


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_merged_delta_in_the_base_equals_the_lora_that_carried_it(model_type: str) -> None:
    # Prepare: a LoRA model with random factors, and its twin with B = 0 whose base receives (alpha / r) B A
    family = family_of(model_type)
    backbone = attach_lora(tiny_model(model_type), family, LoraSettings(rank=4, alpha=8.0), seed=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in lora_tensors(backbone, family).values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    model = SequenceClassifier(backbone, 3).eval()
    twin = copy.deepcopy(model)
    deltas = {}
    with torch.no_grad():
        for (layer, module_path), module in lora_modules(twin.backbone, family).items():
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            deltas[f"layers.{layer}.{module_path}"] = (2.0 * b @ a).numpy()
            b.zero_()
    ids = torch.randint(0, 100, (2, 7), generator=generator)
    mask = torch.ones_like(ids)

    # Execute
    add_to_base_weights(twin, deltas)

    # Assert
    with torch.no_grad():
        torch.testing.assert_close(twin(ids, mask), model(ids, mask), rtol=1e-4, atol=1e-5)


def test_merged_updates_persist_in_client_state_across_messages() -> None:
    # Prepare: the smoke scenario's bert-edge (layers 1 and 3, width 256) at rank 2; round 2's payload stacks a
    # rank-3 update for both layers
    from flwr.app import RecordDict

    from fedbrick_flower.clients.flora import MERGED_STATE, ROUNDS_STATE, FLoRAClient
    from fedbrick_flower.clients.profile import ClientSession
    from fedbrick_flower.clients.state import ClientState
    from fedbrick_flower.records import LORA_RANK_KEY
    from fedbrick_flower.registry import FLORA_SEGMENTS_KEY as SEGMENTS_KEY
    from fedbrick_flower.scenario import load_scenario

    scenario = load_scenario("smoke", {"train.local_steps": 1, "tasks.bbc.max_examples": 60})
    session = ClientSession(scenario, scenario.client("bert-edge"))
    records = RecordDict()  # Flower's context.state of this node, kept between messages
    rng = np.random.default_rng(0)
    payload = {}
    for layer in (1, 3):
        for module in ("attention.self.query", "attention.self.value"):
            payload[f"layers.{layer}.{module}.lora_A"] = rng.normal(size=(3, 256)).astype(np.float32) * 0.01
            payload[f"layers.{layer}.{module}.lora_B"] = rng.normal(size=(256, 3)).astype(np.float32) * 0.01
    config = {"layers": [1, 3], "server-round": 2, LORA_RANK_KEY: 2, SEGMENTS_KEY: {"1": [[1, 1, 3]], "3": [[1, 1, 3]]}}
    expected = payload["layers.3.attention.self.value.lora_B"] @ payload["layers.3.attention.self.value.lora_A"]

    # Execute: a training message, then a NEW client half on the same state (as the next message would build)
    update, _ = FLoRAClient(session, ClientState(records)).train(payload, config)
    later = FLoRAClient(session, ClientState(records))
    model = later.build_model([1, 3], {"layers": [1, 3], LORA_RANK_KEY: 2})
    pristine = session.build([1, 3])

    # Assert: the state holds the merged delta and the round; the next message's base carries it
    state = ClientState(records)
    np.testing.assert_allclose(
        state.arrays(MERGED_STATE)["layers.3.attention.self.value"], expected, rtol=1e-5, atol=1e-9
    )
    assert state.get(ROUNDS_STATE) == {"1": 1, "3": 1}
    assert update["layers.1.attention.self.query.lora_A"].shape == (2, 256)  # a fresh LoRA at its own rank
    base = dict(model.backbone.named_parameters())
    original = dict(pristine.backbone.named_parameters())
    name = next(n for n in base if n.endswith("encoder.layer.1.attention.self.value.base_layer.weight"))
    torch.testing.assert_close(base[name] - original[name], torch.as_tensor(expected), rtol=1e-4, atol=1e-6)


def test_fresh_lora_a_is_drawn_per_client_and_round_and_repeats_for_the_same_pair() -> None:
    # Prepare: two clients of one model, at ranks 4 and 2, as FLoRA's server assigns them
    from flwr.app import RecordDict

    from fedbrick_flower.clients.flora import FLoRAClient
    from fedbrick_flower.clients.profile import ClientSession
    from fedbrick_flower.clients.state import ClientState
    from fedbrick_flower.records import LORA_RANK_KEY
    from fedbrick_flower.scenario import load_scenario

    scenario = load_scenario("fedbrick-tiny", {"algorithm": "flora"})
    name = "layers.0.attention.self.query.lora_A"

    def fresh_a(client: str, rank: int, server_round: int) -> torch.Tensor:
        session = ClientSession(scenario, scenario.client(client))
        config = {"layers": [0], "server-round": server_round, LORA_RANK_KEY: rank}
        model = FLoRAClient(session, ClientState(RecordDict())).build_model([0], config)
        return lora_tensors(model.backbone, family_of("bert"))[name].detach().clone()

    # Execute
    high, low = fresh_a("bert-4", 4, 1), fresh_a("bert-2", 2, 1)
    high_next, high_again = fresh_a("bert-4", 4, 2), fresh_a("bert-4", 4, 1)

    # Assert: the rank-2 A is not the leading rows of the rank-4 one, so the stack spans 4 + 2 rows; a new round
    # draws anew; the same (seed, client, round) gives the same A in any process
    stacked = torch.cat([high, low])
    assert int(torch.linalg.matrix_rank(stacked.double())) == 6
    assert not torch.allclose(high, high_next)
    torch.testing.assert_close(high, high_again, rtol=0, atol=0)
