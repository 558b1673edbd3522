"""Change notification, and the domain notice agents learn the domain from.

Watchers take a token (:meth:`Notices.change_token`) before reading state and wait on it: no change
is missed. Request streams wait on :meth:`Notices.request_token`, set only when a request opens that
was not open at the previous change. While the node holds a domain, every agent whose key holds a
slot of the current header (or held one of a retired epoch) is sent that signed header as a notice
when it connects, at activation and after each rotation; the agent pins the domain key and
remembers the epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from coordinator import (
    Ceremony,
    CustodianRequest,
)
from hsm_node.state import Lifecycle
from hsm_node.store import NodeStore
from sdquorum import sdfile
from sdquorum.pki import Role

log = logging.getLogger("sdquorum.node")


__all__ = ["Notices"]


class Notices:
    """Change tokens for watchers and request streams, and the domain notice agents are sent."""

    def __init__(
        self, store: NodeStore, lifecycle: Lifecycle, session: Callable[[], Ceremony | None]
    ) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self._session_now = session
        self._changed = asyncio.Event()
        self._new_requests = asyncio.Event()
        self._announced: frozenset[str] = frozenset()  # ids of the open requests at the last change
        self._notice: tuple[str, sdfile.SignedHeader] | None = None  # (id, current signed header)
        self.refresh()

    def announced_already(self) -> None:
        """The current header's agents checked (and remember) it already, as a recovery's custodians
        did: no stream is woken for it; one that connects gets it."""
        if self._notice is not None:
            self._announced |= {self._notice[0]}

    def refresh(self, stored: sdfile.SignedHeader | None = None) -> None:
        """The notice agents are sent: the current SD file's signed header, while a domain is held.
        ``stored``: the header of the SD file the caller has just stored, parsed and checked already
        (an activation, a recovery or a rotation), so that it is not read and parsed again; None:
        read it from the store."""
        if self._lifecycle.domain is None:
            self._notice = None
            return
        if stored is None:
            data = self._store.domain.sd_file()
            if data is None:
                self._notice = None
                return
            stored = sdfile.SecurityDomainFile.from_bytes(data).signed_header
        self._notice = (stored.sha256.hex(), stored)

    def domain_notice(self, role: Role, thumbprint: bytes, key_name: str = "") -> CustodianRequest | None:
        """The domain's current signed header for the agent holding ``thumbprint``: a custodian of
        the current epoch (x = its slot), or of a retired one, removed by a rotation (x = 0): it must
        learn the new epoch too, or it would still release for the retired one. Like requests, a
        notice goes only to a stream whose key is named for its caller (the slot's name in the header;
        for a former custodian, the CN of the certificate its hello sent)."""
        if self._notice is None or role.kind != "custodian" or not role.name:
            return None
        notice_id, signed = self._notice
        slot = signed.header.slot_by_thumbprint(thumbprint)
        if slot is not None and slot.name != role.name:
            return None
        if slot is None and (thumbprint.hex() not in self.former_custodians() or key_name != role.name):
            return None
        return CustodianRequest(
            request_id=notice_id,
            session_id="",
            kind="domain-notice",
            x=slot.x if slot is not None else 0,
            thumbprint=thumbprint,
            attestation=b"",
            header_bytes=signed.header_bytes,
            header_signature=signed.signature,
        )

    def former_custodians(self) -> list[str]:
        """Thumbprints (hex) of wrapping keys that held a slot of a retired epoch but not the current one."""
        raw = self._store.domain.flag("former-custodians")
        return list(json.loads(raw)) if raw else []

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        s = self._session_now()
        open_ids = frozenset(r.request_id for r in s.requests()) if s is not None else frozenset()
        if self._notice is not None:  # a new header wakes the request streams too, to announce it
            open_ids |= {self._notice[0]}
        if not open_ids <= self._announced:
            self._new_requests.set()
            self._new_requests = asyncio.Event()
        self._announced = open_ids

    def change_token(self) -> asyncio.Event:
        """Take this before reading state; ``wait_change`` with it then misses no change."""
        return self._changed

    def request_token(self) -> asyncio.Event:
        """Like :meth:`change_token`, but set only when a request opens that was not open at the
        previous change: an agent's request stream wakes once per ceremony, not once per answer or
        delivery of every other custodian (n streams x n changes)."""
        return self._new_requests

    async def wait_change(self, token: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(token.wait(), timeout)
