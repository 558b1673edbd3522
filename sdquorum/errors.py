"""Errors of the sdquorum core.

One root, three kinds (STYLE.md):

* :class:`PeerError`: a remote party misbehaved or sent something that failed a check (bad share,
  bad signature, replayed or expired message). Towards that peer, only "a check failed" is said;
  the local log and CLI get ``str(err)``, which names the check.
* :class:`TransportError`: the network or a remote process failed.
* :class:`UsageError`: the caller (a person or local code) asked for something invalid; the message
  says what to do instead.

Every message is one line a person can act on.
"""

from __future__ import annotations

__all__ = [
    "MalformedError",
    "PeerError",
    "SdquorumError",
    "StateError",
    "TransportError",
    "UnauthenticatedError",
    "UsageError",
    "VerificationError",
]


class SdquorumError(Exception):
    """Root of every error the project raises on purpose."""


class PeerError(SdquorumError):
    """A remote party sent something that failed a check."""


class VerificationError(PeerError):
    """A cryptographic or binding check failed (signature, VSS, session, expiry)."""


class UnauthenticatedError(VerificationError):
    """A message is not signed by the key it must come from: nobody can be blamed for it."""


class MalformedError(PeerError):
    """Bytes that do not parse as the expected format."""


class TransportError(SdquorumError):
    """The network or a remote process failed."""


class UsageError(SdquorumError):
    """The caller asked for something invalid."""


class StateError(UsageError):
    """The request is valid but not in the current state (for example: node not activated)."""


class OutcomeUnknownError(StateError):
    """A change was sent but whether it took effect cannot be known now (the remote store was lost
    at the moment it would apply): the caller audits it as such and the person checks."""


class ConflictError(StateError):
    """Another writer changed the rows this change decided on, at the same time: nothing was
    written, and the same change may simply be made again."""


class StorageError(StateError):
    """The node cannot write its own storage (disk full, read-only): nothing was changed."""


class NotFoundError(UsageError):
    """The named object (key, session, file) does not exist."""


class AlreadyExistsError(UsageError):
    """The object to create exists already."""


class PermissionDeniedError(SdquorumError):
    """The caller's role may not do this."""
