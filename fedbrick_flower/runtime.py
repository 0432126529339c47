"""Process plumbing around Flower's own executables: environment, connection config, start, wait, stop by PID.

Nothing here moves model data: the SuperLink, SuperNodes and ``flwr run`` are Flower's; this module only
starts them with the right flags, writes the ``$FLWR_HOME/config.toml`` connection that ``flwr run`` reads,
and stops exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import fedbrick_flower

# Flower settings every run needs on an offline machine (see the README's "Environment" section).
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # Otherwise the SuperLink runs `uv sync` on the app's dependencies and pulls a CUDA torch.
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # The SuperExec looks for a submitted run once a second by default: a quarter second starts each run sooner.
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25",
}


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus the Flower settings and a private ``FLWR_HOME``.

    Hub-offline flags are only defaulted: a user with network access may turn them off.
    """
    env = dict(os.environ)
    for key, value in FLOWER_ENV.items():
        env.setdefault(key, value)
    env["FLWR_HOME"] = str(flwr_home)
    # Child processes must find the same interpreter's executables (flwr, flower-superlink...).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def app_dir() -> Path:
    """The Flower App folder (the project root holding ``pyproject.toml``) that ``flwr run`` builds."""
    root = Path(fedbrick_flower.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise RuntimeError(
            f"no Flower App at {root}: install fedbrick-flower from its source checkout (pip install -e .)"
        )
    return root


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_connection(
    flwr_home: Path,
    name: str,
    address: str,
    *,
    root_certificates: Path | None = None,
    num_supernodes: int | None = None,
    num_cpus: int = 1,
    num_gpus: float = 0.0,
) -> Path:
    """Write a SuperLink connection named ``name`` into ``$FLWR_HOME/config.toml`` (the file ``flwr run`` reads)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{root_certificates.resolve()}"')
    if num_supernodes is not None:
        lines += [
            f"options.num-supernodes = {num_supernodes}",
            # One CPU per simulated client: on a 2-core machine both then train at once.
            f"options.backend.client-resources.num-cpus = {num_cpus}",
            # Ray hides every GPU from an actor that asks for none: a CUDA client needs its share here.
            f"options.backend.client-resources.num-gpus = {num_gpus}",
        ]
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def simulation_superlink_command(http_port: int) -> list[str]:
    """A local simulation SuperLink on ``127.0.0.1:http_port``: each run it takes starts one ``flwr-simulation``."""
    return [
        "flower-superlink",
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"127.0.0.1:{free_port()}",
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--database",
        ":flwr-in-memory:",
    ]


RAY_STARTED = "Ray runtime started"  # what `ray start` prints once the head node's processes run


@contextlib.contextmanager
def shared_simulation(folder: Path, cpus: int, timeout: float = 120.0) -> Iterator[tuple[str, Path]]:
    """One simulation SuperLink and one Ray cluster that several runs share; yields the SuperLink's address and log.

    Flower lets several runs share a SuperLink: each ``flwr run`` is a new run on it. Each run still gets its own
    Simulation Engine (the SuperLink's SuperExec starts one ``flwr-simulation`` process per run), and that process
    starts a Ray cluster of its own unless ``RAY_ADDRESS`` names a running one, which it then joins as a new job
    (new worker processes, nothing kept from the runs before). So the SuperLink, its SuperExec and the Ray head
    (GCS, raylet) start once here, for every run submitted while the block lasts; both are stopped by PID on exit.
    """
    import tempfile

    logs = folder / "logs"
    ray_port = free_port()
    # Ray's socket paths must stay short: a temp folder of its own, not one under the suite's folder.
    temp_dir = Path(tempfile.mkdtemp(prefix="fbr-ray-"))
    env = flower_env(folder / ".flwr-home")
    ray_head = [
        "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={ray_port}",
        f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    http_port = free_port()
    with running([start(ray_head, logs / "ray.log", env)]) as processes:
        wait_for_line(logs / "ray.log", RAY_STARTED, processes[0], timeout)
        env["RAY_ADDRESS"] = f"127.0.0.1:{ray_port}"  # inherited by the SuperExec and every flwr-simulation
        processes.append(start(simulation_superlink_command(http_port), logs / "superlink.log", env))
        wait_for_http(http_port, processes[-1], logs / "superlink.log")
        yield f"127.0.0.1:{http_port}", logs / "superlink.log"


def wait_for_line(log_file: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    """Wait until ``process`` has written ``text`` to ``log_file``; fail at once if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log_file.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}; see {log_file}")
        time.sleep(0.2)
    raise RuntimeError(f"{process.args[0]} did not become ready within {timeout:.0f}s; see {log_file}")


def start(command: Sequence[str], log_file: Path, env: Mapping[str, str]) -> subprocess.Popen:
    """Start a Flower executable in its own session, logging to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as sink:
        sink.write(f"$ {shlex.join(command)}\n".encode())
        return subprocess.Popen(
            list(command), stdout=sink, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
        )


def ended(process: Any) -> bool:
    """Whether the ``psutil.Process`` ``process`` has ended: exited, killed, its PID now another process's, or a
    zombie its parent has not reaped (which still holds its PID: a PID check alone would call it alive)."""
    import psutil

    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process we started and every process it started (SIGTERM, then SIGKILL after ``grace`` s).

    Descendants are collected before signalling: the SuperLink starts its ServerApp in a session of the
    ServerApp's own, so a process-group signal alone leaves it running once the SuperLink is gone.
    """
    import psutil

    if process.poll() is not None:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.terminate()
        _, alive = psutil.wait_procs(family, timeout=grace)
        for member in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        psutil.wait_procs(alive, timeout=grace)
    process.poll()


@contextlib.contextmanager
def running(processes: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """Stop every process in ``processes`` on exit, newest first, whatever happened."""
    try:
        yield processes
    finally:
        for process in reversed(processes):
            stop(process)


def wait_for_http(
    port: int, process: subprocess.Popen, log_file: Path, timeout: float = 60.0, ca_file: Path | None = None
) -> None:
    """Wait until a SuperLink answers on its ``/health`` endpoint (HTTPS verified by ``ca_file`` when given)."""
    import httpx

    url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}/health"
    verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}; see {log_file}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0, verify=verify).is_success:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{process.args[0]} did not become ready within {timeout:.0f}s; see {log_file}")


