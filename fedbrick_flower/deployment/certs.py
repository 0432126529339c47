"""TLS certificates (openssl) and SuperNode authentication keys (ssh-keygen) for a deployment.

Layout of a certificate folder::

    DIR/ca.crt  DIR/ca.key             the certificate authority (keep ca.key off the devices and containers)
    DIR/server.pem  DIR/server.key     the SuperLink's certificate, subjectAltName DNS:localhost, IP:127.0.0.1, ...
    DIR/nodes/node{i}.key              one ECDSA P-384 private key per SuperNode: that device's only secret
    DIR/public/node{i}.key.pub         its public key, registered with the SuperLink

Private and public node keys live in separate folders so that whatever registers the keys can be given the
public ones alone (least privilege: see docker-compose.yml). Every file is created owner-only (umask 077) and the
certificates and public keys are then opened to 0644; private keys stay 0600.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
NODE_DIR = "nodes"
PUBLIC_DIR = "public"
_DAYS = "365"


@dataclass(frozen=True)
class CertificateSet:
    """Paths of one certificate folder."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.folder / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.folder / SERVER_KEY

    @property
    def node_dir(self) -> Path:
        return self.folder / NODE_DIR

    @property
    def public_dir(self) -> Path:
        return self.folder / PUBLIC_DIR

    def node_key(self, name: str) -> Path:
        return self.node_dir / f"{name}.key"

    def node_public_key(self, name: str) -> Path:
        return self.public_dir / f"{name}.key.pub"

    def node_public_keys(self) -> list[Path]:
        """Every ``*.key.pub`` in the public key folder, sorted by name."""
        return sorted(self.public_dir.glob("*.key.pub"))

    def check_server(self) -> None:
        """Fail with a clear message when a file the SuperLink needs is missing."""
        for path in (self.ca_cert, self.server_cert, self.server_key):
            if not path.is_file():
                raise RuntimeError(f"{path} is missing: create it with `fedbrick-flower certs --out {self.folder}`")


def san_entry(name: str) -> str:
    """One subjectAltName entry: ``IP:`` for addresses, ``DNS:`` for host names (a typed prefix is kept)."""
    if name.startswith(("DNS:", "IP:")):
        return name
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def subject_alt_names(extra: Sequence[str] = ()) -> str:
    """``DNS:localhost,IP:127.0.0.1`` plus ``extra`` names, without duplicates."""
    entries = ["DNS:localhost", "IP:127.0.0.1"]
    for name in extra:
        entry = san_entry(name)
        if entry not in entries:
            entries.append(entry)
    return ",".join(entries)


def node_names(count: int) -> list[str]:
    """Default SuperNode key names: ``node0 .. node{count-1}``."""
    return [f"node{index}" for index in range(count)]


def make_certificates(
    folder: Path, nodes: Sequence[str] = ("node0", "node1"), sans: Sequence[str] = ()
) -> CertificateSet:
    """Create a CA, a server certificate signed by it and one SuperNode key pair per name in ``nodes``.

    Existing node keys are kept (they may already be registered); the CA and server certificate are
    created only when missing, so a second call adds nodes without invalidating the devices' CA copy
    (delete ``server.pem`` to re-issue it with other ``sans``).
    """
    certs = CertificateSet(folder.resolve())
    for sub in (certs.node_dir, certs.public_dir):
        sub.mkdir(parents=True, exist_ok=True)
    if not certs.ca_cert.is_file():
        subject = "/CN=fedbrick-flower CA"
        _openssl("req", "-x509", "-newkey", "rsa:3072", "-nodes", "-days", _DAYS, "-subj", subject,
                 "-keyout", str(certs.folder / CA_KEY), "-out", str(certs.ca_cert))  # fmt: skip
    if not certs.server_cert.is_file():
        _server_certificate(certs, subject_alt_names(sans))
    for name in nodes:
        key = certs.node_key(name)
        if not key.is_file():
            _run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", key.stem, "-f", str(key)])
            key.with_suffix(".key.pub").replace(certs.node_public_key(name))
    for private in [*certs.node_dir.glob("*.key"), certs.server_key, certs.folder / CA_KEY]:
        private.chmod(0o600)
    for public in [*certs.public_dir.glob("*.key.pub"), certs.server_cert, certs.ca_cert]:
        public.chmod(0o644)
    return certs


def key_fingerprint(key: Path) -> str:
    """The SHA256 fingerprint of a SuperNode key pair, as ``ssh-keygen -l`` prints it, from either half (the
    device's private ``.key`` or the ``.key.pub`` the server registers): equal fingerprints, the same key."""
    if key.name.endswith(".pub"):
        blob = base64.b64decode(key.read_text().split()[1])
    else:
        from cryptography.hazmat.primitives import serialization

        private = serialization.load_ssh_private_key(key.read_bytes(), password=None)
        line = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _server_certificate(certs: CertificateSet, sans: str) -> None:
    request = certs.folder / "server.csr"
    extensions = certs.folder / "server.ext"
    extensions.write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    subject = "/CN=fedbrick-flower superlink"
    _openssl("req", "-newkey", "rsa:3072", "-nodes", "-subj", subject,
             "-keyout", str(certs.server_key), "-out", str(request))  # fmt: skip
    authority = ["-CA", str(certs.ca_cert), "-CAkey", str(certs.folder / CA_KEY), "-CAcreateserial"]
    _openssl("x509", "-req", "-in", str(request), *authority, "-days", _DAYS, "-sha256",
             "-extfile", str(extensions), "-out", str(certs.server_cert))  # fmt: skip
    request.unlink()
    extensions.unlink()


def _openssl(*args: str) -> None:
    _run(["openssl", *args])


def _run(command: list[str]) -> None:
    # umask 077: a private key is owner-only from the moment it exists, not after a later chmod.
    result = subprocess.run(command, capture_output=True, text=True, check=False, umask=0o077)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()}")
