"""Deployment plumbing without a network: certificates, commands of Flower's executables, profiles, CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fedbrick_flower import cli
from fedbrick_flower.deployment import pacing
from fedbrick_flower.deployment.certs import CertificateSet, make_certificates, subject_alt_names
from fedbrick_flower.deployment.processes import SuperLinkSettings, superlink_command, supernode_command
from fedbrick_flower.scenario import ScenarioError, load_scenario, parse_profile

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "deploy" / "profiles").glob("*.yaml"))
DEVICES_SCENARIO = ROOT / "deploy" / "scenarios" / "devices.yaml"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_certificates(tmp_path_factory.mktemp("certs"), ["node0", "edge"], ["superlink", "10.77.0.1"])


def test_subject_alt_names_types_and_deduplicates_entries() -> None:
    # Execute
    sans = subject_alt_names(["superlink", "10.0.0.1", "localhost", "IP:::1"])

    # Assert
    assert sans == "DNS:localhost,IP:127.0.0.1,DNS:superlink,IP:10.0.0.1,IP:::1"


def test_server_certificate_is_signed_by_the_ca_for_loopback_and_extra_names(certificates: CertificateSet) -> None:
    # Execute
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(certificates.ca_cert), str(certificates.server_cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    text = subprocess.run(
        ["openssl", "x509", "-in", str(certificates.server_cert), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    # Assert
    assert verify.returncode == 0, verify.stderr
    for entry in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:superlink", "IP Address:10.77.0.1"):
        assert entry in text


def test_node_keys_are_ecdsa_384_and_private_keys_are_owner_only(certificates: CertificateSet) -> None:
    # Execute
    public_keys = certificates.node_public_keys()

    # Assert
    assert [key.name for key in public_keys] == ["edge.key.pub", "node0.key.pub"]
    assert all(key.read_text().startswith("ecdsa-sha2-nistp384 ") for key in public_keys)
    assert (certificates.node_key("edge").stat().st_mode & 0o777) == 0o600
    assert (certificates.server_key.stat().st_mode & 0o777) == 0o600
    assert ((certificates.folder / "ca.key").stat().st_mode & 0o777) == 0o600
    assert all((key.stat().st_mode & 0o777) == 0o644 for key in public_keys)
    # A device gets nodes/NAME.key alone; the public keys that the server registers live apart from it.
    assert sorted(path.name for path in certificates.node_dir.iterdir()) == ["edge.key", "node0.key"]


def test_second_call_adds_nodes_and_keeps_the_ca(certificates: CertificateSet) -> None:
    # Prepare
    ca_before = certificates.ca_cert.read_bytes()
    key_before = certificates.node_key("node0").read_bytes()

    # Execute
    make_certificates(certificates.folder, ["node0", "late"])

    # Assert
    assert certificates.ca_cert.read_bytes() == ca_before
    assert certificates.node_key("node0").read_bytes() == key_before
    assert certificates.node_key("late").is_file()


def test_superlink_command_turns_on_tls_and_node_authentication(certificates: CertificateSet) -> None:
    # Execute
    command = superlink_command(SuperLinkSettings("127.0.0.1:9092", 8000, certs=certificates))

    # Assert
    assert command[0] == "flower-superlink"
    assert "--enable-supernode-auth" in command and "--insecure" not in command
    assert command[command.index("--ssl-certfile") + 1] == str(certificates.server_cert)
    assert command[command.index("--fleet-api-address") + 1] == "127.0.0.1:9092"
    assert "--disable-runtime-dependency-installation" in command


def test_insecure_superlink_has_no_authentication() -> None:
    # Execute
    command = superlink_command(SuperLinkSettings("127.0.0.1:9092", 8000))

    # Assert
    assert "--insecure" in command and "--enable-supernode-auth" not in command


def test_superlink_command_reports_missing_certificates(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(RuntimeError, match="fedbrick-flower certs"):
        superlink_command(SuperLinkSettings("127.0.0.1:9092", 8000, certs=CertificateSet(tmp_path)))


def test_supernode_command_carries_the_profile_and_credentials(certificates: CertificateSet) -> None:
    # Execute
    command = supernode_command(
        "10.0.0.1:9092",
        {"profile": "/abs/edge.yaml"},
        port=9095,
        root_certificates=certificates.ca_cert,
        private_key=certificates.node_key("edge"),
    )

    # Assert
    assert command[:3] == ["flower-supernode", "--grpc-rere", "--superlink"]
    assert command[command.index("--node-config") + 1] == "profile='/abs/edge.yaml'"
    assert command[command.index("--auth-supernode-private-key") + 1] == str(certificates.node_key("edge"))
    assert command[command.index("--port") + 1] == "9095"
    assert "--insecure" not in command


def test_supernode_with_heartbeat_or_poll_runs_through_the_pacing_wrapper() -> None:
    # Execute
    command = supernode_command("127.0.0.1:9092", {"client-id": "a"}, port=9094, heartbeat=10, poll=0.5)

    # Assert: our options before `--`, the SuperNode's after it
    assert command[1:6] == ["-m", "fedbrick_flower.deployment.pacing", "--heartbeat=10.0", "--poll=0.5", "--"]
    options, supernode_args = pacing.parse(command[3:])
    assert (options.heartbeat, options.poll) == (10.0, 0.5)
    assert supernode_args[:2] == ["--grpc-rere", "--superlink"] and supernode_args[-1] == "--insecure"


def test_capped_sleep_shortens_long_waits_only_and_passes_the_rest_through() -> None:
    # Prepare
    slept: list[float] = []
    clock = SimpleNamespace(sleep=slept.append, monotonic=lambda: 42.0)
    capped = pacing.CappedSleep(clock, 0.5)  # type: ignore[arg-type]

    # Execute
    capped.sleep(3)
    capped.sleep(0.2)

    # Assert
    assert slept == [0.5, 0.2]
    assert capped.monotonic() == 42.0


def test_the_poll_cap_reaches_the_supernode_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: Flower's SuperNode loop module, whose `time` the cap replaces (restored after the test)
    from flwr.supernode import start_client_internal

    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)

    # Execute
    pacing.set_poll(0.25)

    # Assert: a Flower upgrade that renames the module or stops sleeping through `time` fails here
    assert isinstance(start_client_internal.time, pacing.CappedSleep)
    assert "time.sleep(3)" in Path(start_client_internal.__file__).read_text()


def test_heartbeat_interval_outside_the_superlink_range_is_refused() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="10..1800"):
        pacing.set_interval(5)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_example_profiles_fit_the_example_scenario(path: Path) -> None:
    # Prepare
    scenario = load_scenario(str(DEVICES_SCENARIO))

    # Execute
    profile = parse_profile(yaml.safe_load(path.read_text()), where=str(path))

    # Assert: same model and task as the scenario, and an id that names a data share in it
    assert profile.model in scenario.models and profile.task in scenario.tasks
    assert scenario.client(profile.id).model == profile.model


def test_example_profiles_cover_gpu_edge_and_another_family() -> None:
    # Execute
    profiles = {path.stem: parse_profile(yaml.safe_load(path.read_text())) for path in PROFILES}

    # Assert
    assert (profiles["gpu-server-full"].device, profiles["gpu-server-full"].dtype) == ("cuda:0", "bfloat16")
    assert (profiles["edge-2layer"].layers, profiles["edge-2layer"].device) == (2, "cpu")
    assert profiles["other-family"].model != profiles["edge-2layer"].model


def test_client_rejects_a_missing_profile_before_starting_flower(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # Execute
    code = cli.main(["client", "--superlink", "127.0.0.1:9092", "--profile", str(tmp_path / "no.yaml"), "--insecure"])

    # Assert
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_client_needs_a_ca_certificate_unless_insecure(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # Execute
    code = cli.main(["client", "--superlink", "127.0.0.1:9092", "--client-id", "a"])

    # Assert
    assert code == 2
    assert "--root-certificates" in capsys.readouterr().err


def test_server_needs_certificates_unless_insecure(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # Execute
    code = cli.main(["server", "--scenario", "smoke", "--out", str(tmp_path)])

    # Assert
    assert code == 2
    assert "--certs" in capsys.readouterr().err


def test_certs_command_writes_a_certificate_folder(tmp_path: Path) -> None:
    # Execute
    code = cli.main(["certs", "--out", str(tmp_path), "--nodes", "3", "--san", "superlink"])

    # Assert
    assert code == 0
    assert len(CertificateSet(tmp_path).node_public_keys()) == 3


def test_profile_errors_name_the_field() -> None:
    # Execute / Assert
    with pytest.raises(ScenarioError, match="layers"):
        parse_profile({"id": "x", "model": "m", "task": "t", "layers": "many"})


@pytest.mark.parametrize("path", [*PROFILES, ROOT / "README.md", ROOT / "docs" / "deployment.md"], ids=lambda p: p.name)
def test_every_client_command_in_the_docs_gives_the_ca_and_key_in_one_form(path: Path) -> None:
    # Prepare: each `fedbrick-flower client` command, its continuation lines joined
    text = path.read_text().replace("\\\n#", " ").replace("\\\n", " ")
    commands = [line for line in text.splitlines() if "fedbrick-flower client --superlink" in line]

    # Assert: the device holds ca.crt and its own key, named as such (not the server's certificate folder)
    assert commands
    for command in commands:
        assert "--certs" not in command and "deploy/certs/nodes" not in command, command
        assert "--root-certificates ca.crt" in command or "--insecure" in command, command


def test_client_without_home_leaves_nothing_in_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: stop where the command would become flower-supernode, the server counted as reachable
    from fedbrick_flower.deployment import commands

    started: list[dict] = []
    monkeypatch.setattr(commands.os, "execvpe", lambda file, args, env: started.append(env))
    monkeypatch.setattr(commands, "wait_until_reachable", lambda *_: 0)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    # Execute
    cli.main(["client", "--superlink", "127.0.0.1:9092", "--client-id", "a", "--insecure", "--port", "9199"])

    # Assert
    home = Path(started[0]["FLWR_HOME"])
    assert home.name.startswith("fedbrick-supernode-9199-")
    assert not (tmp_path / "home").exists()
    home.rmdir()
