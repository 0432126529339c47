"""FedBRICK on every registered family: a client training message and the server distillation both run."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from fedbrick_flower.adapters.brick import brick_schema
from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.clients.fedbrick import FedBrickClient
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.scenario import load_scenario
from fedbrick_flower.strategies.fedbrick import FedBRICK
from fedbrick_flower.strategies.replies import ClientUpdate
from tests.conftest import TINY_CONFIGS


def _scenario(model_type: str):
    """``fedbrick-tiny`` with its model swapped for a 4-layer, width-32 random-init model of ``model_type``."""
    return load_scenario(
        "fedbrick-tiny",
        {
            "models.tiny-bert.family": model_type,
            "models.tiny-bert.config": TINY_CONFIGS[model_type],
            "algorithm_params.distill_epochs": 2,
            "algorithm_params.distill_lr": 0.01,
        },
    )


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_client_round_trip_on_every_family(model_type: str) -> None:
    # Prepare
    scenario = _scenario(model_type)
    strategy = FedBRICK.from_scenario(scenario, seed=0, **scenario.algorithm_params)
    session = client_session(scenario, scenario.client("bert-2"))
    info = ClientInfo.from_json(session.describe(FedBrickClient.adapter_kinds).to_json(), node_id=0)
    strategy.clients[info.client_id] = info
    arrays, config = strategy.payload(info, 1, "train")

    # Execute
    update, metrics = FedBrickClient(session, ClientState(RecordDict())).train(
        arrays, {**config, "local-steps": 2, "server-round": 1}
    )
    sent = {name: value.detach().cpu().numpy().copy() for name, value in update.items()}
    strategy.aggregate(1, [ClientUpdate(info, sent, int(metrics["num-examples"]), metrics)])

    # Assert: the update has the declared schema, training moved every kept layer's LoRA B away from its zero
    # init and the head away from what was sent; the only client's LoRA is the aggregate.
    expected = strategy.expected_update(info, 1)
    assert set(update) == set(expected)
    assert all(tuple(update[name].shape) == shape for name, shape in expected.items())
    assert set(brick_schema(range(4), 32, 4)) <= set(update)
    kept_b = [name for name in sent if name.endswith("lora_B")]
    assert kept_b and all(np.abs(sent[name]).max() > 0 for name in kept_b)
    initial_head = session.build(list(config["layers"])).head.weight.detach().numpy()  # the seeded init
    assert not np.allclose(sent["head.weight"], initial_head)
    for name in kept_b:
        np.testing.assert_allclose(strategy.state[f"tiny-bert/{name}"], sent[name], rtol=1e-6)
    distilled = [r for r in strategy._log_rows if r["phase"] == "distill"]
    assert [r["layer"] for r in distilled] == [0, 1, 2, 3]
    assert all(r["mse_after"] <= r["mse_before"] for r in distilled)
