"""FedBip / FedBip-L server half: hand-computed mixing, per-layer weights, partial depth, groups, heads, state."""

from __future__ import annotations

import numpy as np
import pytest

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.run_dir import load_checkpoint, save_checkpoint
from fedbrick_flower.scenario import ScenarioError, load_scenario
from fedbrick_flower.strategies.fedbip import SIMILARITY_PHASE, FedBip, FedBipL, scenario_problems
from fedbrick_flower.strategies.replies import ClientUpdate

R = 1 / np.sqrt(2)
# One adapted module per layer with rank 1: a task vector's layer block is [A (2 values), B (2 values)].
LAYER_SCHEMA = {"q.lora_A": [1, 2], "q.lora_B": [2, 1]}
HEADS = {"t": {"head.weight": [3, 2], "head.bias": [3]}, "u": {"head.weight": [5, 2], "head.bias": [5]}}


def _client(cid: str, task: str = "t", layers: list[int] | None = None, rank: int = 1, model: str = "m") -> ClientInfo:
    schema = {"q.lora_A": [rank, 2], "q.lora_B": [2, rank]}
    return ClientInfo(
        client_id=cid,
        model=model,
        task=task,
        group=task,
        model_type="bert",
        num_layers=2,
        budget=len(layers or [0, 1]),
        fixed_layers=layers or [0, 1],
        layer_schema=schema,
        head_schema=HEADS[task],
        num_train_examples=10,
    )


def _zeros(client: ClientInfo) -> dict[str, np.ndarray]:
    """Starting adapters of every layer: zeros, so θ̄ after a round is exactly the weighted sum of τ's."""
    return {name: np.zeros(shape, np.float32) for name, shape in client.schema(range(client.num_layers)).items()}


def _strategy(clients: list[ClientInfo], cls: type[FedBip] = FedBip, **kwargs) -> FedBip:
    strategy = cls(seed=0, initial_adapters=_zeros, **kwargs)
    strategy.clients = {c.client_id: c for c in clients}
    return strategy


def _tau(client: ClientInfo, a: dict[int, tuple[float, float]], head: float = 0.0, b=None) -> dict[str, np.ndarray]:
    """A task vector with lora_A of layer g = ``a[g]``, lora_B = ``b[g]`` (default 0) and a constant head."""
    tau = {}
    for g, value in a.items():
        tau[f"layers.{g}.q.lora_A"] = np.array([value], np.float32)
        tau[f"layers.{g}.q.lora_B"] = np.array((b or {}).get(g, (0.0, 0.0)), np.float32).reshape(2, 1)
    tau.update({name: np.full(shape, head, np.float32) for name, shape in client.head_schema.items()})
    return tau


def _round(strategy: FedBip, server_round: int, taus: dict[str, dict[str, np.ndarray]]) -> None:
    updates = []
    for cid, tau in taus.items():
        client = strategy.clients[cid]
        strategy.payload(client, server_round, "train")
        updates.append(ClientUpdate(client, tau, num_examples=10, metrics={}))
    strategy.aggregate(server_round, updates)


def _a(strategy: FedBip, cid: str, g: int) -> np.ndarray:
    return strategy.personal[cid][f"layers.{g}.q.lora_A"].ravel()


def test_weights_clip_negative_cosines_and_count_self() -> None:
    # Prepare: a = (1, 0), b = (1, 1), c = (-1, 0) on the one layer each holds.
    clients = [_client(cid, layers=[0]) for cid in "abc"]
    strategy = _strategy(clients)
    taus = {c.client_id: _tau(c, {0: v}) for c, v in zip(clients, [(1, 0), (1, 1), (-1, 0)], strict=True)}

    # Execute
    _round(strategy, 1, taus)

    # Assert: p_a = [1, R, 0] / (1 + R); c opposes both and keeps exactly its own τ; b never takes from c.
    row = strategy._log_rows[-1]
    assert row["phase"] == SIMILARITY_PHASE and row["clients"] == ["a", "b", "c"]
    np.testing.assert_almost_equal(row["similarity"], [[1, R, -1], [R, 1, -R], [-1, -R, 1]], decimal=4)
    np.testing.assert_almost_equal(row["weights"][0], [1 / (1 + R), R / (1 + R), 0], decimal=4)
    np.testing.assert_almost_equal(_a(strategy, "a", 0), [1.0, R / (1 + R)], decimal=6)
    np.testing.assert_almost_equal(_a(strategy, "b", 0), [1.0, 1 / (1 + R)], decimal=6)
    np.testing.assert_almost_equal(_a(strategy, "c", 0), [-1.0, 0.0], decimal=6)


