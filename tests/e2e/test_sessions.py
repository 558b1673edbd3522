"""Ceremony sessions under the operator's control (issue 14, section 2): a step refused with
"nothing was changed" leaves nothing running, a failed recovery returns a never-activated node to
PROVISIONED, an admin can see and cancel the running session, and every failed session is audited
with its reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from harness import Cluster, certs_of, node_b_and_sd_file, running_cluster

from coordinator.ceremony import SessionState
from sdquorum import pki
from sdquorum.errors import StateError, StorageError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb

FULL = "the node cannot write its database (disk full): free space on its data volume; nothing was changed"


def _fail_commits(b: Cluster, monkeypatch: pytest.MonkeyPatch, times: int | None = None) -> None:
    """Commits fail, as on a full data volume (all of them, or the next ``times``), through the
    store's seam (``on_commit``, tests/hsm_node/test_node_services.py)."""
    left = [times]

    def full_disk() -> None:
        if left[0] is None or left[0] > 0:
            left[0] = None if left[0] is None else left[0] - 1
            raise StorageError(FULL)

    monkeypatch.setattr(b.node.store, "on_commit", full_disk)


def _events(b: Cluster) -> list[dict[str, object]]:
    return [json.loads(e) for e in b.node.store.records.audit_entries(b.node.audit_chain())]


def _asked(b: Cluster, keys: list[SoftwareWrappingKey]) -> list[int]:
    return [len(b.node.agents.pending_requests(pki.thumbprint_sha256(k.certificate_der()))) for k in keys]


async def test_an_init_recovery_that_cannot_be_written_leaves_no_session(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the refused InitRecovery's session stayed in memory and refused every new one."""
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, _):
        _fail_commits(b, monkeypatch)
        with pytest.raises(StorageError, match="nothing was changed"):
            await b.node.activation.init_recovery("dc lost", 60, Role("admin"))
        assert b.node.session is None and b.node.state == "PROVISIONED"
        monkeypatch.undo()
        s = await b.node.activation.init_recovery("dc lost, disk freed", 60, Role("admin"))  # not blocked
        assert b.node.state == "RECOVERY_PENDING" and b.node.session is s


async def test_a_rotation_whose_proposal_cannot_be_written_leaves_no_session(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        _fail_commits(a, monkeypatch)
        with pytest.raises(StorageError):
            await a.node.rotation.propose_rotation(
                certs_of(wrapping_keys[:4]), 2, "carol left", 60, Role("admin")
            )
        assert a.node.session is None
        assert _asked(a, wrapping_keys[:5]) == [0] * 5


async def test_an_upload_that_cannot_be_recorded_asks_nobody_and_never_activates(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the upload failed for the operator, but its session went on COLLECTING, every
    custodian was asked, and three releases activated the node once space was freed."""
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        s = await b.node.activation.init_recovery("dc lost", 60, Role("admin"))
        _fail_commits(b, monkeypatch, times=1)  # the SD file's record
        with pytest.raises(StorageError, match="nothing was changed"):
            await b.node.activation.upload_sd_file(s.session_id, sd)
        monkeypatch.undo()
        assert s.state is SessionState.FAILED and "could not record the SD file" in s.message
        assert _asked(b, wrapping_keys[:5]) == [0] * 5  # nobody is asked
        assert b.node.state == "PROVISIONED" and b.node.domain_info is None
        again = await b.start_recovery(sd)  # a new session is not blocked
        assert b.node.session is not None and b.node.session.session_id == again


async def test_an_expired_recovery_returns_a_never_activated_node_to_provisioned(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """Before: one InitRecovery left the node RECOVERY_PENDING for ever, and a download was refused."""
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, _):
        await b.node.activation.init_recovery("dc lost", 30, Role("admin"))
        assert (await b.node_status()).state == pb.RECOVERY_PENDING
        b.clock.advance(31)
        await b.node.tick()
        assert (await b.node_status()).state == pb.PROVISIONED
        await b.download(certs_of(wrapping_keys[:3]), quorum=2)  # accepted now
        assert (await b.node_status()).state == pb.ACTIVATED


async def test_a_restart_that_drops_a_recovery_returns_the_node_to_provisioned(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    seal = os.urandom(32)
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b", sealing_key=seal) as b:
        await b.node.activation.init_recovery("dc lost", 600, Role("admin"))
        assert b.node.state == "RECOVERY_PENDING"
    async with running_cluster(pki_dir, tmp_path / "b", node_id="node-b", sealing_key=seal) as b:
        assert b.node.state == "PROVISIONED" and b.node.session is None


async def test_an_admin_sees_and_cancels_the_running_session_and_the_end_is_audited(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        sid = await b.start_recovery(sd, ttl=300)
        st = await b.node_status()
        assert (st.active_session_id, st.session_kind, st.session_state) == (sid, "recovery", pb.COLLECTING)
        assert st.session_expires_at_unix == b.node.now() + 300 and not st.compromised
        async with b.client() as c, c.errors():
            got = await c.admin.GetSession(pb.WatchSessionRequest())
            assert (got.session_id, got.state) == (sid, pb.COLLECTING)
            done = await c.admin.CancelSession(pb.CancelSessionRequest(session_id=sid, reason="wrong file"))
        assert done.state == pb.FAILED and done.message == "cancelled by admin: wrong file"
        assert _asked(b, wrapping_keys[:5]) == [0] * 5
        assert b.node.state == "PROVISIONED"
        st = await b.node_status()
        assert st.active_session_id == "" and st.session_kind == ""
        with pytest.raises(StateError, match="ended already"):
            async with b.client() as c, c.errors():
                await c.admin.CancelSession(pb.CancelSessionRequest(session_id=sid, reason="again"))
        failed = [e for e in _events(b) if e["event"] == "recovery-failed"]
    assert len(failed) == 1
    assert failed[0]["details"]["reason"] == "cancelled by admin: wrong file"  # type: ignore[index]


@pytest.mark.parametrize("how", ["deadline", "bad file", "cancel"])
async def test_every_failed_session_is_audited_once_with_its_reason(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], how: str
) -> None:
    """Before: a failed session's entry carried only a "message"; now every way a session fails is
    one ``<kind>-failed`` entry with its ``reason``, as the runbooks tell operators to look for."""
    async with node_b_and_sd_file(pki_dir, tmp_path, wrapping_keys[:5]) as (b, sd):
        s = await b.node.activation.init_recovery("dc lost", 30, Role("admin"))
        if how == "deadline":
            b.clock.advance(31)
            await b.node.tick()
        elif how == "bad file":
            with pytest.raises(Exception):  # noqa: B017 - the refusal's own type is tested elsewhere
                await b.node.activation.upload_sd_file(s.session_id, sd[:-40] + b"x" * 40)
        else:
            await b.node.ceremonies.cancel_session(s.session_id, "drill it", Role("admin"))
        await b.node.tick()
        failed = [e for e in _events(b) if e["event"] == "recovery-failed"]
    assert len(failed) == 1, failed
    assert failed[0]["details"]["reason"] == s.message and s.message  # type: ignore[index]


async def test_status_shows_the_compromised_flag(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:3]), quorum=2)
        assert not (await a.node_status()).compromised
        a.node.custody.mark_compromised("two keys lost", Role("admin"))
        assert (await a.node_status()).compromised
