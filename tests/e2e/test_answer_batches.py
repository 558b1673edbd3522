"""Answers that arrive together are committed together, and none is acknowledged before its commit.

The node takes the answers waiting for it as one batch: their audit entries and the completion the
last one causes go into one SQLite transaction (one fsync instead of one per answer plus four for
the completion). The promise kept: an answer is acknowledged (``submit_answer`` returns, or raises
its own error) only once its audit entry is on disk, which a second connection to the database
checks here at the moment each caller returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import NAMES, Cluster, node_b_and_sd_file

from coordinator.ceremony import SessionState
from custodian_agent import responder
from sdquorum import envelopes, pki, shamir
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import StateError, StorageError, VerificationError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum_rpc.observability import REQUEST_ID


def _answers(
    b: Cluster, pki_dir: Path, keys: list[SoftwareWrappingKey], corrupt: str = ""
) -> list[tuple[str, bytes, Role]]:
    """Each custodian's release for its open request (``corrupt``'s share is off by one)."""
    policy = CustodianPolicy((pki_dir / "attestation-root.pem").read_bytes())
    now = datetime.fromtimestamp(b.node.now(), tz=UTC)
    out = []
    for name, key in zip(NAMES, keys, strict=False):
        thumb = pki.thumbprint_sha256(key.certificate_der())
        (req,) = b.node.agents.pending_requests(thumb)
        creq = req.for_custodian(name)
        checked = responder.check(creq, thumb, policy, now)
        if name == corrupt:
            assert isinstance(checked, envelopes.CheckedRequest)
            good = envelopes.decrypt_share(checked, key)
            answer = envelopes.make_release(checked, shamir.Share(good.x, (good.y + 1) % shamir.L), key)
            out.append((req.request_id, answer.to_bytes(), Role("custodian", name)))
        else:
            out.append(
                (
                    req.request_id,
                    responder.answer(creq, checked, key, os.urandom),
                    Role("custodian", name),
                )
            )
    return out


def _durable_events(data_dir: Path) -> list[tuple[str, str]]:
    """(event, custodian) of every committed audit entry, read through a connection of its own."""
    db = sqlite3.connect(data_dir / "node.db")
    try:
        rows = db.execute("SELECT entry FROM audit ORDER BY chain, seq").fetchall()
    finally:
        db.close()
    return [(e["event"], e["details"].get("custodian", "")) for e in (json.loads(r[0]) for r in rows)]


async def test_answers_arriving_together_commit_once_and_each_returns_after_its_commit(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], caplog: pytest.LogCaptureFixture
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        await b.start_recovery(sd)
        answers = _answers(b, pki_dir, wrapping_keys[:4], corrupt="bob")
        commits: list[str] = []
        b.node.store.on_commit = lambda: commits.append("COMMIT")
        seen_at_return: dict[str, list[tuple[str, str]]] = {}
        errors: dict[str, BaseException] = {}

        async def submit(request_id: str, answer: bytes, role: Role) -> None:
            REQUEST_ID.set(f"call-of-{role.name}")  # as the RPC layer does for each call
            try:
                await b.node.answers.submit_answer(request_id, answer, role, kind="recovery")
            except VerificationError as e:
                errors[role.name] = e
            seen_at_return[role.name] = _durable_events(b.data_dir)

        with caplog.at_level(logging.INFO, logger="sdquorum.node"):
            await asyncio.gather(*(submit(*a) for a in answers))
        assert commits == ["COMMIT"]  # four answers, the completion and activation: one transaction
        assert b.node.state == "ACTIVATED"
        assert set(errors) == {"bob"} and "VSS" in str(errors["bob"])  # the bad share fails alone
        for name, events in seen_at_return.items():
            verdict = "rejected" if name == "bob" else "accepted"
            assert (f"recovery-answer-{verdict}", name) in events, name
        assert ("recovered", "") in seen_at_return["alice"]
        # taken in one batch, each answer is still logged under its own call's request id
        via = [(re.search(r"via custodian/(\w+)", r.getMessage()), r) for r in caplog.records]
        assert {m.group(1): getattr(r, "request_id", None) for m, r in via if m} == {
            name: f"call-of-{name}" for name in ("alice", "bob", "carol", "dave")
        }


async def test_an_answer_alone_is_committed_before_it_returns(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        await b.start_recovery(sd)
        answers = _answers(b, pki_dir, wrapping_keys[:3])
        for i, (request_id, answer, role) in enumerate(answers):
            await b.node.answers.submit_answer(request_id, answer, role, kind="recovery")
            events = _durable_events(b.data_dir)
            assert ("recovery-answer-accepted", role.name) in events
            assert (("recovered", "") in events) == (i == 2)
        assert b.node.state == "ACTIVATED"


async def _submit_in_a_batch_that_does_not_commit(
    b: Cluster, answers: list[tuple[str, bytes, Role]], monkeypatch: pytest.MonkeyPatch
) -> list[object]:
    """Submit ``answers`` together while every batch's commit fails (a full disk at COMMIT): each
    caller's result, an exception or None. ``monkeypatch.undo()`` gives the store back."""

    def full_disk_at_commit() -> None:
        raise StorageError("the node cannot write its database (disk full): nothing was changed")

    monkeypatch.setattr(b.node.store, "on_commit", full_disk_at_commit)
    return await asyncio.gather(
        *(b.node.answers.submit_answer(*a, kind="recovery") for a in answers), return_exceptions=True
    )


