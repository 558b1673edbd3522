"""Releasing a share (steps 3 and 4 of a recovery): decrypt, seal to the exchange key, open.

Invariants:

* An agent's decrypted share is checked against the SD header's Feldman commitments before it goes
  anywhere (:func:`decrypt_share`).
* A share leaves the agent only sealed (libsodium sealed box) to the attested exchange key, inside
  ``{session, domain, epoch, x, share}`` (:data:`SHARE_TYPE`), under a release the agent signs.
* The coordinator opens a release only after every binding check (:func:`check_binding`), and
  returns its bytes only when the sealed inner fields equal the signed outer ones; past the
  signature check, what fails is the slot custodian's (VerificationError), not an anonymous one.
"""

from __future__ import annotations

import hashlib

import nacl.exceptions
import nacl.public

from sdquorum import shamir
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.envelopes._answers import Release, ReleaseStatement, SlotKey, check_binding
from sdquorum.envelopes._attestation import ExchangeStatement
from sdquorum.envelopes._request import CheckedRequest
from sdquorum.errors import MalformedError, VerificationError
from sdquorum.keys import WrappingKey
from sdquorum.sdfile import Header, share_label

SHARE_TYPE = "sdquorum-sealed-share-v1"


def decrypt_share(checked: CheckedRequest, key: WrappingKey) -> shamir.Share:
    """Decrypt this agent's share and check it against the commitments before it goes anywhere."""
    header = checked.header
    slot = header.slot(checked.x)
    raw = key.decrypt(slot.encrypted_share, share_label(header.domain_id, header.epoch, slot.x))
    share = shamir.Share.from_bytes(slot.x, raw)
    if not shamir.verify_share(share, header.commitments, header.n):
        raise VerificationError(f"the decrypted share for slot {slot.x} does not match the SD commitments")
    return share


def make_release(checked: CheckedRequest, share: shamir.Share, key: WrappingKey) -> Release:
    """Seal ``share`` to the attested exchange key and sign the release with the wrapping key."""
    return seal_release(checked.statement, checked.attestation_sha256, share.x, share.to_bytes(), key)


def seal_release(
    st: ExchangeStatement, attestation_sha256: bytes, x: int, share_bytes: bytes, key: WrappingKey
) -> Release:
    """The release of slot ``x``'s share bytes (native scalar or Azure GF(257) words) to ``st``'s key."""
    inner = canonical_json(
        {
            "type": SHARE_TYPE,
            "session_id": st.session_id,
            "domain_id": st.domain_id.hex(),
            "epoch": st.epoch,
            "x": x,
            "share": b64e(share_bytes),
        }
    )
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(st.exchange_public_key)).encrypt(inner)
    statement = ReleaseStatement(
        session_id=st.session_id,
        domain_id=st.domain_id,
        epoch=st.epoch,
        x=x,
        thumbprint=hashlib.sha256(key.certificate_der()).digest(),
        attestation_sha256=attestation_sha256,
        sealed_share=bytes(sealed),
    )
    return Release.signed(statement, key)


def open_release(
    release: Release,
    *,
    session_id: str,
    header: Header,
    expected_x: int,
    attestation_sha256: bytes,
    exchange_key: nacl.public.PrivateKey,
) -> shamir.Share:
    """Verify a release for slot ``expected_x`` of this session and return its share (VSS not yet checked)."""
    slot = header.slot(expected_x)
    raw = open_sealed_share(
        release,
        slot=SlotKey(expected_x, slot.certificate_der, header.domain_id, header.epoch),
        session_id=session_id,
        attestation_sha256=attestation_sha256,
        exchange_key=exchange_key,
    )
    try:
        return shamir.Share.from_bytes(expected_x, raw)
    except MalformedError as e:  # the custodian signed it: its slot's failure, not an anonymous one
        raise VerificationError(f"the signed release of slot {expected_x} seals no valid share ({e})") from e


def open_sealed_share(
    release: Release,
    *,
    slot: SlotKey,
    session_id: str,
    attestation_sha256: bytes,
    exchange_key: nacl.public.PrivateKey,
) -> bytes:
    """Every check of a release, then the share bytes it sealed to this session's exchange key."""
    st = release.statement
    check_binding(release, st, slot=slot, session_id=session_id, attestation_sha256=attestation_sha256)
    try:
        inner = nacl.public.SealedBox(exchange_key).decrypt(st.sealed_share)
    except nacl.exceptions.CryptoError as e:
        raise VerificationError("the share is not sealed to this session's exchange key") from e
    try:  # from here on the content is signed by the slot's key: what fails is the custodian's
        obj = parse_json_object(inner, "sealed share")
        if (
            obj.get("type") != SHARE_TYPE
            or obj.get("session_id") != session_id
            or obj.get("domain_id") != slot.domain_id.hex()
            or obj.get("epoch") != slot.epoch
            or obj.get("x") != slot.x
        ):
            raise VerificationError("the sealed share's bindings differ from its signed release")
        return b64d(obj.get("share"), "share")
    except MalformedError as e:
        raise VerificationError(f"the signed release of slot {slot.x} seals no valid share ({e})") from e
