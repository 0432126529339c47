"""What a user sees on the device path when something is wrong: real commands, short waits (issue 25).

Each test starts ``fedbrick-flower`` as a user would and reads its console; every process is stopped by PID.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedbrick_flower import runtime
from tests.integration.test_deployment import fedbrick, finish, smoke_subset, wait_for

pytestmark = pytest.mark.integration


def test_a_client_with_nothing_at_its_address_names_the_address_and_the_cause(tmp_path: Path) -> None:
    # Prepare: a free port nothing listens on
    address = f"127.0.0.1:{runtime.free_port()}"
    log_file = tmp_path / "client.log"

    # Execute
    started = time.monotonic()
    client = fedbrick(["client", "--superlink", address, "--client-id", "bert-edge", "--insecure",
                       "--home", str(tmp_path / "home")], log_file, tmp_path)  # fmt: skip
    try:
        wait_for(lambda: "retrying in" in log_file.read_text(), 30, "a retry line", client)
        elapsed = time.monotonic() - started
    finally:
        runtime.stop(client)

    # Assert: within 30 s, the address and the cause; and it keeps trying rather than exiting
    line = next(line for line in log_file.read_text().splitlines() if "retrying in" in line)
    assert line.startswith(f"fedbrick-flower: cannot reach the SuperLink at {address}: connection refused")
    assert elapsed < 30


def test_a_server_whose_clients_never_come_stops_with_one_line_once_and_no_traceback(tmp_path: Path) -> None:
    # Prepare: one round of a two-client scenario, no client ever started, a short node timeout
    scenario = smoke_subset(tmp_path, ["bert-edge", "llama-edge"])
    args = ["server", "--insecure", "--scenario", str(scenario), "--out", str(tmp_path / "run"),
            "--fleet-address", f"127.0.0.1:{runtime.free_port()}", "--control-port", str(runtime.free_port()),
            "--set", "server.node_wait_timeout=5"]  # fmt: skip
    log_file = tmp_path / "server.out"

    # Execute
    server = fedbrick(args, log_file, tmp_path)
    output = finish(server, log_file, timeout=150)

    # Assert
    console = [line for line in output.splitlines() if not line.startswith("$ ")]  # less the echoed command
    assert server.returncode != 0
    assert "Traceback" not in output
    assert sum("server.node_wait_timeout" in line for line in console) == 1
    assert console[-1].startswith("fedbrick-flower: error: the ServerApp failed: ")
    assert "RunStoppedError: only 0 of the required 2 clients connected within 5s" in console[-1]
