"""What a device prints when it cannot reach its SuperLink: the address and the cause, each try (no sockets)."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import grpc
import pytest

from fedbrick_flower.deployment.certs import key_fingerprint
from fedbrick_flower.deployment.reach import (
    SPEAKS_TLS,
    connection_cause,
    grpc_cause,
    plain_answer_cause,
    split_address,
    tls_cause,
    wait_until_reachable,
)


def test_an_address_without_a_port_is_refused_with_the_option_named() -> None:
    # Execute
    with pytest.raises(RuntimeError) as error:
        split_address("server.local")

    # Assert
    assert str(error.value) == "--superlink: expected HOST:PORT, got 'server.local'"
    assert split_address("[::1]:9092") == ("::1", 9092)


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused: nothing listens on port 9092 of h"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve the host name 'h' (Name or service"),
        (TimeoutError("timed out"), "no answer (timed out): a firewall, a wrong host, or a server listening on"),
    ],
)
def test_each_connection_failure_has_its_own_cause(error: OSError, cause: str) -> None:
    assert connection_cause(error, "h", 9092).startswith(cause)


def test_a_certificate_from_another_ca_and_a_plain_text_server_read_differently() -> None:
    # Prepare
    unverified = ssl.SSLCertVerificationError(1, "certificate verify failed")
    unverified.verify_message = "unable to get local issuer certificate"
    plain = ssl.SSLError(1, "wrong version number")
    plain.reason = "WRONG_VERSION_NUMBER"

    # Execute
    causes = [tls_cause(unverified), tls_cause(plain)]

    # Assert
    assert causes[0].startswith("TLS handshake failed: unable to get local issuer certificate (the server's")
    assert (
        causes[1]
        == "TLS handshake failed: WRONG_VERSION_NUMBER (is the server --insecure? then give --insecure here too)"
    )


def test_what_a_server_answers_to_plain_http2_tells_tls_grpc_and_other_apart() -> None:
    assert plain_answer_cause(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00", speaks_tls=False) is None
    assert plain_answer_cause(b"", speaks_tls=True) == SPEAKS_TLS
    assert plain_answer_cause(b"\x15\x03\x01\x00\x02", speaks_tls=False) == SPEAKS_TLS
    assert plain_answer_cause(b"HTTP/1.1 400 Bad", speaks_tls=False).startswith("not a Fleet API: the server does")


def test_a_grpc_server_without_the_fleet_service_is_not_a_fleet_api() -> None:
    assert grpc_cause(grpc.StatusCode.UNIMPLEMENTED).startswith("not a Fleet API: a gRPC server without Flower's")
    assert grpc_cause(grpc.StatusCode.UNAVAILABLE).startswith("not a Fleet API: no gRPC service answered")
    assert grpc_cause(grpc.StatusCode.UNAUTHENTICATED) is None  # the Fleet API's node authentication answered
    assert grpc_cause(None) is None


def test_a_device_keeps_trying_and_names_the_address_and_cause_each_time(capsys: pytest.CaptureFixture) -> None:
    # Prepare: refused twice, then the server is up
    answers = iter(["connection refused: nothing listens", "connection refused: nothing listens", None])
    slept: list[float] = []

    # Execute
    failures = wait_until_reachable("10.0.0.7:9092", None, lambda *_: next(answers), slept.append)

    # Assert
    assert failures == 2 and slept == [2.0, 4.0]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "fedbrick-flower: cannot reach the SuperLink at 10.0.0.7:9092: connection refused: nothing listens; "
        f"retrying in {delay} s"
        for delay in (2, 4)
    ]


def test_a_keys_fingerprint_is_the_same_from_either_half_and_ssh_keygens(tmp_path: Path) -> None:
    # Prepare
    key = tmp_path / "node1.key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)], check=True)
    listed = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True, check=True).stdout

    # Execute
    private, public = key_fingerprint(key), key_fingerprint(Path(f"{key}.pub"))

    # Assert
    assert private == public == listed.split()[1]
