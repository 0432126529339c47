"""Commands of Flower's own executables for a deployment, and the steps every deployment shares.

``server`` and ``launch`` both start one SuperLink, register node keys, submit the app and wait for the
run directory's summary; they differ only in who starts the SuperNodes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import runtime
from ..run_files import LOGS_DIR, SCENARIO_INPUT_FILE, SUMMARY_FILE
from ..scenario import Scenario
from .certs import CertificateSet, key_fingerprint

CONNECTION = "fedbrick-deploy"
IN_MEMORY = ":flwr-in-memory:"
ALREADY_REGISTERED = "Public key already in use"  # Flower's answer to a second registration of a key


@dataclass(frozen=True)
class SuperLinkSettings:
    """Where a SuperLink listens and how it secures its links.

    Parameters
    ----------
    fleet_address : str
        ``HOST:PORT`` of the Fleet API that SuperNodes dial (gRPC). ``0.0.0.0:9092`` for other machines.
    http_host, http_port : str, int
        The Control API (``flwr`` CLI) and the ServerApp's Runtime API (HTTP/HTTPS).
    certs : CertificateSet | None
        TLS material; ``None`` runs insecure, which also turns SuperNode authentication off.
    database : str
        Flower's state database: a file path, or ``:flwr-in-memory:``.
    """

    fleet_address: str
    http_port: int
    http_host: str = "127.0.0.1"
    certs: CertificateSet | None = None
    database: str = IN_MEMORY

    @property
    def connection_address(self) -> str:
        # The server certificate names localhost and 127.0.0.1: the CLI reaches the HTTP API on loopback.
        host = "127.0.0.1" if self.http_host in {"0.0.0.0", "127.0.0.1"} else self.http_host
        return f"{host}:{self.http_port}"


def superlink_command(settings: SuperLinkSettings) -> list[str]:
    """``flower-superlink`` with the gRPC Fleet API, TLS and SuperNode authentication (when certified)."""
    command = [
        "flower-superlink",
        "--fleet-api-type", "grpc-rere",
        "--fleet-api-address", settings.fleet_address,
        "--host", settings.http_host,
        "--port", str(settings.http_port),
        "--database", settings.database,
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    certs = settings.certs
    if certs is None:
        return [*command, "--insecure"]
    certs.check_server()
    return [
        *command,
        "--ssl-ca-certfile", str(certs.ca_cert),
        "--ssl-certfile", str(certs.server_cert),
        "--ssl-keyfile", str(certs.server_key),
        "--enable-supernode-auth",
    ]  # fmt: skip


def supernode_command(
    superlink: str,
    node_config: Mapping[str, Any],
    *,
    port: int,
    host: str = "127.0.0.1",
    root_certificates: Path | None = None,
    private_key: Path | None = None,
    heartbeat: float | None = None,
    poll: float | None = None,
    isolation: str | None = None,
) -> list[str]:
    """``flower-supernode`` dialing ``superlink`` over gRPC; TLS unless ``root_certificates`` is None.

    ``heartbeat`` and ``poll`` (seconds) run the same SuperNode through :mod:`.pacing`: a lost node is noticed
    sooner, and a message or a reply waits at most ``poll`` seconds in the SuperNode (Flower's own loop: 3 s).
    ``isolation="process"`` leaves its ClientApp tasks to an executor started beside it (see :mod:`.node`).
    """
    paced = {"heartbeat": heartbeat, "poll": poll}
    pacing = [f"--{name}={float(value)!r}" for name, value in paced.items() if value is not None]
    if pacing:
        command = [sys.executable, "-m", "fedbrick_flower.deployment.pacing", *pacing, "--"]
    else:
        command = ["flower-supernode"]
    command += [
        "--grpc-rere",
        "--superlink", superlink,
        "--node-config", runtime.run_config_arg(node_config),
        "--host", host,
        "--port", str(port),
    ]  # fmt: skip
    if isolation is not None:
        command += ["--isolation", isolation]
    if root_certificates is None:
        return [*command, "--insecure"]
    command += ["--root-certificates", str(root_certificates.resolve())]
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(private_key.resolve())]
    return command


def register_node_keys(keys: Sequence[Path], env: Mapping[str, str], names: Sequence[str] | None = None) -> None:
    """Register SuperNode public keys with the SuperLink of the default connection (``flwr supernode register``)."""
    for index, key in enumerate(keys):
        name = names[index] if names else key.name.removesuffix(".key.pub")
        command = ["flwr", "supernode", "register", str(key), CONNECTION, "--name", name]
        result = subprocess.run(command, env=dict(env), capture_output=True, text=True, check=False)
        output = (result.stdout + result.stderr).strip()
        fingerprint = key_fingerprint(key)  # a device whose key is not among these is refused: it prints its own
        if result.returncode == 0:
            print(f"registered SuperNode key {key.name} as {name!r} ({fingerprint})")
        elif ALREADY_REGISTERED in output:  # a SuperLink restarted on its state database knows it already
            print(f"SuperNode key {key.name} is registered already ({fingerprint})")
        else:
            raise RuntimeError(f"registering {key} failed: {output}")


def start_superlink(settings: SuperLinkSettings, run_dir: Path, env: Mapping[str, str]) -> subprocess.Popen:
    """Start the SuperLink, write the ``flwr`` connection to it, and wait until it answers."""
    log_file = run_dir / LOGS_DIR / "superlink.log"
    process = runtime.start(superlink_command(settings), log_file, env)
    flwr_home = Path(env["FLWR_HOME"])
    ca_cert = settings.certs.ca_cert if settings.certs else None
    runtime.write_connection(flwr_home, CONNECTION, settings.connection_address, root_certificates=ca_cert)
    try:
        runtime.wait_for_http(settings.http_port, process, log_file, ca_file=ca_cert)
    except BaseException:
        runtime.stop(process)
        raise
    return process


def run_config(run_dir: Path, scenario: Scenario, *, resume: bool = False, audit_wire: bool = False) -> dict[str, Any]:
    """The ``--run-config`` of a deployment: an absolute scenario file (SuperNodes read it too) and the run dir.

    Overrides are baked into the scenario file (Flower's run_config accepts only the keys pyproject declares); a
    resumed run reloads that file and adds any new overrides.
    """
    resolved = run_dir / SCENARIO_INPUT_FILE
    resolved.write_text(yaml.safe_dump(scenario.raw, sort_keys=False))
    values: dict[str, Any] = {"scenario": str(resolved.resolve()), "out-dir": str(run_dir)}
    if resume:
        values["resume-from"] = str(run_dir)
    if audit_wire:
        values["audit-wire"] = True
    return values


def submit(run_dir: Path, values: Mapping[str, Any], superlink: subprocess.Popen, env: Mapping[str, str]) -> None:
    """``flwr run`` the app with streamed logs, then wait for the ServerApp's summary (or fail with its cause)."""
    runtime.submit_run(CONNECTION, values, env, run_dir / SUMMARY_FILE, superlink, run_dir / LOGS_DIR / "superlink.log")
