"""The Deployment Engine on loopback: TLS, SuperNode authentication, a lost node, and what crosses the link.

A server resumed from its checkpoint is tested in ``test_restart_soak.py``.

Every Flower process is started by the commands under test in its own session and stopped by PID; the tests
start ``fedbrick-flower`` itself the same way and stop it with SIGTERM, which it turns into a clean teardown.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from fedbrick_flower import runtime
from fedbrick_flower.deployment.certs import make_certificates
from fedbrick_flower.deployment.processes import CONNECTION, SuperLinkSettings, start_superlink, supernode_command
from fedbrick_flower.run_dir import read_metrics
from fedbrick_flower.scenario import scenario_path
from tests.wire import ADAPTER_NAME, DECLARED_METRICS, array_names, audit_rows, metric_names

pytestmark = pytest.mark.integration

SMOKE_CLIENTS = ["bert-full", "bert-edge", "llama-edge"]
# One short round: these tests exercise the links, not learning.
FAST = ["--set", "rounds=1", "--set", "train.local_steps=2", "--set", "server.evaluate_global=false"]
READY = "waiting for SuperNodes"  # printed by `server` once its SuperLink is up and the keys are registered


def fedbrick(args: list[str], log_file: Path, home: Path) -> subprocess.Popen:
    """Start ``fedbrick-flower ARGS`` in its own session, logging to ``log_file``."""
    executable = str(Path(sys.executable).parent / "fedbrick-flower")
    return runtime.start([executable, *args], log_file, runtime.flower_env(home))


def wait_for(condition: Callable[[], bool], timeout: float, what: str, watched: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if watched.poll() is not None:
            raise AssertionError(f"{what}: {watched.args[1:3]} exited with {watched.returncode} first")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.5)


def finish(process: subprocess.Popen, log_file: Path, timeout: float) -> str:
    """Wait for a command to end by itself; stop it (SIGTERM: it tears its processes down) if it does not."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        runtime.stop(process, grace=30)
        raise AssertionError(f"{process.args[1]} did not finish within {timeout:.0f}s; see {log_file}") from None
    return log_file.read_text()


def smoke_subset(tmp_path: Path, client_ids: list[str], rounds: int = 1) -> Path:
    """The smoke scenario with only ``client_ids``, short rounds and no server evaluation, as a YAML file.

    Fewer clients mean fewer ClientApp processes competing for the cores: each message starts one.
    """
    raw = yaml.safe_load(scenario_path("smoke").read_text())
    raw.update(name="smoke-" + "-".join(client_ids), rounds=rounds)
    raw["clients"] = [client for client in raw["clients"] if client["id"] in client_ids]
    raw["train"]["local_steps"] = 2
    raw.setdefault("server", {})["evaluate_global"] = False
    path = tmp_path / "smoke-subset.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------------------- launch, TLS, audit
@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, int]]:
    """``fedbrick-flower launch smoke`` over TLS with node authentication, clients auditing their messages.

    Its ClientApps run in the warm executor's fork mode (each message in a child of the warm process); the
    default mode is compared with Flower's executor in ``test_warm_executor.py``.
    """
    run_dir = tmp_path_factory.mktemp("launch")
    log_file = run_dir / "launch.out"
    args = ["launch", "smoke", "--out", str(run_dir), "--audit-wire", "--warm", "fork", *FAST]
    process = fedbrick(args, log_file, run_dir)
    output = finish(process, log_file, timeout=900)
    yield run_dir, output, process.returncode


def test_launch_over_tls_with_node_auth_completes(launched: tuple[Path, str, int]) -> None:
    # Prepare
    run_dir, output, code = launched
    deployment = json.loads((run_dir / "deployment.json").read_text())

    # Assert: the run finished, printed the `run` command's summary, and left no process behind
    assert code == 0, output[-3000:]
    assert "run directory:" in output and "rounds_completed                 1" in output
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 1
    assert deployment["tls"] is True
    superlink_log = (run_dir / "logs" / "superlink.log").read_text()
    assert "--enable-supernode-auth" in superlink_log and "--ssl-certfile" in superlink_log
    assert sorted(deployment["supernode_pids"]) == sorted(SMOKE_CLIENTS)
    pids = [deployment["superlink_pid"], *deployment["supernode_pids"].values()]
    assert not [pid for pid in pids if alive(pid)]


