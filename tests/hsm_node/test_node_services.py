"""The node's services in process, over the in-memory store (no gRPC, no disk).

What each test fakes is the store's commit (``on_commit``) or one of its writes, through the seam:
no private attribute of the node or of a store is touched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import certs_of, load_attestation

from hsm_node.keyops import KeyType
from hsm_node.node import Node, NodeConfig
from hsm_node.state import NodeState
from hsm_node.store import MemoryNodeStore
from sdquorum import audit
from sdquorum.errors import ConflictError, OutcomeUnknownError, StateError, StorageError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role

ADMIN, APP = Role("admin"), Role("app")


def _full_disk() -> None:
    raise StorageError("the node cannot write its database (disk full): nothing was changed")


def _node(pki_dir: Path) -> Node:
    key, cert = load_attestation(pki_dir, "node-b")
    config = NodeConfig("node-b", "127.0.0.1:0", pki_dir / "unused", key, cert)
    return Node(config, MemoryNodeStore(bytes(32), "node-b"), clock=lambda: 1_800_000_000.0)


def _events(node: Node, chain: str) -> list[str]:
    import json

    return [json.loads(e)["event"] for e in node.store.records.audit_entries(chain)]


async def _activated(pki_dir: Path, keys: list[SoftwareWrappingKey]) -> Node:
    node = _node(pki_dir)
    await node.activation.download(certs_of(keys[:3]), 2, ADMIN)
    return node


def test_a_new_node_is_provisioned_audited_and_its_data_plane_closed(pki_dir: Path) -> None:
    node = _node(pki_dir)
    assert node.state is NodeState.PROVISIONED and node.store.domain.state() == "PROVISIONED"
    assert _events(node, "provisioning") == ["node-provisioned"]
    with pytest.raises(StateError, match="not activated"):
        node.keys.list_keys(ADMIN)


async def test_an_activation_whose_commit_fails_leaves_the_node_provisioned(
    pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    node = _node(pki_dir)
    node.store.on_commit = _full_disk
    with pytest.raises(StorageError):
        await node.activation.download(certs_of(wrapping_keys[:3]), 2, ADMIN)
    node.store.on_commit = None
    assert node.store.domain.state() == "PROVISIONED" and node.store.domain.load_domain() is None
    assert node.state == node.store.domain.state()  # memory says what the store says
    await node.activation.download(certs_of(wrapping_keys[:3]), 2, ADMIN)  # the disk is fixed
    assert node.store.domain.state() == "ACTIVATED" and _events(node, "domain") == ["activated"]


async def test_a_recovery_that_failed_on_a_full_disk_returns_the_node_once_it_can_write(
    pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """The upload's record, its end's audit entry and the return to PROVISIONED all fail while the
    disk is full; once it can write, the next tick returns the node (before: RECOVERY_PENDING until
    a restart, and a download was refused)."""
    sd, _ = await _node(pki_dir).activation.download(certs_of(wrapping_keys[:3]), 2, ADMIN)
    node = _node(pki_dir)  # a new node, to recover that domain on
    s = await node.activation.init_recovery("dc lost", 60, ADMIN)
    node.store.on_commit = _full_disk
    with pytest.raises(StorageError):
        await node.activation.upload_sd_file(s.session_id, sd)
    assert node.state is NodeState.RECOVERY_PENDING and node.store.domain.state() == "RECOVERY_PENDING"
    node.store.on_commit = None
    await node.tick()
    assert node.state is NodeState.PROVISIONED and node.store.domain.state() == "PROVISIONED"
    await node.activation.download(certs_of(wrapping_keys[:3]), 2, ADMIN)  # accepted now


async def test_a_key_whose_commit_fails_is_neither_created_nor_audited(
    pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    node = await _activated(pki_dir, wrapping_keys)
    node.store.on_commit = _full_disk
    with pytest.raises(StorageError):
        await node.keys.create_key("k", KeyType.AES256_GCM, APP)
    node.store.on_commit = None
    assert node.store.keys.find_key("k") is None
    assert "key-created" not in _events(node, "domain")
    await node.keys.create_key("k", KeyType.AES256_GCM, APP)
    assert node.key_ops.decrypt("k", node.key_ops.encrypt("k", b"p", b"", APP), b"", APP) == b"p"


async def test_a_key_lifecycle_change_that_met_a_concurrent_writer_is_made_again_once(
    pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """In a pool a key's deletion, recovery and purge publish the custody head, so another member's
    write at the same moment refuses one (ConflictError, nothing written): the change is made again
    and succeeds, audited once; a store that keeps refusing fails after three tries."""
    node = await _activated(pki_dir, wrapping_keys)
    await node.keys.create_key("k", KeyType.AES256_GCM, APP)
    refusals: list[int] = []

    def conflict_first(times: int) -> None:
        node.store.on_commit = lambda: _conflict(refusals, times)

    for change in (
        lambda: node.keys.delete_key("k", APP),
        lambda: node.keys.recover_key("k", APP),
        lambda: node.keys.delete_key("k", APP),
        lambda: node.keys.purge_key("k", ADMIN),
    ):
        refusals.clear()
        conflict_first(1)
        change()
        assert len(refusals) == 2  # refused once, then made
    node.store.on_commit = None
    assert _events(node, "domain")[-4:] == ["key-deleted", "key-recovered", "key-deleted", "key-purged"]
    await node.keys.create_key("j", KeyType.AES256_GCM, APP)
    refusals.clear()
    conflict_first(99)
    with pytest.raises(ConflictError):
        node.keys.delete_key("j", APP)
    node.store.on_commit = None
    assert len(refusals) == 3 and node.store.keys.find_key("j").deleted_at is None  # type: ignore[union-attr]


def _conflict(refusals: list[int], times: int) -> None:
    refusals.append(1)
    if len(refusals) <= times:
        raise ConflictError("another pool member changed the same rows at the same time: nothing was written")


async def test_after_an_entry_whose_batch_did_not_commit_the_next_links_to_the_store_s_head(
    pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """The audit log knows the head of the entry it wrote last and parses the store's head only
    when it differs: an entry written in a batch that then did not commit must not be linked to."""
    node = await _activated(pki_dir, wrapping_keys)
    await node.keys.create_key("a", KeyType.AES256_GCM, APP)
    node.store.on_commit = _full_disk
    with pytest.raises(StorageError):
        await node.keys.create_key("b", KeyType.AES256_GCM, APP)  # its entry is made, then undone
    node.store.on_commit = None
    await node.keys.create_key("c", KeyType.AES256_GCM, APP)
    log = audit.verify_export(node.audit_log.export("domain"))
    assert [(e.event, e.details.get("name")) for e in log.entries][-2:] == [
        ("key-created", "a"),
        ("key-created", "c"),
    ]


async def test_a_delete_whose_audit_entry_cannot_be_written_leaves_the_key_live(
    pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = await _activated(pki_dir, wrapping_keys)
    await node.keys.create_key("k", KeyType.ED25519, APP)

    def refused(chain: str, seq: int, entry_json: str) -> None:
        raise StorageError("the node cannot write its database (disk full): nothing was changed")

    monkeypatch.setattr(node.store.records, "append_audit", refused)
    with pytest.raises(StorageError):
        node.keys.delete_key("k", APP)
    monkeypatch.undo()
    found = node.store.keys.find_key("k")
    assert found is not None and found.deleted_at is None  # the change and its entry: both or neither


async def test_a_backup_from_the_memory_store_restores_into_it(
    pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    node = await _activated(pki_dir, wrapping_keys)
    await node.keys.create_key("a", KeyType.AES256_GCM, APP)
    data = node.backups.backup(ADMIN)
    await node.keys.create_key("b", KeyType.AES256_GCM, APP)
    assert node.backups.restore(data, ADMIN) == 1
    assert [k.name for k in node.keys.list_keys(ADMIN)] == ["a"]


async def test_a_restore_whose_outcome_is_unknown_is_audited_as_such_and_reported(
    pki_dir: Path, wrapping_keys: list[SoftwareWrappingKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool restore that lost etcd at its flip may have taken effect: its audit entry cannot be
    lost (the previous code wrote none and reported a plain failure)."""
    node = await _activated(pki_dir, wrapping_keys)
    await node.keys.create_key("a", KeyType.AES256_GCM, APP)
    data = node.backups.backup(ADMIN)

    def lost(image: bytes, count: int) -> None:
        raise OutcomeUnknownError(
            "etcd was lost while the restore was finishing: check with 'sdctl keys list'"
        )

    monkeypatch.setattr(node.store.keys, "import_key_rows", lost)
    with pytest.raises(OutcomeUnknownError, match="sdctl keys list"):
        node.backups.restore(data, ADMIN)
    import json

    last = json.loads(node.store.records.audit_entries("domain")[-1])
    assert last["event"] == "key-store-restored" and last["details"]["outcome"] == "unknown"


async def test_a_restore_whose_outcome_is_unknown_and_whose_audit_fails_still_says_so(
    pki_dir: Path,
    wrapping_keys: list[SoftwareWrappingKey],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In a pool the audit log is in the etcd that was just lost: the person still learns the
    outcome is unknown (not a transport error), and the details go to the log at ERROR."""
    node = await _activated(pki_dir, wrapping_keys)
    data = node.backups.backup(ADMIN)

    def lost(image: bytes, count: int) -> None:
        raise OutcomeUnknownError(
            "etcd was lost while the restore was finishing: check with 'sdctl keys list'"
        )

    monkeypatch.setattr(node.store.keys, "import_key_rows", lost)
    monkeypatch.setattr(node.store.records, "append_audit", lambda *a, **k: _full_disk())
    with pytest.raises(OutcomeUnknownError, match="sdctl keys list"):
        node.backups.restore(data, ADMIN)
    assert any(r.levelname == "ERROR" and "could not be audited" in r.getMessage() for r in caplog.records)
