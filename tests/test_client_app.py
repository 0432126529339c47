"""The ClientApp's registration answers on real messages through the in-process grid: what a refused or broken
device says, and to whom."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedbrick_flower.client_app import app
from fedbrick_flower.inprocess import ClientAppNode, InProcessGrid
from fedbrick_flower.strategies.registration import query_messages, refusal_messages


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
