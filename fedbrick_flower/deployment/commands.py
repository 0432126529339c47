"""``fedbrick-flower certs / server / client / launch``: the Deployment Engine from the command line.

- ``certs``  CA, server certificate and SuperNode keys.
- ``server`` one SuperLink (TLS and SuperNode authentication unless ``--insecure``), node keys registered,
  the run submitted with ``flwr run``, progress streamed, the summary printed.
- ``client`` one SuperNode carrying a device profile as its node config, in the foreground.
- ``launch`` a whole scenario on this machine: a SuperLink and one SuperNode per scenario client.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import runtime
from ..run_files import LOGS_DIR, SCENARIO_INPUT_FILE, print_summary
from ..scenario import Scenario, ScenarioError, parse_overrides, parse_profile, read_yaml_mapping
from .certs import CA_CERT, CertificateSet, key_fingerprint, make_certificates, node_names
from .node import add_executor_options, node_command, runtime_address
from .pacing import add_pacing_options
from .processes import (
    IN_MEMORY,
    SuperLinkSettings,
    register_node_keys,
    run_config,
    start_superlink,
    submit,
    supernode_command,
)
from .reach import wait_until_reachable

DEPLOYMENT_FILE = "deployment.json"
DEFAULT_FLEET_PORT = 9092


# ------------------------------------------------------------------------------------------------ certs
def add_certs(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("certs", help="create a CA, a SuperLink certificate and SuperNode key pairs")
    parser.add_argument("--out", type=Path, required=True, help="certificate folder (e.g. deploy/certs)")
    parser.add_argument("--nodes", type=int, default=2, help="number of SuperNode key pairs: node0, node1, ...")
    parser.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="extra subjectAltName of the server certificate: a host name or an IP (repeatable)",
    )
    parser.set_defaults(handler=certs)


def certs(args: argparse.Namespace) -> int:
    result = make_certificates(args.out, node_names(args.nodes), args.san)
    print(f"CA certificate:     {result.ca_cert}  (copy to every device)")
    print(f"server certificate: {result.server_cert}, key {result.server_key}")
    for key in result.node_public_keys():
        name = key.name.removesuffix(".key.pub")
        print(f"SuperNode key:      {result.node_key(name)}  (public key {key} is registered by the server)")
    return 0


# ------------------------------------------------------------------------------------------------ server
def add_server(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "server",
        help="start a SuperLink and run a scenario on the SuperNodes that join",
        description="Check the scenario, start a SuperLink, register the SuperNode keys, submit the run and print "
        "its summary. Devices on other machines need --fleet-address 0.0.0.0:9092: the default listens on "
        "loopback, which only this machine reaches. Ctrl-C (or SIGTERM) stops the SuperLink it started.",
    )
    parser.add_argument(
        "--scenario", help="built-in name or YAML path [required, except with --resume: then the run's own]"
    )
    parser.add_argument("--certs", type=Path, help="certificate folder from `fedbrick-flower certs`")
    parser.add_argument("--insecure", action="store_true", help="no TLS and no SuperNode authentication")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<scenario>-<time>)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its checkpoint")
    parser.add_argument(
        "--fleet-address",
        default=f"127.0.0.1:{DEFAULT_FLEET_PORT}",
        help=f"HOST:PORT of the Fleet API that SuperNodes dial (gRPC); the default is loopback, reachable only from "
        f"this machine: give 0.0.0.0:{DEFAULT_FLEET_PORT} for devices on the network",
    )
    parser.add_argument(
        "--control-port", type=int, default=8000, help="port of the Control/Runtime API (HTTP(S), on loopback)"
    )
    parser.add_argument("--node-keys", type=Path, help="folder of SuperNode *.key.pub files (default: CERTS/public)")
    parser.add_argument(
        "--database",
        default=IN_MEMORY,
        help="SuperLink state database: a file, or in memory. With a file, a server restarted after a crash "
        "(--resume RUN_DIR, the same file and --fleet-address) keeps the SuperNodes that are still running",
    )
    parser.add_argument("--keep", action="store_true", help="leave the SuperLink running after the run")
    _add_run_options(parser)
    parser.set_defaults(handler=server)


def server(args: argparse.Namespace) -> int:
    """SuperLink -> node keys -> ``flwr run`` -> summary -> SuperLink stopped (unless ``--keep``)."""
    run_dir = (args.resume or args.out or _default_run_dir(args.scenario)).resolve()
    scenario = _server_scenario(args, run_dir)  # every check before the SuperLink starts
    certs = None if args.insecure else _certificate_folder(args.certs)
    settings = SuperLinkSettings(args.fleet_address, args.control_port, certs=certs, database=args.database)
    env = runtime.flower_env(run_dir / ".flwr-home")
    superlink = start_superlink(settings, run_dir, env)
    try:
        if certs is not None:
            keys = sorted((args.node_keys or certs.public_dir).glob("*.key.pub"))
            if not keys:
                raise RuntimeError(f"no SuperNode public keys (*.key.pub) in {args.node_keys or certs.public_dir}")
            register_node_keys(keys, env)
        _write_deployment(run_dir, settings, superlink.pid, {})
        print(f"SuperLink pid {superlink.pid}: Fleet API {settings.fleet_address}, waiting for SuperNodes", flush=True)
        submit(
            run_dir, run_config(run_dir, scenario, resume=bool(args.resume), audit_wire=args.audit_wire), superlink, env
        )
    finally:
        if not args.keep:
            runtime.stop(superlink)
    if args.keep:
        print(f"SuperLink still running (pid {superlink.pid}); stop it with: kill {superlink.pid}")
    print_summary(run_dir)
    return 0


def _server_scenario(args: argparse.Namespace, run_dir: Path) -> Scenario:
    from ..preflight import check_scenario  # imports torch: only commands that run a scenario pay for it

    overrides = parse_overrides(args.set)
    if args.scenario:
        return check_scenario(args.scenario, overrides)
    saved = run_dir / SCENARIO_INPUT_FILE
    if args.resume and saved.is_file():
        return check_scenario(str(saved), overrides)
    raise ScenarioError("--scenario is required (or --resume RUN_DIR of a run that saved its scenario)")


def _certificate_folder(folder: Path | None) -> CertificateSet:
    if folder is None:
        raise RuntimeError("--certs DIR is required for TLS (or pass --insecure for a plain-text test setup)")
    certs = CertificateSet(folder.resolve())
    certs.check_server()
    return certs


# ------------------------------------------------------------------------------------------------ client
def add_client(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "client",
        help="start a SuperNode that carries a device profile",
        description="Replace this process with a Flower SuperNode that dials the server's Fleet API and runs this "
        "device's ClientApp for every message. Exactly one of --profile or --client-id is required. The server "
        "must listen where this device reaches it (`server --fleet-address 0.0.0.0:9092`; its default is "
        "loopback). Ctrl-C stops the SuperNode.",
    )
    parser.add_argument(
        "--superlink",
        required=True,
        metavar="HOST:PORT",
        help=f"the server's Fleet API, e.g. server:{DEFAULT_FLEET_PORT}",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--profile", type=Path, help="device profile YAML (see deploy/profiles/) [this or --client-id]")
    who.add_argument(
        "--client-id", help="a client id of the server's scenario, whose profile comes from there [this or --profile]"
    )
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--certs", type=Path, help=f"certificate folder holding {CA_CERT}")
    trust.add_argument("--root-certificates", type=Path, help="the CA certificate that signed the server's")
    parser.add_argument("--key", type=Path, help="this node's private key (its .pub is registered on the server)")
    parser.add_argument("--insecure", action="store_true", help="no TLS (only against an --insecure server)")
    parser.add_argument("--host", default="127.0.0.1", help="host of this node's local ClientApp API")
    parser.add_argument(
        "--port", type=int, default=9094, help="port of this node's local ClientApp API (one per node on a machine)"
    )
    add_pacing_options(parser)
    parser.add_argument(
        "--home",
        type=Path,
        help="Flower's working folder for this node (default: a fresh folder in the system's temporary directory, "
        "which leaves nothing in your home folder)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keep this client's state (personal adapters, optimizer state, running statistics) in DIR, written "
        "after every message, so that it survives a restart of the device (default: in memory, for the run only)",
    )
    add_executor_options(parser)
    parser.set_defaults(handler=client)


def client(args: argparse.Namespace) -> int:
    """Replace this process with ``flower-supernode``: signals and the exit code are the SuperNode's own.

    Before that, it waits until the server's Fleet API answers, printing each failed try with the address and
    the cause (Flower's SuperNode names neither), and names its key's fingerprint, which the server prints for
    every key it registered.
    With the warm executor the process first starts the executor, which follows it by PID (see :mod:`.node`).
    """
    root_certificates = None if args.insecure else _root_certificate(args)
    node_config = _node_config(args)
    if args.key is not None:
        print(f"this node's key: {args.key} ({_fingerprint(args.key)}); the server must have registered its .pub")
    wait_until_reachable(args.superlink, root_certificates)
    warm = args.executor == "warm"
    command = supernode_command(
        args.superlink,
        node_config,
        port=args.port,
        host=args.host,
        root_certificates=root_certificates,
        private_key=args.key,
        heartbeat=args.heartbeat,
        poll=args.poll,
        isolation="process" if warm else None,
    )
    if warm:
        command = node_command(command, runtime_address(args.host, args.port), args.warm)
    # Flower keeps only the run's app there: a temporary folder by default, so nothing is left in the home folder.
    home = args.home or Path(tempfile.mkdtemp(prefix=f"fedbrick-supernode-{args.port}-"))
    home.mkdir(parents=True, exist_ok=True)
    env = runtime.flower_env(home.resolve())
    sys.stdout.flush()
    os.execvpe(command[0], command, env)
    return 0  # not reached


def _fingerprint(key: Path) -> str:
    try:
        return key_fingerprint(key)
    except (OSError, ValueError, IndexError) as error:
        raise RuntimeError(
            f"--key: {key} is not a SuperNode private key from `fedbrick-flower certs`: {error}"
        ) from None


def _node_config(args: argparse.Namespace) -> dict[str, str]:
    config = _state_dir_config(args.state_dir)
    if args.client_id:
        return {"client-id": args.client_id, **config}
    path = args.profile.resolve()
    if not path.is_file():
        raise ScenarioError(f"--profile: file {str(path)!r} does not exist")
    parse_profile(read_yaml_mapping(path, "profile"), where=f"profile {path}")  # fail here, not in every ClientApp
    # An absolute path: the ClientApp process that reads it does not share this shell's working directory.
    return {"profile": str(path), **config}


def _state_dir_config(folder: Path | None) -> dict[str, str]:
    """``state-dir`` for the node config (absolute, created now so that a wrong path fails here)."""
    if folder is None:
        return {}
    from ..clients.state import STATE_DIR_KEY  # flwr and numpy only: no torch

    folder = folder.expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RuntimeError(f"--state-dir: cannot create {folder}: {error}") from None
    return {STATE_DIR_KEY: str(folder)}


def _root_certificate(args: argparse.Namespace) -> Path:
    path = args.root_certificates or (args.certs / CA_CERT if args.certs else None)
    if path is None:
        raise RuntimeError("give --certs DIR or --root-certificates CA.crt (or --insecure against an insecure server)")
    if not path.is_file():
        raise RuntimeError(f"CA certificate {path} does not exist")
    return path


# ------------------------------------------------------------------------------------------------ launch
def add_launch(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "launch",
        help="run a scenario as a local multi-process deployment (loopback)",
        description="Check the scenario, then start a SuperLink and one SuperNode per client on this machine (TLS "
        "and node authentication unless --insecure), submit the run and print its summary. Ctrl-C stops every "
        "process it started; their logs are in RUN_DIR/logs/.",
    )
    parser.add_argument("scenario", help="built-in name or YAML path")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<scenario>-<time>)")
    parser.add_argument("--insecure", action="store_true", help="no TLS and no SuperNode authentication")
    add_pacing_options(parser)
    add_executor_options(parser)
    _add_run_options(parser)
    parser.set_defaults(handler=launch)


def launch(args: argparse.Namespace) -> int:
    """Certificates -> SuperLink -> keys -> one SuperNode per client -> ``flwr run`` -> teardown -> summary."""
    from ..preflight import check_scenario  # imports torch: only commands that run a scenario pay for it

    scenario = check_scenario(args.scenario, parse_overrides(args.set), local_clients=True)
    run_dir = (args.out or _default_run_dir(scenario.name)).resolve()
    client_ids = [profile.id for profile in scenario.clients]
    certs = None if args.insecure else make_certificates(run_dir / "certs", client_ids)
    settings = SuperLinkSettings(f"127.0.0.1:{runtime.free_port()}", runtime.free_port(), certs=certs)
    env = runtime.flower_env(run_dir / ".flwr-home")
    with runtime.running([start_superlink(settings, run_dir, env)]) as processes:
        if certs is not None:
            register_node_keys([certs.node_public_key(cid) for cid in client_ids], env, client_ids)
        nodes = {cid: _start_supernode(cid, settings, certs, run_dir, args) for cid in client_ids}
        processes.extend(nodes.values())
        _write_deployment(run_dir, settings, processes[0].pid, {cid: node.pid for cid, node in nodes.items()})
        submit(run_dir, run_config(run_dir, scenario, audit_wire=args.audit_wire), processes[0], env)
    print_summary(run_dir)
    return 0


def _start_supernode(
    client_id: str,
    settings: SuperLinkSettings,
    certs: CertificateSet | None,
    run_dir: Path,
    args: argparse.Namespace,
) -> subprocess.Popen:
    """One SuperNode and its ClientApp executor (a child of the SuperNode's process, logging to the same file)."""
    warm, port = args.executor == "warm", runtime.free_port()
    command = supernode_command(
        settings.fleet_address,
        {"client-id": client_id},
        port=port,
        root_certificates=certs.ca_cert if certs else None,
        private_key=certs.node_key(client_id) if certs else None,
        heartbeat=args.heartbeat,
        poll=args.poll,
        isolation="process" if warm else None,
    )
    if warm:
        command = node_command(command, runtime_address("127.0.0.1", port), args.warm)
    # Each node gets its own FLWR_HOME, as on separate machines.
    node_env = runtime.flower_env(run_dir / "nodes" / client_id / ".flwr-home")
    return runtime.start(command, run_dir / LOGS_DIR / f"supernode-{client_id}.log", node_env)


# ------------------------------------------------------------------------------------------------ shared
def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. --set rounds=5 --set server.min_clients=2 (repeatable)",
    )
    parser.add_argument(
        "--audit-wire",
        action="store_true",
        help="clients describe every message they receive and send in RUN_DIR/wire-audit.jsonl (names, no values)",
    )


def _default_run_dir(name: str | None) -> Path:
    stem = Path(name).stem if name else "run"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _write_deployment(run_dir: Path, settings: SuperLinkSettings, superlink_pid: int, nodes: dict[str, int]) -> None:
    """Record addresses and PIDs in ``RUN_DIR/deployment.json``, so an operator stops exactly these processes."""
    record = {
        "fleet_address": settings.fleet_address,
        "control_address": settings.connection_address,
        "tls": settings.certs is not None,
        "superlink_pid": superlink_pid,
        "supernode_pids": nodes,
    }
    (run_dir / DEPLOYMENT_FILE).write_text(json.dumps(record, indent=2))
