"""A loopback deployment driven from outside, for the restart and soak benchmarks (and their integration tests).

``fedbrick-flower server`` runs the SuperLink and the run; the SuperNodes are started here, one
``flower-supernode`` per client, so that a benchmark can kill and restart any of them, or the server, by PID.
Everything binds 127.0.0.1 on free ports and runs the package this module belongs to. Not used by any command.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import yaml

from .. import runtime
from ..metrics import read_metrics
from .certs import CertificateSet, make_certificates
from .commands import DEPLOYMENT_FILE
from .pacing import DEFAULT_POLL
from .processes import supernode_command

# The folder that holds this package: the server and the SuperNodes import the same package as this process.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]

READY = "waiting for SuperNodes"  # printed by `server` once its SuperLink is up
# A model small enough that a ClientApp process spends its time starting, not training.
TINY_BERT = {
    "family": "bert",
    "tokenizer": "minilm",
    "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}


def tiny_scenario(path: Path, client_ids: list[str], rounds: int, algorithm: str, **server: Any) -> Path:
    """A scenario of tiny random BERTs running ``algorithm``, one local step per round, no server evaluation, as a
    YAML file; ``server`` adds server settings."""
    raw = {
        "name": path.stem,
        "description": "tiny random BERT clients for deployment benchmarks",
        "algorithm": algorithm,
        "rounds": rounds,
        "seed": 0,
        "models": {"tiny-bert": TINY_BERT},
        "tasks": {"bbc": {"dataset": "bbc-news", "max_examples": 20 * len(client_ids)}},
        "data": {"partition": "iid", "max_length": 16},
        "train": {"local_steps": 1, "batch_size": 4},
        "lora": {"rank": 2, "alpha": 4},
        "server": {"evaluate_global": False, **server},
        "clients": [{"id": cid, "model": "tiny-bert", "task": "bbc", "layers": 2} for cid in client_ids],
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_context() -> dict[str, Any]:
    """What a result file records besides its figures: command, date, cores, load (the machine is shared)."""
    return {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "load_average_at_end": [round(load, 2) for load in os.getloadavg()],
    }


def wait_for(condition: Callable[[], bool], timeout: float, what: str, watched: subprocess.Popen | None) -> float:
    """Poll ``condition`` until true; returns the seconds it took. Fails if ``watched`` exits first."""
    started = time.monotonic()
    while not condition():
        if watched is not None and watched.poll() is not None:
            raise RuntimeError(f"{what}: {watched.args[1:4]} exited with {watched.returncode} first")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - started


def completed_rounds(run_dir: Path) -> list[int]:
    """Rounds with a ``round`` row in ``metrics.jsonl``, in file order."""
    return [row["round"] for row in read_metrics(run_dir) if row["phase"] == "round"]


def family(pid: int) -> list[int]:
    """``pid`` and every process it started, now (empty if it is gone)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    return []


def kill_family(pid: int) -> list[int]:
    """SIGKILL ``pid`` and its descendants (a crash: nothing gets to clean up); returns the PIDs killed."""
    members = family(pid)
    for member in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    return members