def test_softmax_weighting_option() -> None:
    # Prepare
    clients = [_client(cid, layers=[0]) for cid in "ab"]
    strategy = _strategy(clients, weighting="softmax", temperature=0.5)
    taus = {"a": _tau(clients[0], {0: (1, 0)}), "b": _tau(clients[1], {0: (1, 1)})}
    p = np.array([np.e**2, np.e ** (2 * R)]) / (np.e**2 + np.e ** (2 * R))

    # Execute
    _round(strategy, 1, taus)

    # Assert
    np.testing.assert_almost_equal(_a(strategy, "a", 0), p[0] * np.array([1, 0]) + p[1] * np.array([1, 1]), 6)


def test_fedbip_l_weights_each_layer_where_fedbip_sees_one_cosine() -> None:
    # Prepare: the clients agree on layer 0 (cos R) and conflict on layer 1 (cos -1); whole-model cos = 0.
    taus = {"a": {0: (1, 0), 1: (0, 1)}, "b": {0: (1, 1), 1: (0, -1)}}
    results = {}
    for cls in (FedBip, FedBipL):
        clients = [_client("a"), _client("b")]
        strategy = _strategy(clients, cls)

        # Execute
        _round(strategy, 1, {cid: _tau(strategy.clients[cid], a) for cid, a in taus.items()})
        results[cls] = strategy

    # Assert: FedBip gives b no weight anywhere; FedBip-L mixes layer 0 with b and keeps layer 1 apart.
    flat, layerwise = results[FedBip], results[FedBipL]
    np.testing.assert_almost_equal(flat._log_rows[-1]["similarity"], [[1, 0], [0, 1]], decimal=4)
    np.testing.assert_almost_equal(_a(flat, "a", 0), [1.0, 0.0])
    np.testing.assert_almost_equal(_a(layerwise, "a", 0), [1.0, R / (1 + R)], decimal=6)
    np.testing.assert_almost_equal(_a(layerwise, "a", 1), [0.0, 1.0])
    np.testing.assert_almost_equal(layerwise._log_rows[-1]["weights"][0], [(1 / (1 + R) + 1) / 2, R / (1 + R) / 2], 4)


def test_absent_or_conflicting_client_state_stays_apart() -> None:
    # Prepare: x conflicts with y and z (negative cosines), so its weights to and from them are zero.
    clients = [_client(cid, layers=[0]) for cid in "xyz"]
    strategy = _strategy(clients)
    _round(
        strategy, 1, {cid: _tau(c, {0: (-1 if cid == "x" else 1, 0)}) for cid, c in zip("xyz", clients, strict=True)}
    )
    after_one = {name: value.copy() for name, value in strategy.personal["x"].items()}
    y_after_one = _a(strategy, "y", 0).copy()

    # Execute: x is absent from round 2.
    _round(strategy, 2, {"y": _tau(clients[1], {0: (0, 1)}), "z": _tau(clients[2], {0: (1, 1)})})

    # Assert: x's θ̄ is bit-identical; y and z never received any of x's τ.
    for name, value in after_one.items():
        np.testing.assert_array_equal(strategy.personal["x"][name], value)
    np.testing.assert_almost_equal(_a(strategy, "x", 0), [-1.0, 0.0])
    np.testing.assert_almost_equal(y_after_one, [1.0, 0.0])
    np.testing.assert_almost_equal(_a(strategy, "y", 0), [1 + R / (1 + R), 1.0], decimal=6)


def test_partial_depth_compares_shared_layers_and_mixes_among_holders() -> None:
    # Prepare: deep holds layers 0 and 1, edge only layer 1. Deep's layer 0 must not dilute the cosine.
    deep, edge = _client("deep", layers=[0, 1]), _client("edge", layers=[1])
    strategy = _strategy([deep, edge])
    taus = {"deep": _tau(deep, {0: (5, 5), 1: (1, 0)}), "edge": _tau(edge, {1: (1, 1)})}

    # Execute
    _round(strategy, 1, taus)

    # Assert: cos on layer 1 alone = R; layer 0 has one holder, so deep keeps its own τ there.
    np.testing.assert_almost_equal(strategy._log_rows[-1]["similarity"], [[1, R], [R, 1]], decimal=4)
    np.testing.assert_almost_equal(_a(strategy, "deep", 0), [5.0, 5.0])
    np.testing.assert_almost_equal(_a(strategy, "deep", 1), [1.0, R / (1 + R)], decimal=6)
    np.testing.assert_almost_equal(_a(strategy, "edge", 1), [1.0, 1 / (1 + R)], decimal=6)
    assert "layers.0.q.lora_A" not in strategy.personal["edge"]


