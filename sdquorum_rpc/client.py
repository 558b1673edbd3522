"""Client side: one mTLS channel to a node, its stubs, and the error translation boundary.

Use ``async with NodeClient(target, tls) as c:`` and make calls inside ``with c.errors():`` so any
``grpc.RpcError`` leaves as a project error with one actionable line. The batch calls, whose items
travel packed (:mod:`sdquorum_rpc.packed`), have methods that pack and unpack: ``encrypt_batch``
and ``sign_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self

import grpc
import grpc.aio

from sdquorum.errors import SdquorumError
from sdquorum_rpc import packed
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2_grpc as pbg
from sdquorum_rpc.errors import translate_rpc_error
from sdquorum_rpc.tls import DEFAULT_MAX_MESSAGE_BYTES, TlsFiles, channel_credentials, channel_options

__all__ = ["NodeClient"]


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
        self, target: str, tls: TlsFiles, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self.target = target
        self.tls = tls
        self.channel = grpc.aio.secure_channel(
            target, channel_credentials(tls), options=channel_options(max_message_bytes)
        )
        self.node = pbg.NodeStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.admin = pbg.NodeAdminStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.keys = pbg.KeysStub(self.channel)  # type: ignore[no-untyped-call]  # generated, untyped
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
        await self.channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
