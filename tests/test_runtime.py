"""Process plumbing: stop() ends what we started, including children in sessions of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedbrick_flower import runtime

# A parent whose child starts a session of its own and ignores SIGTERM (like a SuperLink's ServerApp).
_PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'], start_new_session=True)\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\n"
    "time.sleep(300)\n"
)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_stop_ends_the_process_and_its_detached_children(tmp_path: Path) -> None:
    # Prepare
    pid_file = tmp_path / "child.pid"
    parent = runtime.start([sys.executable, "-c", _PARENT, str(pid_file)], tmp_path / "parent.log", os.environ)
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())

    # Execute
    runtime.stop(parent, grace=1.0)

    # Assert
    assert parent.poll() is not None
    assert not _running(child)


# A command that cleans up in `finally`, as the CLI's commands do, and says when it is ready for a signal.
_COMMAND = (
    "import sys, time\n"
    "from fedbrick_flower import runtime\n"
    "runtime.stop_on_signals()\n"
    "try:\n"
    "    print('ready', flush=True)\n"
    "    time.sleep(60)\n"
    "finally:\n"
    "    print('cleaned up', flush=True)\n"
)


def test_sigterm_runs_the_teardown_and_exits_with_128_plus_the_signal(tmp_path: Path) -> None:
    # Prepare
    process = subprocess.Popen([sys.executable, "-c", _COMMAND], stdout=subprocess.PIPE, text=True, cwd=Path.cwd())
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"

    # Execute
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=20)[0]

    # Assert
    assert process.returncode == 128 + signal.SIGTERM
    assert output.strip() == "cleaned up"


def test_failure_cause_is_the_last_exception_line_of_the_server_log(tmp_path: Path) -> None:
    # Prepare
    log = tmp_path / "server.log"
    log.write_text(
        "2026-11-27 INFO fedbrick_flower: [ROUND 1/2]\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "KeyError: 'first'\n"
        "Traceback (most recent call last):\n"
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: header too large\n"
    )

    # Execute / Assert
    assert runtime.failure_cause(log) == (
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: header too large"
    )
    assert runtime.failure_cause(tmp_path / "missing.log").startswith("no exception recorded in ")


def test_wait_for_run_fails_at_once_when_the_run_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a live stand-in SuperLink, a run Flower reports failed, and no summary
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "server.log").write_text("ValueError: scenario broke\n")
    superlink = runtime.start([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "l.log", os.environ)
    monkeypatch.setattr(runtime, "run_status", lambda connection, run_id, env: "finished:failed")
    started = time.monotonic()

    # Execute
    try:
        runtime.wait_for_run("c", 7, {}, tmp_path / "summary.json", superlink, tmp_path / "l.log", timeout=60)
    except RuntimeError as error:
        message = str(error)
    finally:
        runtime.stop(superlink, grace=1.0)

    # Assert
    assert message.startswith("the ServerApp failed: ValueError: scenario broke; see ")
    assert time.monotonic() - started < 5


def test_flwr_run_echoes_the_stream_and_returns_the_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Prepare: a stand-in `flwr` that prints what Flower prints when it submits a run
    fake = tmp_path / "flwr"
    fake.write_text("#!/bin/sh\necho 'Using SuperLink: c'\necho 'Successfully started run 4242'\nexit 3\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}

    # Execute
    code, run_id = runtime.flwr_run("c", {"scenario": "smoke"}, env)

    # Assert
    assert (code, run_id) == (3, 4242)
    assert "Successfully started run 4242" in capsys.readouterr().out