def stop_on_signals() -> None:
    """Make SIGTERM and SIGINT end this command through its ``finally`` blocks, which stop what it started by PID.

    The first signal raises ``SystemExit(128 + signum)``; later ones are ignored so that the teardown completes.
    ``os.exec*`` resets these handlers, so a command that becomes another program gets that program's own.
    """

    def leave(signum: int, frame: Any) -> None:
        for other in (signal.SIGTERM, signal.SIGINT):
            signal.signal(other, signal.SIG_IGN)
        sys.exit(128 + signum)

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, leave)


def run_config_arg(values: Mapping[str, Any]) -> str:
    """Format a ``--run-config`` value (TOML-style ``key=value`` pairs)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = str(value).lower()
        elif isinstance(value, int | float):
            rendered = repr(value)
        else:
            rendered = "'" + str(value).replace("'", "") + "'"
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


RUN_STARTED = re.compile(r"Successfully started run (\d+)")  # what `flwr run` prints once the run exists
FAILED_STATUSES = ("finished:failed", "finished:stopped")
TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*$", re.MULTILINE)


def flwr_run(connection: str, run_config: Mapping[str, Any], env: Mapping[str, str]) -> tuple[int, int | None]:
    """Submit the app with ``flwr run APP CONNECTION --stream``, echoing its logs to this terminal.

    Returns the exit code and the run id that ``flwr run`` announced (``None`` if it announced none).
    """
    command = ["flwr", "run", str(app_dir()), connection, "--stream", "--run-config", run_config_arg(run_config)]
    run_id = None
    process = subprocess.Popen(command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in without_tracebacks(process.stdout or ()):
            sys.stdout.write(line)
            sys.stdout.flush()
            started = RUN_STARTED.search(line)
            run_id = int(started.group(1)) if started and run_id is None else run_id
        return process.wait(), run_id
    finally:
        if process.poll() is None:  # interrupted (a signal): `flwr run` goes with this command
            process.kill()
            process.wait()


def without_tracebacks(lines: Iterable[str]) -> Iterator[str]:
    """The streamed log without Python tracebacks (from ``Traceback`` to the exception line, inclusive).

    A ServerApp that stops prints its reason in the command's own last line (:func:`wait_for_run`); the
    traceback, with the reason once more, stays in ``RUN_DIR/logs/server.log``.
    """
    inside = False
    for line in lines:
        if TRACEBACK in line:
            inside = True
        elif not inside:
            yield line
        elif _EXCEPTION_LINE.match(line.strip()):
            inside = False


class RunNeverStarted(RuntimeError):
    """Flower failed the run before the ServerApp wrote a line: nothing ran, so submitting it again loses nothing."""


def run_status(connection: str, run_id: int, env: Mapping[str, str]) -> tuple[str | None, str]:
    """The run's status as ``flwr ls`` reports it (``running``, ``finished:failed``...) and Flower's details on it."""
    command = ["flwr", "ls", connection, "--run-id", str(run_id), "--format", "json"]
    result = subprocess.run(command, env=dict(env), capture_output=True, text=True, check=False)
    with contextlib.suppress(json.JSONDecodeError, KeyError, IndexError, TypeError):
        run = json.loads(result.stdout)["runs"][0]
        return str(run["status"]), str(run.get("status-details") or "")
    return None, ""


def last_exception(log: Path) -> str | None:
    """The last exception line of a log, or ``None`` when it holds none (or does not exist)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = _EXCEPTION_LINE.findall(text)
    return lines[-1].strip() if lines else None