def test_ranks_and_models_form_separate_groups() -> None:
    # Prepare: same direction everywhere, but r1 and r2 differ in rank and other is another model.
    r1, r2, other = _client("r1", layers=[0]), _client("r2", layers=[0], rank=2), _client("o", layers=[0], model="n")
    strategy = _strategy([r1, r2, other])
    tau_r2 = {
        "layers.0.q.lora_A": np.ones((2, 2), np.float32),
        "layers.0.q.lora_B": np.zeros((2, 2), np.float32),
        **_tau(r2, {}),
    }

    # Execute
    _round(strategy, 1, {"r1": _tau(r1, {0: (1, 1)}), "r2": tau_r2, "o": _tau(other, {0: (2, 2)})})

    # Assert: one similarity row per group, each client keeps exactly its own τ.
    rows = [r for r in strategy._log_rows if r["phase"] == SIMILARITY_PHASE]
    assert sorted(r["group"] for r in rows) == ["m/r1", "m/r2", "n/r1"]
    np.testing.assert_almost_equal(_a(strategy, "r1", 0), [1.0, 1.0])
    np.testing.assert_almost_equal(_a(strategy, "o", 0), [2.0, 2.0])
    np.testing.assert_almost_equal(strategy.personal["r2"]["layers.0.q.lora_A"], np.ones((2, 2)))


def test_heads_mix_only_within_a_task_with_renormalised_weights() -> None:
    # Prepare: three clients with identical layer τ's (weights 1/3 each); a and b share task t, c has task u.
    a, b, c = _client("a", layers=[0]), _client("b", layers=[0]), _client("c", task="u", layers=[0])
    strategy = _strategy([a, b, c])

    # Execute
    _round(strategy, 1, {"a": _tau(a, {0: (1, 0)}, 1.0), "b": _tau(b, {0: (1, 0)}, 3.0), "c": _tau(c, {0: (1, 0)}, 7)})

    # Assert: heads of t average a and b (1/3 each, renormalised to 1/2); c's head of another shape is its own.
    np.testing.assert_almost_equal(strategy.personal["a"]["head.weight"], np.full((3, 2), 2.0))
    np.testing.assert_almost_equal(strategy.personal["b"]["head.bias"], np.full(3, 2.0))
    np.testing.assert_almost_equal(strategy.personal["c"]["head.weight"], np.full((5, 2), 7.0))
    np.testing.assert_almost_equal(_a(strategy, "c", 0), [1.0, 0.0])


def test_stale_task_vector_contributes_with_decay() -> None:
    # Prepare: c trains in round 1 only; a in round 2 only, with γ = 0.5.
    a, c = _client("a", layers=[0]), _client("c", layers=[0])
    strategy = _strategy([a, c], staleness_decay=0.5)
    _round(strategy, 1, {"c": _tau(c, {0: (1, 1)})})
    c_before = _a(strategy, "c", 0).copy()

    # Execute
    _round(strategy, 2, {"a": _tau(a, {0: (1, 0)})})

    # Assert: p_a = [1, 0.5 R] / (1 + 0.5 R); c is not a receiver and keeps its θ̄.
    w = 0.5 * R / (1 + 0.5 * R)
    np.testing.assert_almost_equal(_a(strategy, "a", 0), (1 - w) * np.array([1, 0]) + w * np.array([1, 1]), 6)
    np.testing.assert_array_equal(_a(strategy, "c", 0), c_before)
    assert strategy._log_rows[-1]["ages"] == [0, 1] and strategy._log_rows[-1]["receivers"] == ["a"]


