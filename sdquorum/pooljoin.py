"""Joining an HSM pool without a custodian: the join request and the join grant.

A node that an admin has allowed (``sdctl pool allow NODE_ID``) and that is still PROVISIONED joins a
pool whose members already hold the domain:

1. The joiner makes a fresh X25519 exchange key and signs a :class:`JoinRequestStatement` with its
   attestation key (Ed25519, certificate under the attestation root): its node id, the domain id,
   epoch and SHA-256 of the SD file the pool publishes, the exchange public key, a fresh 32-byte
   nonce, issue and expiry times (:func:`make_join_request`).
2. A live member checks, before it seals anything (:func:`check_join_request`): the certificate
   chains to the root and is an attestation certificate; the signature; the statement's node id is
   the certificate's CN (no node joins under another's id); the id is allowed; the time window;
   domain id, epoch and SD file hash are the pool's (a node of another domain, or one that read an
   older header, is refused); the request was not served before (its SHA-256 is not among the used
   ones: a replayed request is refused).
3. The member seals ``{request sha256, domain id, epoch, domain secrets, custody head}`` to the
   exchange key (libsodium sealed box; the custody head, the counter and digest of the pool's custody
   rows the member verified, makes the joiner refuse an older custody state from its first read on:
   inner type ``-v2``; a grant of ``-v1``, from a member of the previous version, has none) and signs a :class:`JoinGrantStatement` (joiner, sender, domain id,
   epoch, SD file hash, request sha256, sealed secrets) with its own attestation key
   (:func:`make_join_grant`).
4. The joiner (:func:`open_join_grant`) checks the sender's certificate under the root, the
   signature, that the sender's id is the certificate's CN and a member of the pool, that the grant
   answers its own request (request sha256) and names the pool's current domain id, epoch and SD
   file; opens the box, checks the inner fields equal the outer ones and that the secrets are of
   that domain. A grant made for another request (an old one replayed) never opens.

Every check raises VerificationError naming what failed (for the local log); a peer is told only
that a check failed. Nothing here does I/O or reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nacl.exceptions
import nacl.public
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sdquorum import fields as f
from sdquorum import pki
from sdquorum.encoding import b64e, canonical_json, parse_json_object
from sdquorum.envelopes import CertifiedStatement
from sdquorum.errors import MalformedError, VerificationError
from sdquorum.sdfile import DomainSecrets

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "MAX_JOIN_SECONDS",
    "CustodyHead",
    "JoinGrant",
    "JoinGrantStatement",
    "JoinRequest",
    "JoinRequestStatement",
    "PoolHeader",
    "check_join_request",
    "make_join_grant",
    "make_join_request",
    "open_join_grant",
    "open_join_grant_with_head",
]

REQUEST_TYPE = "sdquorum-pool-join-request-v1"
GRANT_TYPE = "sdquorum-pool-join-grant-v1"
SECRETS_TYPE = "sdquorum-pool-join-secrets-v1"  # accepted, no custody head (a member of the previous version)
SECRETS_TYPE_V2 = "sdquorum-pool-join-secrets-v2"  # with the custody head
REQUEST_CONTEXT = b"sdquorum pool join request v1\x00"
GRANT_CONTEXT = b"sdquorum pool join grant v1\x00"
MAX_JOIN_SECONDS = 600  # a join request lives at most this long
CLOCK_SKEW_SECONDS = 120


@dataclass(frozen=True)
class CustodyHead:
    """The pool's custody head a granting member verified (hsm_node.pool.integrity): a counter that
    only grows and the SHA-256 over the custody rows."""

    counter: int
    digest: bytes


@dataclass(frozen=True)
class PoolHeader:
    """What the pool publishes in etcd and both sides compare: domain id, epoch, SD file hash."""

    domain_id: bytes
    epoch: int
    sd_file_sha256: bytes

    @classmethod
    def of(cls, domain_id: bytes, epoch: int, sd_file: bytes) -> PoolHeader:
        return PoolHeader(domain_id, epoch, hashlib.sha256(sd_file).digest())

    def pool_members(self) -> dict[str, object]:
        """These fields as the JSON members of a join request or grant (the pool it is for)."""
        return {
            "domain_id": self.domain_id.hex(),
            "epoch": self.epoch,
            "sd_file_sha256": b64e(self.sd_file_sha256),
        }

    @staticmethod
    def pool_fields(o: dict[str, object]) -> dict[str, Any]:
        """The same members read back strictly (:meth:`pool_members`)."""
        return {
            "domain_id": f.hex_bytes(o.get("domain_id"), "domain_id", 16),
            "epoch": f.non_negative(o.get("epoch"), "epoch"),
            "sd_file_sha256": f.b64_bytes(o.get("sd_file_sha256"), "sd_file_sha256", 32),
        }


@dataclass(frozen=True)
class JoinRequestStatement(PoolHeader):
    """A joiner's request: the pool it is for (the :class:`PoolHeader` fields), its id, exchange key."""

    node_id: str
    exchange_public_key: bytes
    nonce: bytes
    issued_at: int
    expires_at: int

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": REQUEST_TYPE,
                "node_id": self.node_id,
                **self.pool_members(),
                "exchange_public_key": b64e(self.exchange_public_key),
                "nonce": b64e(self.nonce),
                "issued_at": self.issued_at,
                "expires_at": self.expires_at,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> JoinRequestStatement:
        o = parse_json_object(data, "join request")
        _members(o, REQUEST_TYPE, "join request", {"node_id", "domain_id", "epoch", "sd_file_sha256",
                 "exchange_public_key", "nonce", "issued_at", "expires_at"})  # fmt: skip
        return cls(
            node_id=_name(o, "node_id"),
            **cls.pool_fields(o),
            exchange_public_key=f.b64_bytes(o.get("exchange_public_key"), "exchange_public_key", 32),
            nonce=f.b64_bytes(o.get("nonce"), "nonce", 32),
            issued_at=f.non_negative(o.get("issued_at"), "issued_at"),
            expires_at=f.non_negative(o.get("expires_at"), "expires_at"),
        )


