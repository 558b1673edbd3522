"""The data plane's batch calls: many items under one key in one call, packed, all or nothing.

Round trips go through the node's own Decrypt and Verify (the key never leaves the node). Malformed
batches are sent as raw requests, past the client's packing, and must be refused whole with
INVALID_ARGUMENT and a message naming the field; limits come from the node's settings. Every test
with a node runs twice: batches on the server's thread, and every batch in crypto worker processes
(:mod:`hsm_node.cryptopool`, with no minimum size), which must behave the same.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, certs_of, running_cluster
from hypothesis import given
from hypothesis import strategies as st

from hsm_node.cryptopool import CryptoPool
from sdquorum.errors import MalformedError, UsageError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum_rpc import packed
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.client import NodeClient
from sdquorum_rpc.tls import DEFAULT_MAX_MESSAGE_BYTES

PLAINTEXTS = [bytes([i]) * (i * 7 % 300) for i in range(50)]  # 0..294 bytes, one empty
WHERE = ["server-thread", "crypto-workers"]


def _pool(
    where: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, items: int = 1000
) -> CryptoPool | None:
    return CryptoPool(2, max_message_bytes, items, min_items=1) if where == "crypto-workers" else None


@pytest.fixture(params=WHERE)
async def cluster(request: pytest.FixtureRequest, pki_dir: Path, tmp_path: Path) -> AsyncIterator[Cluster]:
    pool = _pool(request.param)
    async with running_cluster(pki_dir, tmp_path / "node-a", crypto_pool=pool) as c:
        yield c
        # the workers really ran: a pool that fell back to the server's thread proves nothing
        assert pool is None or pool.unavailable == ""


async def test_with_crypto_workers_a_batch_runs_in_a_worker_process(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    pool = _pool("crypto-workers")
    assert pool is not None
    async with running_cluster(pki_dir, tmp_path / "node-a", crypto_pool=pool) as c:
        await _activated(c, wrapping_keys, ("aes", pb.AES256_GCM))
        async with c.client("app") as client, client.errors():
            cts = await client.encrypt_batch("aes", PLAINTEXTS, b"w")
            assert await _decrypts(client, "aes", cts[10], b"w") == PLAINTEXTS[10]
        assert len(pool.pids) == 1 and os.getpid() not in pool.pids


async def _activated(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey], *keys: tuple[str, int]
) -> None:
    await cluster.download(certs_of(wrapping_keys[:3]), quorum=2)
    async with cluster.client("app") as c, c.errors():
        for name, kind in keys:
            await c.keys.CreateKey(pb.CreateKeyRequest(name=name, type=kind))


async def _decrypts(c: NodeClient, name: str, ciphertext: bytes, aad: bytes) -> bytes | None:
    """The node's Decrypt of one ciphertext; None when it refuses it (wrong AAD, altered bytes)."""
    try:
        return (await c.keys.Decrypt(pb.DecryptRequest(name=name, ciphertext=ciphertext, aad=aad))).plaintext
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        return None


