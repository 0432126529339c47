"""H2Tune server half: one seeded bank for everybody, slot-wise means, refusals, and an in-process run with the
real client halves (the ClientApp, one Context per node)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.inprocess import client_app_grid
from fedbrick_flower.records import ADAPTERS_KEY, from_array_record
from fedbrick_flower.scenario import ScenarioError, load_scenario
from fedbrick_flower.strategies.base import RoundCallback
from fedbrick_flower.strategies.h2tune import BANK_MASS_NAME, H2Tune, scenario_problems, slot_mean, update_agreement
from fedbrick_flower.strategies.replies import ClientUpdate
from tests.hybrid import TINY_HYBRID


def _info(client_id: str, rank: int, layers: int, model_type: str = "bert", roles=("q", "v")) -> ClientInfo:
    return ClientInfo(
        client_id=client_id,
        model=model_type,
        task="t",
        group="t",
        model_type=model_type,
        num_layers=layers,
        budget=layers,
        fixed_layers=None,
        layer_schema={},
        head_schema={},
        num_train_examples=10,
        rank=rank,
        roles=list(roles),
        adapter_kinds=["triple"],
    )


def _strategy(clients: list[ClientInfo], **kwargs) -> H2Tune:
    strategy = H2Tune(seed=7, **kwargs)
    strategy.clients = {c.client_id: c for c in clients}
    return strategy


def _update(client: ClientInfo, value: float, examples: int, mass: np.ndarray | None = None) -> ClientUpdate:
    arrays = {name: np.full((3, 4, 4), value, np.float32) for name in ("bank.q", "bank.v")}
    if mass is not None:
        arrays[BANK_MASS_NAME] = mass.astype(np.float32)
    return ClientUpdate(client, arrays, examples, {"num-examples": float(examples)})


def test_the_bank_is_seeded_once_from_the_federation_and_sent_alike_to_everybody() -> None:
    # Prepare: ranks 2 and 4, depths 2 and 3, llama adapts q k v o gate up down, bert q v
    small, large = _info("small", 2, 2), _info("large", 4, 3, "llama", roles=("all-linear",))
    strategy = _strategy([small, large])

    # Execute
    first, config = strategy.payload(small, 1, "train")
    second, _ = strategy.payload(large, 1, "train")
    again = _strategy([small, large]).payload(small, 1, "train")[0]

    # Assert
    assert set(first) == {f"bank.{r}" for r in ("q", "k", "v", "o", "gate", "up", "down")}
    assert all(value.shape == (3, 4, 4) for value in first.values())
    assert all(first[name] is second[name] for name in first)  # one bank, broadcast
    assert all(np.array_equal(first[name], again[name]) for name in first)  # seeded by the run, not per client
    assert np.all(np.abs(first["bank.q"]) <= 0.5) and np.abs(first["bank.q"]).max() > 0.1  # Kaiming, 1/sqrt(4)
    assert config["h2tune-max-rank"] == 4 and config["h2tune-slots"] == 3
    assert strategy.expected_update(small, 1) == {"bank.q": (3, 4, 4), "bank.v": (3, 4, 4)}
    assert strategy.refuse(_info("fits", 2, 3, roles=("q", "o"))) is None
    assert "rank 8 exceeds the bank's R = 4" in strategy.refuse(_info("late", 8, 2))
    assert "4 layers exceed the bank's 3 slots" in strategy.refuse(_info("deep", 2, 4))
    bert_only = _strategy([small])
    bert_only.seed_bank()
    assert "roles ['o'] have no bank (it holds ['q', 'v'])" in bert_only.refuse(_info("other", 2, 2, roles=("o",)))


@pytest.mark.parametrize(
    ("weighting", "expected"),
    [("uniform", (1.0 + 4.0) / 2), ("examples", (1.0 * 10 + 4.0 * 30) / 40)],
)
def test_bank_is_the_mean_of_the_uploads(weighting: str, expected: float) -> None:
    # Prepare
    a, b = _info("a", 2, 3), _info("b", 4, 3)
    strategy = _strategy([a, b], weighting=weighting, bank_init="zeros")
    strategy.seed_bank()

    # Execute
    strategy.aggregate(1, [_update(a, 1.0, 10), _update(b, 4.0, 30)])

    # Assert
    np.testing.assert_allclose(strategy.bank["q"], expected, rtol=1e-6)
    assert strategy._log_rows[-1]["bank-bytes"] == 2 * 3 * 4 * 4 * 4


def test_relation_mass_weights_each_slot_and_a_slot_nobody_relates_to_keeps_its_value() -> None:
    # Prepare: a relates fully to slot 0 and half to slot 1; b relates to slot 1 only; nobody to slot 2
    a, b = _info("a", 4, 3), _info("b", 4, 3)
    strategy = _strategy([a, b], relation_mass=True, bank_init="zeros")
    strategy.seed_bank()
    strategy.bank = {role: np.full((3, 4, 4), 9.0, np.float32) for role in strategy.bank}

    # Execute
    strategy.aggregate(1, [_update(a, 1.0, 10, np.array([1.0, 0.5, 0.0])), _update(b, 4.0, 10, np.array([0, 2.0, 0]))])

    # Assert: slot 1 weighs b by min(1, 2) = 1 against a's 0.5
    bank = strategy.bank["q"]
    np.testing.assert_allclose(bank[:, 0, 0], [1.0, (0.5 * 1.0 + 1.0 * 4.0) / 1.5, 9.0], rtol=1e-6)
    assert strategy.expected_update(a, 1)[BANK_MASS_NAME] == (3,)


def test_update_agreement_separates_same_model_and_cross_model_pairs() -> None:
    # Prepare: from a zero bank, a1 and a2 (model m1) move alike, b (model m2) moves orthogonally to them
    a1, a2, b = _info("a1", 2, 3), _info("a2", 2, 3), _info("b", 2, 3, model_type="llama")
    received = {"q": np.zeros((3, 4, 4), np.float32)}
    moves = [np.eye(4)[None].repeat(3, 0), 2 * np.eye(4)[None].repeat(3, 0), np.fliplr(np.eye(4))[None].repeat(3, 0)]
    updates = [ClientUpdate(c, {"bank.q": m}, 1, {}) for c, m in zip((a1, a2, b), moves, strict=True)]

    # Execute
    same, cross = update_agreement(updates, received)

    # Assert
    assert same == pytest.approx(1.0) and cross == pytest.approx(0.0)


def test_slot_mean_by_hand() -> None:
    banks = [np.ones((2, 1, 1)), np.full((2, 1, 1), 3.0)]
    result = slot_mean(banks, [np.array([1.0, 0.0]), np.array([3.0, 0.0])], np.full((2, 1, 1), -1.0))
    np.testing.assert_allclose(result[:, 0, 0], [2.5, -1.0])


def test_a_loopback_round_with_the_real_client_halves_sends_only_the_bank(tmp_path: Path) -> None:
    # Prepare: the tiny hybrid federation (bert 2 x 32 rank 2, llama 5 x 48 rank 4, mpnet 3 x 64 rank 8)
    path = tmp_path / "hybrid.yaml"
    path.write_text(yaml.safe_dump({**TINY_HYBRID, "rounds": 2}))
    grid = client_app_grid({"scenario": str(path)}, 6)

    class Rows(RoundCallback):
        rows: list[dict] = []

        def on_round_end(self, strategy, server_round: int, log_rows: list[dict]) -> None:
            self.rows.extend(log_rows)

    strategy = H2Tune(seed=0, min_clients=6, callbacks=[Rows()])

    # Execute
    strategy.start(grid, num_rounds=2)

    # Assert: every client trained both rounds; R = 8, L_max = 5 (llama-a), q and v
    rows = Rows.rows
    uploads = [m for m in grid.replies if m.metadata.message_type == "train"]
    assert len(uploads) == 12 and not [r for r in rows if r["phase"] == "rejected"]
    assert {name for m in uploads for name in from_array_record(m.content[ADAPTERS_KEY])} == {"bank.q", "bank.v"}
    downloads = [m for m in grid.pushed if m.metadata.message_type == "train"]
    assert {name for m in downloads for name in from_array_record(m.content[ADAPTERS_KEY])} == {"bank.q", "bank.v"}
    bank_rows = [r for r in rows if r["phase"] == "h2tune"]
    assert [r["uploads"] for r in bank_rows] == [6, 6] and all(r["bank-change"] > 0 for r in bank_rows)
    assert all(-1.0 <= r["update-cosine-cross-model"] <= 1.0 for r in bank_rows)
    assert {role: value.shape for role, value in strategy.bank.items()} == {"q": (5, 8, 8), "v": (5, 8, 8)}
    state = grid.contexts[4].state  # llama-b holds 3 of 5 layers: its Π is 5 x 3, kept on the device
    assert any(key.endswith("h2tune-local") for key in state)
    assert json.loads(strategy.clients["llama-b"].to_json())["budget"] == 3


def test_the_scenario_check_names_every_bad_parameter_and_passes_the_defaults() -> None:
    # Prepare
    bad = {"resample_layers": True, "alternation": "never", "kl_weight": -1.0, "slots": 0}
    scenario = load_scenario("h2tune", {"algorithm_params": bad})

    # Execute
    problems = scenario_problems(scenario)

    # Assert: the same words the strategy raises when built in code
    assert problems == [
        "resample_layers: H2Tune keeps each device's relation matrix per held layer; keep them fixed",
        "alternation: must be one of ['sequential', 'joint_step', 'off'], got 'never'",
        "kl_weight: must be >= 0, got -1.0",
        "slots: must be a positive integer, got 0",
    ]
    assert scenario_problems(load_scenario("h2tune")) == []
    with pytest.raises(ScenarioError, match="alternation: must be one of"):
        H2Tune(alternation="never")
