"""A warm ClientApp executor for Flower 1.39: ``flower-superexec``'s job, without a cold process per message.

A SuperNode started with ``--isolation process`` turns every message it receives into a task on its Runtime API
and waits for a reply. Flower's ``flower-superexec`` acquires each task and starts a one-shot ``flwr-clientapp
--token`` for it, which imports torch, transformers and peft, loads the weights, tokenises the data and builds the
model again, every message. This executor acquires the tasks itself, with those libraries and the app imported
once, before the first task, and runs each one:

- ``fork``: in a child forked from the warm parent. Every message still runs in a fresh process, so nothing leaks
  between messages and a crash (even a segfault or an out-of-memory kill) fails that message only. The parent
  never runs app code and never initialises CUDA (a forked child could not use it then).
- ``persistent``: in the warm process itself. The app's read-only memos (weights, tokenised splits) and, on a
  GPU, the CUDA context survive between messages; after each message the process collects garbage, returns
  cached GPU memory (``torch.cuda.empty_cache``) and resets its peak-memory counters, so that every message's
  memory figures are its own.

Each task follows ``flwr-clientapp`` step for step, with Flower's own functions: ``pull_task_input``, the
ClientApp called on the message and the node's context, ``push_message`` and ``push_task_output``; an exception
becomes the same error reply. The app is imported from the run's FAB (installed under ``$FLWR_HOME/apps`` as
Flower does); when a run's FAB carries other code than the app in memory, the app's modules are dropped and
imported again from that FAB before the task, so a changed app is never served stale.

This module is the only place where the package touches Flower internals beyond the public ``flwr.app`` and
``flwr.clientapp`` API: task acquisition, the Runtime API client, its interceptors and heartbeat, the
``flwr-clientapp`` task functions, FAB installation and app loading. ``flwr`` is pinned to 1.39.0, and
``tests/integration/test_warm_executor.py`` fails if an upgrade changes what any of them does.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psutil
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.common.config import get_project_config, get_project_dir
from flwr.common.constant import APP_DIR, ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest  # pylint: disable=E0611
from flwr.supercore import log
from flwr.supercore.auth import load_superexec_auth_secret
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.object_ref import load_app
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.run_superexec import _SUPEREXEC_AUTH_METHODS
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supercore.utils import get_flwr_home
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from ..runtime import ended

# The app imported before the first task (the same reference as pyproject's [tool.flwr.app.components]).
APP_REF = "fedbrick_flower.client_app:app"
WARM_IMPORTS = ("torch", "transformers", "peft")
# What pyproject's fab-include ships of the app package: the files compared to tell whether a FAB's code is
# the code in memory.
APP_SUFFIXES = (".py", ".yaml")
# Seconds a stopping executor gives a forked task before it kills it.
STOP_GRACE = 5.0
# Seconds before a crashed executor is started again.
RESTART_DELAY = 1.0
# Seconds a stopping executor has to finish cleanly before it exits hard: a stop raised while Python runs a
# finalizer is printed and dropped ("Exception ignored in ..."), and later signals are ignored by design.
EXIT_GRACE = STOP_GRACE + 10.0
# Seconds between two looks at the SuperNode the executor serves.
PARENT_POLL = 0.2
# Component names Flower's own processes announce to the Runtime API (its version check reads them).
ACQUIRER_NAME = "SuperExec"
TASK_NAME = "flwr-clientapp"


class Stopped(BaseException):
    """SIGTERM or SIGINT reached the executor (or its SuperNode is gone): it finishes cleanly.

    A ``BaseException``, so that the app's own ``except Exception`` blocks do not swallow it.
    """


# ------------------------------------------------------------------------------------------------ the link
@dataclass(frozen=True)
class RuntimeLink:
    """How this executor reaches its SuperNode's Runtime API, with ``flower-superexec``'s security options.

    Parameters
    ----------
    address : str
        ``HOST:PORT`` of the SuperNode's Runtime API (its ``--host`` and ``--port``).
    insecure : bool
        Plain HTTP (the SuperNode's Runtime API without ``--ssl-certfile``).
    root_certificates : str, optional
        CA certificate (PEM file) that verifies the Runtime API's TLS certificate; None: the system's CAs.
    auth_secret : bytes, optional
        SuperExec shared secret (``--superexec-auth-secret-file``) that signs task acquisition.
    """

    address: str
    insecure: bool
    root_certificates: str | None = None
    auth_secret: bytes | None = None

    def acquirer(self) -> RuntimeHttpClient:
        """The client that acquires tasks, signed with the SuperExec secret where the node asks for one."""
        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name=ACQUIRER_NAME)]
        if self.auth_secret:
            interceptors.append(
                SuperExecAuthHttpInterceptor(master_secret=self.auth_secret, protected_methods=_SUPEREXEC_AUTH_METHODS)
            )
        return self._client(interceptors)

    def task_client(self, token: str, tries: int | None = None) -> RuntimeHttpClient:
        """The client of one task: every call carries the task's token, as ``flwr-clientapp``'s do.

        ``tries`` bounds the retries of each call (None: until the node answers, Flower's default).
        """
        interceptors = [RuntimeVersionHttpInterceptor(component_name=TASK_NAME), RuntimeTokenHttpInterceptor(token)]
        return self._client(interceptors, tries)

    def _client(self, interceptors: list[Any], tries: int | None = None) -> RuntimeHttpClient:
        retry_invoker = make_simple_http_retry_invoker()
        retry_invoker.max_tries = tries
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.insecure,
            root_certificates=validate_and_resolve_root_certificates(self.root_certificates, self.insecure),
            interceptors=interceptors,
            retry_invoker=retry_invoker,
        )


def acquire(acquirer: RuntimeHttpClient) -> str | None:
    """Claim the oldest pending ClientApp task: its token, or None when there is none."""
    response = acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    return response.token if response.HasField("task") and response.token else None


# ------------------------------------------------------------------------------------------------ the app
def code_digest(root: Path, ref: str) -> str:
    """SHA-256 of the app package's files under ``root`` (each path and content): equal digests, equal code."""
    package = ref.partition(":")[0].split(".")[0]
    folder = root / package
    if folder.is_dir():
        files = sorted(
            path
            for path in folder.rglob("*")
            if path.suffix in APP_SUFFIXES and path.is_file() and "__pycache__" not in path.parts
        )
    else:
        files = [root / f"{package}.py"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def installed_fab(run: Run, fab: Fab) -> Path:
    """The run's app folder under ``$FLWR_HOME/apps``, installed from its FAB the first time (as Flower does)."""
    app_dir = get_project_dir(run.fab_id, run.fab_version, fab.hash_str)
    if not (app_dir / "pyproject.toml").is_file():
        install_from_fab(fab.content, skip_prompt=True)
    return app_dir


@dataclass
class Apps:
    """The ClientApp in memory and the code it came from; another FAB's code replaces it before its first task."""

    ref: str | None = None
    code: str | None = None
    app: ClientApp | None = None
    known: dict[str, tuple[Path, str, str]] = field(default_factory=dict)  # FAB hash -> folder, ref, digest

    def preload(self) -> None:
        """Import the heavy libraries and the installed app, before any task arrives."""
        for name in WARM_IMPORTS:
            importlib.import_module(name)
        module_name, _, attribute = APP_REF.partition(":")
        package = importlib.import_module(module_name.split(".")[0])
        app = getattr(importlib.import_module(module_name), attribute)
        self._keep(APP_REF, code_digest(Path(package.__file__).resolve().parent.parent, APP_REF), app)

    def app_for(self, run: Run, fab: Fab) -> ClientApp:
        """The ClientApp of this run's FAB: the one in memory when the FAB holds the same code, else imported."""
        if fab.hash_str not in self.known:
            app_dir = installed_fab(run, fab)
            ref = str(get_project_config(app_dir)["tool"]["flwr"]["app"]["components"]["clientapp"])
            self.known[fab.hash_str] = (app_dir, ref, code_digest(app_dir, ref))
        app_dir, ref, code = self.known[fab.hash_str]
        if self.app is None or (self.ref, self.code) != (ref, code):
            log(INFO, "importing the ClientApp %s from %s", ref, app_dir)
            self._keep(ref, code, import_app(ref, app_dir))
        assert self.app is not None
        return self.app

    def _keep(self, ref: str, code: str, app: Any) -> None:
        if not isinstance(app, ClientApp):
            raise LoadClientAppError(f"{ref} is not a ClientApp") from None
        self.ref, self.code, self.app = ref, code, app


def import_app(ref: str, app_dir: Path) -> Any:
    """Import ``ref`` from ``app_dir`` afresh: the package's modules in memory (older code) are dropped first.

    The executor's own module stays: it is running, and the app does not import it.
    """
    package = ref.partition(":")[0].split(".")[0]
    for name in [name for name in sys.modules if name == package or name.startswith(package + ".")]:
        if name != __name__:
            del sys.modules[name]
    sys.path[:] = [entry for entry in sys.path if not _is_fab_dir(entry)]
    importlib.invalidate_caches()
    return load_app(ref, LoadClientAppError, app_dir)


def _is_fab_dir(entry: str) -> bool:
    """A folder that :func:`load_app` put on ``sys.path`` for an earlier FAB (``$FLWR_HOME/apps/...``)."""
    return Path(entry).parent == get_flwr_home() / APP_DIR


# ------------------------------------------------------------------------------------------------ one task
@dataclass
class Task:
    """One acquired task: its token, its Runtime API client, the message and context it pulled, and what it has
    reported to the SuperNode so far (a reply, the task's end)."""

    link: RuntimeLink
    token: str
    client: RuntimeHttpClient
    message: Message
    context: Context
    replied: bool = False
    finished: bool = False

    def fail(self, code: int, reason: str, client: RuntimeHttpClient | None = None) -> None:
        """Reply with an error (unless a reply is out already) and close the task as failed.

        A ClientApp task that ends without a reply would hold its SuperNode, which waits for one, forever.
        """
        log(ERROR, "task failed: %s", reason)
        client = client or self.client
        if not self.replied:
            with contextlib.suppress(Exception):
                push_message(client, Message(Error(code=code, reason=reason), reply_to=self.message), self.context)
        push_task_output(client=client, context=self.context, sub_status=SubStatus.FAILED, details=reason)
        self.replied = self.finished = True

    def step(self, step: bytes) -> None:
        """Record a step of :func:`execute`: ``b"r"`` the reply is pushed, ``b"f"`` the task is closed."""
        self.replied |= step == b"r"
        self.finished |= step == b"f"


def execute(task: Task, app: ClientApp, client: RuntimeHttpClient, on_step: Callable[[bytes], Any]) -> None:
    """Run the ClientApp on the task's message, push the reply and close the task, as ``flwr-clientapp`` does.

    An exception of the app becomes the same error reply (``CLIENT_APP_RAISED_EXCEPTION``, naming it).
    ``on_step`` hears ``b"r"`` once the reply is pushed and ``b"f"`` once the task is closed.
    """
    try:
        reply = app(message=task.message, context=task.context)
        sub_status, details = SubStatus.COMPLETED, ""
    except (Exception, SystemExit) as error:  # noqa: BLE001 - every failure must reach the server as a reply
        log(ERROR, "ClientApp raised an exception", exc_info=error)
        details = error_reason(error)
        reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=task.message)
        sub_status = SubStatus.FAILED
    try:
        push_message(client, reply, task.context)
        on_step(b"r")
    except Exception as error:  # noqa: BLE001 - the task is still closed below
        log(ERROR, "Failed to push reply message", exc_info=error)
    push_task_output(client=client, context=task.context, sub_status=sub_status, details=details)
    on_step(b"f")


def error_reason(error: BaseException) -> str:
    """``flwr-clientapp``'s wording of an exception in an error reply."""
    return f"{type(error)}:<'{error}'>"


def heartbeat_fn(client: RuntimeHttpClient, on_lost: Callable[[], None]) -> Callable[[], bool]:
    """Flower's task heartbeat, except that a task the node no longer knows ends that task, not the executor.

    (``flwr-clientapp``'s raises SIGINT: right for a one-shot process, fatal for one that serves every task.)
    """
    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            response = client.SendTaskHeartbeat(request)
        except httpx.TransportError:
            return False
        except httpx.HTTPStatusError as error:
            if error.response.status_code in (httpx.codes.SERVICE_UNAVAILABLE, httpx.codes.GATEWAY_TIMEOUT):
                return False
            on_lost()
            return True
        if not response.success:
            on_lost()
        return True

    return beat


@contextlib.contextmanager
def heartbeat(client: RuntimeHttpClient, on_lost: Callable[[], None]) -> Iterator[None]:
    """Keep the task alive on the node (it fails a task whose heartbeat stops) while the block runs."""
    sender = HeartbeatSender(heartbeat_fn(client, on_lost))
    sender.start()
    try:
        yield
    finally:
        sender.stop()


# ------------------------------------------------------------------------------------------------ warm modes
def run_in_fork(task: Task, app: ClientApp) -> None:
    """Run the task in a child of this (warm, CUDA-free) process; a child that dies fails this message only."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("--warm fork needs a parent without CUDA: use --warm persistent")
    read_end, write_end = os.pipe()
    pid = os.fork()  # before the heartbeat starts: the child inherits no running thread
    if pid == 0:
        os.close(read_end)
        _child(task, app, write_end)
    os.close(write_end)

    def lost() -> None:
        log(WARNING, "the SuperNode no longer knows this task: stopping it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    try:
        with heartbeat(task.client, lost):
            status = os.waitpid(pid, 0)[1]  # Stopped (SIGTERM, SIGINT) interrupts the wait
    except Stopped:
        _kill(pid)
        raise
    finally:
        with os.fdopen(read_end, "rb") as pipe:
            for step in pipe.read():
                task.step(bytes([step]))
    if not task.finished:
        task.fail(ErrorCode.CLIENT_APP_CRASHED, f"the ClientApp process ended with {_describe(status)}")


def _child(task: Task, app: ClientApp, progress_fd: int) -> NoReturn:
    code = 1
    try:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signal.SIG_DFL)
        client = task.link.task_client(task.token)  # its own connections: the parent's stay the parent's
        execute(task, app, client, lambda step: os.write(progress_fd, step))
        code = 0
    except BaseException:  # noqa: BLE001 - a child reports through the pipe and its exit code
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _kill(pid: int) -> None:
    """SIGTERM, then SIGKILL after :data:`STOP_GRACE` seconds; the child is reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def run_in_process(task: Task, app: ClientApp) -> None:
    """Run the task here, with everything the earlier messages left warm; then release what it freed."""

    def lost() -> None:
        log(WARNING, "the SuperNode no longer knows this task: its reply will be refused")

    try:
        with heartbeat(task.client, lost):
            execute(task, app, task.client, task.step)
    finally:
        release_between_messages()


def release_between_messages() -> None:
    """Free what the message left behind and start the next message's peak-memory figures from now.

    ``peak-memory-mb`` is measured per training (on CUDA the allocator's peak is reset before every step);
    the CUDA peak is reset here too, and so is the kernel's high-water mark of this process's resident set,
    which ``process-peak-rss-mb`` reads: both then describe the next message alone.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # nodes that share a GPU get back what this message cached
        for device in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()


def reset_peak_rss() -> None:
    """Reset this process's peak resident set size (Linux ``clear_refs``; a no-op where it does not exist)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def rss_mb() -> float:
    """This process's resident set size now, in MB."""
    return psutil.Process().memory_info().rss / 2**20


MODES: dict[str, Callable[[Task, ClientApp], None]] = {"fork": run_in_fork, "persistent": run_in_process}


# ------------------------------------------------------------------------------------------------ the loop
def serve_task(link: RuntimeLink, token: str, apps: Apps, run_task: Callable[[Task, ClientApp], None]) -> str:
    """Pull one task's input, find its app and run it with ``run_task``; returns the message type (for the log)."""
    client = link.task_client(token)
    task = None
    try:
        message, context, run, fab = pull_task_input(client)
        task = Task(link, token, client, message, context)
        try:
            app = apps.app_for(run, fab)
        except Exception as error:  # noqa: BLE001 - reported to the server, as flwr-clientapp does
            log(ERROR, "loading the ClientApp failed", exc_info=error)
            task.fail(ErrorCode.LOAD_CLIENT_APP_EXCEPTION, error_reason(error))
        else:
            run_task(task, app)
        return message.metadata.message_type
    except Stopped:
        if task is not None and not task.finished:
            last = link.task_client(token, tries=1)  # the node may be gone: do not wait on it
            with contextlib.suppress(Exception):
                task.fail(ErrorCode.CLIENT_APP_CRASHED, "the executor was stopped during this message", last)
            last.close()
        raise
    except Exception as error:  # noqa: BLE001 - close the task and serve the next one
        log(ERROR, "task failed before its ClientApp ran", exc_info=error)
        with contextlib.suppress(Exception):
            push_task_output(client=client, context=None, sub_status=SubStatus.FAILED, details=error_reason(error))
        return "unknown"
    finally:
        client.close()


def run(
    address: str,
    *,
    insecure: bool,
    root_certificates: Path | None,
    auth_secret_file: Path | None,
    warm: str,
    poll_interval: float,
    parent_pid: int | None = None,
) -> int:
    """``fedbrick-flower executor``: check the options, then :func:`serve`."""
    if root_certificates is not None and not root_certificates.is_file():
        raise RuntimeError(f"--root-certificates: {root_certificates} does not exist")
    try:
        secret = load_superexec_auth_secret(str(auth_secret_file) if auth_secret_file else None)
    except ValueError as error:
        raise RuntimeError(f"--superexec-auth-secret-file: {error}") from None
    certificates = str(root_certificates) if root_certificates is not None else None
    link = RuntimeLink(address, insecure, certificates, secret)
    return supervise(lambda: serve(link, warm, poll_interval, parent_pid))


def supervise(serve_once: Callable[[], int], restart_delay: float = RESTART_DELAY) -> int:
    """Run ``serve_once`` in a child; start a new one when it dies of a signal (a segfault, an out-of-memory kill).

    A persistent executor runs the app in its own process: without this, one crash would leave its SuperNode
    without an executor for the rest of the run. The message it was serving fails as Flower fails it (the
    task's heartbeat stops). SIGTERM and SIGINT are passed on to the child; its exit code becomes this one's.
    """
    child = 0
    stopping = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if child > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signals = {signal.SIGTERM, signal.SIGINT}
    for number in signals:
        signal.signal(number, forward)
    while True:
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # no signal between the fork and the child's handlers
        child = os.fork()
        if child == 0:
            _serve_in_child(serve_once, signals)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        status = os.waitpid(child, 0)[1]
        if stopping or not os.WIFSIGNALED(status):
            return os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else 0
        log(WARNING, "the executor ended with %s: starting a new one", _describe(status))
        time.sleep(restart_delay)


def _serve_in_child(serve_once: Callable[[], int], signals: set[signal.Signals]) -> NoReturn:
    code = 1
    try:
        for number in signals:
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        code = serve_once()
    except RuntimeError as error:  # a setup problem: said once, as the command line says it
        print(f"fedbrick-flower executor: error: {error}", file=sys.stderr)
        code = 2
    except BaseException:  # noqa: BLE001 - reported, then the exit code tells the supervisor
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(link: RuntimeLink, warm: str, poll_interval: float, parent_pid: int | None = None) -> int:
    """Serve the SuperNode's ClientApp tasks until SIGTERM/SIGINT, or until ``parent_pid`` is gone; returns 0."""
    stop_on_signals()
    if parent_pid is not None:
        watch_parent(parent_pid)  # raises SIGINT here once the SuperNode is gone
    run_task = MODES[warm]
    acquirer = None
    try:
        started = time.monotonic()
        apps = Apps()
        apps.preload()
        log(INFO, "warm executor (%s) ready in %.1f s, Runtime API %s", warm, time.monotonic() - started, link.address)
        acquirer = link.acquirer()
        try:
            token = acquire(acquirer)  # retried until the SuperNode answers (it may start after this executor)
        except httpx.HTTPError as error:  # one Flower does not retry: a refused certificate, a wrong address
            raise RuntimeError(f"cannot reach the SuperNode's Runtime API at {link.address}: {error}") from None
        log(INFO, "connected to the SuperNode's Runtime API at %s", link.address)
        served = 0
        while True:
            if token is None:
                time.sleep(poll_interval)
            else:
                begun = time.monotonic()
                kind = serve_task(link, token, apps, run_task)
                served += 1
                seconds = time.monotonic() - begun
                log(INFO, "task %d (%s) took %.2f s; executor RSS %.0f MB", served, kind, seconds, rss_mb())
            token = acquire(acquirer)
    except Stopped:
        log(INFO, "warm executor stopped")
        return 0
    finally:
        if acquirer is not None:
            acquirer.close()


def stop_on_signals(exit_grace: float = EXIT_GRACE) -> None:
    """The first SIGTERM or SIGINT raises :class:`Stopped` in the main thread; later ones are ignored.

    Should the stop be lost, the process still ends ``exit_grace`` seconds after the first signal.
    """

    def leave(signum: int, frame: Any) -> None:
        for other in (signal.SIGTERM, signal.SIGINT):
            signal.signal(other, signal.SIG_IGN)
        deadline = threading.Timer(exit_grace, _exit_hard, args=(exit_grace,))
        deadline.daemon = True
        deadline.start()
        raise Stopped(signum)

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, leave)


def _exit_hard(exit_grace: float) -> None:
    log(ERROR, "the executor did not stop within %.0f s of its stop signal: exiting now", exit_grace)
    sys.stderr.flush()
    os._exit(1)


def watch_parent(parent_pid: int, poll: float = PARENT_POLL) -> None:
    """Send SIGINT to this process's main thread (:class:`Stopped` there) once ``parent_pid`` has ended
    (:func:`~fedbrick_flower.runtime.ended`: Flower's own monitor tests only that the PID exists, which a
    SIGKILLed SuperNode's zombie still does).

    To the main thread itself: a signal raised in the watching thread would wait for the main thread's blocking
    call (a sleep, a wait for a forked task) to return before its handler ran.
    """
    main = threading.main_thread().ident
    assert main is not None  # the main thread has started: this code runs in it or after it

    def stop() -> None:
        log(WARNING, "the SuperNode (PID %d) is gone: stopping", parent_pid)
        signal.pthread_kill(main, signal.SIGINT)

    try:
        parent = psutil.Process(parent_pid)
    except psutil.NoSuchProcess:
        stop()
        return

    def watch() -> None:
        while not ended(parent):
            time.sleep(poll)
        stop()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
