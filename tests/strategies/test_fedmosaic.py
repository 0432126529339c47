"""FedMosaic's server half: RELA weights, per-client global P/Q across families, LoRA within a family, A/B once."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.inprocess import InProcessGrid
from fedbrick_flower.records import (
    ADAPTERS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PROFILE_KEY,
    from_array_record,
    to_array_record,
)
from fedbrick_flower.scenario import ScenarioError, load_scenario
from fedbrick_flower.strategies.fedmosaic import GRADIENT_NAME, FedMosaic, scenario_problems
from fedbrick_flower.strategies.similarity import columnwise_cosine, softmax_weights

GRADIENT_SHAPE = (2, 3)


def _client(cid: str, node: int, model: str, model_type: str, width: int = 8) -> ClientInfo:
    return ClientInfo(
        client_id=cid,
        model=model,
        task="t",
        group="t",
        model_type=model_type,
        num_layers=4,
        budget=4,
        fixed_layers=None,
        layer_schema={},
        head_schema={},
        num_train_examples=10,
        hidden_size=width,
        intermediate_size=16,
        num_heads=2,
        num_kv_heads=2,
        head_dim=width // 2,
        rank=2,
        alpha=4.0,
        roles=["q", "v"],
        adapter_kinds=["colora"],
        node_id=node,
    )


def _strategy(**kwargs: object) -> FedMosaic:
    strategy = FedMosaic(seed=0, align="random_shared", n_blocks=2, **kwargs)
    strategy.probe_dims = (5, GRADIENT_SHAPE[1])  # 0.4 * 5 = 2 rows
    return strategy


def test_column_wise_similarity_and_self_excluded_softmax_match_hand_computation() -> None:
    # Prepare: client 0 and 1 agree on column 0 and are opposite on column 1; client 2 is orthogonal on both
    g = np.array([[[1.0, 1.0], [0.0, 0.0]], [[1.0, -1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]])

    # Execute
    similarity = columnwise_cosine(g)
    weights = softmax_weights(similarity, temperature=0.5, include_self=False)

    # Assert: S_01 = (1 + (-1)) / 2 = 0, S_02 = S_12 = 0 -> uniform over the two others
    np.testing.assert_allclose(similarity, np.eye(3))
    np.testing.assert_allclose(weights, (np.ones((3, 3)) - np.eye(3)) / 2)
    # and with S_01 = 0.5: w_01 = e^{1} / (e^{1} + e^{0})
    weights = softmax_weights(np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]), 0.5, include_self=False)
    np.testing.assert_allclose(weights[0], [0.0, np.e / (np.e + 1), 1 / (np.e + 1)])


def _node(info: ClientInfo, shapes: dict, p_value: float, gradient: np.ndarray, seen: list[dict]) -> object:
    """A FedMosaic-like node: every uploaded tensor holds ``p_value``, its descriptor is ``gradient``."""

    def answer(message: Message) -> Message:
        if message.metadata.message_type == MessageType.QUERY:
            return Message(RecordDict({CONFIG_KEY: ConfigRecord({PROFILE_KEY: info.to_json()})}), reply_to=message)
        seen.append(from_array_record(message.content[ADAPTERS_KEY]))
        arrays = {name: np.full(shape, p_value, np.float32) for name, shape in shapes.items()}
        arrays[GRADIENT_NAME] = gradient
        metrics = MetricRecord(
            {"num-examples": 10.0, "train-loss": 1.0, "eval-accuracy": 0.5, "eval-num-examples": 4.0}
        )
        return Message(RecordDict({ADAPTERS_KEY: to_array_record(arrays), METRICS_KEY: metrics}), reply_to=message)

    return answer


def test_two_loopback_rounds_mix_p_q_across_families_and_lora_within_a_family() -> None:
    # Prepare: two BERT clients and one Llama client of the same width (random_shared needs equal widths)
    infos = [
        _client("bert-a", 1, "bert", "bert"),
        _client("bert-b", 2, "bert", "bert"),
        _client("llama", 3, "llama", "llama"),
    ]
    gradients = [
        np.array([[1.0, 0, 0], [0, 0, 0]]),
        np.array([[1.0, 0, 0], [0, 1, 0]]),
        np.array([[0, 0, 1.0], [0, 0, 0]]),
    ]
    strategy = _strategy()
    shapes = {}
    for info in infos:
        strategy.layers_for(info, 1, "train")
        shapes[info.client_id] = {n: s for n, s in strategy.expected_update(info, 1).items() if n != GRADIENT_NAME}
    seen = {info.client_id: [] for info in infos}
    grid = InProcessGrid(
        {
            info.node_id: _node(
                info, shapes[info.client_id], float(i + 1), gradients[i].astype(np.float32), seen[info.client_id]
            )
            for i, info in enumerate(infos)
        }
    )

    # Execute
    strategy.start(grid, num_rounds=2)

    # Assert: aligned A, B only in each client's first payload
    for payloads in seen.values():
        assert any(n.endswith(".A") and n.startswith("colora.") for n in payloads[0])
        assert not any(n.startswith("colora.") and n[-1] in "AB" for n in payloads[1])
    # P_G of bert-a: RELA weights over bert-b (value 2) and llama (value 3), from the column-wise similarity
    similarity = columnwise_cosine(np.stack(gradients))
    weights = softmax_weights(similarity, 0.5, include_self=False)
    expected_p = (weights[0, 1] * 2.0 + weights[0, 2] * 3.0) / (weights[0, 1] + weights[0, 2])
    np.testing.assert_allclose(seen["bert-a"][1]["colora.0.q.P"], expected_p, rtol=1e-5)
    # the same P, Q names reach both families; ordinary LoRA only from the same family
    pq = lambda payload: {n for n in payload if n.startswith("colora.")}  # noqa: E731
    assert pq(seen["bert-a"][1]) == pq(seen["llama"][1])
    lora = [n for n in seen["bert-a"][1] if n.endswith("lora_A")]
    assert lora and all(np.allclose(seen["bert-a"][1][n], 2.0) for n in lora)
    assert not any(n.endswith("lora_A") for n in seen["llama"][1])  # no other Llama client: no global LoRA


def test_uniform_weighting_and_no_cross_model_sharing_are_ablations() -> None:
    # Prepare
    strategy = _strategy(weighting="uniform", share_across_models=False)
    strategy.gradients = {"a": np.ones(GRADIENT_SHAPE), "b": -np.ones(GRADIENT_SHAPE)}

    # Execute
    similarity = strategy.similarity_matrix(["a", "b"])

    # Assert
    np.testing.assert_array_equal(similarity, np.zeros((2, 2)))
    assert not strategy.share_across_models


def test_random_shared_refuses_different_widths_and_bad_fields_are_named() -> None:
    # Prepare
    strategy = _strategy()
    strategy._frozen(_client("a", 1, "small", "bert", width=8))

    # Execute / Assert
    with pytest.raises(ScenarioError, match="random_shared"):
        strategy._frozen(_client("b", 2, "big", "bert", width=16))
    with pytest.raises(ScenarioError, match="algorithm_params.align"):
        FedMosaic(align="magic")


def test_a_second_rank_is_refused_at_registration() -> None:
    # Prepare
    strategy = _strategy()
    strategy.clients["a"] = _client("a", 1, "bert", "bert")
    other = _client("b", 2, "bert", "bert")
    other.rank = 4

    # Execute
    reason = strategy.refuse(other)

    # Assert
    assert reason is not None and "lora.rank" in reason


def test_checkpointed_state_restores_every_clients_adapters_gradient_and_deliveries() -> None:
    # Prepare
    strategy = _strategy()
    strategy.local = {"a": {"colora.0.q.P": np.ones((2, 2), np.float32)}}
    strategy.globals = {"a": {"colora.0.q.P": np.full((2, 2), 2.0, np.float32)}}
    strategy.gradients = {"a": np.full(GRADIENT_SHAPE, 3.0, np.float32)}
    strategy.frozen = {"bert": {"colora.0.q.A": np.eye(2, 8, dtype=np.float32)}}
    strategy.delivered = {"a"}
    arrays, meta = strategy.algorithm_state()

    # Execute
    restored = _strategy()
    restored.load_algorithm_state(arrays, json.loads(json.dumps(meta)))

    # Assert
    np.testing.assert_array_equal(restored.local["a"]["colora.0.q.P"], 1.0)
    np.testing.assert_array_equal(restored.globals["a"]["colora.0.q.P"], 2.0)
    np.testing.assert_array_equal(restored.gradients["a"], 3.0)
    np.testing.assert_array_equal(restored.frozen["bert"]["colora.0.q.A"], np.eye(2, 8))
    assert restored.delivered == {"a"}


def test_the_scenario_check_names_bad_parameters_then_what_the_alignment_needs() -> None:
    # Prepare: smoke's BERT and Llama differ in their v width (Llama has 2 key-value heads of 4); every client at
    # full depth (4 layers), which FedMosaic needs
    def problems(**overrides: object) -> list[str]:
        full_depth = {"clients.1.layers": 4, "clients.2.layers": 4}
        return scenario_problems(load_scenario("smoke", {"algorithm": "fedmosaic", **full_depth, **overrides}))

    # Execute
    bad = problems(algorithm_params={"align": "magic", "gradient_every": 0})
    no_proxy = problems(**{"data.proxy_fraction": 0.0})
    random_shared = problems(algorithm_params={"align": "random_shared"})
    one_model = problems(**{"data.proxy_fraction": 0.0, "clients.2.model": "tiny-bert"})

    # Assert
    assert bad == [
        "algorithm_params.align: 'magic' is not one of ['random_shared', 'pivot_l2_cca']",
        "algorithm_params.gradient_every: must be >= 1, got 0",
    ]
    assert no_proxy == [
        "data.proxy_fraction: align='pivot_l2_cca' needs a public proxy split (> 0) to align the federation's 2 models"
    ]
    assert len(random_shared) == 1 and random_shared[0].startswith(
        "algorithm_params.align: 'random_shared' needs equal widths, got {'tiny-bert': "
    )
    assert one_model == []


def test_the_scenario_check_refuses_a_partial_depth_client_and_an_encoder_probe_at_load() -> None:
    # Prepare: smoke's bert-edge holds layers (1, 3) of 4 and llama-edge 2 of 4; tiny-bert is an encoder
    scenario = load_scenario("smoke", {"algorithm": "fedmosaic", "clients.2.layers": 4})
    encoder_probe = load_scenario(
        "smoke",
        {"algorithm": "fedmosaic", "clients.1.layers": 4, "clients.2.layers": 4, "algorithm_params.probe": "tiny-bert"},
    )

    # Execute
    depth = scenario_problems(scenario)
    probe = scenario_problems(encoder_probe)

    # Assert
    assert depth == [
        "clients.bert-edge.layers: FedMosaic needs full-depth clients (Co-LoRA's block ends are fixed by the whole "
        "depth); it holds 2 of tiny-bert's 4"
    ]
    assert probe == ["algorithm_params.probe: the probe must be a decoder of ['llama', 'qwen2'], got 'bert'"]
