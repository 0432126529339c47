"""A SuperNode's ClientApp executor: ``fedbrick-flower executor``, and how ``client`` and ``launch`` start one.

- ``--executor warm`` (the default): the SuperNode runs with ``--isolation process`` and this package's warm
  executor (:mod:`.executor`) serves its tasks, with torch, transformers, peft and the app imported once
  (``--warm fork``: a forked child per message; ``--warm persistent``: in the warm process itself).
- ``--executor flower``: Flower's own. The SuperNode (``--isolation subprocess``) starts ``flower-superexec``,
  which starts a cold ``flwr-clientapp`` process for every message.

``python -m fedbrick_flower.deployment.node EXECUTOR-OPTIONS -- SUPERNODE-COMMAND`` starts the executor and
then becomes the SuperNode: the PID stays, so the executor's ``--parent-pid`` is the SuperNode's and it exits
with it, as ``flower-superexec`` does. ``client`` execs into it; ``launch`` starts one per node. Nothing here
imports torch or Flower internals.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

EXECUTORS = ("warm", "flower")
WARM_MODES = ("fork", "persistent")
# Chosen from bench/results/warm-executor.json (see docs/warm-executor.md).
DEFAULT_WARM = "persistent"
# Seconds between two task requests to the SuperNode's Runtime API (flower-superexec waits 1 s).
DEFAULT_POLL_INTERVAL = 0.2
SEPARATOR = "--"


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """``--executor`` and ``--warm``, shared by ``client``, ``launch`` and ``executor``."""
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="warm",
        help="what runs the ClientApp: `warm` keeps torch, transformers, peft and the app imported between "
        "messages; `flower` is Flower's flower-superexec (a new flwr-clientapp process per message)",
    )
    parser.add_argument(
        "--warm",
        choices=WARM_MODES,
        default=DEFAULT_WARM,
        help="warm executor: `fork` runs each message in a child forked from the warm process (a crash fails one "
        "message); `persistent` runs it in the warm process (weights, tokenised data and CUDA stay loaded)",
    )


def add_executor(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "executor",
        help="serve a SuperNode's ClientApp tasks with everything imported once (in place of flower-superexec)",
        description="Acquire the ClientApp tasks of a SuperNode started with --isolation process and run them "
        "with torch, transformers, peft and the app imported once. Takes flower-superexec's options. SIGTERM or "
        "SIGINT stops it cleanly (a running task is reported as stopped).",
    )
    parser.add_argument(
        "--runtime-api-address",
        required=True,
        metavar="HOST:PORT",
        help="the SuperNode's Runtime API (its --host and --port), e.g. supernode-1:9094",
    )
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--insecure", action="store_true", help="plain HTTP (a Runtime API without --ssl-certfile)")
    trust.add_argument(
        "--root-certificates", type=Path, metavar="ROOT_CERT", help="CA certificate that verifies the Runtime API"
    )
    parser.add_argument(
        "--superexec-auth-secret-file", type=Path, help="the SuperNode's SuperExec shared secret (raw bytes)"
    )
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    add_executor_options(parser)
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL,
        help="seconds between two requests for a task (0.01..60)",
    )
    parser.set_defaults(handler=executor)


def executor(args: argparse.Namespace) -> int:
    """Serve tasks with the warm executor, or become ``flower-superexec`` (``--executor flower``)."""
    if not 0.01 <= args.poll_interval <= 60:
        raise RuntimeError(f"--poll-interval: {args.poll_interval} is outside 0.01..60 seconds")
    if args.executor == "flower":
        command = flower_superexec_command(args)
        sys.stdout.flush()
        os.execvp(command[0], command)
    from .executor import run

    return run(
        args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=args.root_certificates,
        auth_secret_file=args.superexec_auth_secret_file,
        warm=args.warm,
        poll_interval=args.poll_interval,
        parent_pid=args.parent_pid,
    )


def flower_superexec_command(args: argparse.Namespace) -> list[str]:
    """The ``flower-superexec`` command with the same address and security options."""
    command = ["flower-superexec", "--runtime-api-address", args.runtime_api_address]
    if args.insecure:
        command.append("--insecure")
    if args.root_certificates is not None:
        command += ["--root-certificates", str(args.root_certificates)]
    if args.superexec_auth_secret_file is not None:
        command += ["--superexec-auth-secret-file", str(args.superexec_auth_secret_file)]
    if args.parent_pid is not None:
        command += ["--parent-pid", str(args.parent_pid)]
    return command


def runtime_address(host: str, port: int) -> str:
    """Where a local executor dials a SuperNode whose Runtime API listens on ``host:port``."""
    if host in {"", "0.0.0.0"}:
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_command(supernode: Sequence[str], address: str, warm: str) -> list[str]:
    """Run ``supernode`` (started with ``--isolation process``) with a warm executor beside it."""
    return [
        sys.executable, "-m", __name__,
        "--runtime-api-address", address, "--insecure", "--warm", warm,
        SEPARATOR, *supernode,
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """Start the executor (following this PID), then become the SuperNode."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index(SEPARATOR)
    options, supernode = argv[:split], argv[split + 1 :]
    executor_command = [sys.executable, "-m", "fedbrick_flower.cli", "executor", *options]
    subprocess.Popen([*executor_command, "--parent-pid", str(os.getpid())])  # noqa: S603 - our own command
    sys.stdout.flush()
    os.execvp(supernode[0], supernode)


if __name__ == "__main__":
    main()