def _message_of(exception_line: str) -> str:
    """``module.Type: message`` -> ``message``."""
    return exception_line.partition(": ")[2] or exception_line


def failure_cause(server_log: Path, flower_log: Path) -> str:
    """Why the ServerApp failed: the last exception of its own log, else of Flower's (where ``flwr-serverapp``
    prints before the app is loaded), else a pointer to both."""
    return (
        last_exception(server_log)
        or last_exception(flower_log)
        or f"no exception recorded in {server_log} or {flower_log}"
    )


def wait_for_run(
    connection: str,
    run_id: int | None,
    env: Mapping[str, str],
    summary: Path,
    superlink: subprocess.Popen | None,
    log_file: Path,
    timeout: float = 120.0,
    submitted_at: float = 0.0,
) -> None:
    """After ``flwr run --stream`` returned: wait for the run's ``summary`` file, or fail at once with the cause.

    A ServerApp that failed writes no summary; its status says so, and its log (``RUN_DIR/logs/server.log``, next
    to the summary) holds the exception, which the error message repeats with Flower's status details. A run that
    failed before the ServerApp wrote to that log (since ``submitted_at``, a ``time.time()``) raises
    :class:`RunNeverStarted`.
    """
    server_log = summary.parent / "logs" / "server.log"
    deadline = time.monotonic() + timeout
    while not summary.exists():
        if superlink is not None and superlink.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with code {superlink.returncode}; see {log_file}")
        status, details = run_status(connection, run_id, env) if run_id is not None else (None, "")
        if status in FAILED_STATUSES:
            wrote = server_log.is_file() and server_log.stat().st_mtime >= submitted_at
            error = RuntimeError if wrote else RunNeverStarted
            cause = failure_cause(server_log, log_file)
            if _message_of(cause) not in details:  # Flower's details repeat the exception's message: said once
                cause += f" (Flower: {details or 'no details'})"
            raise error(f"the ServerApp {status.split(':')[1]}: {cause}; see {server_log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the run ended without writing {summary}; see {log_file}")
        time.sleep(0.5)


def submit_run(
    connection: str,
    run_config: Mapping[str, Any],
    env: Mapping[str, str],
    summary: Path,
    superlink: subprocess.Popen | None,
    log_file: Path,
    attempts: int = 2,
) -> None:
    """``flwr run`` the app and wait for its summary, submitting it again when Flower failed it before it started.

    A loaded machine can start the ``flwr-serverapp`` process too late for Flower's task claim (30 s), and the run
    then fails with no line of ours written; a run that got that far is never resubmitted. ``superlink`` is the
    process to watch, None for a SuperLink this command did not start (:func:`shared_simulation`).
    """
    for attempt in range(1, attempts + 1):
        submitted_at = time.time()
        code, run_id = flwr_run(connection, run_config, env)
        if code != 0:
            raise RuntimeError(f"flwr run exited with code {code}; see {log_file}")
        try:
            wait_for_run(connection, run_id, env, summary, superlink, log_file, submitted_at=submitted_at)
            return
        except RunNeverStarted as error:
            if attempt == attempts:
                raise
            print(f"{error}; submitting the run again (attempt {attempt + 1} of {attempts})", flush=True)
