"""The command line: help texts that state defaults, --version, the scenario catalogue, and no torch where
nothing trains."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedbrick_flower import cli
from fedbrick_flower.clients.state import STATE_DIR_KEY
from fedbrick_flower.deployment import commands
from fedbrick_flower.scenario import builtin_scenarios
from tests.imports import heavy_imports_after

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["run", "--help"],
        ["server", "--help"],
        ["client", "--help"],
        ["scenarios"],
        ["bench", "--help"],
    ]
    + [["compare", "--help"]],
)
def test_commands_that_do_not_train_import_no_torch(argv: list[str]) -> None:
    # Execute
    loaded = heavy_imports_after(
        f"from fedbrick_flower.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    )

    # Assert
    assert loaded == []


def test_certs_imports_no_torch(tmp_path: Path) -> None:
    # Execute
    loaded = heavy_imports_after(f"from fedbrick_flower.cli import main\nmain(['certs', '--out', {str(tmp_path)!r}])")

    # Assert
    assert loaded == []
    assert (tmp_path / "ca.crt").is_file()


def test_cli_and_deployment_do_not_import_each_other() -> None:
    # Assert: deployment modules never import the cli module (the cli imports them)
    for path in (ROOT / "fedbrick_flower" / "deployment").glob("*.py"):
        assert "cli" not in {line.split()[1].lstrip(".") for line in path.read_text().splitlines()
                             if line.strip().startswith(("from ", "import "))}, path  # fmt: skip


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "command, expected",
    [
        (["certs"], ["(default: 2)", "--out OUT certificate folder (e.g. deploy/certs) [required]"]),
        (["server"], ["(default: 127.0.0.1:9092)", "(default: 8000)", "[required, except with --resume"]),
        (["client"], ["(default: 127.0.0.1)", "(default: 9094)", "[required]", "--state-dir DIR"]),
        (["run"], ["--out OUT run directory (default: runs/<scenario>-<time>)"]),
    ],
)
def test_help_states_defaults_and_required_options(
    command: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    text = _help(command, capsys)

    # Assert
    for phrase in expected:
        assert phrase in text


def test_server_help_says_the_fleet_default_is_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    text = _help(["server"], capsys)

    # Assert
    assert "the default is loopback, reachable only from this machine: give 0.0.0.0:9092" in text


def test_version_names_both_packages(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])

    # Assert
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("fedbrick-flower 0.")


def test_scenarios_prints_one_line_per_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = cli.main(["scenarios"])

    # Assert
    lines = capsys.readouterr().out.strip().splitlines()
    names = builtin_scenarios()
    assert code == 0
    assert [line.split()[0] for line in lines[: len(names)]] == names
    smoke = lines[names.index("smoke")]
    assert "; 3 clients (tiny-bert, tiny-llama), 2 rounds; duration: " in smoke
    assert all("(no description)" not in line and "duration: " in line for line in lines[: len(names)])


def test_every_builtin_scenario_is_in_the_readme() -> None:
    # Prepare
    readme = (ROOT / "README.md").read_text()

    # Assert
    for name in builtin_scenarios():
        assert f"fedbrick-flower run {name}" in readme, name


def test_client_state_dir_reaches_the_node_config(tmp_path: Path) -> None:
    # Prepare
    args = argparse.Namespace(client_id="phone", profile=None, state_dir=tmp_path / "state")

    # Execute
    config = commands._node_config(args)

    # Assert
    assert config == {"client-id": "phone", STATE_DIR_KEY: str((tmp_path / "state").resolve())}
    assert (tmp_path / "state").is_dir()


def test_run_with_a_broken_scenario_stops_before_any_process(tmp_path: Path) -> None:
    # Prepare
    broken = (ROOT / "fedbrick_flower" / "scenarios" / "smoke.yaml").read_text().replace("bbc-news", "bbc")
    path = tmp_path / "broken.yaml"
    path.write_text(broken.replace("layers: 2}", "layers: 9}"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

    # Execute
    result = subprocess.run(
        [sys.executable, "-m", "fedbrick_flower.cli", "run", str(path), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )

    # Assert: one error listing both problems, no traceback, no run directory (nothing was started)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"fedbrick-flower: error: 2 problems in {path}:" in result.stderr
    assert "tasks.bbc.dataset: 'bbc' is not a known dataset" in result.stderr
    assert "clients[2].layers: a depth budget of 9 exceeds model tiny-llama's 4 layers" in result.stderr
    assert not (tmp_path / "run").exists()


def test_client_imports_no_torch_up_to_starting_the_supernode(tmp_path: Path) -> None:
    # Prepare: stop where the command would become flower-supernode (the server counted as reachable)
    argv = ["client", "--superlink", "127.0.0.1:9092", "--profile", "deploy/profiles/edge-2layer.yaml", "--insecure",
            "--home", str(tmp_path / "home"), "--state-dir", str(tmp_path / "state")]  # fmt: skip
    code = (
        "import os\nos.execvpe = lambda *a: None\nfrom fedbrick_flower.deployment import reach\n"
        f"reach.diagnose = lambda *a: None\nfrom fedbrick_flower.cli import main\nmain({argv!r})"
    )

    # Execute
    loaded = heavy_imports_after(code)

    # Assert
    assert loaded == []


@pytest.mark.parametrize(
    ("devices", "gpus", "expected"),
    [(["auto", "auto", "auto", "auto"], 1, 0.25), (["cpu", "cpu"], 1, 0.0), (["auto", "cpu"], 4, 1.0)],
)
def test_simulated_clients_get_a_gpu_share_only_when_one_would_use_it(
    monkeypatch: pytest.MonkeyPatch, devices: list[str], gpus: int, expected: float
) -> None:
    import torch

    from fedbrick_flower.scenario import load_scenario

    # Prepare: a machine with `gpus` CUDA devices, and clients on the given devices
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    clients = [
        {"id": f"c{i}", "model": "minilm", "task": "bbc", "layers": 2, "device": device}
        for i, device in enumerate(devices)
    ]
    scenario = load_scenario("hetero-depth", {"clients": clients})

    # Execute
    share = cli.simulated_client_gpus(scenario)

    # Assert: Ray gives an actor that asks for no GPU none, so a CUDA client must ask for its share
    assert share == expected


def test_simulated_clients_ask_for_no_gpu_on_a_machine_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from fedbrick_flower.scenario import load_scenario

    # Prepare
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    # Execute / Assert
    assert cli.simulated_client_gpus(load_scenario("hetero-depth")) == 0.0
