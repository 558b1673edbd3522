"""What only the SQLite store does (the rest of its behaviour is the contract's:
test_store_contract.py): a transaction SQLite rolled back by itself fails the batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsm_node.store import SqliteNodeStore
from sdquorum.errors import StorageError


def test_a_batch_whose_transaction_sqlite_rolled_back_fails_instead_of_committing_the_rest(
    tmp_path: Path,
) -> None:
    # On a full disk or an I/O error SQLite may roll the whole transaction back by itself; the node
    # carries on with the batch's other answers after one answer's error, so the store must notice.
    store = SqliteNodeStore(tmp_path / "d", bytes(32), "node-x")
    try:
        with pytest.raises(StorageError), store.batch():
            store.records.append_audit("provisioning", 1, '{"n": 1}')
            store._c.db.execute("ROLLBACK")  # what SQLite does by itself on SQLITE_FULL, say
            with pytest.raises(StorageError, match="rolled back"):
                store.records.append_audit("provisioning", 2, '{"n": 2}')
            # the caller goes on, as the node does with the next answer of the batch
        assert store.records.audit_entries("provisioning") == []  # nothing was half-committed
        store.records.append_audit("provisioning", 1, '{"n": 1}')  # and the store works afterwards
        assert store.records.audit_entries("provisioning") == ['{"n": 1}']
    finally:
        store.close()
