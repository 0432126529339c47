"""The warm ClientApp executor against Flower's own, on real SuperNodes: same metric rows, TLS, a clean stop.

The warm executor reaches into Flower internals (task acquisition, ``flwr-clientapp``'s task functions, the
Runtime API client; see ``fedbrick_flower/deployment/executor.py``). The equality test is the guard against a
Flower upgrade that changes any of them: the same scenario and seed must give the same rows under both executors.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fedbrick_flower import runtime
from fedbrick_flower.deployment.certs import make_certificates
from fedbrick_flower.deployment.node import DEFAULT_WARM
from fedbrick_flower.run_dir import read_metrics
from tests.integration.test_deployment import alive, fedbrick, finish, smoke_subset, wait_for

pytestmark = pytest.mark.integration

# Fields of a metric row that measure this machine rather than the run, so they differ between any two runs:
# wall-clock times (the round's `wall_seconds`, the aggregation's `seconds`, a client's `train-seconds`) and memory
# (`process-peak-rss-mb` is the peak of the process that served the message: a cold flwr-clientapp or the warm
# executor; `peak-memory-mb` on CPU counts the step's tensors by storage address, which the allocator's history
# moves by a few bytes). Every other field, losses, accuracies, bytes on the wire and layer lists included,
# must be equal.
MACHINE_FIELDS = {"wall_seconds", "seconds", "train-seconds", "process-peak-rss-mb", "peak-memory-mb"}
CLIENTS = ["bert-edge", "llama-edge"]  # two families, light on a 2-core machine


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in row.items() if key not in MACHINE_FIELDS} for row in rows]


def test_stock_and_warm_executors_give_identical_metric_rows(tmp_path: Path) -> None:
    # Prepare: the same two-round scenario and seed under each executor (side by side, to save time); the warm
    # one in its default mode (`launch --warm fork` runs in tests/integration/test_deployment.py)
    scenario = str(smoke_subset(tmp_path, CLIENTS, rounds=2))
    executors = {"flower": ["--executor", "flower"], "warm": []}
    launches = {}
    for name, options in executors.items():
        args = ["launch", scenario, "--insecure", "--out", str(tmp_path / name), *options]
        launches[name] = fedbrick(args, tmp_path / f"{name}.out", tmp_path)

    # Execute
    try:
        outputs = {name: finish(process, tmp_path / f"{name}.out", timeout=900) for name, process in launches.items()}
    finally:
        for process in launches.values():
            runtime.stop(process)

    # Assert: both runs finished their two rounds, each message served by the executor asked for
    for name, process in launches.items():
        assert process.returncode == 0, outputs[name][-3000:]
    rows = {name: read_metrics(tmp_path / name) for name in executors}
    assert [row["round"] for row in rows["flower"] if row["phase"] == "round"] == [1, 2]
    logs = {name: (tmp_path / name / "logs" / f"supernode-{CLIENTS[0]}.log").read_text() for name in executors}
    assert "warm executor" not in logs["flower"]
    assert f"warm executor ({DEFAULT_WARM}) ready" in logs["warm"]
    assert logs["warm"].count("(train) took") == 2
    # The runs agree on everything but the machine's own figures
    assert _comparable(rows["warm"]) == _comparable(rows["flower"])


def _executor(args: list[str], log_file: Path, home: Path) -> subprocess.Popen:
    env = runtime.flower_env(home, {"PYTHONPATH": str(runtime.app_dir())})
    return runtime.start([sys.executable, "-m", "fedbrick_flower.cli", "executor", *args], log_file, env)


def test_executor_reaches_a_tls_runtime_api_refuses_a_wrong_ca_and_stops_cleanly(tmp_path: Path) -> None:
    # Prepare: a SuperNode whose Runtime API speaks TLS (no SuperLink: it keeps dialing; its API is up meanwhile)
    certs = make_certificates(tmp_path / "certs", ["node"])
    stranger = make_certificates(tmp_path / "other", ["node"])
    port = runtime.free_port()
    supernode = [
        "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{runtime.free_port()}",
        "--isolation", "process", "--host", "127.0.0.1", "--port", str(port),
        "--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key),
        "--ssl-ca-certfile", str(certs.ca_cert),
    ]  # fmt: skip
    address = ["--runtime-api-address", f"127.0.0.1:{port}"]
    env = runtime.flower_env(tmp_path / "home")
    with runtime.running([runtime.start(supernode, tmp_path / "supernode.log", env)]) as processes:
        # Execute
        trusted = _executor([*address, "--root-certificates", str(certs.ca_cert)], tmp_path / "ok.log", tmp_path)
        wrong = _executor([*address, "--root-certificates", str(stranger.ca_cert)], tmp_path / "wrong.log", tmp_path)
        processes += [trusted, wrong]
        log = tmp_path / "ok.log"
        wait_for(lambda: "connected to the SuperNode's Runtime API" in log.read_text(), 180, "TLS link", trusted)
        wrong_code = wrong.wait(timeout=180)
        trusted.send_signal(signal.SIGTERM)
        code = trusted.wait(timeout=60)
        time.sleep(0.5)

    # Assert: verified TLS works, an unknown CA is refused, and SIGTERM ends the executor with 0
    assert code == 0, log.read_text()[-3000:]
    assert "warm executor stopped" in log.read_text()
    assert wrong_code != 0
    assert "connected to the SuperNode's Runtime API" not in (tmp_path / "wrong.log").read_text()
    assert not alive(trusted.pid)
