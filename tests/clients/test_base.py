"""The shared client half: one training message trains, then scores its own test split where the round asks."""

from __future__ import annotations

from flwr.app import RecordDict

from fedbrick_flower.clients.fedavg import FedAvgClient
from fedbrick_flower.clients.profile import client_session
from fedbrick_flower.clients.state import ClientState
from fedbrick_flower.records import EVAL_PREFIX
from fedbrick_flower.scenario import load_scenario


def test_clients_score_every_kth_round_and_the_last() -> None:
    # Prepare: 3 rounds, the clients' own evaluation every 2nd round.
    scenario = load_scenario("fedbrick-tiny", {"algorithm": "fedavg", "rounds": 3, "train.evaluate_every": 2})
    session = client_session(scenario, scenario.clients[2])
    client = FedAvgClient(session, ClientState(RecordDict()))

    # Execute
    scored = {}
    for server_round in (1, 2, 3):
        config = {"layers": [0], "server-round": server_round, "local-steps": 1, "wire-dtype": "float32"}
        _, metrics = client.train({}, config)
        scored[server_round] = sorted(key for key in metrics if key.startswith(EVAL_PREFIX))

    # Assert: round 1 trains only; round 2 (the 2nd) and round 3 (the last) also score, and time the scoring.
    assert scored[1] == []
    assert scored[2] == scored[3] and {"eval-accuracy", "eval-loss", "eval-seconds"} <= set(scored[3])