@dataclass(frozen=True)
class JoinGrantStatement(PoolHeader):
    """A member's grant: the pool (the :class:`PoolHeader` fields), joiner, sender, sealed secrets."""

    joiner: str
    sender: str
    request_sha256: bytes
    sealed_secrets: bytes

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": GRANT_TYPE,
                "joiner": self.joiner,
                "sender": self.sender,
                **self.pool_members(),
                "request_sha256": b64e(self.request_sha256),
                "sealed_secrets": b64e(self.sealed_secrets),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> JoinGrantStatement:
        o = parse_json_object(data, "join grant")
        _members(o, GRANT_TYPE, "join grant", {"joiner", "sender", "domain_id", "epoch", "sd_file_sha256",
                 "request_sha256", "sealed_secrets"})  # fmt: skip
        return cls(
            joiner=_name(o, "joiner"),
            sender=_name(o, "sender"),
            **cls.pool_fields(o),
            request_sha256=f.b64_bytes(o.get("request_sha256"), "request_sha256", 32),
            sealed_secrets=f.b64_bytes(o.get("sealed_secrets"), "sealed_secrets", None),
        )


class JoinRequest(CertifiedStatement[JoinRequestStatement]):
    what, statement_type = "join request", JoinRequestStatement


class JoinGrant(CertifiedStatement[JoinGrantStatement]):
    what, statement_type = "join grant", JoinGrantStatement


# ------------------------------------------------------------------ the joiner's request


def make_join_request(
    node_id: str,
    pool: PoolHeader,
    exchange_public_key: bytes,
    nonce: bytes,
    now: int,
    key: Ed25519PrivateKey,
    certificate_der: bytes,
    ttl: int = 300,
) -> JoinRequest:
    if not 1 <= ttl <= MAX_JOIN_SECONDS:
        raise VerificationError(f"a join request lives 1..{MAX_JOIN_SECONDS} s")
    st = JoinRequestStatement(
        pool.domain_id, pool.epoch, pool.sd_file_sha256, node_id, exchange_public_key, nonce, now, now + ttl
    )
    data = st.to_bytes()
    return JoinRequest(data, key.sign(REQUEST_CONTEXT + data), certificate_der)


