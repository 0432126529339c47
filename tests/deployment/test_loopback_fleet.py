"""The loopback fleet's pieces that need no SuperLink: its tiny scenario, round reading and process-family kill.
The fleet itself runs in the restart and soak integration tests (tests/integration/test_restart_soak.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fedbrick_flower
from fedbrick_flower.deployment.loopback_fleet import PACKAGE_ROOT, completed_rounds, kill_family, tiny_scenario
from fedbrick_flower.run_files import METRICS_FILE
from fedbrick_flower.scenario import load_scenario


def test_tiny_scenario_is_a_valid_scenario_of_the_given_clients_and_server_settings(tmp_path: Path) -> None:
    # Execute
    path = tiny_scenario(tmp_path / "tiny.yaml", ["a", "b"], 3, "fedavg", round_timeout=120)

    # Assert
    scenario = load_scenario(str(path))
    assert [c.id for c in scenario.clients] == ["a", "b"] and scenario.rounds == 3
    assert scenario.algorithm == "fedavg" and scenario.server.round_timeout == 120
    assert not scenario.server.evaluate_global


def test_completed_rounds_reads_the_round_rows_in_file_order(tmp_path: Path) -> None:
    # Prepare
    rows = [{"round": 1, "phase": "train"}, {"round": 1, "phase": "round"}, {"round": 2, "phase": "round"}]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))

    # Execute
    rounds = completed_rounds(tmp_path)

    # Assert
    assert rounds == [1, 2]


def test_kill_family_kills_a_process_and_its_child() -> None:
    # Prepare: a Python process that starts a sleeping child
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    code += "print('ready', flush=True); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"

    # Execute
    killed = kill_family(parent.pid)

    # Assert: the parent and its child, SIGKILLed
    assert killed[0] == parent.pid and len(killed) == 2
    assert parent.wait(timeout=10) == -9


def test_the_fleets_processes_import_the_package_this_process_imports() -> None:
    # Assert: PACKAGE_ROOT goes on the server's and the SuperNodes' PYTHONPATH
    assert PACKAGE_ROOT / "fedbrick_flower" == Path(fedbrick_flower.__file__).resolve().parent
