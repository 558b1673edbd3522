"""The node's storage: the seam (:mod:`.protocol`), how secrets rest (:mod:`.sealing`), the backup
image (:mod:`.image`), and two stores: SQLite (:mod:`.sqlite`, production) and memory
(:mod:`.memory`, tests and the contract's reference)."""

from hsm_node.store.memory import MemoryNodeStore
from hsm_node.store.protocol import LEGACY_OWNER, DomainInfo, KeyRow, NodeStore, StoredKey
from hsm_node.store.sealing import SEALING_KEY_ENV, key_aad, load_or_create_sealing_key
from hsm_node.store.sqlite import SqliteNodeStore
from hsm_node.store.sqlite_db import check_data_dir

__all__ = [
    "LEGACY_OWNER",
    "SEALING_KEY_ENV",
    "DomainInfo",
    "KeyRow",
    "MemoryNodeStore",
    "NodeStore",
    "SqliteNodeStore",
    "StoredKey",
    "check_data_dir",
    "key_aad",
    "load_or_create_sealing_key",
]
