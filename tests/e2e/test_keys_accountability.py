"""Keys with accountability (issue 13, class 7): who may see and use a key, soft deletion, purge.

The rule (hsm_node/node.py, "Who may use a key"): every key has one owner, the role that may use it
(``admin``, ``app`` or ``app/<name>``). An app lists, uses, deletes and recovers only its own keys; the
admin lists and manages every key, uses only its own, and may create a key for an app. Deletion is
soft: a deleted key is unusable and out of ListKeys, recoverable for ``keys.retention_days``, then
purged by the node; only an admin purges sooner. Create, delete, recover and purge are audited with
who (role, certificate subject, SPKI SHA-256). Cases run over real mTLS where the role matters, and
on an in-process node with a pinned clock where time and restarts matter.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import Clock, Cluster, certs_of, load_attestation, run_sdctl, running_cluster

from hsm_node.keyops import KeyType
from hsm_node.node import Node, NodeConfig
from hsm_node.store import SqliteNodeStore
from sdctl import pkifiles
from sdquorum import backup, pki
from sdquorum.errors import (
    AlreadyExistsError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    UsageError,
    VerificationError,
)
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum_rpc import packed
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.client import NodeClient

DAY = 86400
ADMIN, APP, PAYMENTS = Role("admin"), Role("app"), Role("app", "payments")


@pytest.fixture(scope="module")
def app_pki(pki_dir: Path, now: datetime) -> Path:
    """The test PKI plus two named app certificates (app-payments, app-billing)."""
    for name in ("payments", "billing"):
        if not (pki_dir / f"app-{name}.pem").exists():
            pkifiles.issue_role(pki_dir, f"app/{name}", now)
    return pki_dir


@pytest.fixture
async def cluster(
    app_pki: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> AsyncIterator[Cluster]:
    async with running_cluster(app_pki, tmp_path / "node-a") as c:
        await c.download(certs_of(wrapping_keys[:3]), quorum=2)
        yield c


def _entries(node: Node, event: str) -> list[dict[str, Any]]:
    return [
        e for e in (json.loads(x) for x in node.store.records.audit_entries("domain")) if e["event"] == event
    ]


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value.code()


async def _names(c: NodeClient) -> set[str]:
    return {k.name for k in (await c.keys.ListKeys(pb.ListKeysRequest())).keys}


# ------------------------------------------------------------------ who may see and use a key


async def test_an_app_cannot_list_use_or_delete_the_admins_key(cluster: Cluster) -> None:
    async with cluster.client("admin") as admin, admin.errors():
        await admin.keys.CreateKey(pb.CreateKeyRequest(name="admin-key", type=pb.AES256_GCM))
        ct = (await admin.keys.Encrypt(pb.EncryptRequest(name="admin-key", plaintext=b"p"))).ciphertext
    async with cluster.client("app") as app:
        await app.keys.CreateKey(pb.CreateKeyRequest(name="app-key", type=pb.AES256_GCM))
        assert await _names(app) == {"app-key"}
        denied = grpc.StatusCode.PERMISSION_DENIED
        assert await _code(app.keys.Encrypt(pb.EncryptRequest(name="admin-key", plaintext=b"p"))) == denied
        assert await _code(app.keys.Decrypt(pb.DecryptRequest(name="admin-key", ciphertext=ct))) == denied
        batch = packed.encrypt_batch_request("admin-key", [b"a", b"b"], b"")
        assert await _code(app.keys.EncryptBatch(batch)) == denied
        assert await _code(app.keys.DeleteKey(pb.DeleteKeyRequest(name="admin-key"))) == denied
        assert await _code(app.keys.RecoverKey(pb.RecoverKeyRequest(name="admin-key"))) == denied
    async with cluster.client("admin") as admin, admin.errors():
        assert await _names(admin) == {"admin-key", "app-key"}  # the admin sees everything
        assert (
            await admin.keys.Decrypt(pb.DecryptRequest(name="admin-key", ciphertext=ct))
        ).plaintext == b"p"
    # A peer's first refusals of a window are audited in full, the rest counted (issue 13, class 8):
    # close the windows, then every refusal is in one form or the other.
    cluster.node.audit_log.close_refusal_windows(all_open=True)
    refused = [e["details"]["method"].rsplit("/", 1)[-1] for e in _entries(cluster.node, "refused")]
    refused += [
        row["method"].rsplit("/", 1)[-1]
        for e in _entries(cluster.node, "refusals-counted")
        for row in e["details"]["by_method"]
    ]
    assert {"Encrypt", "Decrypt", "EncryptBatch", "DeleteKey", "RecoverKey"} <= set(refused)


async def test_named_apps_see_only_their_own_keys_and_the_admin_can_create_one_for_an_app(
    cluster: Cluster,
) -> None:
    async with cluster.client("admin") as admin, admin.errors():
        k = await admin.keys.CreateKey(pb.CreateKeyRequest(name="pay", type=pb.ED25519, owner="app/payments"))
        assert k.owner == "app/payments"
        # the admin manages the key but does not use it
        assert await _code(admin.keys.Sign(pb.SignRequest(name="pay", message=b"m"))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    async with cluster.client("app-payments") as payments, payments.errors():
        sig = (await payments.keys.Sign(pb.SignRequest(name="pay", message=b"m"))).signature
        assert (await payments.keys.Verify(pb.VerifyRequest(name="pay", message=b"m", signature=sig))).valid
        await payments.keys.CreateKey(pb.CreateKeyRequest(name="pay-2", type=pb.AES256_GCM))
        assert await _names(payments) == {"pay", "pay-2"}
    for stem in ("app", "app-billing"):
        async with cluster.client(stem) as other:
            assert await _names(other) == set()
            assert await _code(other.keys.Sign(pb.SignRequest(name="pay", message=b"m"))) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
            assert await _code(other.keys.DeleteKey(pb.DeleteKeyRequest(name="pay-2"))) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
            # an app cannot create a key for someone else
            assert (
                await _code(
                    other.keys.CreateKey(pb.CreateKeyRequest(name="x", type=pb.AES256_GCM, owner="admin"))
                )
                == grpc.StatusCode.PERMISSION_DENIED
            )
    assert [k.name for k in cluster.node.keys.list_keys(ADMIN)] == ["pay", "pay-2"]


# ------------------------------------------------------------------ audit, soft deletion, purge


async def test_create_delete_recover_and_purge_are_audited_with_who(cluster: Cluster) -> None:
    async with cluster.client("app-payments") as app, app.errors():
        await app.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.AES256_GCM))
        await app.keys.DeleteKey(pb.DeleteKeyRequest(name="k"))
        await app.keys.RecoverKey(pb.RecoverKeyRequest(name="k"))
        await app.keys.DeleteKey(pb.DeleteKeyRequest(name="k"))
    async with cluster.client("admin") as admin, admin.errors():
        await admin.keys.PurgeKey(pb.PurgeKeyRequest(name="k"))
    app_spki = pki.spki_sha256((cluster.pki / "app-payments.pem").read_bytes()).hex()
    admin_spki = pki.spki_sha256((cluster.pki / "admin.pem").read_bytes()).hex()
    seen = []
    for event in ("key-created", "key-deleted", "key-recovered", "key-purged"):
        for e in _entries(cluster.node, event):
            d = e["details"]
            assert d["name"] == "k" and d["owner"] == "app/payments"
            assert e["actor"] == d["by"]
            assert d["spki_sha256"] == (admin_spki if d["by"] == "admin" else app_spki)
            assert d["subject"]
            seen.append((event, d["by"]))
    assert sorted(seen) == sorted(
        [
            ("key-created", "app/payments"),
            ("key-deleted", "app/payments"),
            ("key-deleted", "app/payments"),
            ("key-recovered", "app/payments"),
            ("key-purged", "admin"),
        ]
    )


async def test_a_deleted_key_is_unusable_and_hidden_until_recovered_with_its_material(
    cluster: Cluster,
) -> None:
    async with cluster.client("app") as app, app.errors():
        await app.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.AES256_GCM))
        ct = (await app.keys.Encrypt(pb.EncryptRequest(name="k", plaintext=b"secret"))).ciphertext
        gone = await app.keys.DeleteKey(pb.DeleteKeyRequest(name="k"))
        assert gone.purge_at_unix == int(cluster.clock()) + 90 * DAY
        assert await _names(app) == set()
    async with cluster.client("app") as app:
        assert (
            await _code(app.keys.Decrypt(pb.DecryptRequest(name="k", ciphertext=ct)))
            == grpc.StatusCode.NOT_FOUND
        )
    async with cluster.client("admin") as admin, admin.errors():
        assert await _names(admin) == set()
        deleted = (await admin.keys.ListDeletedKeys(pb.ListKeysRequest())).keys
        assert [(k.name, k.owner, k.purge_at_unix) for k in deleted] == [("k", "app", gone.purge_at_unix)]
    cluster.clock.advance(89 * DAY)
    await cluster.node.tick()
    async with cluster.client("app") as app, app.errors():
        assert (await app.keys.RecoverKey(pb.RecoverKeyRequest(name="k"))).name == "k"
        assert await _names(app) == {"k"}
        assert (await app.keys.Decrypt(pb.DecryptRequest(name="k", ciphertext=ct))).plaintext == b"secret"


async def test_purge_and_the_deleted_list_are_admin_only_and_audited(cluster: Cluster) -> None:
    async with cluster.client("app") as app, app.errors():
        await app.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.AES256_GCM))
        await app.keys.DeleteKey(pb.DeleteKeyRequest(name="k"))
    async with cluster.client("app") as app:
        assert (
            await _code(app.keys.PurgeKey(pb.PurgeKeyRequest(name="k"))) == grpc.StatusCode.PERMISSION_DENIED
        )
        assert (
            await _code(app.keys.ListDeletedKeys(pb.ListKeysRequest())) == grpc.StatusCode.PERMISSION_DENIED
        )
    refused = [
        e
        for e in _entries(cluster.node, "refused")
        if e["details"]["method"].rsplit("/", 1)[-1] == "PurgeKey"
    ]
    assert len(refused) == 1 and refused[0]["details"]["code"] == "PERMISSION_DENIED"
    assert _entries(cluster.node, "key-purged") == []
    async with cluster.client("admin") as admin, admin.errors():
        await admin.keys.PurgeKey(pb.PurgeKeyRequest(name="k"))
        assert (await admin.keys.ListDeletedKeys(pb.ListKeysRequest())).keys == []
    async with cluster.client("app") as app:
        assert await _code(app.keys.RecoverKey(pb.RecoverKeyRequest(name="k"))) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(PermissionDeniedError):
        cluster.node.keys.purge_key("k", APP)  # the node refuses too, not only the rpc guard


async def test_the_node_purges_a_deleted_key_when_its_retention_ends_by_its_clock(cluster: Cluster) -> None:
    async with cluster.client("app") as app, app.errors():
        await app.keys.CreateKey(pb.CreateKeyRequest(name="old", type=pb.AES256_GCM))
        await app.keys.CreateKey(pb.CreateKeyRequest(name="live", type=pb.AES256_GCM))
        await app.keys.DeleteKey(pb.DeleteKeyRequest(name="old"))
    cluster.clock.advance(90 * DAY - 1)
    await cluster.node.tick()
    assert [k.name for k in cluster.node.keys.list_deleted_keys(ADMIN)] == ["old"]
    cluster.clock.advance(1 + 600)  # the retention ends; the ticker looks at most 600 s later
    await cluster.node.tick()
    assert cluster.node.store.keys.find_key("old") is None
    assert [k.name for k in cluster.node.keys.list_keys(ADMIN)] == ["live"]
    (purged,) = _entries(cluster.node, "key-purged")
    assert purged["actor"] == "node" and purged["details"]["name"] == "old"
    assert "retention of 90 days ended" in purged["details"]["reason"]


async def test_a_purge_that_cannot_be_written_leaves_the_key_deleted_and_the_ticker_running(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cluster.node.keys.create_key("k", KeyType.AES256_GCM, APP)
    cluster.node.keys.delete_key("k", APP)
    cluster.clock.advance(91 * DAY)

    def full_disk(name: str) -> None:
        raise StorageError("the node cannot write its database (disk full): nothing was changed")

    with monkeypatch.context() as m:
        m.setattr(cluster.node.store.keys, "purge_key", full_disk)
        await cluster.node.tick()  # logged, not raised: the ticker also applies ceremony deadlines
    assert cluster.node.store.keys.find_key("k") is not None
    with pytest.raises(NotFoundError):
        cluster.node.key_ops.encrypt("k", b"p", b"", APP)
    cluster.clock.advance(600)
    await cluster.node.tick()
    assert cluster.node.store.keys.find_key("k") is None


async def test_a_name_of_a_retained_deleted_key_cannot_be_taken_and_the_error_says_what_to_do(
    cluster: Cluster,
) -> None:
    async with cluster.client("app") as app, app.errors():
        await app.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.AES256_GCM))
        await app.keys.DeleteKey(pb.DeleteKeyRequest(name="k"))
    async with cluster.client("app") as app:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await app.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.ED25519))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    detail = e.value.details() or ""
    assert "\n" not in detail and "sdctl keys recover k" in detail and "sdctl keys purge k" in detail
    assert (
        cluster.node.store.keys.find_key("k") is not None and len(_entries(cluster.node, "key-created")) == 1
    )
    # another app learns only that the name is taken: neither that the key is deleted nor when, nor
    # how many keys the node holds (its status shows the admin the count, others 0)
    async with cluster.client("app-billing") as other:
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await other.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.ED25519))
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "deleted" not in (taken.value.details() or "") and "kept until" not in (
            taken.value.details() or ""
        )
        assert (await other.node.GetStatus(pb.GetStatusRequest())).key_count == 0
    async with cluster.client("admin") as admin:
        await admin.keys.CreateKey(pb.CreateKeyRequest(name="live", type=pb.AES256_GCM))
        assert (await admin.node.GetStatus(pb.GetStatusRequest())).key_count == 1  # live keys


# ------------------------------------------------------------------ restarts, disk, backups


def _node(pki_dir: Path, data_dir: Path, sealing: bytes, clock: Clock, retention: int = 90) -> Node:
    key, cert = load_attestation(pki_dir, "node-a")
    config = NodeConfig("node-a", "127.0.0.1:0", data_dir, key, cert, key_retention_days=retention)
    return Node(config, SqliteNodeStore(data_dir, sealing, "node-a"), clock=clock)


async def test_keys_survive_a_restart_in_each_state_and_expire_at_start(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    sealing, clock, data = os.urandom(32), Clock(), tmp_path / "n"
    node = _node(pki_dir, data, sealing, clock, retention=7)
    await node.activation.download(certs_of(wrapping_keys[:3]), 2, ADMIN)
    for name in ("live", "deleted", "recovered", "purged", "expires"):
        await node.keys.create_key(name, KeyType.AES256_GCM, APP)
    ct = node.key_ops.encrypt("recovered", b"p", b"", APP)
    node.keys.delete_key("expires", APP)
    clock.advance(2 * DAY)
    for name in ("deleted", "recovered", "purged"):
        node.keys.delete_key(name, APP)
    node.keys.recover_key("recovered", APP)
    node.keys.purge_key("purged", ADMIN)
    node.store.close()

    node = _node(pki_dir, data, sealing, clock, retention=7)
    assert [k.name for k in node.keys.list_keys(APP)] == ["live", "recovered"]
    assert [k.name for k in node.keys.list_deleted_keys(ADMIN)] == ["deleted", "expires"]
    assert node.key_ops.decrypt("recovered", ct, b"", APP) == b"p"
    with pytest.raises(NotFoundError, match="deleted"):
        node.key_ops.encrypt("deleted", b"p", b"", APP)
    node.store.close()

    clock.advance(5 * DAY)  # "expires" was deleted 7 days ago, "deleted" 5 days ago
    node = _node(pki_dir, data, sealing, clock, retention=7)  # purged at start, by the node
    assert [k.name for k in node.keys.list_deleted_keys(ADMIN)] == ["deleted"]
    assert [e["details"]["name"] for e in _entries(node, "key-purged") if e["actor"] == "node"] == ["expires"]
    node.store.close()


async def test_changing_a_keys_owner_on_disk_does_not_give_it_to_an_app(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """The owner is bound into the row's seal: whoever can write the data directory cannot hand
    the admin's key to an app by editing its owner column."""
    sealing, clock, data = os.urandom(32), Clock(), tmp_path / "n"
    node = _node(pki_dir, data, sealing, clock)
    await node.activation.download(certs_of(wrapping_keys[:3]), 2, ADMIN)
    await node.keys.create_key("k", KeyType.ED25519, ADMIN)
    db = sqlite3.connect(data / "node.db")
    db.execute("UPDATE keys SET owner = 'app' WHERE name = 'k'")
    db.commit()
    db.close()
    with pytest.raises(VerificationError, match="integrity"):
        node.key_ops.sign("k", b"m", APP)