async def test_a_batch_that_does_not_commit_fails_every_answer_in_it(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        await b.start_recovery(sd)
        answers = _answers(b, pki_dir, wrapping_keys[:2])
        results = await _submit_in_a_batch_that_does_not_commit(b, answers, monkeypatch)
        assert [type(r) for r in results] == [StorageError, StorageError]
        assert not any(e.startswith("recovery-answer") for e, _ in _durable_events(b.data_dir))


async def test_a_completion_that_does_not_commit_is_undone_in_memory_and_the_session_fails(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The m-th answer completes the ceremony inside a batch whose commit fails: the node must not
    act ACTIVATED on a domain its disk does not hold, and the session must not read COMPLETED."""
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        await b.start_recovery(sd)
        answers = _answers(b, pki_dir, wrapping_keys[:3])
        results = await _submit_in_a_batch_that_does_not_commit(b, answers, monkeypatch)
        assert [type(r) for r in results] == [StorageError] * 3
        assert b.node.state == "RECOVERY_PENDING" and b.node.domain_info is None
        session = b.node.session
        assert session is not None and session.state is SessionState.FAILED
        assert "could not write its audit log" in session.message
        monkeypatch.undo()  # the disk is fixed: no recovery runs, so the node is PROVISIONED again
        await b.node.tick()
        assert b.node.state == "PROVISIONED" and b.node.store.domain.state() == "PROVISIONED"
        await b.start_recovery(sd)
        for answer in _answers(b, pki_dir, wrapping_keys[:3]):
            await b.node.answers.submit_answer(*answer, kind="recovery")
        assert b.node.state == "ACTIVATED"


def _fail_writing(monkeypatch: pytest.MonkeyPatch, b: Cluster, event: str, times: int) -> None:
    """The audit entry ``event`` fails to write ``times`` times (one statement, as SQLITE_FULL
    fails it: the transaction itself survives); other entries are written."""
    records = b.node.store.records
    real = records.append_audit
    left = {"n": times}

    def flaky(chain: str, seq: int, entry_json: str) -> None:
        if left["n"] and json.loads(entry_json)["event"] == event:
            left["n"] -= 1
            raise StorageError("the node cannot write its database (database or disk is full)")
        real(chain, seq, entry_json)

    monkeypatch.setattr(records, "append_audit", flaky)


@pytest.mark.parametrize("which", ["the first share", "the m-th share"])
async def test_a_share_whose_acceptance_is_not_written_never_counts(
    pki_dir: Path,
    tmp_path: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    monkeypatch: pytest.MonkeyPatch,
    which: str,
) -> None:
    """A share's acceptance entry fails to write: the share must not count (fail closed: the
    session ends, nothing of that batch is on disk), and the node does not activate from it."""
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        await b.start_recovery(sd)
        answers = _answers(b, pki_dir, wrapping_keys[:3])
        first = 0 if which == "the first share" else 2
        for a in answers[:first]:
            await b.node.answers.submit_answer(*a, kind="recovery")
        _fail_writing(monkeypatch, b, "recovery-answer-accepted", 1)
        with pytest.raises(StorageError, match="could not record the answer"):
            await b.node.answers.submit_answer(*answers[first], kind="recovery")
        session = b.node.session
        assert session is not None and session.state is SessionState.FAILED
        for a in answers[first + 1 :]:  # the rest are refused: the session has ended
            with pytest.raises(StateError):
                await b.node.answers.submit_answer(*a, kind="recovery")
        assert b.node.state == "RECOVERY_PENDING" and b.node.domain_info is None
        events = _durable_events(b.data_dir)
        assert ("recovery-answer-accepted", NAMES[first]) not in events
        assert not any(e == "recovered" for e, _ in events)
        monkeypatch.undo()  # the disk is fixed: a new session recovers
        await b.start_recovery(sd)
        for answer in _answers(b, pki_dir, wrapping_keys[:3]):
            await b.node.answers.submit_answer(*answer, kind="recovery")
        assert b.node.state == "ACTIVATED"
