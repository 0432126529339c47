"""Why a device cannot reach its SuperLink, in one line: the address it tried and the cause.

Flower's SuperNode retries a failed connection with ``Connection attempt failed, retrying in N seconds`` and
never says where it dialled or why. ``client`` asks :func:`diagnose` first, step by step as the connection is
made (name, TCP, TLS, gRPC, the Fleet service), prints the cause of each failed try and tries again until the
server answers; only then does it hand over to the SuperNode. Imports no training library.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

FLEET_METHOD = "/flwr.proto.Fleet/GetRun"  # any Fleet method: only whether the service exists is asked
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # preface + SETTINGS
_TLS_ALERT, _TLS_HANDSHAKE = 0x15, 0x16  # first byte of a TLS record
_H2_SETTINGS = 0x04  # frame type, the 4th byte of an HTTP/2 frame header
_NOT_FLEET = {grpc.StatusCode.UNIMPLEMENTED}
_NO_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as host and port; a clear error for anything else."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RuntimeError(f"--superlink: expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def connection_cause(error: OSError, host: str, port: int) -> str:
    """Why the TCP connection to ``host:port`` failed."""
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name {host!r} ({error.strerror})"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused: nothing listens on port {port} of {host} (is the server up, on this port?)"
    if isinstance(error, TimeoutError | socket.timeout):
        return "no answer (timed out): a firewall, a wrong host, or a server listening on loopback only"
    return f"cannot connect: {error.strerror or error}"


def tls_cause(error: ssl.SSLError) -> str:
    """Why the TLS handshake failed: a certificate this CA did not sign or that names another host, or a server
    that speaks no TLS at all."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"TLS handshake failed: {error.verify_message} (the server's certificate must be signed by the CA given "
            "with --certs/--root-certificates and name this host: `certs --san HOST`)"
        )
    reason = error.reason or str(error)
    return f"TLS handshake failed: {reason} (is the server --insecure? then give --insecure here too)"


SPEAKS_TLS = "the server speaks TLS: give --certs DIR or --root-certificates CA.crt instead of --insecure"


def plain_answer_cause(first_bytes: bytes, speaks_tls: bool) -> str | None:
    """What the first bytes a server sends back to an HTTP/2 preface say (None: an HTTP/2 server).

    A TLS server hangs up on plain text without a word (gRPC's does), so ``speaks_tls`` tells whether a TLS
    handshake with that server succeeds.
    """
    if len(first_bytes) >= 4 and first_bytes[3] == _H2_SETTINGS:
        return None
    if speaks_tls or first_bytes[:1] in (bytes([_TLS_ALERT]), bytes([_TLS_HANDSHAKE])):
        return SPEAKS_TLS
    return "not a Fleet API: the server does not speak gRPC (HTTP/2); is this the server's --fleet-address port?"


def grpc_cause(code: grpc.StatusCode | None) -> str | None:
    """What the status of a Fleet call says about the service behind the address (None: a Fleet API)."""
    if code in _NOT_FLEET:
        return (
            "not a Fleet API: a gRPC server without Flower's Fleet service (the Control API?); use the port of the "
            "server's --fleet-address (9092 by default)"
        )
    if code in _NO_GRPC:
        return f"not a Fleet API: no gRPC service answered ({code.name}); is this the server's --fleet-address port?"
    return None


def diagnose(address: str, root_certificates: Path | None, timeout: float = 5.0) -> str | None:
    """Why ``address`` is no Fleet API this device can use, or None when it is (TLS unless ``root_certificates``
    is None, as the SuperNode will dial it)."""
    host, port = split_address(address)
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        return connection_cause(error, host, port)
    with connection:
        if root_certificates is not None:
            cause = _tls_cause(connection, host, root_certificates)
        else:
            first = _first_answer(connection)
            cause = plain_answer_cause(first, speaks_tls=not first and _speaks_tls(host, port, timeout))
    return cause or grpc_cause(_fleet_status(address, root_certificates, timeout))


def _tls_cause(connection: socket.socket, host: str, root_certificates: Path) -> str | None:
    context = ssl.create_default_context(cafile=str(root_certificates))
    context.set_alpn_protocols(["h2"])
    try:
        context.wrap_socket(connection, server_hostname=host).close()
    except ssl.SSLError as error:
        return tls_cause(error)
    except OSError as error:  # the server hung up mid-handshake: no TLS server behind this port
        return f"TLS handshake failed: {error.strerror or error} (is the server --insecure?)"
    return None


def _first_answer(connection: socket.socket) -> bytes:
    """The first bytes the server sends back to an HTTP/2 preface (empty: it hung up)."""
    try:
        connection.sendall(_H2_PREFACE)
        return connection.recv(16)
    except OSError:
        return b""


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Whether a TLS handshake with ``host:port`` succeeds, certificate unchecked (only the protocol is asked)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            context.wrap_socket(connection, server_hostname=host).close()
    except OSError:
        return False
    return True


def _fleet_status(address: str, root_certificates: Path | None, timeout: float) -> grpc.StatusCode | None:
    """The status of one Fleet call with an empty request (an error of its own when the service exists)."""
    if root_certificates is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates.read_bytes()))
    with channel:
        call = channel.unary_unary(FLEET_METHOD, request_serializer=None, response_deserializer=None)
        try:
            call(b"", timeout=timeout)
        except grpc.RpcError as error:
            return error.code()
    return None


def wait_until_reachable(
    address: str,
    root_certificates: Path | None,
    probe: Callable[[str, Path | None], str | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    max_delay: float = 30.0,
) -> int:
    """Try ``address`` until it is a Fleet API, printing each failed try (address and cause) to stderr, as a
    device should: keep trying, and say each time what it tried and why it failed. Returns the failed tries.

    ``probe`` defaults to :func:`diagnose`, looked up at call time.
    """
    probe = probe or diagnose
    failures, delay = 0, 2.0
    while (cause := probe(address, root_certificates)) is not None:
        failures += 1
        print(f"fedbrick-flower: cannot reach the SuperLink at {address}: {cause}; retrying in {delay:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip
        sleep(delay)
        delay = min(2 * delay, max_delay)
    return failures
