"""The data plane's batch calls: many operations in one call, all or nothing."""

from __future__ import annotations

import grpc
import pytest
from harness import Cluster, certs_of

from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

pytestmark = pytest.mark.asyncio


async def test_batches_match_single_calls_and_are_bounded(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    await cluster.download(certs_of(wrapping_keys[:3]), quorum=2)
    async with cluster.client("app") as c:
        async with c.errors():
            await c.keys.CreateKey(pb.CreateKeyRequest(name="aes", type=pb.AES256_GCM))
            await c.keys.CreateKey(pb.CreateKeyRequest(name="ed", type=pb.ED25519))
            enc = await c.keys.EncryptBatch(
                pb.EncryptBatchRequest(
                    items=[
                        pb.EncryptRequest(name="aes", plaintext=bytes([i]) * 10, aad=b"a") for i in range(50)
                    ]
                )
            )
            assert len(enc.items) == 50
            for i, item in enumerate(enc.items):
                dec = await c.keys.Decrypt(
                    pb.DecryptRequest(name="aes", ciphertext=item.ciphertext, aad=b"a")
                )
                assert dec.plaintext == bytes([i]) * 10
            sig = await c.keys.SignBatch(
                pb.SignBatchRequest(items=[pb.SignRequest(name="ed", message=b"m%d" % i) for i in range(20)])
            )
            for i, item in enumerate(sig.items):
                ok = await c.keys.Verify(
                    pb.VerifyRequest(name="ed", message=b"m%d" % i, signature=item.signature)
                )
                assert ok.valid
        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            await c.keys.SignBatch(
                pb.SignBatchRequest(items=[pb.SignRequest(name="ed", message=b"m")] * 1001)
            )
        assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "1..1000" in (
            too_many.value.details() or ""
        )
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await c.keys.SignBatch(
                pb.SignBatchRequest(
                    items=[pb.SignRequest(name="ed", message=b"m"), pb.SignRequest(name="aes", message=b"m")]
                )
            )
        assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "item 1" in (
            wrong.value.details() or ""
        )
