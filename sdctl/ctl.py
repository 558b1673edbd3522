"""What every ``sdctl`` command handler shares: the parsed arguments, output in text or JSON, the
admin client, confirmation of destructive commands, and following a ceremony session.

Invariants: with ``--output json`` a command writes only JSON to standard output (one document per
line; progress lines included), never a line of text; warnings and errors go to standard error.
A destructive command does nothing until it is confirmed (``--yes``, or typed back on a terminal).
A ceremony runs at the node, not in sdctl: a command that starts or watches one sets
``Ctl.running`` first (Ctrl-C then says the session goes on and how to attach or cancel), and
:meth:`Ctl.follow` outlives a dropped connection (it reconnects with backoff, see WATCH_RETRIES).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sdquorum.errors import MalformedError, StateError, TransportError, UsageError
from sdquorum_rpc.files import write_private_file
from sdquorum_rpc.lazy import lazy_module

if TYPE_CHECKING:
    from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
    from sdquorum_rpc.admin import AdminClient
else:  # loaded at first use: 'sdctl --help' and 'sdctl pki' never load the wire messages
    pb = lazy_module("sdquorum_rpc._proto.sdquorum.v1.sdquorum_pb2")

__all__ = ["Ctl", "Running", "pb", "when"]

# Watching a ceremony through a dropped connection (a keepalive drop, a network blip): reconnect up
# to WATCH_RETRIES times, waiting WATCH_BACKOFF_FIRST s and doubling up to WATCH_BACKOFF_MAX s (about
# 75 s in all); a progress message resets the count. Exit 5 only when the node stays unreachable.
WATCH_RETRIES, WATCH_BACKOFF_FIRST, WATCH_BACKOFF_MAX = 8, 1.0, 15.0


class Running(NamedTuple):
    """The ceremony this command started or watches, for the line printed on Ctrl-C."""

    session_id: str
    kind: str
    expires_at: int


STATUS_WORD = {  # pb.CustodianStatus names (by name: the parser is built without the wire messages)
    "NOT_CONNECTED": "not connected",
    "REQUESTED": "pending",
    "ACCEPTED": "accepted",
    "REJECTED": "REJECTED",
    "DENIED": "denied",
    "NOT_NEEDED": "not needed",
    "UNREACHABLE": "unreachable",
}
DRILL_WORD = {**STATUS_WORD, "ACCEPTED": "proved", "REJECTED": "failed"}


def word(words: dict[str, str], status: int) -> str:
    return words.get(pb.CustodianStatus.Name(status), "?") if status in pb.CustodianStatus.values() else "?"


def when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "-"


class Ctl:
    def __init__(self, args: argparse.Namespace, out: Callable[[str], None] = print) -> None:
        self.args = args
        self.out = out
        self.json = args.output == "json"
        self.running: Running | None = None  # the ceremony started or watched, for Ctrl-C

    def emit(self, text: str, obj: Any) -> None:
        """One result: ``text`` for a person, or ``obj`` as one JSON document."""
        self.out(json.dumps(obj, sort_keys=True) if self.json else text)

    def say(self, text: str) -> None:
        """A line for a person only (progress, hints): not written with --output json."""
        if not self.json:
            self.out(text)

    def client(self) -> AdminClient:
        a = self.args
        missing = [f for f, v in (("--cert", a.cert), ("--key", a.key), ("--ca", a.ca)) if v is None]
        if missing:
            raise UsageError(
                f"give {', '.join(missing)} (or SDCTL_CERT/SDCTL_KEY/SDCTL_CA): your mTLS identity"
            )
        from sdquorum_rpc.admin import AdminClient  # grpc: only for the commands that dial
        from sdquorum_rpc.tls import TlsFiles

        return AdminClient(
            a.node,
            TlsFiles(a.cert, a.key, a.ca),
            retry_interval=a.retry_interval,
            retry_timeout=a.retry_timeout,
        )

    def confirm(self, action: str, consequence: str, answer: str = "yes") -> None:
        """Destructive commands: ``--yes``, or ``answer`` typed back on a terminal. Without a terminal
        and without ``--yes``: one line saying so (exit 2), and nothing is done."""
        if getattr(self.args, "yes", False):
            return
        if not sys.stdin.isatty():
            raise UsageError(f"add --yes to {action} ({consequence})")
        typed = input(f"{action}? {consequence}. Type {answer!r} to confirm: ")
        if typed.strip() != answer:
            raise UsageError(f"not confirmed: nothing was done ({action})")

    async def follow(self, c: AdminClient, session_id: str, offline_dir: Path | None) -> pb.RecoveryProgress:
        """Write offline request files if asked, then show live progress until the session ends.
        A dropped connection does not end the session (it runs at the node): reconnect with backoff,
        saying so on stderr; exit 5 only when the node stays away through WATCH_RETRIES reconnects."""
        import asyncio

        from sdquorum_rpc.convert import request_from_proto

        if offline_dir is not None:
            files = []  # every name is checked before any file is written
            for item in await c.export_requests(session_id):
                req = request_from_proto(item.request, custodian=item.custodian)
                files.append((item, req, request_file(offline_dir, item.custodian, req.x)))
            for item, req, path in files:
                write_private_file(path, req.to_bytes(), mode=0o644)
                self.say(f"  wrote {path} (fingerprint {req.fingerprint}) for {item.custodian}")
            self.say("  carry each file to its custodian; upload answers with 'sdctl upload-answer FILE'")
        final: pb.RecoveryProgress | None = None
        tries, delay = 0, WATCH_BACKOFF_FIRST
        while True:
            try:
                with c.errors():
                    async for prog in c.watch(session_id):
                        final = prog
                        tries, delay = 0, WATCH_BACKOFF_FIRST  # the node answered: a fresh budget
                        self.progress(prog)
                break
            except TransportError as e:
                if tries >= WATCH_RETRIES:
                    raise TransportError(
                        f"{e} (gave up watching session {session_id} after {tries} reconnects; the "
                        f"session may go on at the node: 'sdctl session status {session_id}')"
                    ) from e
                tries += 1
                print(
                    f"sdctl: lost the node while watching session {session_id} ({e}); the session goes "
                    f"on at the node: reconnecting in {delay:g} s (try {tries} of {WATCH_RETRIES})",
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, WATCH_BACKOFF_MAX)
        if final is None:  # pragma: no cover - the node always sends the current state first
            raise StateError("the node sent no progress for the session")
        return final

    def progress(self, p: pb.RecoveryProgress) -> None:
        if self.json:
            self.out(json.dumps(progress_json(p), sort_keys=True))
            return
        left = max(0, p.expires_at_unix - int(time.time()))
        words = DRILL_WORD if p.kind == "drill" else STATUS_WORD
        noun = {"recovery": "shares", "drill": "proofs", "rotation": "approvals"}.get(p.kind, "answers")
        parts = [f"{c.name}: {word(words, c.status)}" for c in p.custodians]
        self.out(f"  [{p.accepted}/{p.required} {noun}, {left}s left] " + " | ".join(parts))


def progress_json(p: pb.RecoveryProgress) -> dict[str, Any]:
    return {
        "session_id": p.session_id,
        "kind": p.kind,
        "state": pb.SessionState.Name(p.state),
        "required": p.required,
        "accepted": p.accepted,
        "expires_at": p.expires_at_unix,
        "message": p.message,
        "custodians": [
            {"x": c.x, "name": c.name, "status": pb.CustodianStatus.Name(c.status), "detail": c.detail}
            for c in p.custodians
        ],
    }


def request_file(offline_dir: Path, custodian: str, x: int) -> Path:
    """Where the request file for ``custodian`` goes: in ``offline_dir`` and nowhere else. The
    name comes from the node: it is checked against the name pattern before any path is built,
    and the result must still sit directly in ``offline_dir``."""
    from sdquorum.offline import check_custodian_name

    name = f"{check_custodian_name(custodian)}-x{int(x)}.request.json"
    path = offline_dir / name
    if path.parent != offline_dir or path.name != name:  # pragma: no cover - the pattern already holds
        raise MalformedError(f"the node named a custodian {custodian[:64]!r} that is no file name")
    return path


def check_offline_dir(path: Path | None) -> None:
    if path is not None and not path.is_dir():
        raise UsageError(f"--offline-request {path} is not a folder: create it first")


OFFLINE_REQUEST_HELP = "also write a request file per custodian here"
