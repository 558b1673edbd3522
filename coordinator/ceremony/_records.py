"""The records a ceremony hands out: session and slot states, progress, requests and outcomes.

All are immutable values (frozen dataclasses, enums) that carry no key material: the host may log,
persist or send any of them. :data:`SETTLED` and :data:`OPEN` partition :class:`CustodianStatus`:
a slot is open until it is settled, and a settled slot never becomes open again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from sdquorum.envelopes import Attestation, CeremonyKind, ExchangeStatement
from sdquorum.errors import StateError
from sdquorum.offline import CeremonyRequest

AttestationSigner = Callable[[ExchangeStatement], Attestation]


class SessionState(enum.Enum):
    AWAITING_SD_FILE = "awaiting SD file"
    COLLECTING = "collecting"
    COMPLETED = "completed"
    FAILED = "failed"


class CustodianStatus(enum.Enum):
    NOT_CONNECTED = "not connected"
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DENIED = "denied"
    NOT_NEEDED = "not needed"
    UNREACHABLE = "unreachable"


SETTLED = frozenset(
    {
        CustodianStatus.ACCEPTED,
        CustodianStatus.REJECTED,
        CustodianStatus.DENIED,
        CustodianStatus.NOT_NEEDED,
        CustodianStatus.UNREACHABLE,
    }
)
OPEN = frozenset({CustodianStatus.NOT_CONNECTED, CustodianStatus.REQUESTED})


class QuorumError(StateError):
    """Fewer than m valid answers."""


@dataclass(frozen=True)
class QuorumProgress:
    required: int
    accepted: tuple[int, ...]
    rejected: tuple[tuple[int, str], ...]
    missing: tuple[int, ...]
    noun: str = "answers"

    def require_quorum(self) -> None:
        if len(self.accepted) < self.required:
            raise QuorumError(
                f"only {len(self.accepted)} of the {self.required} required {self.noun} arrived; "
                f"missing slots {list(self.missing)}"
            )


@dataclass(frozen=True)
class CustodianProgress:
    x: int
    name: str
    status: CustodianStatus
    detail: str = ""


@dataclass(frozen=True)
class CeremonyStatus:
    session_id: str
    kind: CeremonyKind
    state: SessionState
    required: int
    custodians: tuple[CustodianProgress, ...]
    expires_at: int
    message: str
    domain_id: bytes
    epoch: int

    @property
    def accepted(self) -> int:
        return sum(1 for c in self.custodians if c.status is CustodianStatus.ACCEPTED)


@dataclass(frozen=True)
class CustodianRequest:
    request_id: str
    session_id: str
    kind: str  # a CeremonyKind (the node still spells its domain notice as the word)
    x: int
    thumbprint: bytes
    attestation: bytes
    header_bytes: bytes
    header_signature: bytes
    proposal: bytes = b""

    def for_custodian(self, name: str) -> CeremonyRequest:
        """What the custodian ``name`` receives: the same request as an agent or an offline request
        file carries it (:class:`sdquorum.offline.CeremonyRequest`)."""
        return CeremonyRequest(
            request_id=self.request_id,
            session_id=self.session_id,
            kind=self.kind,
            x=self.x,
            custodian=name,
            attestation=self.attestation,
            header=self.header_bytes,
            header_signature=self.header_signature,
            proposal=self.proposal,
        )


@dataclass(frozen=True)
class ReleaseOutcome:
    x: int
    name: str
    accepted: bool
    reason: str
    completed: bool
    late: bool = False  # came after the session completed: verified, but it counted for nothing
