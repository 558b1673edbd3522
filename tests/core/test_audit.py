"""The audit log: an export verifies, and every edit, deletion, insertion, reordering or truncation is named."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdquorum import pki
from sdquorum.audit import GENESIS, AuditEntry, VerifiedLog, export_lines, make_entry, verify_export
from sdquorum.errors import MalformedError, SdquorumError, VerificationError

if TYPE_CHECKING:
    from conftest import NodeAttestation

T = 1_700_000_000
EVENTS: list[tuple[str, str, dict[str, Any]]] = [
    ("node-activated", "admin", {"domain_id": "ab" * 16, "epoch": 1, "quorum": 3, "n": 5}),
    ("custody-handoff", "admin", {"custodian": "alice", "holder": "alice", "location": "Zurich"}),
    ("drill-started", "admin", {"session_id": "d-1"}),
    ("drill-proved", "custodian/bob", {"session_id": "d-1", "x": 2}),
    ("drill-finished", "node", {"session_id": "d-1", "outcome": "5 proved"}),
    ("rotation-proposed", "admin", {"session_id": "r-1", "quorum": 3}),
    ("rotation-completed", "node", {"session_id": "r-1", "from_epoch": 1, "to_epoch": 2}),
    ("epoch-retired", "node", {"epoch": 1, "note": "destroy every copy of the epoch 1 SD file"}),
]


@dataclass(frozen=True)
class Log:
    entries: tuple[AuditEntry, ...]
    lines: tuple[str, ...]  # header, 8 entries (lines[1 + seq]), head

    def copy(self) -> list[str]:
        return list(self.lines)


def chain(key: Ed25519PrivateKey, events: list[tuple[str, str, dict[str, Any]]] = EVENTS) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    for i, (event, actor, details) in enumerate(events):
        prev = entries[-1] if entries else None
        entries.append(make_entry(prev, time=T + 60 * i, event=event, actor=actor, details=details, key=key))
    return entries


def export(
    entries: list[AuditEntry], node: NodeAttestation, key: Ed25519PrivateKey | None = None
) -> list[str]:
    """Export as node-b with ``node``'s certificate, signed by ``key`` (default: the node's own key)."""
    return export_lines(
        entries, node_id="node-b", certificate_der=node.certificate_der, key=key or node.key, time=T + 3600
    )


@pytest.fixture(scope="module")
def log(node_attestation: NodeAttestation) -> Log:
    entries = chain(node_attestation.key)
    return Log(tuple(entries), tuple(export(entries, node_attestation)))


def edit(lines: list[str], i: int, **changes: Any) -> None:
    obj = json.loads(lines[i])
    obj.update(changes)
    lines[i] = json.dumps(obj, sort_keys=True)


def refused(lines: list[str], match: str) -> None:
    with pytest.raises(VerificationError, match=match):
        verify_export(lines)


# ---------------------------------------------------------------------------------------- a good log


def test_chain_links_each_entry_to_the_one_before(log: Log) -> None:
    assert [e.seq for e in log.entries] == list(range(8))
    assert log.entries[0].prev == GENESIS
    assert all(e.prev == p.hash for p, e in zip(log.entries, log.entries[1:], strict=False))
    assert len({e.hash for e in log.entries}) == 8
    assert len(log.lines) == 10


def test_export_verifies_and_returns_every_entry(log: Log) -> None:
    result = verify_export(log.lines)
    assert result == VerifiedLog("node-b", log.entries)
    assert [e.event for e in result.entries] == [e for e, _, _ in EVENTS]
    assert result.entries[3].details == {"session_id": "d-1", "x": 2}


def test_blank_lines_and_surrounding_whitespace_are_ignored(log: Log) -> None:
    assert verify_export(["", *(f"  {line}\n" for line in log.lines), "\n"]).entries == log.entries


def test_an_entry_keeps_what_it_signed_when_the_callers_details_change_later(
    node_attestation: NodeAttestation,
) -> None:
    details: dict[str, Any] = {"session_id": "d-1", "proved": ["alice"]}
    entry = make_entry(
        None, time=T, event="drill-started", actor="admin", details=details, key=node_attestation.key
    )
    first_hash = entry.hash
    details["session_id"] = "d-2"
    details["proved"].append("mallory")
    assert entry.details == {"session_id": "d-1", "proved": ["alice"]}
    assert entry.hash == first_hash
    assert verify_export(export([entry], node_attestation)).entries == (entry,)


def test_empty_log_verifies(node_attestation: NodeAttestation) -> None:
    assert verify_export(export([], node_attestation)) == VerifiedLog("node-b", ())


def test_export_verifies_against_the_attestation_root(
    log: Log, attestation_root: pki.IssuedCert, now: datetime
) -> None:
    assert verify_export(log.lines, root_pem=attestation_root.cert_pem, now=now).entries == log.entries


def test_export_checked_against_a_foreign_root_is_refused(log: Log, now: datetime) -> None:
    foreign_root = pki.make_attestation_root("another vendor's root", now)
    with pytest.raises(VerificationError, match="not signed by the attestation root"):
        verify_export(log.lines, root_pem=foreign_root.cert_pem, now=now)


def test_export_by_a_node_under_a_foreign_root_is_refused(
    foreign_node_attestation: NodeAttestation, attestation_root: pki.IssuedCert, now: datetime
) -> None:
    lines = export(chain(foreign_node_attestation.key), foreign_node_attestation)
    assert verify_export(lines).node_id == "node-b"  # self-consistent, but not under our root
    with pytest.raises(VerificationError, match="not signed by the attestation root"):
        verify_export(lines, root_pem=attestation_root.cert_pem, now=now)


def test_root_check_needs_the_current_time(log: Log, attestation_root: pki.IssuedCert) -> None:
    with pytest.raises(VerificationError, match="needs the current time"):
        verify_export(log.lines, root_pem=attestation_root.cert_pem)


# ---------------------------------------------------------------------------------------- tampering


def test_edited_entry_is_named(log: Log) -> None:
    lines = log.copy()
    edit(lines, 1 + 3, details={"session_id": "d-1", "x": 3})
    refused(lines, r"line 5 \(seq 3\): its content does not match its hash: the entry was edited")


def test_edited_entry_with_recomputed_hash_fails_its_signature(log: Log) -> None:
    lines = log.copy()
    obj = json.loads(lines[1 + 3])
    obj["details"] = {"session_id": "d-1", "x": 3}
    obj["hash"] = AuditEntry.from_json(obj).hash.hex()
    lines[1 + 3] = json.dumps(obj, sort_keys=True)
    refused(lines, r"line 5 \(seq 3\): the node's signature does not verify: the entry was edited")


def test_edited_actor_with_recomputed_hash_fails_its_signature(log: Log) -> None:
    lines = log.copy()
    obj = json.loads(lines[1 + 1])
    obj["actor"] = "custodian/mallory"
    obj["hash"] = AuditEntry.from_json(obj).hash.hex()
    lines[1 + 1] = json.dumps(obj, sort_keys=True)
    refused(lines, r"line 3 \(seq 1\): the node's signature does not verify")


def test_deleted_middle_entry_is_named(log: Log) -> None:
    lines = log.copy()
    del lines[1 + 3]
    refused(lines, r"line 5 \(seq 4\): expected seq 3: an entry was deleted, inserted or reordered")


def test_deleted_middle_entry_with_renumbered_seq_breaks_the_chain(log: Log) -> None:
    lines = log.copy()
    del lines[1 + 3]
    edit(lines, 1 + 3, seq=3)
    refused(lines, r"line 5 \(seq 3\): does not chain to the entry before it")


def test_deleted_last_entry_is_caught_by_the_signed_head(log: Log) -> None:
    lines = log.copy()
    del lines[-2]
    refused(lines, "the signed head is seq 7 but the last entry is seq 6: entries were removed from the end")


@pytest.mark.parametrize("cut", [1, 2, 4], ids=["head only", "head and last entry", "head and three entries"])
def test_removed_head_line_is_refused_as_truncated(log: Log, cut: int) -> None:
    refused(log.copy()[:-cut], "the last line is not the signed head: the export is truncated")


@pytest.mark.parametrize("keep", [0, 1], ids=["nothing", "header only"])
def test_export_without_header_or_head_is_refused(log: Log, keep: int) -> None:
    refused(log.copy()[:keep], "no header or no head line: it is truncated")


def test_header_line_removed_is_refused(log: Log) -> None:
    refused(log.copy()[1:], "the first line is not an sdquorum audit export header")


def test_inserted_entry_forged_with_another_key_fails_its_signature(log: Log) -> None:
    lines = log.copy()
    forger = Ed25519PrivateKey.generate()
    forged = make_entry(
        log.entries[3],
        time=T + 200,
        event="drill-proved",
        actor="custodian/carol",
        details={"x": 3},
        key=forger,
    )
    lines.insert(1 + 4, json.dumps(forged.to_json(), sort_keys=True))
    refused(lines, r"line 6 \(seq 4\): the node's signature does not verify")


def test_appended_entry_with_a_forged_head_is_refused(log: Log, node_attestation: NodeAttestation) -> None:
    """A forger appends a well-chained entry and re-signs the head with its own key."""
    forger = Ed25519PrivateKey.generate()
    forged = make_entry(log.entries[-1], time=T + 9999, event="x", actor="admin", details={}, key=forger)
    refused(
        export([*log.entries, forged], node_attestation, forger),
        r"line 10 \(seq 8\): the node's signature does not verify",
    )


def test_inserted_copy_of_an_existing_entry_is_named(log: Log) -> None:
    lines = log.copy()
    lines.insert(1 + 4, lines[1 + 3])
    refused(lines, r"line 6 \(seq 3\): expected seq 4")


def test_swapped_entries_are_named(log: Log) -> None:
    lines = log.copy()
    lines[1 + 2], lines[1 + 3] = lines[1 + 3], lines[1 + 2]
    refused(lines, r"line 4 \(seq 3\): expected seq 2: an entry was deleted, inserted or reordered")


def test_swapped_entries_with_renumbered_seq_break_the_chain(log: Log) -> None:
    lines = log.copy()
    lines[1 + 2], lines[1 + 3] = lines[1 + 3], lines[1 + 2]
    edit(lines, 1 + 2, seq=2)
    edit(lines, 1 + 3, seq=3)
    refused(lines, r"line 4 \(seq 2\): does not chain to the entry before it")


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 6},
        {"hash": "00" * 32},
        {"time": T + 1},
    ],
    ids=["seq", "hash", "time"],
)
def test_edited_head_fails_its_signature(log: Log, change: dict[str, Any]) -> None:
    lines = log.copy()
    edit(lines, -1, **change)
    refused(lines, "the head line's signature does not verify")


def test_head_forged_with_another_key_over_a_truncated_log_is_refused(
    log: Log, node_attestation: NodeAttestation
) -> None:
    forged = export(list(log.entries[:6]), node_attestation, Ed25519PrivateKey.generate())
    lines = [*log.lines[:7], forged[-1]]
    refused(lines, "the head line's signature does not verify")


def test_relabelled_node_id_fails_the_head_signature(log: Log) -> None:
    lines = log.copy()
    edit(lines, 0, node_id="node-c")
    refused(lines, "the head line's signature does not verify")


def test_certificate_swapped_for_another_nodes_fails_the_first_entry(
    log: Log, foreign_node_attestation: NodeAttestation
) -> None:
    lines = log.copy()
    edit(lines, 0, certificate=json.loads(export([], foreign_node_attestation)[0])["certificate"])
    refused(lines, r"line 2 \(seq 0\): the node's signature does not verify")


def test_line_that_is_not_json_is_malformed(log: Log) -> None:
    lines = log.copy()
    lines[1 + 4] = lines[1 + 4][:-5]
    with pytest.raises(MalformedError, match="line 6 is not valid JSON"):
        verify_export(lines)


# ---------------------------------------------------------------------------------------- garbage

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def outcome(lines: list[str]) -> VerifiedLog | None:
    """Verify; None for a refusal. Anything but an sdquorum error propagates and fails the test."""
    try:
        return verify_export(lines)
    except SdquorumError:
        return None


@FUZZ
@given(lines=st.lists(st.text(max_size=60), max_size=6))
def test_random_text_lines_raise_only_sdquorum_errors(lines: list[str]) -> None:
    assert outcome(lines) is None


@FUZZ
@given(objs=st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5), max_size=4))
def test_random_json_objects_raise_only_sdquorum_errors(objs: list[dict[str, Any]]) -> None:
    assert outcome([json.dumps(o) for o in objs]) is None


@FUZZ
@given(data=st.data())
def test_one_field_replaced_by_random_json_is_refused_or_harmless(log: Log, data: st.DataObject) -> None:
    """Any field of any line (header, entry or head) replaced: refused, or it verifies to the same log."""
    lines = log.copy()
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    obj = json.loads(lines[i])
    key = data.draw(st.sampled_from(sorted(obj)), label="field")
    obj[key] = data.draw(json_values, label="value")
    lines[i] = json.dumps(obj)
    result = outcome(lines)
    assert result is None or result == verify_export(log.lines)


@FUZZ
@given(data=st.data())
def test_random_json_object_in_place_of_a_line_raises_only_sdquorum_errors(
    log: Log, data: st.DataObject
) -> None:
    lines = log.copy()
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    lines[i] = json.dumps(data.draw(st.dictionaries(st.text(max_size=8), json_values, max_size=6)))
    assert outcome(lines) is None


def _entry_line_with(log: Log, raw_details: str) -> list[str]:
    """The export with seq 0's details replaced by ``raw_details`` (raw JSON text)."""
    lines = log.copy()
    obj = json.loads(lines[1])
    obj["details"] = "@@DETAILS@@"
    lines[1] = json.dumps(obj, sort_keys=True).replace('"@@DETAILS@@"', raw_details)
    return lines


@pytest.mark.parametrize("raw", ['{"x": NaN}', '{"x": Infinity}', '{"x": 1e400}'])
def test_non_finite_number_in_details_is_malformed_not_a_crash(log: Log, raw: str) -> None:
    with pytest.raises(SdquorumError):
        verify_export(_entry_line_with(log, raw))


def test_lone_surrogate_in_an_entry_is_malformed_not_a_crash(log: Log) -> None:
    with pytest.raises(SdquorumError):
        verify_export(_entry_line_with(log, '{"x": "\\ud800"}'))


def test_deeply_nested_line_is_malformed_not_a_crash(log: Log) -> None:
    lines = log.copy()
    lines[1] = "[" * 100_000 + "]" * 100_000
    with pytest.raises(SdquorumError):
        verify_export(lines)
