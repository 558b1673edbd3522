"""mTLS credentials and caller roles.

Every server requires a client certificate from the transport CA; the caller's role is read from the
certificate's ``sdquorum://role/...`` URI SAN (see :mod:`sdquorum.pki`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

if TYPE_CHECKING:
    from sdquorum.pki import Role

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
        """The three PEM files' bytes (an unreadable one named). Cheap: no certificate is parsed, so
        a client's start does not pay for the cryptography library; :meth:`check` does that, at a
        server's start, an agent's start, and when a client's dial fails (:mod:`sdquorum_rpc.client`)."""
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
        return cert, key, ca

    def check(self) -> tuple[bytes, bytes, bytes]:
        """:meth:`read`, then every check a person can act on: PEM certificates and an unencrypted
        key, the key belongs to the certificate, the certificate is valid now and issued by the CA
        given. UsageError naming the file and the flag otherwise."""
        from sdquorum_rpc._tls_check import check_files  # cryptography: only where it is needed

        cert, key, ca = self.read()
        check_files(cert, key, ca, self.cert, self.key, self.ca, self.flags, self.now())
        return cert, key, ca


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    cert, key, ca = files.check()  # a server's start: every file checked, each problem named
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


def caller_role(context: Ctx) -> Role:
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
def _role_of(cert_pem: bytes) -> Role | None:
    """Parsed once per certificate, not on every call (a full parse costs ~70 us)."""
    try:
        from sdquorum import pki  # servers only: a client never parses a peer's certificate here

        return pki.role_from_cert(cert_pem)
    except SdquorumError:
        return None
