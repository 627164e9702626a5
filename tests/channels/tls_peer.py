"""A real HTTPS receiver on this machine's own host name, for the SSRF tests.

The name is ``socket.gethostname()``: a real name, resolved the ordinary way
(the hosts file or DNS, not a patched resolver), that leads to this machine and
so to a loopback or private address.  The receiver listens on every address
the name resolves to and counts TCP connections as they are accepted, before
any TLS, so "nothing reached it" means not even a SYN was answered.  Its
certificate names only the host name, under a CA made for the test, which the
client trusts through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tidings.channels.egress import check_url


def local_name() -> tuple[str, list[str]]:
    """This machine's host name and the addresses it resolves to; the test is
    skipped where it does not resolve, or resolves to a public address."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        check_url(f"https://{name}/")  # a name the URL check lets through (not "localhost")
    except (OSError, ValueError) as exc:
        pytest.skip(f"the host name {name!r} is no use here: {exc}")
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if any(ipaddress.ip_address(a).is_global for a in addresses):
        pytest.skip(f"the host name {name!r} resolves to a public address: {addresses}")
    return name, addresses


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``host`` (DNS name only) signed by it:
    (CA file, certificate file, key file)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("tidings test CA"))
          .issuer_name(_name("tidings test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


@dataclass
class Receiver:
    """Answers every HTTP/1.1 request ``204`` and closes; keeps what it saw."""

    context: ssl.SSLContext
    ca_file: Path  # the CA that signed its certificate: the client's SSL_CERT_FILE
    port: int = 0
    connections: list[str] = field(default_factory=list)  # the address each one reached
    server_names: list[str | None] = field(default_factory=list)  # SNI of each handshake
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, body)
    handlers: set[asyncio.Task] = field(default_factory=set)  # awaited when it stops

    def __post_init__(self) -> None:
        self.context.sni_callback = lambda _obj, name, _ctx: self.server_names.append(name)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handlers.add(asyncio.current_task())
        self.connections.append(writer.get_extra_info("sockname")[0])
        try:
            await writer.start_tls(self.context)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            self.requests.append((head, await reader.readexactly(length)))
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # a handshake the client gave up on: the test looks at what arrived
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5)  # the TLS close, both ways


@contextlib.asynccontextmanager
async def tls_receiver(directory: Path, host: str, addresses: list[str],
                       certificate_for: str | None = None) -> AsyncIterator[Receiver]:
    """A :class:`Receiver` on one port of every address in ``addresses``, with a
    certificate for ``certificate_for`` (``host`` by default)."""
    ca_file, cert_file, key_file = make_certificates(directory, certificate_for or host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    receiver = Receiver(context, ca_file)
    servers = []
    try:
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.bind((address, receiver.port))
            except OSError as exc:
                sock.close()
                pytest.skip(f"cannot listen on {address} port {receiver.port}: {exc}")
            receiver.port = sock.getsockname()[1]
            servers.append(await asyncio.start_server(receiver.handle, sock=sock))
        yield receiver
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        if receiver.handlers:
            await asyncio.wait(receiver.handlers)
