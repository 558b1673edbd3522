"""What an agent remembers of each domain between runs: the domain signing key it pinned, and the
highest epoch it has seen.

The file is ``STATE_DIR/domains.json``::

    {"format": "sdquorum-agent-domains", "version": 1,
     "domains": {"<domain id hex>": {"signing_public_key": "<32 bytes hex>", "epoch": N}}}

Where it learns (:meth:`DomainMemory.observe`): the node's notice of a domain's signed header at
activation and after every rotation (:func:`custodian_agent.responder.check_notice`), and every
request that passed :func:`sdquorum.envelopes.check_request` (recovery, drill, rotation), online or
offline (``custodian-agent respond --state-dir``). A domain the agent never saw is learnt from the
first verified header that names it (trust on first use): an agent that was never told of a
rotation still serves the retired epoch (docs/SECURITY.md, "what is left").

Invariants:

* An epoch never goes down: ``observe`` keeps the highest. A pinned key never changes: ``observe``
  with another key for a remembered domain raises :class:`~sdquorum.errors.VerificationError` and
  writes nothing.
* Each change is on disk before ``observe`` returns: written whole to a new 0600 file beside it,
  flushed, renamed over the old one, and the directory flushed
  (:func:`sdquorum_rpc.files.replace_private_file`); the directory is 0700 and refused if others
  can write to it (:func:`sdquorum_rpc.files.private_dir`). A crash leaves the old file or the new
  one, never half of one.
* A file that exists but does not parse is a :class:`~sdquorum.errors.StateError` when the agent
  starts, naming the file: never an empty memory, which would forget every retired epoch silently.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from sdquorum.envelopes import RememberedDomain
from sdquorum.errors import StateError, VerificationError
from sdquorum.fields import is_int
from sdquorum_rpc.files import private_dir, replace_private_file

__all__ = ["MEMORY_FILE", "DomainMemory"]

MEMORY_FILE = "domains.json"
FORMAT = "sdquorum-agent-domains"
VERSION = 1
MAX_DOMAINS = 10_000  # a bound on what a node can make an agent write (each notice is a signed header)


class DomainMemory:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / MEMORY_FILE
        self._domains: dict[bytes, RememberedDomain] = self._load()

    def known(self) -> Mapping[bytes, RememberedDomain]:
        """A read-only view of what is remembered now (domain id -> key and highest epoch)."""
        return MappingProxyType(self._domains)

    def observe(self, domain_id: bytes, signing_public_key: bytes, epoch: int) -> bool:
        """Remember a verified header's domain, key and epoch; True if that changed the memory."""
        seen = self._domains.get(domain_id)
        if seen is not None:
            if not hmac.compare_digest(seen.signing_public_key, signing_public_key):
                raise VerificationError(
                    f"domain {domain_id.hex()} is signed by a key other than the one this agent pinned"
                )
            if epoch <= seen.epoch:
                return False
        elif len(self._domains) >= MAX_DOMAINS:
            raise StateError(f"{self.path} holds {MAX_DOMAINS} domains already: no more are remembered")
        updated = {**self._domains, domain_id: RememberedDomain(signing_public_key, epoch)}
        self._write(updated)
        self._domains = updated
        return True

    def _load(self) -> dict[bytes, RememberedDomain]:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise StateError(f"cannot read the agent's domain memory {self.path}: {e.strerror}") from e
        try:
            return _parse(text)
        except (ValueError, TypeError, KeyError) as e:
            raise StateError(
                f"the agent's domain memory {self.path} is damaged ({e}): restore it from a backup of the "
                "state directory; the agent does not start without it, since it would forget retired epochs"
            ) from e

    def _write(self, domains: Mapping[bytes, RememberedDomain]) -> None:
        body = json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "domains": {
                    d.hex(): {"signing_public_key": r.signing_public_key.hex(), "epoch": r.epoch}
                    for d, r in sorted(domains.items())
                },
            },
            indent=1,
            sort_keys=True,
        ).encode()
        private_dir(self.state_dir, "the agent state directory", "agent.state_dir / --state-dir")
        try:
            replace_private_file(self.path, body)
            dir_fd = os.open(self.state_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename is durable before the caller goes on
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise StateError(
                f"cannot write the agent's domain memory {self.path} ({e.strerror}): nothing was released"
            ) from e


def _parse(text: bytes) -> dict[bytes, RememberedDomain]:
    obj = json.loads(text)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != VERSION:
        raise ValueError("not a version 1 domain memory file")
    raw = obj["domains"]
    if not isinstance(raw, dict):
        raise TypeError("'domains' is not an object")
    out: dict[bytes, RememberedDomain] = {}
    for domain_hex, entry in raw.items():
        domain_id = bytes.fromhex(domain_hex)
        key = bytes.fromhex(entry["signing_public_key"])
        epoch = entry["epoch"]
        if len(domain_id) != 16 or len(key) != 32:
            raise ValueError(f"domain {domain_hex[:32]!r} has a wrong-sized id or key")
        if not is_int(epoch) or not 0 <= epoch < 2**32:
            raise ValueError(f"domain {domain_hex} has an invalid epoch")
        out[domain_id] = RememberedDomain(key, epoch)
    return out
