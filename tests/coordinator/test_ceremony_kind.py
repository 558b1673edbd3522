"""CeremonyKind: one enum for what a ceremony is, shared by the core, the coordinator and the agent.

Its values are the wire and file words, so the enum changes no byte on the wire or on disk.
"""

from __future__ import annotations

import json

from coordinator import DRILL_OUTCOMES, AzureRestoreSession, DrillSession, RecoverySession, RotationSession
from sdquorum.encoding import canonical_json
from sdquorum.envelopes import PURPOSES, CeremonyKind
from sdquorum.offline import CeremonyRequest
from sdquorum.review import DrillOutcome
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.convert import KIND_FROM_PROTO, KIND_TO_PROTO


def test_the_words_on_the_wire_are_unchanged() -> None:
    assert [str(k) for k in CeremonyKind] == [
        "recovery",
        "drill",
        "rotation",
        "azure-recovery",
        "domain-notice",
    ]
    assert canonical_json({"kind": CeremonyKind.AZURE_RECOVERY}) == b'{"kind":"azure-recovery"}'
    assert json.dumps(CeremonyKind.DRILL) == '"drill"'
    assert f"a {CeremonyKind.ROTATION!r} request" == "a 'rotation' request"  # messages name the word


def test_every_ceremony_names_its_kind_by_the_enum() -> None:
    kinds = {s.kind for s in (RecoverySession, DrillSession, RotationSession, AzureRestoreSession)}
    assert all(isinstance(k, CeremonyKind) for k in kinds)
    assert kinds == set(PURPOSES)
    assert CeremonyKind.DOMAIN_NOTICE not in PURPOSES  # a notice is never attested nor answered


def test_the_wire_table_maps_every_purpose_both_ways() -> None:
    assert set(KIND_TO_PROTO) == set(PURPOSES)
    assert {KIND_FROM_PROTO[v] for v in KIND_TO_PROTO.values()} == set(PURPOSES)
    assert all(isinstance(k, CeremonyKind) for k in KIND_FROM_PROTO.values())
    assert KIND_TO_PROTO[CeremonyKind.ROTATION] == pb.ROTATION


def test_a_request_read_from_its_words_holds_the_member() -> None:
    req = CeremonyRequest("0123456789abcdef", "s", "drill", 1, "", b"", b"", b"")
    assert req.kind is CeremonyKind.DRILL
    assert CeremonyRequest.from_bytes(req.to_bytes()).kind is CeremonyKind.DRILL


def test_a_drill_records_its_outcomes_as_the_reviews_words() -> None:
    assert all(isinstance(o, DrillOutcome) for o in DRILL_OUTCOMES.values())
    assert set(DRILL_OUTCOMES.values()) == set(DrillOutcome)
