"""Ceremonies as I/O-free state machines, hosted by ``hsm-node``.

No grpc, no disk, no clock: the host passes ``now`` (unix seconds) and delivers messages.
"""

from coordinator.recovery import (
    CeremonyStatus,
    CustodianProgress,
    CustodianStatus,
    QuorumError,
    QuorumProgress,
    RecoveryRequest,
    RecoverySession,
    ReleaseOutcome,
    SessionState,
)

__all__ = [
    "CeremonyStatus",
    "CustodianProgress",
    "CustodianStatus",
    "QuorumError",
    "QuorumProgress",
    "RecoveryRequest",
    "RecoverySession",
    "ReleaseOutcome",
    "SessionState",
]
