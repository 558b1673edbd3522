"""The data plane, one key at a time: the ``Keys`` service's lifecycle (create, list, delete,
recover, purge) and its use (encrypt, decrypt, sign, verify). The batch calls, whose items travel
packed, are :class:`NodeClient`'s own (``encrypt_batch``, ``sign_batch``).

Invariants:

* A key type is named by its ``pb.KeyType`` name; results are plain bytes, ints and bools, or a
  ``pb.KeyInfo``.
"""

from __future__ import annotations

from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.client import NodeClient

__all__ = ["KeysClient"]


class KeysClient(NodeClient):
    """The ``Keys`` service's calls."""

    async def create_key(self, name: str, key_type: str, owner: str = "") -> pb.KeyInfo:
        """``key_type``: a ``pb.KeyType`` name (AES256_GCM, ED25519, RSA3072)."""
        res: pb.KeyInfo = await self.keys.CreateKey(
            pb.CreateKeyRequest(name=name, type=key_type, owner=owner)
        )
        return res

    async def list_keys(self, deleted: bool = False) -> list[pb.KeyInfo]:
        call = self.keys.ListDeletedKeys if deleted else self.keys.ListKeys
        return list((await call(pb.ListKeysRequest())).keys)

    async def delete_key(self, name: str) -> int:
        """Soft delete; when the key is purged (unix time)."""
        return int((await self.keys.DeleteKey(pb.DeleteKeyRequest(name=name))).purge_at_unix)

    async def recover_key(self, name: str) -> pb.KeyInfo:
        res: pb.KeyInfo = await self.keys.RecoverKey(pb.RecoverKeyRequest(name=name))
        return res

    async def purge_key(self, name: str) -> None:
        await self.keys.PurgeKey(pb.PurgeKeyRequest(name=name))

    async def encrypt(self, name: str, plaintext: bytes, aad: bytes = b"") -> bytes:
        res = await self.keys.Encrypt(pb.EncryptRequest(name=name, plaintext=plaintext, aad=aad))
        return bytes(res.ciphertext)

    async def decrypt(self, name: str, ciphertext: bytes, aad: bytes = b"") -> bytes:
        res = await self.keys.Decrypt(pb.DecryptRequest(name=name, ciphertext=ciphertext, aad=aad))
        return bytes(res.plaintext)

    async def sign(self, name: str, message: bytes) -> bytes:
        return bytes((await self.keys.Sign(pb.SignRequest(name=name, message=message))).signature)

    async def verify(self, name: str, message: bytes, signature: bytes) -> bool:
        res = await self.keys.Verify(pb.VerifyRequest(name=name, message=message, signature=signature))
        return bool(res.valid)
