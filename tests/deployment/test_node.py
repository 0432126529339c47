"""How ``client``, ``launch`` and ``executor`` start a SuperNode's ClientApp executor (no process is started)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedbrick_flower import cli, runtime
from fedbrick_flower.deployment import commands, node
from fedbrick_flower.deployment.processes import SuperLinkSettings


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands this process would have become (``os.execvp``/``os.execvpe`` recorded, not run)."""
    calls: list[list[str]] = []
    monkeypatch.setattr(node.os, "execvp", lambda file, args: calls.append(list(args)))
    monkeypatch.setattr(commands.os, "execvpe", lambda file, args, env: calls.append(list(args)))
    monkeypatch.setattr(commands, "wait_until_reachable", lambda *_: 0)  # no SuperLink to reach in a unit test
    return calls


def _after(command: list[str], separator: str = node.SEPARATOR) -> list[str]:
    return command[command.index(separator) + 1 :]


PACED_SUPERNODE = [sys.executable, "-m", "fedbrick_flower.deployment.pacing", "--poll=0.5", "--"]


def _paced(command: list[str]) -> bool:
    """Whether ``command`` is flower-supernode run through the pacing wrapper at the default poll."""
    return command[: len(PACED_SUPERNODE)] == PACED_SUPERNODE and command[len(PACED_SUPERNODE)] == "--grpc-rere"


def test_client_runs_its_supernode_in_process_isolation_beside_a_warm_executor(
    execs: list[list[str]], tmp_path: Path
) -> None:
    # Execute
    argv = ["client", "--superlink", "127.0.0.1:9092", "--client-id", "a", "--insecure", "--port", "9101"]
    cli.main([*argv, "--home", str(tmp_path), "--warm", "fork"])

    # Assert: the launcher starts the executor on the node's Runtime API, then becomes the (paced) SuperNode
    [command] = execs
    assert command[:3] == [sys.executable, "-m", "fedbrick_flower.deployment.node"]
    options = command[3 : command.index(node.SEPARATOR)]
    assert options == ["--runtime-api-address", "127.0.0.1:9101", "--insecure", "--warm", "fork"]
    supernode = _after(command)
    assert _paced(supernode)
    assert supernode[supernode.index("--isolation") + 1] == "process"


def test_client_with_flowers_executor_is_the_stock_supernode(execs: list[list[str]], tmp_path: Path) -> None:
    # Execute
    argv = ["client", "--superlink", "127.0.0.1:9092", "--client-id", "a", "--insecure", "--executor", "flower"]
    cli.main([*argv, "--home", str(tmp_path)])

    # Assert: the (paced) SuperNode starts flower-superexec itself (subprocess isolation, Flower's default)
    [command] = execs
    assert _paced(command)
    assert "--isolation" not in command


@pytest.mark.parametrize("executor", ["warm", "flower"])
def test_launch_starts_each_node_with_the_chosen_executor(
    executor: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare
    started: list[list[str]] = []
    monkeypatch.setattr(runtime, "start", lambda command, log, env: started.append(list(command)))
    args = argparse.Namespace(executor=executor, warm="persistent", heartbeat=None, poll=0.5)

    # Execute
    commands._start_supernode("a", SuperLinkSettings("127.0.0.1:9092", 8000), None, tmp_path, args)

    # Assert
    [command] = started
    if executor == "warm":
        assert command[command.index("--warm") + 1] == "persistent"
        assert _paced(_after(command)) and "--isolation" in command
    else:
        assert _paced(command) and "--isolation" not in command


@pytest.mark.parametrize(
    ("host", "expected"), [("0.0.0.0", "127.0.0.1:9094"), ("10.1.2.3", "10.1.2.3:9094"), ("::", "[::1]:9094")]
)
def test_a_local_executor_dials_the_runtime_api_where_the_supernode_listens(host: str, expected: str) -> None:
    # Assert
    assert node.runtime_address(host, 9094) == expected


def test_executor_flower_becomes_flower_superexec_with_the_same_options(execs: list[list[str]]) -> None:
    # Execute
    argv = ["executor", "--executor", "flower", "--runtime-api-address", "supernode-1:9094", "--root-certificates"]
    cli.main([*argv, "ca.crt", "--superexec-auth-secret-file", "secret", "--parent-pid", "42"])

    # Assert
    assert execs == [
        [
            "flower-superexec", "--runtime-api-address", "supernode-1:9094", "--root-certificates", "ca.crt",
            "--superexec-auth-secret-file", "secret", "--parent-pid", "42",
        ]
    ]  # fmt: skip


def test_executor_rejects_a_poll_interval_flower_would_reject(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = cli.main(["executor", "--runtime-api-address", "127.0.0.1:9094", "--insecure", "--poll-interval", "0"])

    # Assert
    assert code == 2
    assert "--poll-interval: 0.0 is outside 0.01..60 seconds" in capsys.readouterr().err


def test_the_launcher_starts_the_executor_following_its_pid_then_becomes_the_supernode(
    monkeypatch: pytest.MonkeyPatch, execs: list[list[str]]
) -> None:
    # Prepare
    spawned: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kwargs: spawned.append(command))

    # Execute
    node.main(["--runtime-api-address", "127.0.0.1:9094", "--insecure", "--", "flower-supernode", "--insecure"])

    # Assert: the PID stays through exec, so the executor's --parent-pid is the SuperNode's
    [executor] = spawned
    assert executor[:4] == [sys.executable, "-m", "fedbrick_flower.cli", "executor"]
    assert executor[-2:] == ["--parent-pid", str(os.getpid())]
    assert execs == [["flower-supernode", "--insecure"]]


def test_executor_help_lists_flower_superexecs_options() -> None:
    # Execute
    result = subprocess.run(
        [sys.executable, "-m", "fedbrick_flower.cli", "executor", "--help"], capture_output=True, text=True, check=True
    )

    # Assert
    for flag in ("--runtime-api-address", "--insecure", "--root-certificates", "--superexec-auth-secret-file"):
        assert flag in result.stdout
    assert "--parent-pid" in result.stdout