def _verify(
    signed: CertifiedStatement[Any], context: bytes, root_pem: bytes, now: datetime, what: str
) -> str:
    """Chain, signature; returns the node id the certificate certifies."""
    public, node_id = pki.verify_attestation_cert(signed.certificate_der, root_pem, now)
    try:
        public.verify(signed.signature, context + signed.statement_bytes)
    except InvalidSignature as e:
        raise VerificationError(
            f"the {what} signature does not verify under its attestation certificate"
        ) from e
    return node_id


def _same_pool(named: PoolHeader, pool: PoolHeader, what: str) -> None:
    if not hmac.compare_digest(named.domain_id, pool.domain_id):
        raise VerificationError(
            f"the {what} is for domain {named.domain_id.hex()}, not this pool's {pool.domain_id.hex()}"
        )
    if named.epoch != pool.epoch or not hmac.compare_digest(named.sd_file_sha256, pool.sd_file_sha256):
        raise VerificationError(
            f"the {what} names epoch {named.epoch} and an SD file that are not the pool's current ones "
            f"(epoch {pool.epoch}): join again"
        )


def check_join_request(
    request: JoinRequest,
    *,
    root_pem: bytes,
    now: datetime,
    allowed: Collection[str],
    pool: PoolHeader,
    used: Collection[bytes],
) -> JoinRequestStatement:
    """Every check a member makes before it seals the domain to a joiner (module docstring, 2)."""
    node_id = _verify(request, REQUEST_CONTEXT, root_pem, now, "join request")
    st = request.statement
    if st.node_id != node_id:
        raise VerificationError(
            f"the join request claims node id {st.node_id!r} but its attestation certificate is {node_id!r}'s"
        )
    if st.node_id not in allowed:
        raise VerificationError(
            f"node {st.node_id!r} is not allowed to join this pool: an admin runs 'sdctl pool allow {st.node_id}'"
        )
    t = int(now.timestamp())
    if t >= st.expires_at or st.expires_at - st.issued_at > MAX_JOIN_SECONDS:
        raise VerificationError("the join request has expired: the joining node makes a new one")
    if st.issued_at > t + CLOCK_SKEW_SECONDS:
        raise VerificationError("the join request is issued in the future: check the clocks")
    _same_pool(st, pool, "join request")
    digest = request.sha256
    if any(hmac.compare_digest(digest, u) for u in used):
        raise VerificationError(
            "this join request was served already (a replay): the joining node makes a new one"
        )
    return st


# ------------------------------------------------------------------ the member's grant


def make_join_grant(
    request: JoinRequest,
    secrets: DomainSecrets,
    sender: str,
    pool: PoolHeader,
    key: Ed25519PrivateKey,
    certificate_der: bytes,
    custody_head: CustodyHead | None = None,
) -> JoinGrant:
    """Seal ``secrets`` (and the custody head the member verified, if any) to a checked request's
    exchange key; sign the grant as ``sender``."""
    st = request.statement
    if not hmac.compare_digest(secrets.domain_id, pool.domain_id):
        raise VerificationError("these domain secrets are not the pool's domain")
    fields: dict[str, object] = {
        "type": SECRETS_TYPE,
        "request_sha256": b64e(request.sha256),
        "domain_id": pool.domain_id.hex(),
        "epoch": pool.epoch,
        "secrets": b64e(secrets.to_bytes()),
    }
    if custody_head is not None:
        fields["type"] = SECRETS_TYPE_V2
        fields["custody_head"] = {"counter": custody_head.counter, "digest": b64e(custody_head.digest)}
    inner = canonical_json(fields)
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(st.exchange_public_key)).encrypt(inner)
    gst = JoinGrantStatement(
        pool.domain_id, pool.epoch, pool.sd_file_sha256, st.node_id, sender, request.sha256, bytes(sealed)
    )
    data = gst.to_bytes()
    return JoinGrant(data, key.sign(GRANT_CONTEXT + data), certificate_der)


