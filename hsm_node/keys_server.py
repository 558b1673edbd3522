"""The data-plane servicer of ``hsm-node`` (``sdquorum.v1.Keys``): app and admin; ``PurgeKey`` and
``ListDeletedKeys`` admin only (which keys each caller may touch: :mod:`hsm_node.dataplane`).
Batch calls are checked whole before any key is used."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from hsm_node.dataplane import KeyCaller
from hsm_node.keyops import KeyType
from hsm_node.node import Node
from hsm_node.store import StoredKey
from hsm_node.wire import MAX_BATCH_ITEMS
from sdquorum.errors import SdquorumError, UsageError
from sdquorum.pki import Role, load_cert, spki_sha256
from sdquorum_rpc import packed
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.errors import rpc
from sdquorum_rpc.tls import DEFAULT_MAX_MESSAGE_BYTES, Ctx

__all__ = ["KeysServicer"]

log = logging.getLogger("sdquorum.node.server")


def _key_info(k: StoredKey, purge_at: int = 0) -> pb.KeyInfo:
    return pb.KeyInfo(
        name=k.name,
        type=pb.KeyType.Name(k.key_type),
        public_key_der=k.public_der,
        created_at_unix=k.created_at,
        owner=k.owner,
        deleted_at_unix=k.deleted_at or 0,
        purge_at_unix=purge_at,
    )


def _caller(context: Ctx, role: Role) -> KeyCaller:
    """The caller of a key's create, delete, recover or purge, for its audit entry: the role the
    rpc guard found, with the subject and SPKI SHA-256 of the peer's certificate."""
    certs = list(context.auth_context().get("x509_pem_cert") or [])
    if len(certs) != 1:  # the guard found a role, so there is one; keep the role alone otherwise
        return KeyCaller(role)
    subject, spki = _identity_of(bytes(certs[0]))
    return KeyCaller(role, subject, spki)


@functools.lru_cache(maxsize=1024)
def _identity_of(cert_pem: bytes) -> tuple[str, str]:
    """(subject, SPKI SHA-256 hex) of a peer certificate, parsed once per certificate."""
    try:
        return load_cert(cert_pem).subject.rfc4514_string(), spki_sha256(cert_pem).hex()
    except SdquorumError:
        return "", ""


