"""mTLS credentials and caller roles.

Every server requires a client certificate from the transport CA; the caller's role is read from the
certificate's ``sdquorum://role/...`` URI SAN (see :mod:`sdquorum.pki`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sdquorum import pki
from sdquorum.errors import PermissionDeniedError, SdquorumError, UsageError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "KEEPALIVE",
    "Ctx",
    "Keepalive",
    "TlsFiles",
    "caller_role",
    "channel_credentials",
    "channel_options",
    "server_credentials",
    "server_options",
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

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

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
            cas = x509.load_pem_x509_certificates(ca)
        except ValueError as e:
            raise UsageError(f"the CA certificate {self.ca} ({fa}) is not a PEM certificate") from e
        _check_validity(leaf, f"the TLS certificate {self.cert} ({fc})", self.now())
        chain = x509.load_pem_x509_certificates(cert)[1:]  # intermediates sent with the leaf, if any
        if not any(_issued_by(leaf, issuer) for issuer in (*cas, *chain)):
            raise UsageError(
                f"the TLS certificate {self.cert} ({fc}) is not issued by the CA in {self.ca} ({fa}): "
                "give the transport CA that signed it (the one the peer's certificate chains to)"
            )
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


def _check_validity(cert: x509.Certificate, what: str, now: datetime) -> None:
    """An expired or not-yet-valid certificate is named before any dial (the peer would only close
    the connection, which reads like a network fault)."""
    if now < cert.not_valid_before_utc:
        raise UsageError(
            f"{what} is not valid yet (from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC): check this "
            "machine's clock or use a current certificate"
        )
    if now > cert.not_valid_after_utc:
        raise UsageError(
            f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it (sdctl pki, or "
            "your CA) and restart"
        )


def _issued_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    cert, key, ca = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    cert, key, ca = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive, one value for both ends so that they agree by construction.

    A client pings every ``time_ms`` when idle (an agent's request stream is idle for hours between
    ceremonies) and drops the connection if a ping is not answered in ``timeout_ms``. A gRPC server
    counts a ping that comes sooner than its ``min_recv_ping_interval_without_data_ms`` (default 5
    minutes) as a strike and, after ``max_ping_strikes`` (default 2), closes the connection with
    GOAWAY "too_many_pings": with the old 20 s client pings and server defaults, every agent was
    dropped every few minutes. The server here accepts pings down to half the client's interval
    (jitter and clocks never make an honest client look abusive) and permits them with no call in
    flight; a client pinging faster than that is still cut off.
    """

    time_ms: int = 20_000
    timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if self.time_ms < 10 or self.timeout_ms < 10:
            raise UsageError("keepalive intervals must be at least 10 ms")

    def client_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle stream, not only twice
        ]

    def server_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", self.time_ms // 2),
            ("grpc.http2.min_ping_interval_without_data_ms", self.time_ms // 2),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.max_ping_strikes", 2),
        ]


KEEPALIVE = Keepalive()


def _message_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, keepalive: Keepalive = KEEPALIVE
) -> list[tuple[str, int]]:
    """A client channel's options: message limits and :class:`Keepalive`'s client side."""
    return [*_message_options(max_message_bytes), *keepalive.client_options()]


def server_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, keepalive: Keepalive = KEEPALIVE
) -> list[tuple[str, int]]:
    """A server's options: message limits, :class:`Keepalive`'s server side, and no SO_REUSEPORT (a
    second server on a port in use must fail to bind, not share the port and take half the calls)."""
    return [
        *_message_options(max_message_bytes),
        *keepalive.server_options(),
        ("grpc.so_reuseport", 0),
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