def open_join_grant(
    grant: JoinGrant,
    *,
    request: JoinRequest,
    exchange_key: nacl.public.PrivateKey,
    root_pem: bytes,
    now: datetime,
    pool: PoolHeader,
    members: Collection[str],
) -> DomainSecrets:
    """The joiner's checks (module docstring, 4); the domain secrets the grant carries."""
    return open_join_grant_with_head(
        grant,
        request=request,
        exchange_key=exchange_key,
        root_pem=root_pem,
        now=now,
        pool=pool,
        members=members,
    )[0]


def open_join_grant_with_head(
    grant: JoinGrant,
    *,
    request: JoinRequest,
    exchange_key: nacl.public.PrivateKey,
    root_pem: bytes,
    now: datetime,
    pool: PoolHeader,
    members: Collection[str],
) -> tuple[DomainSecrets, CustodyHead | None]:
    """:func:`open_join_grant`, and the custody head the grant carries (None in a ``-v1`` grant)."""
    sender = _verify(grant, GRANT_CONTEXT, root_pem, now, "join grant")
    g = grant.statement
    if g.sender != sender:
        raise VerificationError(
            f"the join grant claims sender {g.sender!r} but its certificate is {sender!r}'s"
        )
    if sender not in members:
        raise VerificationError(f"the join grant comes from {sender!r}, which is not a member of this pool")
    if g.joiner != request.statement.node_id or not hmac.compare_digest(g.request_sha256, request.sha256):
        raise VerificationError("the join grant answers another join request (a replay?)")
    _same_pool(g, pool, "join grant")
    try:
        inner = nacl.public.SealedBox(exchange_key).decrypt(g.sealed_secrets)
    except nacl.exceptions.CryptoError as e:
        raise VerificationError(
            "the join grant's sealed secrets do not open with this join's exchange key"
        ) from e
    o = parse_json_object(inner, "join secrets")
    names = {"type", "request_sha256", "domain_id", "epoch", "secrets"}
    if o.get("type") == SECRETS_TYPE_V2:
        names.add("custody_head")
    if (
        o.get("type") not in (SECRETS_TYPE, SECRETS_TYPE_V2)
        or set(o) != names
        or o.get("domain_id") != g.domain_id.hex()
        or o.get("epoch") != g.epoch
        or not hmac.compare_digest(f.b64_bytes(o.get("request_sha256"), "request_sha256", 32), request.sha256)
    ):
        raise VerificationError("the join grant's sealed secrets are bound to another join")
    secrets = DomainSecrets.from_bytes(f.b64_bytes(o.get("secrets"), "secrets", None))
    if not hmac.compare_digest(secrets.domain_id, pool.domain_id):
        raise VerificationError("the join grant seals the secrets of another domain")
    return secrets, _custody_head(o.get("custody_head"))


def _custody_head(v: object) -> CustodyHead | None:
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) != {"counter", "digest"}:
        raise MalformedError("join secrets: custody_head is {counter, digest}")
    counter = f.non_negative(v.get("counter"), "custody_head.counter")
    return CustodyHead(counter, f.b64_bytes(v.get("digest"), "custody_head.digest", 32))


# ------------------------------------------------------------------ parsing


def _members(o: dict[str, object], type_: str, what: str, names: set[str]) -> None:
    if o.get("type") != type_:
        raise MalformedError(f"{what}: unknown type (members of different versions? upgrade them together)")
    if set(o) != names | {"type"}:
        raise MalformedError(f"{what}: unexpected members {sorted(set(o) ^ (names | {'type'}))}")


def _name(o: dict[str, object], k: str) -> str:
    """A node id: a non-empty string of at most 128 characters."""
    v = f.string(o.get(k), k, max_len=128)
    if not v:
        raise MalformedError(f"{k} must not be empty")
    return v