def test_product_similarity_differs_from_factor_similarity() -> None:
    # Prepare: start A = (1, 0), B = 0. a moves B by (1, 0); b moves A by (1, 0) and B by (1, 0).
    # ΔW_a = [[1, 0], [0, 0]], ΔW_b = (1, 0)ᵀ (2, 0) = [[2, 0], [0, 0]]: product cos 1, factor cos R.
    def start(client: ClientInfo) -> dict[str, np.ndarray]:
        values = _zeros(client)
        values["layers.0.q.lora_A"] = np.array([[1.0, 0.0]], np.float32)
        return values

    cosines = {}
    for mode in ("factors", "product"):
        a, b = _client("a", layers=[0]), _client("b", layers=[0])
        strategy = FedBip(seed=0, initial_adapters=start, similarity_on=mode)
        strategy.clients = {"a": a, "b": b}

        # Execute
        _round(strategy, 1, {"a": _tau(a, {0: (0, 0)}, b={0: (1, 0)}), "b": _tau(b, {0: (1, 0)}, b={0: (1, 0)})})
        cosines[mode] = strategy._log_rows[-1]["similarity"][0][1]

    # Assert
    assert cosines["factors"] == pytest.approx(R, abs=1e-4)
    assert cosines["product"] == pytest.approx(1.0, abs=1e-4)


def test_payload_starts_from_the_initial_adapters_then_sends_theta_bar() -> None:
    # Prepare
    a, b = _client("a", layers=[1]), _client("b", layers=[1])
    strategy = _strategy([a, b])

    # Execute
    first, config = strategy.payload(a, 1, "train")
    _round(strategy, 1, {"a": _tau(a, {1: (1, 0)}), "b": _tau(b, {1: (-1, 0)})})
    second, _ = strategy.payload(a, 2, "train")

    # Assert
    assert config == {"layers": [1]}
    assert set(first) == {"layers.1.q.lora_A", "layers.1.q.lora_B", "head.weight", "head.bias"}
    assert all(not value.any() for value in first.values())
    np.testing.assert_almost_equal(second["layers.1.q.lora_A"].ravel(), [1.0, 0.0])


def test_state_round_trips_through_a_checkpoint(tmp_path) -> None:
    # Prepare
    clients = [_client("a"), _client("b", layers=[1]), _client("c", task="u")]
    strategy = _strategy(clients, staleness_decay=0.9)
    rng = np.random.default_rng(0)
    for server_round, present in ((1, "abc"), (2, "ab")):
        taus = {}
        for cid in present:
            client = strategy.clients[cid]
            taus[cid] = {
                n: rng.normal(size=s).astype(np.float32) for n, s in client.schema(client.fixed_layers).items()
            }
        _round(strategy, server_round, taus)
    save_checkpoint(tmp_path / "checkpoint", strategy, 2)
    restored = _strategy([])

    # Execute
    completed = load_checkpoint(tmp_path / "checkpoint", restored)

    # Assert
    assert completed == 2 and restored.start_round == 3
    assert restored.tau_round == {"a": 2, "b": 2, "c": 1}
    assert restored.same_task_share == strategy.same_task_share
    for store in ("personal", "last_tau"):
        original, loaded = getattr(strategy, store), getattr(restored, store)
        assert sorted(original) == sorted(loaded) == ["a", "b", "c"]
        for cid in original:
            assert sorted(original[cid]) == sorted(loaded[cid])
            for name in original[cid]:
                np.testing.assert_array_equal(loaded[cid][name], original[cid][name])


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ScenarioError, match="algorithm_params.weighting"):
        FedBip(weighting="linear")
    with pytest.raises(ScenarioError, match="algorithm_params.staleness_decay"):
        FedBip(staleness_decay=1.5)
    with pytest.raises(RuntimeError, match="initial_adapters"):
        FedBip().payload(_client("a"), 1, "train")


@pytest.mark.parametrize("algorithm", ["fedbip", "fedbip-l"])
def test_the_scenario_check_names_every_bad_parameter_and_passes_the_defaults(algorithm: str) -> None:
    # Prepare
    bad = {"weighting": "linear", "temperature": 0, "staleness_decay": 1.5}
    scenario = load_scenario("fedbip", {"algorithm": algorithm, "algorithm_params": bad})

    # Execute
    problems = scenario_problems(scenario)

    # Assert
    assert problems == [
        "algorithm_params.weighting: 'linear' is not one of ['clipped', 'softmax']",
        "algorithm_params.temperature: must be > 0, got 0",
        "algorithm_params.staleness_decay: must be in (0, 1], got 1.5",
    ]
    assert scenario_problems(load_scenario("fedbip", {"algorithm": algorithm})) == []
