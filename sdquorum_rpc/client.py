"""Client side: mTLS channels to a node (or the members of an HSM pool), its stubs, and the error
translation boundary.

Use ``async with NodeClient(target, tls) as c:`` and make calls inside ``with c.errors():`` so any
``grpc.RpcError`` leaves as a project error with one actionable line. The batch calls, whose items
travel packed (:mod:`sdquorum_rpc.packed`), have methods that pack and unpack: ``encrypt_batch``
and ``sign_batch``.

``target`` may name several members of a pool, ``host:port,host:port,...``. Then the ``node`` and
``keys`` calls go round-robin over the members, passing over for ``retry_interval`` seconds (default
1 s) a member whose call failed with UNAVAILABLE (a member down or cut off); an idempotent call
(:data:`IDEMPOTENT`: reads and the cryptographic operations, which change nothing) that fails so is
sent to the next member at once; a create, delete, recover or purge that fails so is reported, never
repeated, since it may have been applied. When every member rests, a call waits for one to end its
rest, up to its ``timeout`` or else ``retry_timeout`` (default 10 s), then fails with one line
(:mod:`sdquorum_rpc._failover`). The channels reconnect at least every ``retry_interval``, so a member
that came back is used at its first turn after its rest. The ``admin`` and ``custodian`` calls stay
on the first member listed (a ceremony's session lives in one member's memory). With one target
there is nothing to fail over to: calls go straight to its stubs and an UNAVAILABLE is reported at
once.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self, cast

import grpc
import grpc.aio

from sdquorum.errors import SdquorumError
from sdquorum_rpc import packed
from sdquorum_rpc._failover import (
    DEFAULT_RETRY_INTERVAL,
    DEFAULT_RETRY_TIMEOUT,
    IDEMPOTENT,
    FailoverStub,
    Members,
)
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2_grpc as pbg
from sdquorum_rpc.errors import translate_rpc_error
from sdquorum_rpc.tls import DEFAULT_MAX_MESSAGE_BYTES, TlsFiles, channel_credentials, channel_options

__all__ = ["DEFAULT_RETRY_INTERVAL", "DEFAULT_RETRY_TIMEOUT", "IDEMPOTENT", "NodeClient"]


class _Translate:
    def __init__(self, target: str, tls: TlsFiles | None = None) -> None:
        self.target = target
        self.tls = tls

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(e, grpc.RpcError):
            code = getattr(e, "code", None)
            if self.tls is not None and callable(code) and code() is grpc.StatusCode.UNAVAILABLE:
                # The peer only closes the connection on a certificate it refuses, which reads like
                # a network fault: name our own file's problem (expired, another CA, wrong key) if
                # there is one. Checked here, after a failed dial, so no call pays for it before.
                try:
                    self.tls.check()
                except SdquorumError as problem:
                    raise problem from e
            raise translate_rpc_error(e, self.target) from e

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(t, e, tb)


class NodeClient:
    def __init__(
        self,
        target: str,
        tls: TlsFiles,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
    ) -> None:
        """``retry_interval``, ``retry_timeout``: seconds (module docstring); used with several targets."""
        self.target = target
        self.tls = tls
        self.targets = [t.strip() for t in target.split(",") if t.strip()] or [target]
        self.members = Members(self.targets, retry_interval, retry_timeout)
        creds, options = channel_credentials(tls), channel_options(max_message_bytes)
        if len(self.targets) > 1:  # grpc's reconnect backoff grows to 120 s: a member that came back
            backoff_ms = max(1, round(retry_interval * 1000))  # must be connectable after its rest
            options += [
                ("grpc.initial_reconnect_backoff_ms", backoff_ms),
                ("grpc.max_reconnect_backoff_ms", backoff_ms),
            ]
        self.channels = [grpc.aio.secure_channel(t, creds, options=options) for t in self.targets]
        self.channel = self.channels[0]
        if len(self.channels) == 1:
            self.node = pbg.NodeStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
            self.keys = pbg.KeysStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        else:
            nodes = [pbg.NodeStub(ch) for ch in self.channels]  # type: ignore[no-untyped-call]
            keys = [pbg.KeysStub(ch) for ch in self.channels]  # type: ignore[no-untyped-call]
            self.node = cast(pbg.NodeStub, FailoverStub(nodes, self.members))  # the stub's methods, over all
            self.keys = cast(pbg.KeysStub, FailoverStub(keys, self.members))
        self.admin = pbg.NodeAdminStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.custodian = pbg.CustodianStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped

    async def encrypt_batch(
        self, name: str, plaintexts: Sequence[bytes], aad: bytes | Sequence[bytes] = b""
    ) -> list[bytes]:
        """One ciphertext per plaintext, in order, all under key ``name`` in one call.

        ``aad``: the same for every item (bytes), or one per item (a sequence of bytes).
        """
        request = packed.encrypt_batch_request(name, plaintexts, aad)
        return packed.ciphertexts_of(await self.keys.EncryptBatch(request), len(plaintexts))

    async def sign_batch(self, name: str, messages: Sequence[bytes]) -> list[bytes]:
        """One signature per message, in order, all by key ``name`` in one call."""
        request = packed.sign_batch_request(name, messages)
        return packed.signatures_of(await self.keys.SignBatch(request), len(messages))

    def errors(self) -> _Translate:
        """Context manager (sync or async) that turns ``grpc.RpcError`` into project errors."""
        return _Translate(self.target, self.tls)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
