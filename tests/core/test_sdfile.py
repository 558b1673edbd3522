"""The SD file, format v2 (and v1 still read): round trip, header signature, payload binding, share labels, strict parsing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from recertify import fresh_certificate, self_signed
from support import drbg

from sdquorum import shamir
from sdquorum.encoding import b64d, b64e, canonical_json, parse_json_object
from sdquorum.errors import MalformedError, SdquorumError, UsageError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.sdfile import (
    FORMAT,
    HEADER_CONTEXT,
    HEADER_CONTEXT_V2,
    VERSION,
    DomainSecrets,
    SecurityDomainFile,
    SignedHeader,
    new_domain_secrets,
    open_domain,
    seal_domain,
    share_label,
)

if TYPE_CHECKING:
    from conftest import Sealed, SealFactory

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _named(rows: list[tuple[Any, ...]]) -> list[Any]:
    """A case table whose first column is the case's name, used as its test id."""
    return [pytest.param(*row, id=row[0]) for row in rows]


def _file_json(data: bytes) -> dict[str, Any]:
    return parse_json_object(data, "test SD file")


def _with_header(data: bytes, header: dict[str, Any] | bytes) -> bytes:
    """The SD file ``data`` with its header bytes replaced, keeping the original signature."""
    obj = _file_json(data)
    header_bytes = header if isinstance(header, bytes) else canonical_json(header)
    obj["header"] = b64e(header_bytes)
    return canonical_json(obj)


def _open_file(data: bytes, secret: int) -> DomainSecrets:
    return open_domain(SecurityDomainFile.from_bytes(data), secret)


# ------------------------------------------------------------------------------------------- round trip


def test_round_trip_seal_parse_open(sealed: Sealed) -> None:
    parsed = SecurityDomainFile.from_bytes(sealed.data)
    assert parsed == sealed.sd
    assert open_domain(parsed, sealed.secret) == sealed.secrets

    header = parsed.header
    assert (header.n, header.quorum, header.epoch) == (5, 3, 1)
    assert header.domain_id == sealed.secrets.domain_id
    assert header.signing_public_key == sealed.secrets.signing_public_key
    assert [s.name for s in header.slots] == ["alice", "bob", "carol", "dave", "erin"]
    assert [s.certificate_der for s in header.slots] == [k.certificate_der() for k in sealed.keys]

    outer = _file_json(sealed.data)
    assert (outer["format"], outer["version"]) == (FORMAT, VERSION)
    assert outer["payload"]["alg"] == "A256GCM"


def test_every_slot_decrypts_to_a_share_that_checks_and_any_quorum_opens(sealed: Sealed) -> None:
    header = sealed.sd.header
    shares = [sealed.share(x) for x in range(1, 6)]
    assert shamir.verify_all(shares, header.commitments, header.n) == ()
    for subset in ([4, 1, 5], [2, 3, 4], [5, 3, 1]):
        secret = shamir.combine([shares[x - 1] for x in subset], 3, 5)
        assert open_domain(sealed.sd, secret) == sealed.secrets


def test_payload_holds_no_plaintext_key_material(sealed: Sealed) -> None:
    for key in (sealed.secrets.data_encryption_key, sealed.secrets.signing_key, sealed.secrets.backup_key):
        assert key not in sealed.data
        assert b64e(key).encode() not in sealed.data


# ------------------------------------------------------------------------------------------- header signature


HeaderEdit = Callable[[dict[str, Any]], None]


def _swap(items: list[Any], i: int, j: int) -> None:
    items[i], items[j] = items[j], items[i]


def _swap_slot_field(field: str) -> HeaderEdit:
    def edit(h: dict[str, Any]) -> None:
        a, b = h["slots"][0], h["slots"][1]
        a[field], b[field] = b[field], a[field]

    return edit


def _swap_certificates(h: dict[str, Any]) -> None:
    _swap_slot_field("certificate")(h)
    _swap_slot_field("x5t_256")(h)


