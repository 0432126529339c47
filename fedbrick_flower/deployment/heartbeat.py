"""``python -m fedbrick_flower.deployment.heartbeat SECONDS [flower-supernode args...]``.

Flower 1.39's SuperNode always announces a 30 s heartbeat interval (``HEARTBEAT_DEFAULT_INTERVAL``, no flag), and
the SuperLink declares a node lost after two intervals: a killed device holds its round for about a minute.
This entry point runs the stock ``flower-supernode`` with a shorter announced interval, so that a lost node is
noticed after about ``2 * SECONDS``. The SuperLink accepts 10 s to 1800 s. Opt-in only (``--heartbeat``): it
sets module constants of Flower, which a later release may rename.
"""

from __future__ import annotations

import sys

MIN_INTERVAL = 10.0  # flwr.common.constant.HEARTBEAT_MIN_INTERVAL: the SuperLink rejects shorter ones
MAX_INTERVAL = 1800.0


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


def main() -> None:
    set_interval(float(sys.argv[1]))
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *sys.argv[2:]]
    flower_supernode()


if __name__ == "__main__":
    main()