def test_only_adapter_tensors_and_declared_metrics_cross_the_link(launched: tuple[Path, str, int]) -> None:
    """Read what each ClientApp received and sent (``wire_audit_mod``, ``--audit-wire``) in the deployment."""
    # Prepare
    run_dir, _, _ = launched
    rows = audit_rows(run_dir)

    # Execute
    arrays, metrics = array_names(rows), metric_names(rows)
    query_replies = [row for row in rows if row["type"] == "query" and row["direction"] == "up"]

    # Assert: every client sent and received its messages, and nothing but adapters and declared metrics
    assert {row["client"] for row in rows} == set(SMOKE_CLIENTS)
    assert {(row["type"], row["direction"]) for row in rows} >= {("train", "down"), ("train", "up"), ("query", "up")}
    assert arrays and all(ADAPTER_NAME.match(name) for name in arrays), sorted(arrays)
    assert metrics <= DECLARED_METRICS, sorted(metrics - DECLARED_METRICS)
    # A query reply is the profile (shapes and counts): no tensors, and no text long enough to hide data in.
    assert all(not any("arrays" in record for record in row["records"].values()) for row in query_replies)
    assert all(record["longest_string"] < 2000 for row in query_replies for record in row["records"].values())


# --------------------------------------------------------------------------------------- authentication
def test_unregistered_supernode_key_is_refused(tmp_path: Path) -> None:
    # Prepare: a SuperLink with node authentication, and a key nobody registered
    certs = make_certificates(tmp_path / "certs", ["stranger"])
    settings = SuperLinkSettings(f"127.0.0.1:{runtime.free_port()}", runtime.free_port(), certs=certs)
    env = runtime.flower_env(tmp_path / ".flwr-home")
    command = supernode_command(
        settings.fleet_address,
        {"client-id": "bert-full"},
        port=runtime.free_port(),
        root_certificates=certs.ca_cert,
        private_key=certs.node_key("stranger"),
    )

    with runtime.running([start_superlink(settings, tmp_path, env)]) as processes:
        # Execute
        started = time.monotonic()
        processes.append(runtime.start(command, tmp_path / "logs" / "supernode.log", env))
        code = processes[-1].wait(timeout=60)
        elapsed = time.monotonic() - started

    # Assert
    assert code != 0
    assert elapsed < 30
    assert "Failed to activate SuperNode" in (tmp_path / "logs" / "supernode.log").read_text()
    assert CONNECTION in (tmp_path / ".flwr-home" / "config.toml").read_text()


# --------------------------------------------------------------------------------------- a lost node
def test_killed_supernode_is_rejected_under_its_client_id_and_the_run_finishes(tmp_path: Path) -> None:
    # Prepare: a 10 s heartbeat, so the SuperLink declares the node lost after about 20 s instead of about 60 s;
    # two clients, and a round may go on with one
    run_dir = tmp_path / "run"
    log_file = tmp_path / "launch.out"
    scenario = smoke_subset(tmp_path, ["bert-full", "llama-edge"])
    args = ["launch", str(scenario), "--out", str(run_dir), "--heartbeat", "10", "--set", "server.min_clients=1"]
    process = fedbrick(args, log_file, tmp_path)
    registered = re.compile(r"client (\S+) registered on node")
    try:
        wait_for(lambda: len(set(registered.findall(log_file.read_text()))) == 2, 600, "clients registered", process)

        # Execute: the round's training messages are out; the full-depth client's node dies
        victim = json.loads((run_dir / "deployment.json").read_text())["supernode_pids"]["bert-full"]
        its_executor = psutil.Process(victim).children(recursive=True)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        output = finish(process, log_file, timeout=600)
    finally:
        runtime.stop(process)
    print(f"kill -> run finished: {time.monotonic() - killed_at:.1f}s")
    _, executor_left = psutil.wait_procs(its_executor, timeout=30)
    for process_left in executor_left:
        process_left.kill()

    # Assert
    assert process.returncode == 0, output[-3000:]
    rows = read_metrics(run_dir)
    rejected = [row for row in rows if row["phase"] == "rejected"]
    assert [(row["client"], row["stage"]) for row in rejected] == [("bert-full", "train")]
    assert rejected[0]["reason"].startswith("node error")
    assert [row["client"] for row in rows if row["phase"] == "train"] == ["llama-edge"]
    assert "rejected_updates                 1" in output
    assert its_executor, "the SuperNode had no executor"
    assert executor_left == [], "the killed SuperNode's executor is still running"