async def test_a_database_of_the_previous_version_keeps_its_keys_for_the_app(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """Rows written before keys had owners: the store gains the columns, the keys stay live and
    belong to ``app`` (whom every key served before), and still open."""
    sealing, clock, data = os.urandom(32), Clock(), tmp_path / "n"
    node = _node(pki_dir, data, sealing, clock)
    await node.activation.download(certs_of(wrapping_keys[:3]), 2, ADMIN)
    await node.keys.create_key("k", KeyType.AES256_GCM, APP)
    ct = node.key_ops.encrypt("k", b"p", b"", APP)
    node.store.close()
    db = sqlite3.connect(data / "node.db")
    db.executescript(
        "CREATE TABLE old AS SELECT name, type, public_der, sealed, created_at FROM keys; DROP TABLE keys; "
        "ALTER TABLE old RENAME TO keys;"
    )
    db.close()
    node = _node(pki_dir, data, sealing, clock)
    assert [(k.name, k.owner, k.deleted_at) for k in node.keys.list_keys(APP)] == [("k", "app", None)]
    assert node.key_ops.decrypt("k", ct, b"", APP) == b"p"
    node.store.close()


async def test_a_backup_keeps_deleted_keys_deleted_and_a_restore_purges_those_past_retention(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    sealing, clock, data = os.urandom(32), Clock(), tmp_path / "n"
    node = _node(pki_dir, data, sealing, clock, retention=10)
    await node.activation.download(certs_of(wrapping_keys[:3]), 2, ADMIN)
    await node.keys.create_key("mine", KeyType.AES256_GCM, ADMIN)
    await node.keys.create_key("theirs", KeyType.AES256_GCM, PAYMENTS)
    await node.keys.create_key("gone", KeyType.AES256_GCM, APP)
    node.keys.delete_key("gone", ADMIN)
    data_backup = node.backups.backup(ADMIN)
    node.keys.recover_key("gone", ADMIN)
    node.keys.delete_key("theirs", ADMIN)
    node.backups.restore(data_backup, ADMIN)  # as it was: "theirs" live, "gone" deleted
    assert [(k.name, k.owner) for k in node.keys.list_keys(ADMIN)] == [
        ("mine", "admin"),
        ("theirs", "app/payments"),
    ]
    assert [k.name for k in node.keys.list_deleted_keys(ADMIN)] == ["gone"]
    assert node.key_ops.encrypt("theirs", b"p", b"", PAYMENTS)
    with pytest.raises(PermissionDeniedError):
        node.key_ops.encrypt("theirs", b"p", b"", APP)
    clock.advance(11 * DAY)
    node.backups.restore(data_backup, ADMIN)  # "gone"'s retention has ended since the backup
    assert node.keys.list_deleted_keys(ADMIN) == []
    assert _entries(node, "key-purged")[-1]["details"]["name"] == "gone"
    node.store.close()


async def test_a_backup_taken_before_keys_had_owners_restores_its_keys_for_the_app(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey]
) -> None:
    """The backup format stays readable: an image with the earlier key table (no owner, no
    deletion time) restores, its keys live and owned by ``app``."""
    sealing, clock, data = os.urandom(32), Clock(), tmp_path / "n"
    node = _node(pki_dir, data, sealing, clock)
    await node.activation.download(certs_of(wrapping_keys[:3]), 2, ADMIN)
    await node.keys.create_key("k", KeyType.AES256_GCM, APP)
    ct = node.key_ops.encrypt("k", b"p", b"", APP)
    assert node.lifecycle.domain is not None
    opened = backup.open_backup(node.backups.backup(ADMIN), node.lifecycle.domain)
    assert opened.key_rows is not None
    db = sqlite3.connect(":memory:")
    db.deserialize(opened.key_rows)
    old = sqlite3.connect(":memory:")
    old.execute(
        "CREATE TABLE keys (name TEXT PRIMARY KEY NOT NULL, type INTEGER NOT NULL, public_der BLOB NOT NULL, "
        "sealed BLOB NOT NULL, created_at INTEGER NOT NULL) WITHOUT ROWID, STRICT"
    )
    old.executemany(
        "INSERT INTO keys VALUES (?, ?, ?, ?, ?)",
        db.execute("SELECT name, type, public_der, sealed, created_at FROM keys").fetchall(),
    )
    old.commit()
    earlier = backup.seal_backup(
        node.lifecycle.domain, old.serialize(), key_count=1, node_id="node-old", created_at=1, rng=os.urandom
    )
    node.keys.delete_key("k", ADMIN)
    node.keys.purge_key("k", ADMIN)
    assert node.backups.restore(earlier, ADMIN) == 1
    assert [(k.name, k.owner, k.deleted_at) for k in node.keys.list_keys(ADMIN)] == [("k", "app", None)]
    assert node.key_ops.decrypt("k", ct, b"", APP) == b"p"
    node.store.close()


# ------------------------------------------------------------------ configuration and sdctl


@pytest.mark.parametrize("days", [0, 3651])
def test_the_retention_is_validated(pki_dir: Path, tmp_path: Path, days: int) -> None:
    with pytest.raises(UsageError, match=r"keys.retention_days .*1\.\.3650"):
        _node(pki_dir, tmp_path / "n", os.urandom(32), Clock(), retention=days)


async def test_same_name_is_refused_at_the_node_too(cluster: Cluster) -> None:
    await cluster.node.keys.create_key("k", KeyType.AES256_GCM, APP)
    cluster.node.keys.delete_key("k", APP)
    with pytest.raises(AlreadyExistsError, match=r"recover it .* or purge it"):
        await cluster.node.keys.create_key("k", KeyType.AES256_GCM, ADMIN)


async def test_sdctl_keys_delete_deleted_recover_purge(cluster: Cluster) -> None:
    async with cluster.client("admin") as admin, admin.errors():
        await admin.keys.CreateKey(pb.CreateKeyRequest(name="k", type=pb.AES256_GCM, owner="app"))
    code, _ = await run_sdctl(cluster.pki, cluster.target, "keys", "delete", "k")  # stdin is no terminal
    assert code == 2
    assert [k.name for k in cluster.node.keys.list_keys(ADMIN)] == ["k"]  # not deleted without --yes
    code, lines = await run_sdctl(cluster.pki, cluster.target, "keys", "delete", "k", "--yes")
    assert code == 0 and "recoverable until" in lines[-1]
    code, lines = await run_sdctl(cluster.pki, cluster.target, "--output", "json", "keys", "deleted")
    assert code == 0 and [(k["name"], k["owner"]) for k in json.loads(lines[-1])] == [("k", "app")]
    code, lines = await run_sdctl(cluster.pki, cluster.target, "keys", "recover", "k")
    assert code == 0 and cluster.node.keys.list_keys(APP)[0].name == "k"
    code, lines = await run_sdctl(cluster.pki, cluster.target, "keys", "list")
    assert code == 0 and lines == ["k\tAES256_GCM\tapp"]
    assert (await run_sdctl(cluster.pki, cluster.target, "keys", "delete", "k", "--yes"))[0] == 0
    assert (await run_sdctl(cluster.pki, cluster.target, "keys", "purge", "k"))[0] == 2
    assert (await run_sdctl(cluster.pki, cluster.target, "keys", "purge", "k", "--yes"))[0] == 0
    assert cluster.node.store.keys.find_key("k") is None
