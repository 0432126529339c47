"""``python -m fedbrick_flower.deployment.pacing [--heartbeat S] [--poll S] -- [flower-supernode args...]``.

Flower 1.39's SuperNode paces itself with constants that no flag reaches:

- it always announces a 30 s heartbeat interval (``HEARTBEAT_DEFAULT_INTERVAL``), and the SuperLink declares a node
  lost after two intervals: a killed device holds its round for about a minute. ``--heartbeat S`` announces ``S``
  instead (the SuperLink accepts 10 s to 1800 s), so a lost node is noticed after about ``2 * S``;
- when it finds no message it sleeps 3 s before it asks again, and while its ClientApp works it looks for the reply
  every 0.5 s (``time.sleep`` in ``flwr.supernode.start_client_internal``): a round's message waits 1.5 s on average
  before a node even sees it. ``--poll S`` caps both waits at ``S`` (each idle node then asks the SuperLink every
  ``S`` seconds).

This entry point runs the stock ``flower-supernode`` with those settings. It sets module attributes of Flower, which
a later release may rename: the deployment tests run every node through it.
"""

from __future__ import annotations

import argparse
import sys
import time
from types import ModuleType
from typing import Any

MIN_INTERVAL = 10.0  # flwr.common.constant.HEARTBEAT_MIN_INTERVAL: the SuperLink rejects shorter ones
MAX_INTERVAL = 1800.0
DEFAULT_POLL = 0.5  # seconds; Flower's own waits are 3 s (no message) and 0.5 s (reply not ready)


def set_interval(seconds: float) -> None:
    """Make this process's SuperNode announce and keep a ``seconds`` heartbeat."""
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise ValueError(
            f"heartbeat: {seconds} s is outside the {MIN_INTERVAL:.0f}..{MAX_INTERVAL:.0f} s the SuperLink accepts"
        )
    from flwr.client.grpc_rere_client import connection
    from flwr.supercore import heartbeat

    # Both modules copied the constant at import: the first announces it, the second paces the sends.
    connection.HEARTBEAT_DEFAULT_INTERVAL = seconds
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = seconds


class CappedSleep:
    """The ``time`` module as one module sees it, with every ``sleep`` capped at ``cap`` seconds."""

    def __init__(self, module: ModuleType, cap: float) -> None:
        self._module, self._cap = module, cap

    def sleep(self, seconds: float) -> None:
        self._module.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def set_poll(seconds: float) -> None:
    """Cap the SuperNode loop's waits (for a message, for a reply) at ``seconds``."""
    if seconds <= 0:
        raise ValueError(f"poll: {seconds} s must be > 0")
    from flwr.supernode import start_client_internal

    start_client_internal.time = CappedSleep(time, seconds)


def add_pacing_options(parser: argparse.ArgumentParser) -> None:
    """``--heartbeat`` and ``--poll`` of the commands that start SuperNodes (``client``, ``launch``)."""
    parser.add_argument("--heartbeat", type=float, help="heartbeat interval in seconds (10..1800; Flower's is 30)")
    parser.add_argument(
        "--poll",
        type=float,
        default=DEFAULT_POLL,
        help=f"longest wait of the SuperNode for a message or a reply, in seconds (default {DEFAULT_POLL}; "
        "Flower's own: 3 s for a message)",
    )


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options before ``--``, the SuperNode's after it."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m fedbrick_flower.deployment.pacing")
    add_pacing_options(parser)
    parser.set_defaults(poll=None)  # here an absent --poll keeps Flower's own pacing
    return parser.parse_args(argv[:split]), argv[split + 1 :]


def main() -> None:
    options, supernode_args = parse(sys.argv[1:])
    if options.heartbeat is not None:
        set_interval(options.heartbeat)
    if options.poll is not None:
        set_poll(options.poll)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *supernode_args]
    flower_supernode()


if __name__ == "__main__":
    main()
