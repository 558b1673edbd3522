"""Ceremonies as I/O-free state machines, hosted by ``hsm-node``: recovery, possession drill, rotation.

No grpc, no disk, no clock: the host passes ``now`` (unix seconds) and delivers messages.
"""

from coordinator.azure import AzureRestoreSession
from coordinator.ceremony import (
    Ceremony,
    CeremonyStatus,
    CustodianProgress,
    CustodianRequest,
    CustodianStatus,
    QuorumError,
    QuorumProgress,
    ReleaseOutcome,
    SessionState,
)
from coordinator.drill import DRILL_OUTCOMES, DrillSession
from coordinator.recovery import RecoverySession
from coordinator.rotation import RotationProposal, RotationSession

__all__ = [
    "DRILL_OUTCOMES",
    "AzureRestoreSession",
    "Ceremony",
    "CeremonyStatus",
    "CustodianProgress",
    "CustodianRequest",
    "CustodianStatus",
    "DrillSession",
    "QuorumError",
    "QuorumProgress",
    "RecoverySession",
    "ReleaseOutcome",
    "RotationProposal",
    "RotationSession",
    "SessionState",
]
