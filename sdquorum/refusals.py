"""Which refused calls become audit entries, and when: a bound on what one peer can write.

Every refused call is audited, but not every one as an entry of its own: any certificate holder
could otherwise grow the signed, never-pruned audit log by one entry per call, as fast as it can
call. :class:`RefusalWindows` keeps, per peer (the SHA-256 of its certificate's public key, so one
key under several certificates is one peer), a window of ``window_seconds``:

* the first refusal of each (method, code) in the window is audited at once, in full (``refused``:
  who, method, code, reason), up to ``detailed_per_window`` such entries;
* every later refusal in the window is counted, by (method, code), and the counts are written as
  one ``refusals-counted`` entry when the window closes (the next refusal after it, or
  :meth:`RefusalWindows.close_due` on the node's ticker), or on shutdown (:meth:`close_all`).

Invariants:

* no refusal is dropped: the ``refused`` entries plus the counts of the ``refusals-counted`` entries
  equal the refused calls, exactly (a process killed with SIGKILL loses the counts of its open
  windows: at most one window's worth per peer, and each of those peers' first refusals are in the
  log already);
* per peer and window at most ``detailed_per_window + 1`` entries: the log grows by at most that
  many entries per peer per ``window_seconds``, however fast the peer calls;
* memory: at most ``max_peers`` peers are tracked, each with at most ``MAX_COUNTED_KINDS`` counters;
  a peer that arrives when ``max_peers`` are tracked shares one overflow window (``peer`` =
  ``OVERFLOW``) with every other such peer, audited by the same rules, so beyond the bound the log
  still grows by at most ``detailed_per_window + 1`` entries per window for all of them together.
  Its first refusals (of distinct peers or kinds) are written in full, naming their peer; the
  others are counted, by (method, code) but not by peer.

This module does no I/O and reads no clock: the caller gives ``now`` (seconds) and writes the
returned :class:`AuditRecord` values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_DETAILED_PER_WINDOW",
    "DEFAULT_MAX_PEERS",
    "DEFAULT_WINDOW_SECONDS",
    "OVERFLOW",
    "AuditRecord",
    "Refusal",
    "RefusalWindows",
]

DEFAULT_WINDOW_SECONDS = 60
DEFAULT_MAX_PEERS = 1024
DEFAULT_DETAILED_PER_WINDOW = 4
MAX_COUNTED_KINDS = 64  # (method, code) counters per window; beyond, counted under OTHER_KIND
OTHER_KIND = ("*", "*")
OVERFLOW = "peers beyond the tracked limit"
NO_CERTIFICATE = "no client certificate"


@dataclass(frozen=True)
class Refusal:
    """One refused call, or one refused message inside an accepted call: who (from the verified TLS
    peer certificate) and what.

    ``role`` is the certificate's sdquorum role, or "" when it has none; ``subject`` its subject
    (RFC 4514) and ``spki_sha256`` the SHA-256 of its public key (hex), or "" without a certificate
    (or where only the authenticated role is known: a custodian's refused answer, windowed by its
    role). ``event`` names the entry written in full (``refused`` for a call); ``extra`` adds
    details to it (a refused answer's session and request ids).
    """

    method: str
    code: str
    reason: str
    role: str
    subject: str
    spki_sha256: str
    event: str = "refused"
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def peer(self) -> str:
        """What the window is kept by: the key, else the role, or one shared window for callers
        with neither."""
        return self.spki_sha256 or self.role or NO_CERTIFICATE

    @property
    def actor(self) -> str:
        return self.role or (f"no role ({self.subject})" if self.subject else NO_CERTIFICATE)

    def details(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "code": self.code,
            "reason": self.reason,
            "subject": self.subject,
            "spki_sha256": self.spki_sha256,
            **dict(self.extra),
        }


@dataclass(frozen=True)
class AuditRecord:
    """An audit entry to write: ``event``, ``actor`` and ``details`` as the audit log takes them."""

    event: str
    actor: str
    details: dict[str, Any]


@dataclass
class _Window:
    peer: str
    actor: str
    subject: str
    opened: int
    detailed: set[tuple[str, str, str]] = field(default_factory=set)  # (peer, method, code)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def summary(self, closed: int) -> AuditRecord | None:
        if not self.counts:
            return None
        rows = [{"method": m, "code": c, "count": n} for (m, c), n in sorted(self.counts.items())]
        return AuditRecord(
            "refusals-counted",
            self.actor,
            {
                "peer": self.peer,
                "subject": self.subject,
                "window_start": self.opened,
                "window_end": closed,
                "count": sum(self.counts.values()),
                "by_method": rows,
            },
        )


class RefusalWindows:
    """Per-peer windows deciding which refusals are audited at once and which are counted."""

    def __init__(
        self,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        max_peers: int = DEFAULT_MAX_PEERS,
        detailed_per_window: int = DEFAULT_DETAILED_PER_WINDOW,
    ) -> None:
        if window_seconds < 1 or max_peers < 1 or detailed_per_window < 1:
            raise ValueError("window_seconds, max_peers and detailed_per_window must be at least 1")
        self.window_seconds = window_seconds
        self.max_peers = max_peers
        self.detailed_per_window = detailed_per_window
        self._windows: dict[str, _Window] = {}

    @property
    def tracked(self) -> int:
        """Peers with an open window (the overflow window included)."""
        return len(self._windows)

    def refused(self, r: Refusal, now: int) -> list[AuditRecord]:
        """The entries to write now for refusal ``r`` (none if it was only counted)."""
        out: list[AuditRecord] = []
        key = r.peer
        w = self._windows.get(key)
        if w is not None and now >= w.opened + self.window_seconds:
            out += self._close(key, now)
            w = None
        if w is None:
            if len(self._windows) >= self.max_peers:
                out += self.close_due(now)  # a closed window frees its place
            if len(self._windows) >= self.max_peers:
                key = OVERFLOW
                w = self._windows.get(key)
                if w is not None and now >= w.opened + self.window_seconds:
                    out += self._close(key, now)
                    w = None
                if w is None:  # the overflow window is allowed one place beyond max_peers
                    w = self._windows[key] = _Window(OVERFLOW, OVERFLOW, "", now)
            else:
                w = self._windows[key] = _Window(key, r.actor, r.subject, now)
        kind = (r.method, r.code)
        first = (r.peer, *kind)  # the peer too: in the overflow window, another peer is news
        if first not in w.detailed and len(w.detailed) < self.detailed_per_window:
            w.detailed.add(first)
            out.append(AuditRecord(r.event, r.actor, r.details()))
        else:
            if kind not in w.counts and len(w.counts) >= MAX_COUNTED_KINDS:
                kind = OTHER_KIND
            w.counts[kind] = w.counts.get(kind, 0) + 1
        return out

    def close_due(self, now: int) -> list[AuditRecord]:
        """Close every window older than ``window_seconds``: their counts, one entry each."""
        due = [k for k, w in self._windows.items() if now >= w.opened + self.window_seconds]
        return [rec for k in due for rec in self._close(k, now)]

    def close_all(self, now: int) -> list[AuditRecord]:
        """Close every window (on shutdown), so no count is lost."""
        return [rec for k in list(self._windows) for rec in self._close(k, now)]

    def _close(self, key: str, now: int) -> list[AuditRecord]:
        summary = self._windows.pop(key).summary(now)
        return [] if summary is None else [summary]
