"""Offline request and answer files, and the rotation proposal: round trips, and every bad file refused cleanly."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recertify import fresh_certificate

from sdquorum import pki
from sdquorum.encoding import b64e
from sdquorum.envelopes import PURPOSES
from sdquorum.errors import MalformedError, SdquorumError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.offline import MAX_OFFLINE_FILE_BYTES, CeremonyRequest, OfflineAnswer
from sdquorum.proposal import RotationProposal

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

REQUEST = CeremonyRequest(
    request_id="9f1c2e3d4b5a6978",
    session_id="drill-1",
    kind="drill",
    x=2,
    custodian="bob",
    attestation=b'{"statement":"..."}',
    header=b"header bytes \x00\xff",
    header_signature=bytes(range(64)),
)
ANSWER = OfflineAnswer(
    request_id="9f1c2e3d4b5a6978",
    session_id="drill-1",
    kind="drill",
    answer=b'{"statement":"...","signature":"..."}',
)
DENIAL = OfflineAnswer(
    "9f1c2e3d4b5a6978", "drill-1", "drill", b"", denied=True, reason="denied by the custodian"
)


def fields(data: bytes) -> dict[str, Any]:
    obj = json.loads(data)
    assert isinstance(obj, dict)
    return obj


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def edited(data: bytes, **changes: Any) -> bytes:
    return encode({**fields(data), **changes})


def without(data: bytes, key: str) -> bytes:
    obj = fields(data)
    del obj[key]
    return encode(obj)


# ---------------------------------------------------------------------------------------- request file


@pytest.mark.parametrize("kind", PURPOSES)
def test_request_round_trips(kind: str) -> None:
    req = CeremonyRequest(
        **{**REQUEST.__dict__, "kind": kind, "proposal": b"proposal" if kind == "rotation" else b""}
    )
    data = req.to_bytes()
    assert CeremonyRequest.from_bytes(data) == req
    assert CeremonyRequest.from_bytes(data).to_bytes() == data


def test_request_file_is_json_with_base64url_fields() -> None:
    obj = fields(REQUEST.to_bytes())
    assert obj["type"] == "sdquorum-ceremony-request-v1"
    assert (obj["kind"], obj["x"], obj["custodian"]) == ("drill", 2, "bob")
    assert obj["sd_header_signature"] == b64e(bytes(range(64)))
    assert obj["proposal"] == ""


def test_request_fingerprint_is_stable_and_changes_with_any_field() -> None:
    fp = REQUEST.fingerprint
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert CeremonyRequest.from_bytes(REQUEST.to_bytes()).fingerprint == fp
    assert CeremonyRequest(**{**REQUEST.__dict__, "x": 3}).fingerprint != fp
    assert CeremonyRequest(**{**REQUEST.__dict__, "attestation": b"other"}).fingerprint != fp


REQUEST_FIELDS = (
    "type",
    "request_id",
    "session_id",
    "kind",
    "x",
    "custodian",
    "attestation",
    "sd_header",
    "sd_header_signature",
    "proposal",
)


@pytest.mark.parametrize("key", REQUEST_FIELDS)
def test_request_missing_a_field_is_refused(key: str) -> None:
    with pytest.raises(MalformedError):
        CeremonyRequest.from_bytes(without(REQUEST.to_bytes(), key))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"x": "2"}, "missing or mistyped field"),
        ({"x": True}, "missing or mistyped field"),
        ({"x": 2.0}, "missing or mistyped field"),
        ({"x": None}, "missing or mistyped field"),
        ({"request_id": 42}, "missing or mistyped field"),
        ({"session_id": ["drill-1"]}, "missing or mistyped field"),
        ({"kind": None}, "missing or mistyped field"),
        ({"custodian": {"name": "bob"}}, "missing or mistyped field"),
        ({"attestation": 5}, "attestation must be a base64url string"),
        ({"sd_header": "not base64!"}, "sd_header is not base64url"),
        ({"sd_header_signature": "YR"}, "sd_header_signature is not canonical base64url"),
        ({"proposal": None}, "proposal must be a base64url string"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_request_with_a_mistyped_field_is_refused(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        CeremonyRequest.from_bytes(edited(REQUEST.to_bytes(), **changes))


@pytest.mark.parametrize(
    "type_", ["sdquorum-ceremony-answer-v1", "sdquorum-ceremony-request-v2", "", None, 1]
)
def test_request_of_another_type_is_refused(type_: object) -> None:
    with pytest.raises(MalformedError, match="not an sdquorum ceremony request file"):
        CeremonyRequest.from_bytes(edited(REQUEST.to_bytes(), type=type_))


def test_answer_file_given_as_a_request_is_refused() -> None:
    with pytest.raises(MalformedError, match="not an sdquorum ceremony request file"):
        CeremonyRequest.from_bytes(ANSWER.to_bytes())


@pytest.mark.parametrize("kind", ["backup", "Drill", "recovery ", ""])
def test_request_of_an_unknown_kind_is_refused(kind: str) -> None:
    with pytest.raises(MalformedError, match="unknown request kind"):
        CeremonyRequest.from_bytes(edited(REQUEST.to_bytes(), kind=kind))


def test_oversized_request_is_refused_before_parsing() -> None:
    data = REQUEST.to_bytes()
    assert CeremonyRequest.from_bytes(data.ljust(MAX_OFFLINE_FILE_BYTES)) == REQUEST  # at the limit: fine
    with pytest.raises(MalformedError, match="the request file is too large"):
        CeremonyRequest.from_bytes(data.ljust(MAX_OFFLINE_FILE_BYTES + 1))


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'"request"', b"\xff\xfe{}", b'{"type": NaN}'])
def test_request_that_is_not_a_json_object_is_refused(data: bytes) -> None:
    with pytest.raises(MalformedError, match="request file"):
        CeremonyRequest.from_bytes(data)


def test_request_with_a_lone_surrogate_is_refused_or_usable() -> None:
    data = edited(REQUEST.to_bytes(), request_id="\ud800")  # json.dumps writes it as the escape \ud800
    try:
        req = CeremonyRequest.from_bytes(data)
    except MalformedError:
        return
    assert req.fingerprint


# ---------------------------------------------------------------------------------------- answer file


@pytest.mark.parametrize("answer", [ANSWER, DENIAL], ids=["answer", "denial"])
def test_answer_round_trips(answer: OfflineAnswer) -> None:
    data = answer.to_bytes()
    assert OfflineAnswer.from_bytes(data) == answer
    assert fields(data)["type"] == "sdquorum-ceremony-answer-v1"


ANSWER_FIELDS = ("type", "request_id", "session_id", "kind", "answer", "denied", "reason")


@pytest.mark.parametrize("key", ANSWER_FIELDS)
def test_answer_missing_a_field_is_refused(key: str) -> None:
    with pytest.raises(MalformedError):
        OfflineAnswer.from_bytes(without(ANSWER.to_bytes(), key))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"denied": "false"}, "missing or mistyped field"),
        ({"denied": 0}, "missing or mistyped field"),
        ({"denied": None}, "missing or mistyped field"),
        ({"reason": None}, "missing or mistyped field"),
        ({"request_id": 7}, "missing or mistyped field"),
        ({"kind": ["drill"]}, "missing or mistyped field"),
        ({"answer": 5}, "answer must be a base64url string"),
        ({"answer": "a+b/"}, "answer is not base64url"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_answer_with_a_mistyped_field_is_refused(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        OfflineAnswer.from_bytes(edited(ANSWER.to_bytes(), **changes))


def test_request_file_given_as_an_answer_is_refused() -> None:
    with pytest.raises(MalformedError, match="not an sdquorum ceremony answer file"):
        OfflineAnswer.from_bytes(REQUEST.to_bytes())


def test_oversized_answer_is_refused() -> None:
    with pytest.raises(MalformedError, match="the answer file is too large"):
        OfflineAnswer.from_bytes(ANSWER.to_bytes().ljust(MAX_OFFLINE_FILE_BYTES + 1))


def test_answer_of_an_unknown_kind_is_refused() -> None:
    assert parsed_or_refused(OfflineAnswer.from_bytes, edited(ANSWER.to_bytes(), kind="backup")) is None


# ---------------------------------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
b64_strings = st.binary(max_size=24).map(b64e)


def parsed_or_refused(parse: Any, data: bytes) -> Any:
    """``parse(data)``, or None for a refusal; any other exception fails the test."""
    try:
        return parse(data)
    except SdquorumError:
        return None


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_sdquorum_errors(data: bytes) -> None:
    for parse in (CeremonyRequest.from_bytes, OfflineAnswer.from_bytes, RotationProposal.from_bytes):
        assert parsed_or_refused(parse, data) is None


@FUZZ
@given(
    obj=st.fixed_dictionaries(
        {"type": st.just("sdquorum-ceremony-request-v1")},
        optional={
            "request_id": json_values,
            "session_id": json_values,
            "kind": st.sampled_from(PURPOSES) | json_values,
            "x": json_values,
            "custodian": json_values,
            "attestation": b64_strings | json_values,
            "sd_header": b64_strings | json_values,
            "sd_header_signature": b64_strings | json_values,
            "proposal": b64_strings | json_values,
        },
    )
)
def test_random_request_objects_are_refused_or_round_trip(obj: dict[str, Any]) -> None:
    req = parsed_or_refused(CeremonyRequest.from_bytes, encode(obj))
    assert req is None or CeremonyRequest.from_bytes(req.to_bytes()) == req


@FUZZ
@given(
    obj=st.fixed_dictionaries(
        {"type": st.just("sdquorum-ceremony-answer-v1")},
        optional={
            "request_id": json_values,
            "session_id": json_values,
            "kind": json_values,
            "answer": b64_strings | json_values,
            "denied": json_values,
            "reason": json_values,
        },
    )
)
def test_random_answer_objects_are_refused_or_round_trip(obj: dict[str, Any]) -> None:
    answer = parsed_or_refused(OfflineAnswer.from_bytes, encode(obj))
    assert answer is None or OfflineAnswer.from_bytes(answer.to_bytes()) == answer


@FUZZ
@given(
    request_id=st.from_regex(r"[0-9a-f]{8,64}", fullmatch=True),
    kind=st.sampled_from(PURPOSES),
    x=st.integers(),
    blobs=st.lists(st.binary(max_size=40), min_size=4, max_size=4),
)
def test_any_request_round_trips(request_id: str, kind: str, x: int, blobs: list[bytes]) -> None:
    req = CeremonyRequest(request_id, "s", kind, x, "bob", *blobs)
    assert CeremonyRequest.from_bytes(req.to_bytes()) == req


# ---------------------------------------------------------------------------------------- rotation proposal


@pytest.fixture(scope="module")
def proposal(wrapping_keys: list[SoftwareWrappingKey], now: datetime) -> RotationProposal:
    """bob..frank, 3 of 5, from epoch 4."""
    return RotationProposal(
        domain_id=bytes.fromhex("5d" * 16),
        from_epoch=4,
        quorum=3,
        certificates_der=tuple(k.certificate_der() for k in wrapping_keys[1:6]),
        proposer="admin",
        reason="alice retires; frank joins",
        expires_at=int(now.timestamp()) + 600,
    )


def test_proposal_round_trips(proposal: RotationProposal) -> None:
    data = proposal.to_bytes()
    assert RotationProposal.from_bytes(data) == proposal
    assert RotationProposal.from_bytes(data).to_bytes() == data
    obj = fields(data)
    assert (obj["from_epoch"], obj["to_epoch"], obj["quorum"]) == (4, 5, 3)
    assert [c["subject"] for c in obj["custodians"]] == [
        "CN=bob",
        "CN=carol",
        "CN=dave",
        "CN=erin",
        "CN=frank",
    ]


def test_proposal_summary_shows_the_new_quorum_roster_and_epochs(proposal: RotationProposal) -> None:
    summary = proposal.summary()
    assert proposal.to_epoch == 5
    assert f"rotate domain {'5d' * 16} from epoch 4 to 5: quorum 3 of 5" in summary
    for name in ("bob", "carol", "dave", "erin", "frank"):
        assert f"CN={name}" in summary
    assert "alice" not in summary


def test_proposal_with_another_quorum_has_another_encoding_and_summary(proposal: RotationProposal) -> None:
    other = RotationProposal(**{**proposal.__dict__, "quorum": 4})
    assert other.to_bytes() != proposal.to_bytes()
    assert "quorum 4 of 5" in other.summary()


@pytest.mark.parametrize(
    "change",
    [
        {"type": "sdquorum-rotation-proposal-v0"},
        {"custodians": "bob,carol"},
        {"custodians": [{"subject": "CN=bob"}]},
        {"custodians": ["bob"]},
        {"custodians": [{"certificate": "not base64!"}]},
        {"domain_id": "zz"},
        {"from_epoch": None},
        {"quorum": [3]},
        {"expires_at": "soon"},
    ],
    ids=lambda v: json.dumps(v),
)
def test_bad_proposal_is_refused(proposal: RotationProposal, change: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        RotationProposal.from_bytes(edited(proposal.to_bytes(), **change))


@pytest.mark.parametrize(
    "key", ["type", "domain_id", "from_epoch", "quorum", "custodians", "proposer", "reason", "expires_at"]
)
def test_proposal_missing_a_field_is_refused(proposal: RotationProposal, key: str) -> None:
    with pytest.raises(MalformedError):
        RotationProposal.from_bytes(without(proposal.to_bytes(), key))


def test_proposal_naming_a_non_certificate_cannot_be_summarised(proposal: RotationProposal) -> None:
    data = edited(proposal.to_bytes(), custodians=[{"certificate": b64e(b"not a certificate")}])
    with pytest.raises(MalformedError, match=r"not an X\.509 certificate"):
        RotationProposal.from_bytes(data).summary()


def test_proposal_with_an_overflowing_number_is_malformed_not_a_crash(proposal: RotationProposal) -> None:
    data = edited(proposal.to_bytes(), from_epoch="@@").replace(b'"@@"', b"1e400")
    with pytest.raises(MalformedError):
        RotationProposal.from_bytes(data)


@pytest.mark.parametrize("quorum", ["3", 2.9, True], ids=["string", "float", "bool"])
def test_proposal_with_a_mistyped_quorum_is_refused_not_coerced(
    proposal: RotationProposal, quorum: object
) -> None:
    assert parsed_or_refused(RotationProposal.from_bytes, edited(proposal.to_bytes(), quorum=quorum)) is None


@FUZZ
@given(
    data=st.data(),
    quorum=st.integers(min_value=0, max_value=2**40),
    from_epoch=st.integers(min_value=0, max_value=2**40),
    text=st.text(max_size=30),
)
def test_any_proposal_round_trips(
    proposal: RotationProposal, data: st.DataObject, quorum: int, from_epoch: int, text: str
) -> None:
    n = data.draw(st.integers(min_value=0, max_value=len(proposal.certificates_der)), label="n")
    p = RotationProposal(
        domain_id=data.draw(st.binary(min_size=16, max_size=16), label="domain"),
        from_epoch=from_epoch,
        quorum=quorum,
        certificates_der=proposal.certificates_der[:n],
        proposer=text,
        reason=text[::-1],
        expires_at=proposal.expires_at,
    )
    assert RotationProposal.from_bytes(p.to_bytes()) == p
    assert f"from epoch {from_epoch} to {from_epoch + 1}: quorum {quorum} of {n}" in p.summary()


@FUZZ
@given(
    obj=st.fixed_dictionaries(
        {"type": st.just("sdquorum-rotation-proposal-v1"), "custodians": st.lists(json_values, max_size=3)},
        optional={
            "domain_id": json_values,
            "from_epoch": json_values,
            "quorum": json_values,
            "proposer": json_values,
            "reason": json_values,
            "expires_at": json_values,
        },
    )
)
def test_random_proposal_objects_raise_only_sdquorum_errors(obj: dict[str, Any]) -> None:
    parsed_or_refused(RotationProposal.from_bytes, encode(obj))


@pytest.mark.parametrize(
    "request_id",
    [
        "../../home/alice/alice.wrap.key",
        "/abs/path",
        "abcdef12\n",
        "ABCDEF12",
        "abc",
        "a" * 65,
        "",
        "ab cd ef 12",
    ],
)
def test_a_request_id_that_could_name_another_file_is_refused(request_id: str) -> None:
    # The id comes from the node unsigned and names the agent's approval files.
    with pytest.raises(MalformedError, match="request id"):
        CeremonyRequest(**{**REQUEST.__dict__, "request_id": request_id})
    with pytest.raises(MalformedError, match="request id"):
        CeremonyRequest.from_bytes(edited(REQUEST.to_bytes(), request_id=request_id))


def test_the_summary_shows_each_key_and_whether_it_is_new(
    proposal: RotationProposal, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """A certificate saying CN=bob is no proof it is bob's key: a custodian approving a roster sees
    each key's SHA-256, and which keys the domain does not use now (a rogue admin's substitute
    shows as a NEW KEY under an old name)."""
    thumb = [hashlib.sha256(k.certificate_der()).digest() for k in wrapping_keys]
    certs = [k.certificate_der() for k in wrapping_keys]
    now = [(n, c) for n, c in zip(("alice", "bob", "carol", "dave", "erin"), certs[:5], strict=True)]
    summary = proposal.summary(now)  # bob..frank: frank is new, the others keep their keys
    for name, t in zip(("bob", "carol", "dave", "erin"), thumb[1:5], strict=True):
        assert f"CN={name} [{t.hex()[:32]}, same key as {name} now]" in summary
    assert f"CN=frank [{thumb[5].hex()[:32]}, NEW KEY]" in summary
    _, forged_pem = pki.make_wrapping_key("bob", datetime.now(UTC), bits=2048)  # CN=bob, not bob's key
    forged = pki.load_cert(forged_pem).public_bytes(serialization.Encoding.DER)
    substitute = RotationProposal(
        **{**proposal.__dict__, "certificates_der": (forged, *proposal.certificates_der[1:])}
    )
    assert substitute.names() == proposal.names()  # by name, the two rosters read the same
    first = substitute.summary(now).split(";")[0]
    assert f"CN=bob [{hashlib.sha256(forged).hexdigest()[:32]}, NEW KEY]" in first


def test_a_new_certificate_over_a_key_the_domain_uses_is_not_a_new_key(
    proposal: RotationProposal, wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    """Issue 13, class 3: bob's key under a freshly self-signed certificate was marked NEW KEY,
    so approvers took a key recorded lost for a new one. Keys are compared by SPKI."""
    certs = [k.certificate_der() for k in wrapping_keys]
    current = [(n, c) for n, c in zip(("alice", "bob", "carol", "dave", "erin"), certs[:5], strict=True)]
    again = fresh_certificate(wrapping_keys[1], "bob", now)  # bob's own key, a new certificate
    assert hashlib.sha256(again).digest() != hashlib.sha256(certs[1]).digest()
    recert = RotationProposal(
        **{**proposal.__dict__, "certificates_der": (again, *proposal.certificates_der[1:])}
    )
    first = recert.summary(current).split(";")[0]
    assert f"CN=bob [{hashlib.sha256(again).hexdigest()[:32]}, same key as bob now, new certificate]" in first
    assert "NEW KEY" not in first
    renamed = fresh_certificate(wrapping_keys[0], "zoe", now)  # alice's key under another name
    other = RotationProposal(
        **{**proposal.__dict__, "certificates_der": (renamed, *proposal.certificates_der[1:])}
    )
    assert "CN=zoe [" in other.summary(current) and "same key as alice now, new certificate" in other.summary(
        current
    )


def test_a_proposal_holding_one_key_twice_is_refused(
    proposal: RotationProposal, wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    """Two certificates over bob's key are one custodian holding two slots: refused by key."""
    twice = RotationProposal(
        **{
            **proposal.__dict__,
            "certificates_der": (
                *proposal.certificates_der[:4],
                fresh_certificate(wrapping_keys[1], "frank", now),
            ),
        }
    )
    with pytest.raises(MalformedError, match="same key"):
        RotationProposal.from_bytes(twice.to_bytes())


@pytest.mark.parametrize(
    "custodian",
    [
        "../../etc/cron.d/x",
        "../escaped",
        "/abs/path",
        "a/b",
        "a\\b",
        ".hidden",
        "-flag",
        "bob\n",
        "bob\x00",
        "x" * 65,
    ],
)
def test_a_custodian_name_that_could_name_another_file_is_refused(custodian: str) -> None:
    """Issue 13, class 5: the name comes from the node and sdctl writes <custodian>-x<x>.request.json."""
    with pytest.raises(MalformedError, match="custodian name"):
        CeremonyRequest(**{**REQUEST.__dict__, "custodian": custodian})
    with pytest.raises(MalformedError, match="custodian name"):
        CeremonyRequest.from_bytes(edited(REQUEST.to_bytes(), custodian=custodian))


@pytest.mark.parametrize(
    "custodian", ["bob", "Bob Smith", "alice@example.org", "custodian-3", "x5t:AbC-_0123456", ""]
)
def test_every_slot_name_is_a_custodian_name(custodian: str) -> None:
    assert CeremonyRequest(**{**REQUEST.__dict__, "custodian": custodian}).custodian == custodian
