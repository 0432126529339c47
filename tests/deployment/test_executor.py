"""The warm executor's task handling, without a SuperNode: Flower's Runtime API calls are replaced by recorders.

What the executor does with a real SuperNode (the same metric rows as Flower's executor, TLS, signals) is in
``tests/integration/test_warm_executor.py``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore.fab import Fab
from flwr.supercore.task_identity import TaskIdentity

from fedbrick_flower.deployment import executor
from fedbrick_flower.deployment.executor import Apps, RuntimeLink, Stopped, Task

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Pushed:
    """What a task pushed to the (absent) SuperNode: replies, then the task's end."""

    replies: list[Message]
    outputs: list[tuple[str, str]]


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> Pushed:
    record = Pushed([], [])
    monkeypatch.setattr(executor, "push_message", lambda client, message, context: record.replies.append(message))
    monkeypatch.setattr(
        executor,
        "push_task_output",
        lambda client, context, sub_status, details: record.outputs.append((sub_status, details)),
    )
    return record


class FakeClient:
    """A Runtime API client whose heartbeats succeed (or not)."""

    def __init__(self, alive: bool = True) -> None:
        self.alive = alive

    def SendTaskHeartbeat(self, request: Any) -> Any:  # noqa: N802 - Flower's method name
        return SimpleNamespace(success=self.alive)

    def close(self) -> None:
        pass


class FakeLink(RuntimeLink):
    def task_client(self, token: str, tries: int | None = None) -> Any:
        return FakeClient()


def _task() -> Task:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1  # what pull_task_input sets
    message = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=7, message_type="train")
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    return Task(FakeLink("127.0.0.1:9", insecure=True), "token", FakeClient(), message, context)


def _app(handler: Any) -> ClientApp:
    app = ClientApp()
    app.train()(handler)
    return app


def _reply(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"metrics": ConfigRecord({"ok": 1})}), reply_to=msg)


# ------------------------------------------------------------------------------------------------ one task
def test_a_reply_is_pushed_and_the_task_completed(pushed: Pushed) -> None:
    # Prepare
    steps = []

    # Execute
    executor.execute(_task(), _app(_reply), FakeClient(), steps.append)

    # Assert
    assert [reply.has_error() for reply in pushed.replies] == [False]
    assert pushed.outputs == [(SubStatus.COMPLETED, "")]
    assert steps == [b"r", b"f"]


def test_an_exception_of_the_app_becomes_flowers_error_reply(pushed: Pushed) -> None:
    # Prepare
    def broken(msg: Message, context: Context) -> Message:
        raise ValueError("no data file")

    # Execute
    task = _task()
    executor.execute(task, _app(broken), FakeClient(), task.step)

    # Assert: the code and wording of flwr-clientapp's reply
    assert (task.replied, task.finished) == (True, True)
    [reply] = pushed.replies
    assert reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert reply.error.reason == "<class 'ValueError'>:<'no data file'>"
    assert pushed.outputs == [(SubStatus.FAILED, reply.error.reason)]


def test_a_forked_task_that_dies_fails_its_message_only(pushed: Pushed) -> None:
    # Prepare: the child dies hard, as a segfault or an out-of-memory kill would end it
    def crash(msg: Message, context: Context) -> Message:
        os._exit(3)

    # Execute
    executor.run_in_fork(_task(), _app(crash))

    # Assert: the parent (alive, serving the next task) replied with an error and closed the task
    [reply] = pushed.replies
    assert reply.error.code == ErrorCode.CLIENT_APP_CRASHED
    assert "exit code 3" in reply.error.reason
    assert pushed.outputs == [(SubStatus.FAILED, reply.error.reason)]


def test_a_forked_task_reports_from_the_child_and_the_parent_adds_nothing(
    pushed: Pushed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the child's pushes go to a file (its memory is not the parent's)
    log = tmp_path / "child.jsonl"

    def to_file(kind: str) -> Any:
        def push(*args: Any, **kwargs: Any) -> None:
            with log.open("a") as sink:
                sink.write(json.dumps({"kind": kind, "pid": os.getpid()}) + "\n")

        return push

    monkeypatch.setattr(executor, "push_message", to_file("reply"))
    monkeypatch.setattr(executor, "push_task_output", to_file("output"))

    # Execute
    executor.run_in_fork(_task(), _app(_reply))

    # Assert
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["kind"] for row in rows] == ["reply", "output"]
    assert {row["pid"] for row in rows} != {os.getpid()}


