"""mTLS credentials and caller roles.

Every server requires a client certificate from the transport CA; the caller's role is read from the
certificate's ``sdquorum://role/...`` URI SAN (see :mod:`sdquorum.pki`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdquorum import pki
from sdquorum.errors import PermissionDeniedError, SdquorumError, UsageError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Ctx",
    "TlsFiles",
    "caller_role",
    "channel_credentials",
    "server_credentials",
]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# The servicer context; generic only in the type stubs, so spelled once here.
Ctx = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one endpoint: its certificate, its private key, and the CA that signs peers."""

    cert: Path
    key: Path
    ca: Path
    flags: tuple[str, str, str] = ("--cert", "--key", "--ca")  # how the person named them, for errors

    def read(self) -> tuple[bytes, bytes, bytes]:
        """The three PEM files, checked here so a wrong file is named instead of failing in grpc."""
        fc, fk, fa = self.flags
        out = []
        for what, path, flag in (
            ("certificate", self.cert, fc),
            ("private key", self.key, fk),
            ("CA certificate", self.ca, fa),
        ):
            try:
                out.append(Path(path).read_bytes())
            except OSError as e:
                raise UsageError(f"cannot read the TLS {what} {path} ({flag}): {e.strerror}") from e
        cert, key, ca = out
        try:
            leaf = x509.load_pem_x509_certificate(cert)
        except ValueError as e:
            raise UsageError(f"the TLS certificate {self.cert} ({fc}) is not a PEM certificate") from e
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as e:
            raise UsageError(f"the CA certificate {self.ca} ({fa}) is not a PEM certificate") from e
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as e:
            raise UsageError(
                f"the TLS private key {self.key} ({fk}) is not an unencrypted PEM private key"
            ) from e
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            raise UsageError(
                f"the TLS private key {self.key} ({fk}) does not belong to the certificate {self.cert} ({fc})"
            )
        return cert, key, ca


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    cert, key, ca = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    cert, key, ca = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def caller_role(context: Ctx) -> pki.Role:
    """The verified peer certificate's role; PermissionDeniedError if it has none."""
    auth = context.auth_context()
    certs = list(auth.get("x509_pem_cert") or [])
    if len(certs) != 1:
        raise PermissionDeniedError("the peer presented no client certificate")
    role = _role_of(bytes(certs[0]))
    if role is None:
        raise PermissionDeniedError("the client certificate carries no sdquorum role")
    return role


@functools.lru_cache(maxsize=1024)
def _role_of(cert_pem: bytes) -> pki.Role | None:
    """Parsed once per certificate, not on every call (a full parse costs ~70 us)."""
    try:
        return pki.role_from_cert(cert_pem)
    except SdquorumError:
        return None
