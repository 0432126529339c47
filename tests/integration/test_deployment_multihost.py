"""Three "hosts" as Linux network namespaces: a SuperLink in one, a SuperNode in each of two others.

The namespaces share a private 10.77.0.0/24 on a bridge inside the SuperLink's namespace; nothing is added to
the machine's own network namespace. The links carry TLS and SuperNode authentication as across real machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fedbrick_flower import runtime
from fedbrick_flower.deployment.certs import make_certificates
from fedbrick_flower.run_dir import read_metrics

from .test_deployment import READY, smoke_subset, wait_for

pytestmark = pytest.mark.integration

SUBNET = "10.77.0"
LINK_ADDRESS = f"{SUBNET}.1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _skip_reason() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"fbf-probe-{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"`ip netns add` is not permitted here: {result.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@contextlib.contextmanager
def namespaces(link: str, nodes: list[str]) -> Iterator[dict[str, str]]:
    """``link`` holds a bridge at .1; each node namespace gets a veth into it at .2, .3, ...; returns addresses."""
    created: list[str] = []
    try:
        for name in [link, *nodes]:
            _ip("netns", "add", name)
            created.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", link, "link", "add", "br0", "type", "bridge")
        _ip("-n", link, "addr", "add", f"{LINK_ADDRESS}/24", "dev", "br0")
        _ip("-n", link, "link", "set", "br0", "up")
        addresses = {link: LINK_ADDRESS}
        for index, node in enumerate(nodes):
            # Both veth ends are created straight inside their namespaces.
            _ip("link", "add", f"vl{index}", "netns", link, "type", "veth", "peer", "name", "eth0", "netns", node)
            _ip("-n", link, "link", "set", f"vl{index}", "master", "br0", "up")
            addresses[node] = f"{SUBNET}.{index + 2}"
            _ip("-n", node, "addr", "add", f"{addresses[node]}/24", "dev", "eth0")
            _ip("-n", node, "link", "set", "eth0", "up")
        yield addresses
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def in_namespace(namespace: str, args: list[str], log_file: Path, home: Path) -> subprocess.Popen:
    """``fedbrick-flower ARGS`` inside ``namespace`` (``ip netns exec`` execs it: the PID is the command's)."""
    executable = str(Path(sys.executable).parent / "fedbrick-flower")
    return runtime.start(["ip", "netns", "exec", namespace, executable, *args], log_file, runtime.flower_env(home))


def test_one_round_across_three_network_namespaces(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    # Prepare
    tag = os.getpid()
    link, nodes = f"fbf-link-{tag}", [f"fbf-node0-{tag}", f"fbf-node1-{tag}"]
    certs = make_certificates(tmp_path / "certs", ["bert-full", "bert-edge"], [LINK_ADDRESS])
    scenario = smoke_subset(tmp_path, ["bert-full", "bert-edge"])
    profile = tmp_path / "bert-edge.yaml"  # the second device carries its profile as a file
    profile.write_text(yaml.safe_dump(yaml.safe_load(scenario.read_text())["clients"][1]))
    run_dir = tmp_path / "run"
    fleet = f"{LINK_ADDRESS}:9092"
    node_args = ["--superlink", fleet, "--root-certificates", str(certs.ca_cert)]
    with namespaces(link, nodes) as addresses, runtime.running([]) as processes:
        server = in_namespace(
            link,
            ["server", "--certs", str(certs.folder), "--scenario", str(scenario), "--out", str(run_dir),
             "--fleet-address", fleet],
            tmp_path / "server.out",
            tmp_path,
        )  # fmt: skip
        processes.append(server)
        # A SuperNode that finds no SuperLink, or is not registered yet, exits at once: start them after.
        wait_for(lambda: READY in (tmp_path / "server.out").read_text(), 120, "SuperLink ready", server)
        processes.append(
            in_namespace(
                nodes[0],
                ["client", *node_args, "--key", str(certs.node_key("bert-full")), "--client-id", "bert-full",
                 "--home", str(tmp_path / "n0")],
                tmp_path / "client0.out",
                tmp_path / "n0",
            )
        )  # fmt: skip
        processes.append(
            in_namespace(
                nodes[1],
                ["client", *node_args, "--key", str(certs.node_key("bert-edge")), "--profile", str(profile),
                 "--home", str(tmp_path / "n1")],
                tmp_path / "client1.out",
                tmp_path / "n1",
            )
        )  # fmt: skip

        # Execute
        code = server.wait(timeout=900)

    # Assert: the round completed with both nodes, which reached the SuperLink only through the namespaces
    output = (tmp_path / "server.out").read_text()
    assert code == 0, output[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 1
    assert sorted(r["client"] for r in read_metrics(run_dir) if r["phase"] == "train") == ["bert-edge", "bert-full"]
    assert addresses == {link: LINK_ADDRESS, nodes[0]: f"{SUBNET}.2", nodes[1]: f"{SUBNET}.3"}
    assert "client bert-edge registered" in output  # from the profile file the node config pointed to
    remaining = subprocess.run(["ip", "netns"], capture_output=True, text=True, check=True).stdout
    assert not [name for name in [link, *nodes] if name in remaining]