def test_fork_mode_refuses_a_parent_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)

    # Execute / Assert
    with pytest.raises(RuntimeError, match="--warm persistent"):
        executor.run_in_fork(_task(), _app(_reply))


def test_a_task_the_node_forgot_ends_the_task_not_the_executor() -> None:
    # Prepare
    lost = []
    beat = executor.heartbeat_fn(FakeClient(alive=False), lambda: lost.append(True))

    # Execute
    result = beat()

    # Assert: flwr-clientapp's heartbeat would have raised SIGINT in this process
    assert result is True
    assert lost == [True]


def test_a_failed_pull_closes_the_task_and_the_executor_goes_on(
    pushed: Pushed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    def no_input(client: Any) -> Any:
        raise RuntimeError("No messages received from Runtime API")

    monkeypatch.setattr(executor, "pull_task_input", no_input)

    # Execute
    kind = executor.serve_task(FakeLink("127.0.0.1:9", insecure=True), "token", Apps(), executor.run_in_process)

    # Assert
    assert kind == "unknown"
    assert pushed.replies == []
    assert pushed.outputs == [(SubStatus.FAILED, "<class 'RuntimeError'>:<'No messages received from Runtime API'>")]


def test_sigterm_raises_stopped_through_the_apps_own_exception_handlers() -> None:
    # Prepare
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    executor.stop_on_signals(exit_grace=24 * 3600)  # the hard exit must not end this test process

    # Execute
    try:
        with pytest.raises(Stopped):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except Exception:  # noqa: BLE001 - what an app's handler would do
                pytest.fail("the app's `except Exception` caught the stop")
        ignored = signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)

    # Assert: a second signal during the teardown is ignored
    assert ignored


def _in_child(body: Any) -> tuple[int, float]:
    """Run ``body`` in a forked child that exits with its return value; its exit code and seconds taken."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = body()
        finally:
            os._exit(code)
    status = os.waitpid(pid, 0)[1]
    return os.waitstatus_to_exitcode(status), time.monotonic() - started


def test_a_stop_that_the_process_loses_still_ends_it_after_the_grace() -> None:
    # Prepare: a stop raised while Python runs a finalizer is dropped; here the loop drops it on purpose
    def swallow_every_stop() -> int:
        executor.stop_on_signals(exit_grace=0.5)
        for step in range(200):
            try:
                if step == 0:
                    os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
            except Stopped:
                pass
        return 3

    # Execute
    code, seconds = _in_child(swallow_every_stop)

    # Assert: the hard exit, not the end of the loop (10 s)
    assert code == 1
    assert seconds < 5


def test_a_supernode_killed_and_not_yet_reaped_stops_the_executor() -> None:
    # Prepare: the watched process ends and stays a zombie (nobody waits for it), as a SIGKILLed SuperNode does
    # until its launcher reaps it; Flower's own monitor sees its PID still in use and waits forever
    def watch_a_zombie() -> int:
        zombie = os.fork()
        if zombie == 0:
            os._exit(0)
        executor.stop_on_signals(exit_grace=60)
        executor.watch_parent(zombie, poll=0.05)
        try:
            time.sleep(10)
        except Stopped:
            return 0
        return 3

    # Execute
    code, seconds = _in_child(watch_a_zombie)

    # Assert
    assert code == 0
    assert seconds < 5


@pytest.fixture
def own_signals() -> Any:
    """Restore this process's SIGTERM and SIGINT handlers after a test that installs the executor's."""
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in previous.items():
        signal.signal(number, handler)


def test_a_worker_killed_by_a_signal_is_started_again(tmp_path: Path, own_signals: Any) -> None:
    # Prepare: the first worker dies as an out-of-memory kill would end it, the second one stops cleanly
    starts = tmp_path / "starts"

    def serve_once() -> int:
        with starts.open("a") as sink:
            sink.write("x")
        if starts.read_text() == "x":
            os.kill(os.getpid(), signal.SIGKILL)
        return 0

    # Execute
    code = executor.supervise(serve_once, restart_delay=0)

    # Assert
    assert code == 0
    assert starts.read_text() == "xx"


def test_a_worker_that_fails_to_start_is_not_started_again(tmp_path: Path, own_signals: Any) -> None:
    # Prepare
    starts = tmp_path / "starts"

    def serve_once() -> int:
        with starts.open("a") as sink:
            sink.write("x")
        raise RuntimeError("cannot reach the SuperNode's Runtime API")

    # Execute
    code = executor.supervise(serve_once, restart_delay=0)

    # Assert: the command line's exit code for a setup problem, once
    assert code == 2
    assert starts.read_text() == "x"


# ------------------------------------------------------------------------------------------------ the app
APP_SOURCE = "from flwr.clientapp import ClientApp\napp = ClientApp()\nVERSION = {version}\n"
PYPROJECT = """[project]
name = "toy"
version = "1.0.0"

