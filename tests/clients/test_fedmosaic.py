"""FedMosaic client half: what lasts between messages lives in the state handle, and what leaves the device."""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
from flwr.app import RecordDict

from fedbrick_flower.client_info import ClientInfo
from fedbrick_flower.clients.fedmosaic import EMA, LOCAL, OPTIMIZER, FedMosaicClient
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.scenario import parse_scenario
from fedbrick_flower.strategies.fedmosaic import GRADIENT_NAME, FedMosaic

TINY = {
    "family": "bert",
    "tokenizer": "minilm",
    "config": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64},
}
PROBE = {
    "family": "llama",
    "tokenizer": "minilm",
    "config": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 40,
        "tie_word_embeddings": True,
    },
}
SCENARIO = {
    "algorithm": "fedmosaic",
    "seed": 0,
    "models": {"tiny": TINY, "probe": PROBE},
    "tasks": {"news": {"dataset": "bbc-news", "max_examples": 80}},
    "data": {"partition": "iid", "max_length": 12, "proxy_fraction": 0.1},
    "train": {"local_steps": 2, "batch_size": 4, "lr": 0.01, "head_lr": 0.01},
    "lora": {"rank": 2, "alpha": 4},
    "algorithm_params": {"probe": "probe", "gradient_every": 1, "n_blocks": 2, "align": "random_shared"},
    "clients": [{"id": "a", "model": "tiny", "task": "news"}, {"id": "b", "model": "tiny", "task": "news"}],
}


def _message(strategy: FedMosaic, info: ClientInfo, server_round: int) -> tuple[dict, dict]:
    arrays, config = strategy.payload(info, server_round, "train")
    return arrays, {**json.loads(json.dumps(config)), "server-round": server_round}


def test_two_messages_carry_l_the_ema_and_the_optimizer_through_the_state_handle_only() -> None:
    # Prepare
    torch.set_num_threads(1)
    scenario = parse_scenario(copy.deepcopy(SCENARIO))
    session = client_session(scenario, scenario.clients[0])
    strategy = FedMosaic.from_scenario(scenario, seed=0, **scenario.algorithm_params)
    info = ClientInfo.from_json(session.describe(("colora",)).to_json(), node_id=1)
    strategy.clients[info.client_id] = info
    records = RecordDict()

    # Execute: two rounds, each with a freshly built client half on the same records
    first, _ = FedMosaicClient(session, ClientState(records)).train(*_message(strategy, info, 1))
    ema_one = ClientState(records).arrays(EMA)[GRADIENT_NAME]
    second, _ = FedMosaicClient(session, ClientState(records)).train(*_message(strategy, info, 2))
    state = ClientState(records)

    # Assert: P left zero in round 1, round 2 started from it (Adam's step count went on), the EMA mixed
    p_one, p_two = first["colora.0.q.P"].numpy(), second["colora.0.q.P"].numpy()
    assert np.abs(p_one).sum() > 0 and not np.allclose(p_one, p_two)
    assert state.arrays(OPTIMIZER)["colora.0.q.P/step"].item() == 4.0
    assert "head.weight" in state.arrays(LOCAL) and not any(n.startswith("head.") for n in second)
    assert not any(".gate" in n for n in second)
    assert second[GRADIENT_NAME].shape == strategy.expected_update(info, 2)[GRADIENT_NAME]
    assert not np.allclose(state.arrays(EMA)[GRADIENT_NAME], ema_one)