class LoopbackFleet:
    """A ``fedbrick-flower server`` and SuperNodes on loopback, every process started here recorded by PID.

    Parameters
    ----------
    folder : Path
        Working folder: run directory, logs, Flower homes, node state folders.
    database : bool
        Keep the SuperLink's state in ``folder/superlink.db`` (survives a SuperLink restart) instead of memory.
    heartbeat : float | None
        SuperNode heartbeat in seconds: a killed node is declared lost after about twice this.
    tls_clients : list[str] | None
        Run with TLS and SuperNode authentication, with one key pair per client id listed; ``None``: insecure.
    """

    def __init__(
        self,
        folder: Path,
        *,
        database: bool = False,
        heartbeat: float | None = None,
        tls_clients: list[str] | None = None,
    ) -> None:
        self.folder = folder
        self.certs: CertificateSet | None = (
            None if tls_clients is None else make_certificates(folder / "certs", tls_clients)
        )
        self.run_dir = folder / "run"
        self.database = folder / "superlink.db" if database else None
        self.heartbeat = heartbeat
        self.fleet = f"127.0.0.1:{runtime.free_port()}"
        self.control_port = runtime.free_port()
        self.server: subprocess.Popen | None = None
        self.nodes: dict[str, subprocess.Popen] = {}
        self.seen: set[psutil.Process] = set()  # every process started here or by them, for the stray check
        self.launches = 0

    # ---------------------------------------------------------------------------------------- server
    def start_server(self, scenario: Path | None = None, *, resume: bool = False) -> subprocess.Popen:
        """``fedbrick-flower server`` (loopback) on this fleet's ports; waits until it is ready."""
        security = ["--insecure"] if self.certs is None else ["--certs", str(self.certs.folder)]
        args = [*security, "--fleet-address", self.fleet, "--control-port", str(self.control_port)]
        args += ["--resume", str(self.run_dir)] if resume else ["--scenario", str(scenario), "--out", str(self.run_dir)]
        if self.database is not None:
            args += ["--database", str(self.database)]
        self.launches += 1
        log_file = self.folder / f"server-{self.launches}.out"
        command = [sys.executable, "-m", "fedbrick_flower.cli", "server", *args]
        env = runtime.flower_env(self.folder / ".flwr-home", {"PYTHONPATH": str(PACKAGE_ROOT)})
        self.server = runtime.start(command, log_file, env)
        self.track()
        wait_for(lambda: READY in log_file.read_text(), 180, "SuperLink ready", self.server)
        return self.server

    def server_output(self) -> str:
        return (self.folder / f"server-{self.launches}.out").read_text()

    def superlink_pid(self) -> int:
        return int(json.loads((self.run_dir / DEPLOYMENT_FILE).read_text())["superlink_pid"])

    def crash_superlink(self) -> list[int]:
        """SIGKILL the SuperLink and the ServerApp and SuperExec it started; the server command then exits."""
        killed = kill_family(self.superlink_pid())
        if self.server is not None:
            self.server.wait(timeout=120)
        return killed

    # ---------------------------------------------------------------------------------------- nodes
    def start_node(self, client_id: str, state_dir: Path | None = None) -> subprocess.Popen:
        """One ``flower-supernode`` for ``client_id`` (its own Flower home, log and Runtime API port)."""
        node_config = {"client-id": client_id}
        if state_dir is not None:
            node_config["state-dir"] = str(state_dir)
        command = supernode_command(
            self.fleet,
            node_config,
            port=runtime.free_port(),
            heartbeat=self.heartbeat,
            poll=DEFAULT_POLL,
            root_certificates=self.certs.ca_cert if self.certs else None,
            private_key=self.certs.node_key(client_id) if self.certs else None,
        )
        home = self.folder / "nodes" / client_id
        home.mkdir(parents=True, exist_ok=True)
        env = runtime.flower_env(home, {"PYTHONPATH": str(PACKAGE_ROOT)})
        node = runtime.start(command, self.folder / "logs" / f"{client_id}.log", env)
        self.nodes[client_id] = node
        self.track()
        return node

    def kill_node(self, client_id: str) -> None:
        """SIGKILL a SuperNode and what it started (its SuperExec, a ClientApp in flight)."""
        kill_family(self.nodes[client_id].pid)
        self.nodes[client_id].wait(timeout=30)

    # ---------------------------------------------------------------------------------------- teardown
    def stop(self) -> None:
        """Stop every process started here (SIGTERM, then SIGKILL), newest first."""
        for process in [*reversed(self.nodes.values()), *([self.server] if self.server else [])]:
            runtime.stop(process, grace=15)

    def track(self) -> None:
        """Record the processes that the server and the nodes run now (call it now and then: ClientApps come
        and go)."""
        roots = [process.pid for process in [self.server, *self.nodes.values()] if process is not None]
        for pid in (member for root in roots for member in family(root)):
            with contextlib.suppress(psutil.NoSuchProcess):
                self.seen.add(psutil.Process(pid))  # it keeps its start time: a reused PID is not mistaken for it

    def strays(self, settle: float = 20.0) -> list[int]:
        """PIDs of processes ever tracked that are still running after at most ``settle`` seconds."""
        deadline = time.monotonic() + settle
        while True:
            left = sorted(process.pid for process in self.seen if not runtime.ended(process))
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    @contextlib.contextmanager
    def running(self) -> Iterator[LoopbackFleet]:
        try:
            yield self
        finally:
            self.stop()
