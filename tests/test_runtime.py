"""Process plumbing: stop() ends what we started, including children in sessions of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
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
    log, flower_log = tmp_path / "server.log", tmp_path / "superlink.log"
    log.write_text(
        "2026-11-27 INFO fedbrick_flower: [ROUND 1/2]\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "KeyError: 'first'\n"
        "Traceback (most recent call last):\n"
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: header too large\n"
    )
    flower_log.write_text("INFO: Start `flwr-serverapp` process\nhttpx.ConnectError: [Errno 111] Connection refused\n")

    # Execute / Assert: the ServerApp's own log first, then Flower's, then a pointer to both
    assert runtime.failure_cause(log, flower_log) == (
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: header too large"
    )
    assert runtime.failure_cause(tmp_path / "missing.log", flower_log) == (
        "httpx.ConnectError: [Errno 111] Connection refused"
    )
    nothing = runtime.failure_cause(tmp_path / "missing.log", tmp_path / "none.log")
    assert nothing.startswith("no exception recorded in ")


def _wait_for_failed_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    submitted_at: float,
    details: str = "Task failed because the run expired",
) -> tuple[str, type]:
    superlink = runtime.start([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "l.log", os.environ)
    monkeypatch.setattr(runtime, "run_status", lambda connection, run_id, env: ("finished:failed", details))
    try:
        runtime.wait_for_run(
            "c", 7, {}, tmp_path / "summary.json", superlink, tmp_path / "l.log", timeout=60, submitted_at=submitted_at
        )
    except RuntimeError as error:
        return str(error), type(error)
    finally:
        runtime.stop(superlink, grace=1.0)
    raise AssertionError("wait_for_run returned for a failed run")


def test_wait_for_run_fails_at_once_when_the_run_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a live stand-in SuperLink, a run Flower reports failed, and no summary
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "server.log").write_text("ValueError: scenario broke\n")
    started = time.monotonic()

    # Execute
    message, kind = _wait_for_failed_run(tmp_path, monkeypatch, submitted_at=time.time() - 5)

    # Assert: the ServerApp ran (it wrote its log after the submission), so this is its failure, with Flower's word
    assert message.startswith(
        "the ServerApp failed: ValueError: scenario broke (Flower: Task failed because the run expired); see "
    )
    assert kind is RuntimeError
    assert time.monotonic() - started < 5


def test_a_run_failed_before_the_server_app_wrote_its_log_never_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a server log left by an earlier run (a resumed run dir), older than this submission
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "server.log").write_text("ValueError: the last run broke\n")

    # Execute
    message, kind = _wait_for_failed_run(tmp_path, monkeypatch, submitted_at=time.time() + 5)

    # Assert
    assert kind is runtime.RunNeverStarted
    assert "(Flower: Task failed because the run expired)" in message


def test_submit_run_submits_again_only_a_run_that_never_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Prepare: the first run never starts, the second one writes its summary
    submitted: list[int] = []
    summary = tmp_path / "summary.json"

    def flwr_run(connection: str, values: dict, env: dict) -> tuple[int, int]:
        submitted.append(len(submitted) + 1)
        return 0, len(submitted)

    def wait_for_run(connection: str, run_id: int, *args: object, **kwargs: object) -> None:
        if run_id == 1:
            raise runtime.RunNeverStarted("the ServerApp failed: no exception recorded")
        summary.write_text("{}")

    monkeypatch.setattr(runtime, "flwr_run", flwr_run)
    monkeypatch.setattr(runtime, "wait_for_run", wait_for_run)

    # Execute
    runtime.submit_run("c", {}, {}, summary, None, tmp_path / "l.log")  # type: ignore[arg-type]

    # Assert
    assert submitted == [1, 2] and summary.exists()
    assert "submitting the run again (attempt 2 of 2)" in capsys.readouterr().out


def test_submit_run_gives_up_after_its_attempts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: no run ever starts
    def never_started(*args: object, **kwargs: object) -> None:
        raise runtime.RunNeverStarted("the ServerApp failed")

    monkeypatch.setattr(runtime, "flwr_run", lambda connection, values, env: (0, 1))
    monkeypatch.setattr(runtime, "wait_for_run", never_started)

    # Execute / Assert
    with pytest.raises(runtime.RunNeverStarted):
        runtime.submit_run("c", {}, {}, tmp_path / "s.json", None, tmp_path / "l.log", attempts=2)  # type: ignore[arg-type]


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


def test_a_stopped_run_states_its_reason_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the ServerApp stopped for too few clients; Flower's details repeat the exception's message
    reason = "only 0 of the required 2 clients connected within 20s (server.node_wait_timeout); stopping the run"
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "server.log").write_text(f"Traceback (most recent call last):\nRunStoppedError: {reason}\n")

    # Execute
    message, _ = _wait_for_failed_run(
        tmp_path, monkeypatch, time.time() - 5, details=f"ServerApp failed with exception: {reason}"
    )

    # Assert
    assert message.startswith(f"the ServerApp failed: RunStoppedError: {reason}; see ")
    assert message.count("node_wait_timeout") == 1


def test_the_streamed_log_leaves_tracebacks_out_and_keeps_the_rest() -> None:
    # Prepare
    lines = [
        "INFO :      [ROUND 1/3]\n",
        "ERROR :     ServerApp raised an exception\n",
        "Traceback (most recent call last):\n",
        '  File "x.py", line 1, in <module>\n',
        "    strategy.start(grid)\n",
        "fedbrick_flower.strategies.registration.RunStoppedError: only 0 of the required 2 clients connected\n",
        "INFO :      the end\n",
    ]

    # Execute
    kept = list(runtime.without_tracebacks(lines))

    # Assert
    assert kept == [lines[0], lines[1], lines[6]]


def test_ended_tells_a_live_process_from_an_ended_and_reaped_one() -> None:
    # Prepare
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # noqa: S603 - this interpreter
    watched = psutil.Process(child.pid)

    # Execute
    while_alive = runtime.ended(watched)
    child.kill()
    child.wait()
    after_the_end = runtime.ended(watched)

    # Assert
    assert not while_alive
    assert after_the_end
