"""Slot bookkeeping of one session: the request made for each slot and where each slot stands.

Invariants: a slot gets exactly one request (:meth:`SlotBook.add`), made when the session is
attested, and keeps it for the session's life; request ids are the session's random ones, so a
request is found only by its id; a slot's progress changes only through this book. It knows
nothing of deadlines, session states or what an answer must prove: the ceremony
(:class:`~coordinator.ceremony.Ceremony`) decides *when* a slot moves, the book records *that* it
moved. Iteration follows the order the slots were added (the SD header's).
"""

from __future__ import annotations

from coordinator.ceremony._records import (
    OPEN,
    CustodianProgress,
    CustodianRequest,
    CustodianStatus,
    QuorumProgress,
)


class SlotBook:
    """One :class:`CustodianRequest` and one :class:`CustodianProgress` per slot ``x``."""

    def __init__(self) -> None:
        self._requests: dict[str, CustodianRequest] = {}
        self._progress: dict[int, CustodianProgress] = {}

    def add(self, request: CustodianRequest, name: str) -> None:
        """The slot of ``request`` (held by ``name``) starts NOT_CONNECTED."""
        self._requests[request.request_id] = request
        self._progress[request.x] = CustodianProgress(request.x, name, CustodianStatus.NOT_CONNECTED)

    def __getitem__(self, x: int) -> CustodianProgress:
        return self._progress[x]

    def get(self, x: int) -> CustodianProgress | None:
        return self._progress.get(x)

    def request(self, request_id: str) -> CustodianRequest | None:
        return self._requests.get(request_id)

    def set(self, x: int, status: CustodianStatus, detail: str = "") -> CustodianProgress:
        """Move slot ``x`` to ``status`` (its custodian's name stays); returns its new progress."""
        p = self._progress[x]
        self._progress[x] = CustodianProgress(p.x, p.name, status, detail)
        return self._progress[x]

    def sorted(self) -> tuple[CustodianProgress, ...]:
        return tuple(self._progress[x] for x in sorted(self._progress))

    def open_requests(self) -> list[CustodianRequest]:
        return [r for r in self._requests.values() if self._progress[r.x].status in OPEN]

    def named(self, name: str) -> int | None:
        for x, p in self._progress.items():
            if p.name == name:
                return x
        return None

    def settle_open(self, status: CustodianStatus, detail: str = "") -> None:
        """Every slot still open ends as ``status`` (NOT_NEEDED, UNREACHABLE)."""
        for x, p in self._progress.items():
            if p.status in OPEN:
                self._progress[x] = CustodianProgress(p.x, p.name, status, detail)

    def count(self, status: CustodianStatus) -> int:
        """How many slots are at ``status``."""
        return sum(1 for p in self._progress.values() if p.status is status)

    def open_slots(self) -> list[int]:
        """The slots still open (NOT_CONNECTED or REQUESTED)."""
        return [x for x, p in self._progress.items() if p.status in OPEN]

    def progress(self, required: int, noun: str) -> QuorumProgress:
        return QuorumProgress(
            required=required,
            accepted=tuple(
                x for x, p in sorted(self._progress.items()) if p.status is CustodianStatus.ACCEPTED
            ),
            rejected=tuple(
                (p.x, p.detail) for p in self._progress.values() if p.status is CustodianStatus.REJECTED
            ),
            missing=tuple(x for x, p in sorted(self._progress.items()) if p.status in OPEN),
            noun=noun,
        )

    def refusals(self) -> str:
        """Who refused, for the message of a session whose quorum can no longer be reached."""
        bad = [
            f"{p.name} ({p.detail})" for p in self._progress.values() if p.status is CustodianStatus.REJECTED
        ]
        denied = [p.name for p in self._progress.values() if p.status is CustodianStatus.DENIED]
        parts = [
            f"rejected: {', '.join(bad)}" if bad else "",
            f"denied: {', '.join(denied)}" if denied else "",
        ]
        return "; ".join(p for p in parts if p)
