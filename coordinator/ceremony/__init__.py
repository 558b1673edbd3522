"""What every ceremony shares: a session, its attested statement, one request per slot, a deadline.

A ceremony (recovery, possession drill, rotation approval) is a session with a random id, a deadline
and an ephemeral X25519 exchange key that never leaves the process. :meth:`Ceremony._open` has the
host's attestation key sign a statement binding session, purpose, node, domain, epoch, SD header
hash, exchange key, a fresh challenge, the proposal hash (rotation), deadline, initiator and reason,
and makes one request per slot. Each slot then moves

    NOT_CONNECTED -> REQUESTED -> ACCEPTED | REJECTED | DENIED        (answered)
                               \\-> NOT_NEEDED | UNREACHABLE            (ended without its answer)

A settled slot accepts nothing more (the same custodian twice is refused), with one exception:
a **late answer**, one for a slot settled NOT_NEEDED because the session COMPLETED without it, that
arrives before the deadline. It can no longer count, but it is still verified exactly as if it had
come in time (:meth:`Ceremony._verify_late`): a wrong one makes its slot REJECTED and named in the
status, a good one leaves it NOT_NEEDED (with "answered late: verified"). Whatever a late answer
needs is kept until the deadline and not past it: the exchange key (to open a late release) is
dropped by the first :meth:`Ceremony.tick` at or after the deadline, and at once when a session
FAILS; the domain secrets themselves are never kept for it (a subclass keeps only what cannot open
anything, such as the public shares or digests of the expected shares).

Subclasses say what an answer must prove (:meth:`_accept`), how a late one is checked
(:meth:`_verify_late`; by default it is refused as before) and when the ceremony ends
(:meth:`_at_quorum`, called once m answers are accepted, or :meth:`_after_answer` itself, and
:meth:`_at_deadline`). No I/O: the host passes ``now`` (unix seconds) and delivers messages.

Where it lives: :mod:`._records` (the states, progress, requests and outcomes handed out),
:mod:`._slots` (:class:`SlotBook`: each slot's request and progress), :mod:`._session` (the
session's lifecycle: attestation, deadline, end, the exchange key) and :mod:`._ceremony`
(:class:`Ceremony`: what happens to an answer; subclasses say what it must prove;
:class:`ProofCeremony`: answered by proofs of possession, for the drill and rotation).
"""

from coordinator.ceremony._ceremony import Ceremony, ProofCeremony
from coordinator.ceremony._records import (
    OPEN,
    SETTLED,
    AttestationSigner,
    CeremonyStatus,
    CustodianProgress,
    CustodianRequest,
    CustodianStatus,
    QuorumError,
    QuorumProgress,
    ReleaseOutcome,
    SessionState,
)
from coordinator.ceremony._session import Session
from coordinator.ceremony._slots import SlotBook

__all__ = [
    "OPEN",
    "SETTLED",
    "AttestationSigner",
    "Ceremony",
    "CeremonyStatus",
    "CustodianProgress",
    "CustodianRequest",
    "CustodianStatus",
    "ProofCeremony",
    "QuorumError",
    "QuorumProgress",
    "ReleaseOutcome",
    "Session",
    "SessionState",
    "SlotBook",
]
