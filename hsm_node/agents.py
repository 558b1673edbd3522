"""The custodians' agents: who is connected with which key, and which requests each stream is served.

Custodians are tied to their keys by name (issue 13, class 4): a custodian's request stream is
served only the requests addressed to a key named for the caller's TLS identity
(``custodian/<name>``), and a custodian's answer or denial is taken only for such a request. A
native slot's name comes from its certificate in the signed SD header; an Azure file names its
slots only by certificate thumbprint, so an Azure slot is named for a caller only through that very
certificate (its SHA-256 the slot's thumbprint) whose CN is the caller's name: the one the caller's
stream sent in its hello, or the one its answer or denial carries and must verify under. The admin
relays offline answers; those are tied to the slot by the slot key's signature alone, which every
answer must carry in any case (docs/adr/0012). A drill fails a slot whose agent holds another key.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from cryptography.x509.oid import NameOID

from coordinator import (
    AzureRestoreSession,
    Ceremony,
    CustodianRequest,
    DrillSession,
    SessionState,
)
from hsm_node.audit_log import AuditLog
from hsm_node.ceremony_host import CeremonyHost
from sdquorum import envelopes, pki
from sdquorum.azure.ceremony import AzureAnswer
from sdquorum.errors import VerificationError
from sdquorum.pki import Role

log = logging.getLogger("sdquorum.node")


__all__ = ["Agents", "wrapping_key_name"]


def wrapping_key_name(thumbprint: bytes, certificate: bytes) -> str | None:
    """The CN of ``certificate`` (DER or PEM) if it is the wrapping certificate ``thumbprint``
    names, else None; "" when it has no single CN. MalformedError if it does not parse."""
    if not hmac.compare_digest(pki.thumbprint_sha256(certificate), thumbprint):
        return None
    names = pki.load_cert(certificate).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else ""


class Agents:
    """The custodians' agents connected now, and what each stream is served."""

    def __init__(self, host: CeremonyHost, audit: AuditLog, now: Callable[[], int]) -> None:
        self._host = host
        self._notices = host.notices
        self._audit = audit
        self._now = now
        self._agents: dict[str, bytes] = {}  # custodian name -> thumbprint of its connected agent
        self._agent_keys: dict[str, bytes] = {}  # custodian name -> SPKI SHA-256 its agent's hello showed
        # (custodian name, thumbprint, CN of the certificate it sent or "") -> its open streams
        self._streams: dict[tuple[str, bytes, str], int] = {}

    def pending_requests(self, thumbprint: bytes) -> list[CustodianRequest]:
        s = self._host.session
        if s is None or self._host.settle(s):
            return []
        return s.requests_for(thumbprint)

    def agent_requests(self, role: Role, thumbprint: bytes, key_name: str = "") -> list[CustodianRequest]:
        """The open requests a custodian's stream is served: addressed to ``thumbprint`` and to a
        key named for ``role`` (module docstring). ``key_name``: the CN of the wrapping certificate
        the stream sent, already checked to hash to ``thumbprint`` ("" when it sent none)."""
        s = self._host.session
        if s is None or self._host.settle(s):
            return []
        return [r for r in s.requests_for(thumbprint) if self._named_for(s, r, role, key_name)]

    @staticmethod
    def _named_for(s: Ceremony, req: CustodianRequest, role: Role, key_name: str) -> bool:
        if role.kind != "custodian" or not role.name:
            return False
        if isinstance(s, AzureRestoreSession):  # the file names the slot by thumbprint only
            return key_name == role.name
        return s.holder(req.x) == role.name

    def answer_named_for_caller(
        self, s: Ceremony, request_id: str, caller: Role, message: bytes, *, denial: bool
    ) -> None:
        """A custodian answers or denies only a request addressed to a key named for it; the admin
        relays offline answers (the slot key's signature ties those). An Azure slot's key is named
        by the certificate the answer or denial itself carries (the one it must verify under).
        VerificationError otherwise."""
        if caller.kind != "custodian":
            return
        req = s.open_request(request_id)
        if req is None:
            return  # not open: the session says why, as before
        key_name = ""
        if isinstance(s, AzureRestoreSession):
            offered = (
                envelopes.Denial.from_bytes(message).statement.certificate
                if denial
                else AzureAnswer.from_bytes(message).certificate_der
            )
            key_name = wrapping_key_name(req.thumbprint, offered) or ""
        if not self._named_for(s, req, caller, key_name):
            raise VerificationError(
                f"request {request_id} (slot {req.x}) is not addressed to a key named for {caller}"
            )

    def agent_connected(
        self, role: Role, thumbprint: bytes, key_name: str = "", key_sha256: bytes = b""
    ) -> None:
        """Remember which key each custodian's agent holds; a drill fails a slot whose key changed.
        ``key_name`` and ``key_sha256``: the CN and the SPKI SHA-256 of the wrapping certificate
        the stream sent (checked against ``thumbprint`` by the caller), empty when it sent none."""
        if role.name:
            self._agents[role.name] = thumbprint
            self._agent_keys[role.name] = key_sha256
            entry = (role.name, thumbprint, key_name)
            self._streams[entry] = self._streams.get(entry, 0) + 1
            if key_name and key_name != role.name:
                log.warning(
                    "%s announced a wrapping certificate named %r: requests for it are not served to it",
                    role,
                    key_name[:64],
                )
            self.check_keys()

    def connected_custodians(self) -> frozenset[str]:
        """Custodians whose agent holds its request stream open now (for the metrics gauges)."""
        return frozenset(self._agents.copy())

    def agent_disconnected(self, role: Role, thumbprint: bytes, key_name: str = "") -> None:
        if role.name:
            entry = (role.name, thumbprint, key_name)
            left = self._streams.get(entry, 0) - 1
            if left > 0:
                self._streams[entry] = left
            else:
                self._streams.pop(entry, None)
        if role.name and self._agents.get(role.name) == thumbprint:
            del self._agents[role.name]
            self._agent_keys.pop(role.name, None)
        # Only a stream that was served a request may mark it disconnected, and only when no other
        # stream is served it: another custodian announcing this thumbprint neither receives nor
        # withdraws it, nor keeps it shown as requested.
        if self._host.session is not None and self.agent_requests(role, thumbprint, key_name):
            still = any(
                self.agent_requests(Role("custodian", who), thumb, name)
                for (who, thumb, name) in self._streams
                if thumb == thumbprint
            )
            if not still:
                self._host.session.mark_disconnected(thumbprint)
                self._notices.notify()

    def check_keys(self) -> None:
        s = self._host.session
        if not isinstance(s, DrillSession) or s.state is not SessionState.COLLECTING:
            return
        for slot in s.header.slots:
            held = self._agents.get(slot.name)
            if held is not None and held != slot.thumbprint:
                # Which key it holds is a question of public keys; which certificate, of thumbprints.
                if self._agent_keys.get(slot.name) == pki.spki_sha256(slot.certificate_der):
                    reason = (
                        f"{slot.name}'s agent holds slot {slot.x}'s key under another certificate: "
                        "run it with the wrapping certificate the security domain was sealed to"
                    )
                else:
                    reason = f"{slot.name}'s agent holds a wrapping key that no longer matches slot {slot.x}"
                before = s.progress().rejected
                s.reject_slot(slot.x, reason, self._now())
                if s.progress().rejected != before:  # newly rejected: its own audit entry
                    self._audit(
                        "drill-slot-rejected",
                        "node",
                        {"session_id": s.session_id, "custodian": slot.name, "x": slot.x, "reason": reason},
                    )
        self._host.apply_if_finished(s)