def _lower_quorum(h: dict[str, Any]) -> None:
    h["quorum"] = 2
    h["commitments"] = h["commitments"][:2]


def _other_signing_key(h: dict[str, Any]) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    h["signing_public_key"] = b64e(
        other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def _set(key: str, value: object) -> HeaderEdit:
    def edit(h: dict[str, Any]) -> None:
        h[key] = value

    return edit


@dataclass(frozen=True)
class HeaderCase:
    name: str
    edit: HeaderEdit


HEADER_EDITS = [
    HeaderCase("domain id changed", _set("domain_id", "00" * 16)),
    HeaderCase("epoch changed", lambda h: h.update(epoch=h["epoch"] + 1)),
    HeaderCase("quorum lowered to 2 (one commitment dropped)", _lower_quorum),
    HeaderCase("last slot removed", lambda h: h["slots"].pop()),
    HeaderCase("slot renamed", lambda h: h["slots"][0].update(name="mallory")),
    HeaderCase("encrypted shares of slots 1 and 2 swapped", _swap_slot_field("encrypted_share")),
    HeaderCase("wrapping certificates of slots 1 and 2 swapped", _swap_certificates),
    HeaderCase("commitments A_1 and A_2 swapped", lambda h: _swap(h["commitments"], 1, 2)),
    HeaderCase("signing public key replaced", _other_signing_key),
    HeaderCase("created_by changed", _set("created_by", "node-evil")),
    HeaderCase("created_at changed", lambda h: h.update(created_at=h["created_at"] - 1)),
]


@pytest.mark.parametrize("case", HEADER_EDITS, ids=lambda c: c.name)
def test_header_signature_catches_an_edited_field(sealed: Sealed, case: HeaderCase) -> None:
    header = json.loads(sealed.sd.signed_header.header_bytes)
    case.edit(header)
    edited = _with_header(sealed.data, header)
    with pytest.raises(VerificationError, match="signature does not verify"):
        SecurityDomainFile.from_bytes(edited)


def test_header_signature_covers_the_exact_bytes_not_just_the_fields(sealed: Sealed) -> None:
    header = json.loads(sealed.sd.signed_header.header_bytes)
    same_fields_other_bytes = json.dumps(header, sort_keys=True, indent=1).encode()
    with pytest.raises(VerificationError, match="signature does not verify"):
        SecurityDomainFile.from_bytes(_with_header(sealed.data, same_fields_other_bytes))


def test_header_signature_from_another_domain_is_refused(sealed: Sealed, make_sealed: SealFactory) -> None:
    other = _file_json(make_sealed().data)
    obj = _file_json(sealed.data)
    obj["header_signature"] = other["header_signature"]
    with pytest.raises(VerificationError, match="signature does not verify"):
        SecurityDomainFile.from_bytes(canonical_json(obj))


# ------------------------------------------------------------------------------------------- flipped bytes


def _flip_outcome(data: bytes, position: int, mask: int, sealed: Sealed) -> str:
    """ "refused" (project error), "identical" (parses to the very same file) or raises AssertionError."""
    flipped = bytearray(data)
    flipped[position] ^= mask
    try:
        sd = SecurityDomainFile.from_bytes(bytes(flipped))
        opened = open_domain(sd, sealed.secret)
    except (MalformedError, VerificationError):
        return "refused"
    except SdquorumError as e:  # pragma: no cover - reported by the assertion
        raise AssertionError(
            f"flip at {position} ^ {mask:#x} raised {type(e).__name__}, not a PeerError"
        ) from e
    # Accepted: only tolerable if the file decodes to exactly the sealed one (never, since base64 is parsed canonically).
    assert sd == sealed.sd, f"flip at {position} ^ {mask:#x} was accepted with different content"
    assert opened == sealed.secrets
    return "identical"


@pytest.mark.parametrize("mask", [0x01, 0x80], ids=["low bit", "high bit"])
def test_any_flipped_byte_is_refused_with_a_project_error(sealed: Sealed, mask: int) -> None:
    data = sealed.data
    outcomes = [_flip_outcome(data, i, mask, sealed) for i in range(len(data))]
    # Every flip is refused: base64 is parsed canonically, so no flip decodes to the same file.
    assert outcomes.count("identical") == 0


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_flipped_byte_is_refused_hypothesis(sealed: Sealed, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(sealed.data) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    _flip_outcome(sealed.data, position, mask, sealed)


def _replace_last_char(text: str, bits: int) -> str:
    """The same base64url text with unused low bits of its last character set to ``bits``."""
    return text[:-1] + _B64_ALPHABET[_B64_ALPHABET.index(text[-1]) ^ bits]


def test_non_canonical_base64_trailing_bits_are_refused(sealed: Sealed) -> None:
    obj = _file_json(sealed.data)
    sig = obj["header_signature"]  # 64 bytes = 86 characters: the last one carries 4 unused bits
    assert len(sig) == 86
    obj["header_signature"] = _replace_last_char(sig, 0b0001)
    # the premise: a lenient decoder reads the same signature
    assert base64.urlsafe_b64decode(obj["header_signature"] + "==") == b64d(sig)
    with pytest.raises(MalformedError):
        SecurityDomainFile.from_bytes(canonical_json(obj))


def test_standard_alphabet_base64_is_refused(sealed: Sealed) -> None:
    obj = _file_json(sealed.data)
    ct = obj["payload"]["ciphertext"]
    assert "-" in ct or "_" in ct  # ~500 random characters: fails with probability ~1e-7
    obj["payload"]["ciphertext"] = ct.replace("-", "+").replace("_", "/")
    with pytest.raises(MalformedError):
        SecurityDomainFile.from_bytes(canonical_json(obj))


# ------------------------------------------------------------------------------------------- payload binding


def test_payload_moved_under_another_header_fails(make_sealed: SealFactory) -> None:
    # Same secrets, same rng: same s, same KEK, same nonce. Only the header (created_by) differs. Version 2
    # refuses the move twice: the signed header's payload hash when the file is read, and the AAD (the
    # header without that hash) when the payload is opened anyway.
    secrets = new_domain_secrets(drbg(b"domain"), admins=("admin",))
    a = make_sealed(secrets=secrets, created_by="node-a", rng=drbg(b"same"))
    b = make_sealed(secrets=secrets, created_by="node-b", rng=drbg(b"same"))
    assert a.secret == b.secret and a.sd.nonce == b.sd.nonce
    assert a.sd.signed_header.sha256 != b.sd.signed_header.sha256
    assert open_domain(b.sd, a.secret) == secrets  # the premise: a's secret opens b

    moved = SecurityDomainFile(b.sd.signed_header, a.sd.nonce, a.sd.ciphertext)
    with pytest.raises(VerificationError, match="does not match the hash in its signed header"):
        SecurityDomainFile.from_bytes(moved.to_bytes())
    with pytest.raises(VerificationError, match="does not decrypt"):
        open_domain(moved, a.secret)


def test_payload_of_another_domain_fails(sealed: Sealed, make_sealed: SealFactory) -> None:
    other = make_sealed()
    moved = SecurityDomainFile(sealed.sd.signed_header, other.sd.nonce, other.sd.ciphertext)
    for secret in (sealed.secret, other.secret):
        with pytest.raises(VerificationError):
            open_domain(moved, secret)


@pytest.mark.parametrize(
    "name, wrong",
    _named(
        [
            ("secret + 1", lambda s, other: (s + 1) % shamir.L),
            ("secret - 1", lambda s, other: (s - 1) % shamir.L),
            ("another domain's secret", lambda s, other: other),
            ("zero", lambda s, other: 0),
            ("secret + L (not reduced)", lambda s, other: s + shamir.L),
            ("negative", lambda s, other: -s),
        ]
    ),
)
def test_wrong_secret_fails_open_domain(
    sealed: Sealed, make_sealed: SealFactory, name: str, wrong: Callable[[int, int], int]
) -> None:
    with pytest.raises(VerificationError, match="does not match the commitments"):
        open_domain(sealed.sd, wrong(sealed.secret, make_sealed().secret))


# ------------------------------------------------------------------------------------------- share labels


@pytest.mark.parametrize(
    "name, domain_id, epoch, x",
    _named(
        [
            ("label for slot 2", None, 1, 2),
            ("label for epoch 2", None, 2, 1),
            ("label for another domain", bytes(16), 1, 1),
            ("label for x=0", None, 1, 0),
        ]
    ),
)
def test_share_label_binds_domain_epoch_and_x(
    sealed: Sealed, name: str, domain_id: bytes | None, epoch: int, x: int
) -> None:
    header = sealed.sd.header
    slot1 = header.slot(1)
    label = share_label(domain_id or header.domain_id, epoch, x)
    with pytest.raises(VerificationError, match="does not decrypt"):
        sealed.keys[0].decrypt(slot1.encrypted_share, label)
    # The right label opens it (so the failure above is the label's doing).
    raw = sealed.keys[0].decrypt(slot1.encrypted_share, share_label(header.domain_id, header.epoch, 1))
    assert shamir.verify_share(shamir.Share.from_bytes(1, raw), header.commitments, header.n)


def test_share_labels_are_distinct() -> None:
    d1, d2 = bytes(16), b"\x01" + bytes(15)
    labels = {share_label(d, e, x) for d in (d1, d2) for e in (1, 2, 12) for x in (1, 2, 21)}
    assert len(labels) == 2 * 3 * 3


# ------------------------------------------------------------------------------------------- secrets, limits


def test_domain_secrets_repr_never_shows_key_material(sealed: Sealed) -> None:
    secrets = sealed.secrets
    shown = [repr(secrets), str(secrets), f"{secrets}", repr([secrets]), repr({"s": secrets})]
    for key in (secrets.data_encryption_key, secrets.signing_key, secrets.backup_key):
        for text in shown:
            for form in (key.hex(), b64e(key), repr(key), str(list(key))):
                assert form not in text
    assert secrets.domain_id.hex() in repr(secrets)


def test_file_over_the_size_limit_is_refused(sealed: Sealed) -> None:
    # A valid file padded with JSON whitespace: accepted at the limit, refused one byte over it.
    padded = sealed.data + b" " * 100
    assert SecurityDomainFile.from_bytes(padded, max_bytes=len(padded)) == sealed.sd
    with pytest.raises(MalformedError, match="larger than"):
        SecurityDomainFile.from_bytes(padded, max_bytes=len(padded) - 1)


@pytest.mark.parametrize(
    "name, edit, match",
    _named(
        [
            ("unknown version", lambda o: o.update(version=3), "version 3 is not supported"),
            ("no format marker", lambda o: o.pop("format"), "format marker"),
            ("payload alg other than A256GCM", lambda o: o["payload"].update(alg="A128GCM"), "A256GCM"),
            ("short nonce", lambda o: o["payload"].update(nonce=b64e(bytes(11))), "12 bytes"),
            ("truncated ciphertext", lambda o: o["payload"].update(ciphertext=b64e(bytes(15))), "truncated"),
            ("header missing", lambda o: o.pop("header"), "header"),
            ("header not a string", lambda o: o.update(header=1), "header"),
        ]
    ),
)
def test_malformed_files_are_refused(
    sealed: Sealed, name: str, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    obj = _file_json(sealed.data)
    edit(obj)
    with pytest.raises(MalformedError, match=match):
        SecurityDomainFile.from_bytes(canonical_json(obj))


def test_signed_header_with_pinned_key_refuses_another_domain_key(sealed: Sealed) -> None:
    signed = SignedHeader(sealed.sd.signed_header.header_bytes, sealed.sd.signed_header.signature)
    assert signed.verify(sealed.secrets.signing_public_key) == sealed.sd.header
    with pytest.raises(VerificationError, match="pinned"):
        signed.verify(bytes(32))


def test_slot_name_from_a_cn_with_a_trailing_newline_is_not_used(
    wrapping_private_keys: list[tuple[rsa.RSAPrivateKey, bytes]], now: datetime
) -> None:
    key, _ = wrapping_private_keys[5]
    cert = self_signed(key, "frank\n", now)
    certs = [der for _, der in wrapping_private_keys[:2]] + [cert]
    sd = seal_domain(
        new_domain_secrets(os.urandom), certs, 2, epoch=1, created_by="node-a", created_at=0, rng=os.urandom
    )
    assert "\n" not in sd.header.slot(3).name


# ------------------------------------------------------------------------------------------- version 2


def _resigned(sealed: Sealed, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """The SD file with its header edited and signed again by the real domain key: only the edit is wrong."""
    obj = _file_json(sealed.data)
    header = parse_json_object(b64d(obj["header"]), "header")
    edit(header)
    header_bytes = canonical_json(header)
    obj["header"] = b64e(header_bytes)
    obj["header_signature"] = b64e(sealed.secrets.sign(HEADER_CONTEXT_V2 + header_bytes))
    return canonical_json(obj)


def test_new_files_are_version_2_and_their_signed_header_binds_the_payload(sealed: Sealed) -> None:
    header = sealed.sd.header
    assert (sealed.sd.version, header.version, VERSION) == (2, 2, 2)
    assert header.payload_sha256 == hashlib.sha256(sealed.sd.nonce + sealed.sd.ciphertext).digest()


@pytest.mark.parametrize("part", ["ciphertext", "nonce"])
def test_a_flipped_payload_byte_is_refused_when_the_file_is_read_without_any_secret(
    sealed: Sealed, part: str
) -> None:
    # Version 1 found this only after m custodians had released their shares (AES-GCM failed then).
    for position in (0, len(getattr(sealed.sd, part)) // 2, len(getattr(sealed.sd, part)) - 1):
        obj = _file_json(sealed.data)
        raw = bytearray(b64d(obj["payload"][part]))
        raw[position] ^= 0x01
        obj["payload"][part] = b64e(bytes(raw))
        with pytest.raises(VerificationError, match="does not match the hash in its signed header"):
            SecurityDomainFile.from_bytes(canonical_json(obj))


@pytest.mark.parametrize(
    "name, edit, match",
    _named(
        [
            ("top level", lambda o: o.update(comment="x"), "SD file: unknown field 'comment'"),
            (
                "payload object",
                lambda o: o["payload"].update(tag="x"),
                "SD file payload: unknown field 'tag'",
            ),
        ]
    ),
)
def test_unknown_fields_of_the_file_are_refused(
    sealed: Sealed, name: str, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    obj = _file_json(sealed.data)
    edit(obj)
    with pytest.raises(MalformedError, match=match):
        SecurityDomainFile.from_bytes(canonical_json(obj))


@pytest.mark.parametrize(
    "name, edit, match",
    _named(
        [
            ("header", lambda h: h.update(note="x"), "SD header: unknown field 'note'"),
            ("slot", lambda h: h["slots"][0].update(note="x"), "SD header slot: unknown field 'note'"),
            (
                "version-1 field set with payload hash removed",
                lambda h: h.pop("payload_sha256"),
                "payload_sha256",
            ),
        ]
    ),
)
def test_unknown_or_missing_header_fields_are_refused_even_under_a_valid_signature(
    sealed: Sealed, name: str, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    with pytest.raises(MalformedError, match=match):
        SecurityDomainFile.from_bytes(_resigned(sealed, edit))


def test_a_header_whose_version_differs_from_the_files_is_refused(sealed: Sealed) -> None:
    obj = _file_json(sealed.data)
    obj["version"] = 1
    with pytest.raises(MalformedError, match="file says version 1 but its header version 2"):
        SecurityDomainFile.from_bytes(canonical_json(obj))


def test_unknown_fields_in_the_decrypted_payload_are_refused(sealed: Sealed) -> None:
    obj = parse_json_object(sealed.secrets.to_bytes(), "payload")
    obj["extra"] = "x"
    with pytest.raises(MalformedError, match="SD payload: unknown field 'extra'"):
        DomainSecrets.from_bytes(canonical_json(obj))


def test_a_version_1_header_cannot_be_signed_under_the_version_2_context(sealed: Sealed) -> None:
    # Each version signs under its own context: a v2 signature over v1-shaped bytes does not verify.
    signed = sealed.sd.signed_header
    with pytest.raises(VerificationError, match="does not verify"):
        SignedHeader(signed.header_bytes, sealed.secrets.sign(HEADER_CONTEXT + signed.header_bytes)).verify()


# ------------------------------------------------------------------------------------------- version 1 still read


def _v1_vector() -> dict[str, Any]:
    path = Path(__file__).resolve().parent.parent / "vectors" / "sd_v1_file.json"
    obj: dict[str, Any] = json.loads(path.read_text())
    return obj


def test_a_version_1_file_written_by_the_version_1_writer_still_opens() -> None:
    vector = _v1_vector()
    data = vector["file"].encode()
    sd = SecurityDomainFile.from_bytes(data)
    assert (sd.version, sd.header.version, sd.header.payload_sha256) == (1, 1, b"")
    assert sd.to_bytes() == data  # read and written back byte for byte: still version 1
    header = sd.header
    shares = []
    for x, pem in enumerate(vector["private_keys_pem"][: vector["quorum"]], start=1):
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        raw = key.decrypt(
            header.slot(x).encrypted_share,
            padding.OAEP(
                mgf=padding.MGF1(hashes.SHA256()),
                algorithm=hashes.SHA256(),
                label=share_label(header.domain_id, header.epoch, x),
            ),
        )
        shares.append(shamir.Share.from_bytes(x, raw))
    secrets = open_domain(sd, shamir.combine(shares, header.quorum, header.n))
    assert secrets.domain_id.hex() == vector["domain_id"]
    assert secrets.data_encryption_key.hex() == vector["data_encryption_key"]
    assert secrets.signing_public_key.hex() == vector["signing_public_key"]
    assert secrets.backup_key.hex() == vector["backup_key"]


def test_a_version_1_file_with_an_unknown_field_is_refused() -> None:
    obj = _file_json(_v1_vector()["file"].encode())
    obj["payload"]["extra"] = "x"
    with pytest.raises(MalformedError, match="unknown field 'extra'"):
        SecurityDomainFile.from_bytes(canonical_json(obj))


def test_a_header_with_one_key_in_two_slots_is_refused_even_under_two_certificates(
    sealed: Sealed, wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    """Issue 13, class 3: duplicates are keys, not certificate bytes. Slot 2 given a fresh
    certificate over alice's key (its own thumbprint, consistent) is alice holding two shares."""
    obj = _file_json(sealed.data)
    header = parse_json_object(b64d(obj["header"], "header"), "header")
    again = fresh_certificate(wrapping_keys[0], "bob", now)
    header["slots"][1]["certificate"] = b64e(again)
    header["slots"][1]["x5t_256"] = b64e(hashlib.sha256(again).digest())
    with pytest.raises(MalformedError, match="same wrapping key"):
        SecurityDomainFile.from_bytes(_with_header(sealed.data, header))


def test_sealing_one_key_twice_under_two_certificates_is_refused(
    wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    certs = [k.certificate_der() for k in wrapping_keys[:3]] + [
        fresh_certificate(wrapping_keys[2], "dave", now)
    ]
    with pytest.raises(UsageError, match="same key"):
        seal_domain(
            new_domain_secrets(os.urandom), certs, 2, epoch=1, created_by="n", created_at=0, rng=os.urandom
        )