async def test_encrypt_batch_with_one_aad_round_trips_item_by_item(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    await _activated(cluster, wrapping_keys, ("aes", pb.AES256_GCM))
    async with cluster.client("app") as c, c.errors():
        cts = await c.encrypt_batch("aes", PLAINTEXTS, b"shared")
        assert [len(ct) for ct in cts] == [len(p) + 28 for p in PLAINTEXTS]
        assert len({ct[:12] for ct in cts}) == len(cts), "every item has its own nonce"
        for pt, ct in zip(PLAINTEXTS, cts, strict=True):
            assert await _decrypts(c, "aes", ct, b"shared") == pt
        assert await _decrypts(c, "aes", cts[3], b"other") is None


async def test_encrypt_batch_with_per_item_aads_binds_each_item_to_its_own(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    await _activated(cluster, wrapping_keys, ("aes", pb.AES256_GCM))
    aads = [b"record-%d" % i if i % 5 else b"" for i in range(len(PLAINTEXTS))]
    async with cluster.client("app") as c, c.errors():
        cts = await c.encrypt_batch("aes", PLAINTEXTS, aads)
        assert len({ct[:12] for ct in cts}) == len(cts), "every item has its own nonce"
        for pt, ct, aad in zip(PLAINTEXTS, cts, aads, strict=True):
            assert await _decrypts(c, "aes", ct, aad) == pt
        assert await _decrypts(c, "aes", cts[1], aads[2]) is None, "a neighbour's AAD does not open it"


async def test_sign_batch_signatures_verify_each_for_its_own_message(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    await _activated(cluster, wrapping_keys, ("ed", pb.ED25519), ("rsa", pb.RSA3072))
    messages = [b"m%d" % i for i in range(20)] + [b""]
    async with cluster.client("app") as c, c.errors():
        for name, size, items in (("ed", 64, messages), ("rsa", 384, messages[:3])):
            sigs = await c.sign_batch(name, items)
            assert [len(s) for s in sigs] == [size] * len(items)
            for m, sig in zip(items, sigs, strict=True):
                ok = await c.keys.Verify(pb.VerifyRequest(name=name, message=m, signature=sig))
                assert ok.valid
            other = await c.keys.Verify(pb.VerifyRequest(name=name, message=items[1], signature=sigs[0]))
            assert not other.valid


async def test_an_rsa_sign_batch_does_not_hold_up_other_calls(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """An RSA batch signs in a worker thread: a unary call sent while it runs answers before it."""
    await _activated(cluster, wrapping_keys, ("ed", pb.ED25519), ("rsa", pb.RSA3072))
    finished: list[str] = []
    async with cluster.client("app") as c, c.errors():

        async def batch() -> None:
            assert len(await c.sign_batch("rsa", [b"m"] * 300)) == 300
            finished.append("rsa batch")

        async def unary() -> None:
            await asyncio.sleep(0.05)  # the batch has arrived and is being signed
            await c.keys.Sign(pb.SignRequest(name="ed", message=b"m"))
            finished.append("ed unary")

        await asyncio.gather(batch(), unary())
    assert finished == ["ed unary", "rsa batch"]


async def test_rsa_encrypt_batch_round_trips_and_names_an_item_too_long_for_oaep(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    await _activated(cluster, wrapping_keys, ("rsa", pb.RSA3072))
    async with cluster.client("app") as c:
        async with c.errors():
            cts = await c.encrypt_batch("rsa", [b"k1", b"x" * 318])
            assert [await _decrypts(c, "rsa", ct, b"") for ct in cts] == [b"k1", b"x" * 318]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.encrypt_batch("rsa", [b"k1", b"x" * 319])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "item 1" in (e.value.details() or "") and "at most 318" in (e.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.encrypt_batch("rsa", [b"k1"], b"aad")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _enc(**fields: object) -> pb.EncryptBatchRequest:
    base: dict[str, object] = {"name": "aes", "plaintexts": b"abcdef", "plaintext_lengths": [1, 2, 3]}
    return pb.EncryptBatchRequest(**{**base, **fields})


BAD_BATCHES = [
    ("lengths add up to less than the buffer", _enc(plaintext_lengths=[1, 2, 2]), "add up to 5 bytes"),
    ("lengths add up to more than the buffer", _enc(plaintext_lengths=[1, 2, 4]), "add up to 7 bytes"),
    ("bytes but no lengths: zero items", _enc(plaintext_lengths=[]), "1..1000 items"),
    ("1001 items", _enc(plaintexts=b"", plaintext_lengths=[0] * 1001), "1..1000 items"),
    ("a shared aad and per-item aads", _enc(aad=b"a", aads=b"abc", aad_lengths=[1, 1, 1]), "not both"),
    ("aads without their lengths", _enc(aads=b"abc"), "aads needs aad_lengths"),
    ("one aad length too few", _enc(aads=b"ab", aad_lengths=[1, 1]), "2 entries for 3 items"),
    ("aad lengths that do not add up", _enc(aads=b"ab", aad_lengths=[1, 1, 1]), "aad_lengths add up"),
    ("an Ed25519 key cannot encrypt", _enc(name="ed"), "cannot encrypt"),
    (
        "sign: lengths that do not add up",
        pb.SignBatchRequest(name="ed", messages=b"abc", message_lengths=[1, 1]),
        "message_lengths add up to 2 bytes but messages holds 3",
    ),
    ("sign: no items", pb.SignBatchRequest(name="ed"), "1..1000 items"),
    (
        "an AES key cannot sign",
        pb.SignBatchRequest(name="aes", messages=b"ab", message_lengths=[1, 1]),
        "cannot sign",
    ),
]


@pytest.mark.parametrize(
    ("request_", "detail"), [(r, d) for _, r, d in BAD_BATCHES], ids=[c for c, _, _ in BAD_BATCHES]
)
async def test_a_malformed_batch_is_refused_whole_naming_the_field(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey], request_: object, detail: str
) -> None:
    await _activated(cluster, wrapping_keys, ("aes", pb.AES256_GCM), ("ed", pb.ED25519))
    async with cluster.client("app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            if isinstance(request_, pb.SignBatchRequest):
                await c.keys.SignBatch(request_)
            else:
                await c.keys.EncryptBatch(request_)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (e.value.details() or "")


async def test_a_batch_under_an_unknown_key_is_not_found(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    await _activated(cluster, wrapping_keys)
    async with cluster.client("app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.encrypt_batch("nope", [b"x"])
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(params=WHERE)
async def small_limits(
    request: pytest.FixtureRequest, pki_dir: Path, tmp_path: Path
) -> AsyncIterator[Cluster]:
    limit = 64 * 1024
    pool = _pool(request.param, max_message_bytes=limit)
    async with running_cluster(pki_dir, tmp_path / "node-a", max_message_bytes=limit, crypto_pool=pool) as c:
        yield c


async def test_the_node_limits_items_and_refuses_results_larger_than_a_message(
    small_limits: Cluster, wrapping_keys: list[SoftwareWrappingKey], pki_dir: Path, tmp_path: Path
) -> None:
    """1000 items of 40 bytes: a 40 KB request, but 68 KB of results, over a 64 KiB message limit."""
    await _activated(small_limits, wrapping_keys, ("aes", pb.AES256_GCM))
    async with small_limits.client("app") as c:
        async with c.errors():
            assert len(await c.encrypt_batch("aes", [b"x" * 40] * 800)) == 800  # 54 KB of results
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.encrypt_batch("aes", [b"x" * 40] * 1000)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "65536-byte message limit: split the batch" in (e.value.details() or "")
    async with running_cluster(pki_dir, tmp_path / "node-b", node_id="node-b", max_batch_items=10) as ten:
        await _activated(ten, wrapping_keys, ("ed", pb.ED25519))
        async with ten.client("app") as c:
            async with c.errors():
                assert len(await c.sign_batch("ed", [b"m"] * 10)) == 10
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await c.sign_batch("ed", [b"m"] * 11)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "1..10 items" in (e.value.details() or "")


@pytest.mark.parametrize("call", ["EncryptBatch", "SignBatch"])
async def test_batches_are_for_the_data_plane_roles_only(
    cluster: Cluster, wrapping_keys: list[SoftwareWrappingKey], call: str
) -> None:
    await _activated(cluster, wrapping_keys, ("aes", pb.AES256_GCM), ("ed", pb.ED25519))
    async with cluster.client("custodian-alice") as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            if call == "EncryptBatch":
                await c.encrypt_batch("aes", [b"x"])
            else:
                await c.sign_batch("ed", [b"x"])
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_batch_before_activation_says_to_download(cluster: Cluster) -> None:
    async with cluster.client("app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.sign_batch("ed", [b"x"])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "download" in (e.value.details() or "")


# ---------------------------------------------------------------- the packed form itself (no node)


@given(st.lists(st.binary(max_size=40), max_size=30))
def test_checked_items_are_the_items_packed(items: list[bytes]) -> None:
    p = packed.Packed.of(items)
    assert len(p) == len(items)
    assert packed.checked(p.data, p.lengths, "item").items() == items


@given(st.lists(st.integers(0, 50), max_size=20), st.integers(1, 3))
def test_checked_refuses_lengths_that_do_not_add_up(lengths: list[int], off_by: int) -> None:
    sizes = [sum(lengths) + off_by] + ([sum(lengths) - off_by] if sum(lengths) >= off_by else [])
    for size in sizes:  # a buffer longer, and one shorter when it can be, than the lengths say
        with pytest.raises(UsageError, match=f"item_lengths add up to {sum(lengths)} bytes but"):
            packed.checked(bytes(size), lengths, "item")


def test_a_client_refuses_a_response_that_does_not_match_its_request() -> None:
    short = pb.SignBatchResponse(signatures=bytes(128), signature_lengths=[64, 64])
    with pytest.raises(MalformedError, match="2 signatures for 3 items"):
        packed.signatures_of(short, 3)
    bad = pb.EncryptBatchResponse(ciphertexts=bytes(60), ciphertext_lengths=[30, 31])
    with pytest.raises(MalformedError, match="add up to 61 bytes"):
        packed.ciphertexts_of(bad, 2)
    with pytest.raises(UsageError, match="2 AADs for 3 plaintexts"):
        packed.encrypt_batch_request("k", [b"a", b"b", b"c"], [b"x", b"y"])
