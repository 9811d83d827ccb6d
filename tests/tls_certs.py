"""Test PKI and a TLS front for a Temporal dev server (which has no TLS flags of its own).

`make_pki` writes a CA, a server certificate for a DNS name and a client certificate, all made with the
`cryptography` package. `TlsFront` is a real TLS endpoint on 127.0.0.1: it does the TLS handshake
(server certificate, ALPN `h2`, and mutual TLS: client certificates must chain to the CA) and then
relays the decrypted bytes unchanged to the dev server's plaintext gRPC port. gRPC over TLS is HTTP/2
inside TLS, the dev server speaks HTTP/2 with prior knowledge (h2c), so relaying the bytes after an
`h2` ALPN handshake is exactly what a TLS-terminating, h2-capable load balancer does in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here: trusting only it must fail


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _builder(
    cn: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, *, ca: bool
) -> x509.CertificateBuilder:
    """A certificate valid for a day (from five minutes ago) for `cn`, issued by `issuer`."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    cert = (
        _builder(cn, _name(cn), key, ca=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        _builder(cn, ca.subject, key, ca=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path, server_name: str) -> Pki:
    """A CA, a server certificate for `server_name`, a client certificate, and an unrelated CA (PEM files)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("poolctl test CA")
    other, _ = _ca("some other CA")
    server, server_key = _leaf(server_name, ca, ca_key, server=True)
    client, client_key = _leaf("poolctl-worker", ca, ca_key, server=False)
    return Pki(
        ca_cert=_write_cert(directory / "ca.pem", ca),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server.key", server_key),
        client_cert=_write_cert(directory / "client.pem", client),
        client_key=_write_key(directory / "client.key", client_key),
        other_ca_cert=_write_cert(directory / "other-ca.pem", other),
    )


class TlsFront:
    """TLS (mutual, ALPN h2) on 127.0.0.1, relaying bytes to a plaintext gRPC `target` (host:port)."""

    def __init__(self, pki: Pki, target: str):
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no connection
        ctx.set_alpn_protocols(["h2"])
        self.context = ctx
        self.server: asyncio.Server | None = None
        self.handshakes = 0  # completed TLS handshakes (with a verified client certificate)
        self.client_subjects: list[str] = []

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> TlsFront:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        ssl_obj = writer.get_extra_info("ssl_object")
        peer = ssl_obj.getpeercert() if ssl_obj is not None else None
        if peer:
            self.client_subjects.append(str(dict(x[0] for x in peer["subject"]).get("commonName")))
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
