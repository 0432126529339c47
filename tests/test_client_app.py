"""The ClientApp's registration answers on real messages through the in-process grid: what a refused or broken
device says, and to whom."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedbrick_flower import client_app
from fedbrick_flower.client_app import app
from fedbrick_flower.inprocess import ClientAppNode, InProcessGrid, run_in_process
from fedbrick_flower.scenario import load_scenario
from fedbrick_flower.strategies.registration import RunStoppedError, query_messages, refusal_messages


def _grid(node_config: dict) -> InProcessGrid:
    context = Context(
        run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={"scenario": "smoke"}
    )
    return InProcessGrid({1: ClientAppNode(context, app)})


def test_a_profile_the_client_cannot_use_is_named_by_its_id_never_by_its_path(tmp_path: Path) -> None:
    # Prepare: a device profile with a model the scenario does not have
    profile = tmp_path / "secret-folder" / "phone.yaml"
    profile.parent.mkdir()
    profile.write_text("id: phone\nmodel: mpnet2\ntask: ag_news\n")
    grid = _grid({"profile": str(profile)})

    # Execute
    [reply] = grid.send_and_receive(query_messages([1]))

    # Assert
    assert reply.has_error()
    assert reply.error.reason.startswith("client phone failed to register: profile phone: model 'mpnet2'")
    assert "secret-folder" not in reply.error.reason


def test_a_device_the_server_refused_prints_the_reason_on_its_console(capsys: pytest.CaptureFixture) -> None:
    # Prepare
    grid = _grid({"partition-id": 0})

    # Execute
    grid.push_messages(refusal_messages({1: "client bert-full refused: labels ['weather'] are not of task 'ag_news'"}))

    # Assert
    assert capsys.readouterr().err == (
        "fedbrick-flower: the server refused this device: client bert-full refused: labels ['weather'] are not of "
        "task 'ag_news'\n"
    )


def test_a_run_whose_every_client_fails_in_training_stops_with_that_error_before_round_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the real strategy and ClientApp; every client's train handler raises the same error
    scenario = load_scenario("smoke", {"rounds": 3, "server.evaluate_global": False})

    class Broken:
        def __init__(self, *_: object) -> None:
            pass

        def train(self, *_: object) -> None:
            raise ValueError("algorithm_params.probe: the probe must be a decoder of ['llama', 'qwen2'], got 'bert'")

    monkeypatch.setattr(client_app, "_algorithm", lambda *_: Broken())

    # Execute
    with pytest.raises(RunStoppedError) as error:
        run_in_process(scenario, tmp_path, "broken")

    # Assert: one line with the clients' own error; no round was recorded, so no summary claims success
    assert str(error.value) == (
        "round 1: every client failed with: ValueError: algorithm_params.probe: the probe must be a decoder of "
        "['llama', 'qwen2'], got 'bert' (3 updates rejected)"
    )
    assert not (tmp_path / "broken" / "summary.json").exists()
