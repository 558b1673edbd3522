"""The transport floor for the data-plane benchmark: the ``Keys`` service with nothing but the crypto.

``python -m bench._bare_server --pki DIR --port-file FILE`` serves Sign, Encrypt, SignBatch and
EncryptBatch over the same mTLS credentials and channel options as ``hsm-node`` (grpc.aio, one
process, the same malloc settings), on keys loaded once, with no role check, interceptor, metrics, key store or node state.
The batch calls unpack, run and pack their items with the node's own loop (``packed.checked`` and
``keyops.encrypt_batch`` / ``sign_batch``: the least Python work an item allows), checking no
limits. What the node does per call beyond this is the product's own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import grpc.aio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import sdquorum_rpc  # noqa: F401  # pins the TLS cipher suites before grpc initialises, as the node does
from hsm_node import keyops
from hsm_node.cryptopool import reuse_large_buffers
from hsm_node.keyops import KeyType
from sdquorum_rpc import packed
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2_grpc as pbg
from sdquorum_rpc.tls import TlsFiles, server_credentials, server_options

__all__ = ["BareKeys", "main"]


class BareKeys(pbg.KeysServicer):
    def __init__(self) -> None:
        _, self.ed_seed = keyops.generate(KeyType.ED25519)
        self.aes_key = AESGCM.generate_key(bit_length=256)
        self.ed = Ed25519PrivateKey.from_private_bytes(self.ed_seed)
        self.aes = AESGCM(self.aes_key)

    def _encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self.aes.encrypt(nonce, plaintext, aad or None)

    async def Sign(self, request: Any, context: Any) -> pb.SignResponse:
        return pb.SignResponse(signature=self.ed.sign(request.message))

    async def Encrypt(self, request: Any, context: Any) -> pb.EncryptResponse:
        return pb.EncryptResponse(ciphertext=self._encrypt(request.plaintext, request.aad))

    async def SignBatch(self, request: Any, context: Any) -> pb.SignBatchResponse:
        messages = packed.checked(request.messages, request.message_lengths, "message")
        out = keyops.sign_batch(KeyType.ED25519, self.ed_seed, messages)
        return pb.SignBatchResponse(signatures=out.data, signature_lengths=out.lengths)

    async def EncryptBatch(self, request: Any, context: Any) -> pb.EncryptBatchResponse:
        plaintexts = packed.checked(request.plaintexts, request.plaintext_lengths, "plaintext")
        out = keyops.encrypt_batch(KeyType.AES256_GCM, self.aes_key, plaintexts, request.aad)
        return pb.EncryptBatchResponse(ciphertexts=out.data, ciphertext_lengths=out.lengths)


async def _serve(pki: Path, port_file: Path) -> None:
    reuse_large_buffers()  # as hsm-node does at start
    server = grpc.aio.server(options=server_options())
    pbg.add_KeysServicer_to_server(BareKeys(), server)  # type: ignore[no-untyped-call]  # generated, untyped
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(TlsFiles(pki / "node.pem", pki / "node.key", pki / "ca.pem"))
    )
    await server.start()
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pki", type=Path, required=True)
    p.add_argument("--port-file", type=Path, required=True)
    a = p.parse_args()
    asyncio.run(_serve(a.pki, a.port_file))


if __name__ == "__main__":
    main()
