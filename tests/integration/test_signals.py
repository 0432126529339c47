"""A failed run fails fast, and SIGTERM or SIGINT to any ``fedbrick-flower`` command stops every process it started.

Each test starts ``fedbrick-flower`` in its own session, records the processes it started (the SuperLink with its
SuperExec and ServerApp, or the SuperNode with its SuperExec) by PID, signals the command alone, and checks that
every recorded process is gone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fedbrick_flower import runtime
from fedbrick_flower.deployment.processes import SuperLinkSettings, start_superlink
from tests.integration.test_deployment import smoke_subset, wait_for

pytestmark = pytest.mark.integration


def fedbrick(args: list[str], log_file: Path, home: Path) -> subprocess.Popen:
    """``fedbrick-flower ARGS`` of the imported package (this checkout, whatever is installed), in its own session."""
    env = runtime.flower_env(home, {"PYTHONPATH": str(runtime.app_dir())})
    return runtime.start([sys.executable, "-m", "fedbrick_flower.cli", *args], log_file, env)


FAST = ["--set", "rounds=1", "--set", "train.local_steps=1", "--set", "server.evaluate_global=false"]


def _processes(root: subprocess.Popen) -> list[psutil.Process]:
    """The command and every process it started, as it stands now."""
    parent = psutil.Process(root.pid)
    return [parent, *parent.children(recursive=True)]


def _names(processes: list[psutil.Process]) -> set[str]:
    """Program names: ``flower-superlink`` for ``python .../bin/flower-superlink ...`` (a console script)."""
    names = set()
    for process in processes:
        try:
            parts = [Path(part).name for part in process.cmdline()[:2]]
        except psutil.NoSuchProcess:
            continue
        if parts:
            names.add(parts[1] if parts[0].startswith("python") and len(parts) > 1 else parts[0])
    return names


def _signal_and_collect(command: subprocess.Popen, signum: int) -> tuple[int, list[psutil.Process]]:
    """Send ``signum`` to the command alone; return its exit code and the processes still running 20 s later."""
    started = _processes(command)
    command.send_signal(signum)
    try:
        code = command.wait(timeout=60)
    finally:
        runtime.stop(command)
    _, alive = psutil.wait_procs(started, timeout=20)
    left = [process for process in alive if process.status() != psutil.STATUS_ZOMBIE]
    for process in left:  # leave nothing behind, whatever the assertion says
        process.kill()
    return code, left


def test_sigterm_to_run_stops_its_superlink_and_everything_it_started(tmp_path: Path) -> None:
    # Prepare: a simulation whose run has been submitted
    log_file = tmp_path / "run.out"
    command = fedbrick(["run", "smoke", "--out", str(tmp_path / "run"), *FAST], log_file, tmp_path)
    try:
        wait_for(lambda: "Successfully started run" in log_file.read_text(), 300, "run submitted", command)
    except AssertionError:
        runtime.stop(command)
        raise
    names = _names(_processes(command))

    # Execute
    code, left = _signal_and_collect(command, signal.SIGTERM)

    # Assert
    assert "flower-superlink" in names, names
    assert code == 128 + signal.SIGTERM
    assert not left, [process.cmdline() for process in left]


def test_sigint_to_server_stops_its_superlink_and_superexec(tmp_path: Path) -> None:
    # Prepare: a server waiting for SuperNodes
    scenario = smoke_subset(tmp_path, ["bert-edge"])
    args = ["server", "--insecure", "--scenario", str(scenario), "--out", str(tmp_path / "run")]
    args += ["--fleet-address", f"127.0.0.1:{runtime.free_port()}", "--control-port", str(runtime.free_port())]
    log_file = tmp_path / "server.out"
    command = fedbrick(args, log_file, tmp_path)
    try:
        wait_for(lambda: "waiting for SuperNodes" in log_file.read_text(), 180, "SuperLink ready", command)
        wait_for(lambda: "flower-superexec" in _names(_processes(command)), 60, "SuperExec", command)
    except AssertionError:
        runtime.stop(command)
        raise
    names = _names(_processes(command))

    # Execute
    code, left = _signal_and_collect(command, signal.SIGINT)

    # Assert
    assert {"flower-superlink", "flower-superexec"} <= names, names
    assert code == 128 + signal.SIGINT
    assert not left, [process.cmdline() for process in left]


@pytest.fixture(scope="module")
def bare_superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain ``flower-superlink`` (no run submitted) on loopback: the Fleet address a SuperNode can join."""
    folder = tmp_path_factory.mktemp("superlink")
    settings = SuperLinkSettings(f"127.0.0.1:{runtime.free_port()}", runtime.free_port())
    with runtime.running([start_superlink(settings, folder, runtime.flower_env(folder / ".flwr-home"))]):
        yield settings.fleet_address


@pytest.mark.parametrize("executor", ["flower", "warm"])
def test_sigterm_to_client_stops_its_supernode_and_superexec(
    tmp_path: Path, executor: str, bare_superlink: str
) -> None:
    # Prepare: a SuperNode that joined a SuperLink where no run is submitted; its executor is up: Flower's
    # flower-superexec, or the warm executor once it has reached the SuperNode's Runtime API
    args = ["client", "--insecure", "--superlink", bare_superlink, "--client-id", "bert-edge"]
    args += ["--port", str(runtime.free_port()), "--home", str(tmp_path / "node"), "--executor", executor]
    log_file = tmp_path / "client.out"
    command = fedbrick(args, log_file, tmp_path)
    try:
        if executor == "flower":
            wait_for(lambda: "flower-superexec" in _names(_processes(command)), 120, "SuperExec", command)
        else:
            connected = "connected to the SuperNode's Runtime API"
            wait_for(lambda: connected in log_file.read_text(), 180, "warm executor", command)
    except AssertionError:
        runtime.stop(command)
        raise

    # Execute
    _, left = _signal_and_collect(command, signal.SIGTERM)  # the exit code is Flower's own

    # Assert: `client` became the SuperNode (same PID), which takes its executor with it
    assert not left, [process.cmdline() for process in left]


def test_failed_serverapp_ends_run_at_once_with_its_cause(tmp_path: Path) -> None:
    # Prepare: resume from a checkpoint file that is not a safetensors file: the ServerApp fails as it loads it
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint").mkdir(parents=True)
    (run_dir / "checkpoint" / "state.safetensors").write_text("not a checkpoint")
    log_file = tmp_path / "run.out"

    # Execute
    command = fedbrick(["run", "smoke", "--out", str(run_dir), "--resume", *FAST], log_file, tmp_path)
    try:
        code = command.wait(timeout=300)
    finally:
        runtime.stop(command)
    ended = time.time()
    output = log_file.read_text()

    # Assert: non-zero, the exception named, and well within the 120 s it used to wait for a summary
    assert code == 2, output[-3000:]
    assert "fedbrick-flower: error: the ServerApp failed: " in output
    assert "SafetensorError" in output.rsplit("fedbrick-flower: error:", 1)[1]
    failed_at = (run_dir / "logs" / "server.log").stat().st_mtime
    assert ended - failed_at < 30, f"{ended - failed_at:.0f} s from the ServerApp's failure to the exit"