[tool.flwr.app]
publisher = "fedbrick"

[tool.flwr.app.components]
serverapp = "toyapp.server:app"
clientapp = "toyapp.client:app"
"""


def _installed_fab(home: Path, fab_hash: str, version: int) -> tuple[Any, Fab]:
    """An app folder as Flower installs a FAB under ``$FLWR_HOME/apps`` (package ``toyapp``)."""
    folder = home / "apps" / f"fedbrick.toy.1.0.0.{fab_hash[:8]}"
    (folder / "toyapp").mkdir(parents=True)
    (folder / "toyapp" / "__init__.py").write_text("")
    (folder / "toyapp" / "client.py").write_text(APP_SOURCE.format(version=version))
    (folder / "pyproject.toml").write_text(PYPROJECT)
    return SimpleNamespace(fab_id="fedbrick/toy", fab_version="1.0.0"), Fab(fab_hash, b"", {})


def test_a_fab_with_the_same_code_keeps_the_app_and_other_code_is_imported_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: three FABs; the second holds the first's code (other config), the third changed code
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    first = _installed_fab(tmp_path, "a" * 64, version=1)
    same = _installed_fab(tmp_path, "b" * 64, version=1)
    changed = _installed_fab(tmp_path, "c" * 64, version=2)
    apps = Apps()

    # Execute
    try:
        loaded = [apps.app_for(*fab) for fab in (first, same, changed)]
        version = sys.modules["toyapp.client"].VERSION
    finally:
        for name in [name for name in sys.modules if name.startswith("toyapp")]:
            del sys.modules[name]

    # Assert
    assert loaded[0] is loaded[1]
    assert loaded[2] is not loaded[0]
    assert version == 2


def test_code_digest_follows_the_app_files_and_ignores_bytecode(tmp_path: Path) -> None:
    # Prepare
    _installed_fab(tmp_path, "a" * 64, version=1)
    folder = next((tmp_path / "apps").iterdir())
    before = executor.code_digest(folder, "toyapp.client:app")

    # Execute
    (folder / "toyapp" / "__pycache__").mkdir()
    (folder / "toyapp" / "__pycache__" / "client.cpython-311.pyc").write_bytes(b"\0")
    cached = executor.code_digest(folder, "toyapp.client:app")
    (folder / "toyapp" / "client.py").write_text(APP_SOURCE.format(version=2))
    edited = executor.code_digest(folder, "toyapp.client:app")

    # Assert
    assert cached == before
    assert edited != before


def test_the_preloaded_app_is_the_one_pyproject_names() -> None:
    # Prepare
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())

    # Assert
    assert pyproject["tool"]["flwr"]["app"]["components"]["clientapp"] == executor.APP_REF


# ------------------------------------------------------------------------------------------------ hygiene
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_release_between_messages_resets_the_peak_resident_set() -> None:
    # Prepare: a message that touched 200 MB and freed them
    block = bytearray(200 * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    del block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Execute
    executor.release_between_messages()

    # Assert: the next message's process-peak-rss-mb starts from what the process holds now
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert before - after > 150