class KeysServicer:
    """The data plane. Batch calls carry their items packed (:mod:`sdquorum_rpc.packed`): the
    request is checked whole (item count, lengths that add up, AADs) before any key is used, and a
    response that would exceed the message limit is refused rather than sent to fail in transport.
    """

    def __init__(
        self,
        node: Node,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch_items: int = MAX_BATCH_ITEMS,
    ) -> None:
        self.node = node
        self.max_message_bytes = max_message_bytes
        self.max_batch_items = max_batch_items

    @rpc("app", "admin")
    async def CreateKey(self, request: pb.CreateKeyRequest, context: Ctx, role: Role) -> pb.KeyInfo:
        try:
            kind = KeyType(request.type)
        except ValueError as e:
            raise UsageError("choose a key type: AES256_GCM, ED25519 or RSA3072") from e
        return _key_info(
            await self.node.keys.create_key(request.name, kind, _caller(context, role), request.owner)
        )

    @rpc("app", "admin")
    async def ListKeys(self, request: pb.ListKeysRequest, context: Ctx, role: Role) -> pb.ListKeysResponse:
        return pb.ListKeysResponse(keys=[_key_info(k) for k in self.node.keys.list_keys(role)])

    @rpc("app", "admin")
    async def DeleteKey(self, request: pb.DeleteKeyRequest, context: Ctx, role: Role) -> pb.DeleteKeyResponse:
        return pb.DeleteKeyResponse(
            purge_at_unix=self.node.keys.delete_key(request.name, _caller(context, role))
        )

    @rpc("admin")
    async def ListDeletedKeys(
        self, request: pb.ListKeysRequest, context: Ctx, role: Role
    ) -> pb.ListKeysResponse:
        keys = self.node.keys.list_deleted_keys(role)
        return pb.ListKeysResponse(keys=[_key_info(k, self.node.keys.purge_time(k)) for k in keys])

    @rpc("app", "admin")
    async def RecoverKey(self, request: pb.RecoverKeyRequest, context: Ctx, role: Role) -> pb.KeyInfo:
        return _key_info(self.node.keys.recover_key(request.name, _caller(context, role)))

    @rpc("admin")
    async def PurgeKey(self, request: pb.PurgeKeyRequest, context: Ctx, role: Role) -> pb.PurgeKeyResponse:
        self.node.keys.purge_key(request.name, _caller(context, role))
        return pb.PurgeKeyResponse()

    @rpc("app", "admin")
    async def Encrypt(self, request: pb.EncryptRequest, context: Ctx, role: Role) -> pb.EncryptResponse:
        return pb.EncryptResponse(
            ciphertext=self.node.key_ops.encrypt(request.name, request.plaintext, request.aad, role)
        )

    @rpc("app", "admin")
    async def Decrypt(self, request: pb.DecryptRequest, context: Ctx, role: Role) -> pb.DecryptResponse:
        return pb.DecryptResponse(
            plaintext=self.node.key_ops.decrypt(request.name, request.ciphertext, request.aad, role)
        )

    @rpc("app", "admin")
    async def Sign(self, request: pb.SignRequest, context: Ctx, role: Role) -> pb.SignResponse:
        return pb.SignResponse(signature=self.node.key_ops.sign(request.name, request.message, role))

    @rpc("app", "admin")
    async def EncryptBatch(
        self, request: pb.EncryptBatchRequest, context: Ctx, role: Role
    ) -> pb.EncryptBatchResponse:
        plaintexts = self._batch(request.plaintexts, request.plaintext_lengths, "plaintext")
        out = await self.node.key_ops.encrypt_batch_async(
            request.name, plaintexts, _aad(request, len(plaintexts)), role
        )
        self._fits(out)
        return pb.EncryptBatchResponse(ciphertexts=out.data, ciphertext_lengths=out.lengths)

    @rpc("app", "admin")
    async def SignBatch(self, request: pb.SignBatchRequest, context: Ctx, role: Role) -> pb.SignBatchResponse:
        out = await self.node.key_ops.sign_batch_async(
            request.name, self._batch(request.messages, request.message_lengths, "message"), role
        )
        self._fits(out)
        return pb.SignBatchResponse(signatures=out.data, signature_lengths=out.lengths)

    @rpc("app", "admin")
    async def Verify(self, request: pb.VerifyRequest, context: Ctx, role: Role) -> pb.VerifyResponse:
        return pb.VerifyResponse(
            valid=self.node.key_ops.verify(request.name, request.message, request.signature, role)
        )

    def _batch(self, data: bytes, lengths: Sequence[int], what: str) -> packed.Packed:
        if not 1 <= len(lengths) <= self.max_batch_items:
            raise UsageError(
                f"a batch holds 1..{self.max_batch_items} items ({what}_lengths), not {len(lengths)}: split it"
            )
        return packed.checked(data, lengths, what)

    def _fits(self, results: packed.Packed) -> None:
        """Refuse results that could not be sent. The bound is the encoded response's most: the data,
        up to 5 bytes a length (uint32 varints), each field's tag and size (at most 6 bytes each)."""
        size = len(results.data) + 5 * len(results) + 12
        if size > self.max_message_bytes:
            raise UsageError(
                f"the results would take up to {size} bytes, more than the {self.max_message_bytes}-byte "
                "message limit: split the batch"
            )


def _aad(request: pb.EncryptBatchRequest, n: int) -> bytes | packed.Packed:
    """The AAD for every item (``aad``), or one per item (``aads`` cut by ``aad_lengths``)."""
    if not request.aad_lengths:
        if request.aads:
            raise UsageError("aads needs aad_lengths, one per item (or give one aad for all items)")
        return request.aad
    if request.aad:
        raise UsageError(
            "give aad (the same for every item) or aads with aad_lengths (one per item), not both"
        )
    if len(request.aad_lengths) != n:
        raise UsageError(
            f"aad_lengths has {len(request.aad_lengths)} entries for {n} items: give one per item"
        )
    return packed.checked(request.aads, request.aad_lengths, "aad")
