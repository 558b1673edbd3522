"""The running custodian agent: dials the node, checks each request, asks its human, releases.

Order for every request (nothing is decrypted before step 2 passes):

1. Parse the attestation and the SD header.
2. :func:`sdquorum.envelopes.check_request`: attestation chain to this agent's root and expiry,
   signature, header hash, header signature (and pinned domain key), allowed domain, the domain key
   and highest epoch this agent remembers (:mod:`custodian_agent.memory`: another key or a retired
   epoch is refused), slot thumbprint is this agent's certificate. The request's domain, key and
   epoch are then remembered (a domain never seen is learnt here: trust on first use). An Azure
   restore is refused unless the configuration opts in (``agent.azure_restore``), and then checked
   by :func:`sdquorum.azure.ceremony.check_azure_request`.
3. Approval through :mod:`approvals`: a person decides (``manual``), except that ``auto-drills``
   answers a possession drill alone. A request that releases a share (recovery, azure-recovery) or
   approves a rotation always waits for the person; ``auto`` is refused when the config is made.
   The person is shown where the answer ends up (``destination``: the node's attested exchange key,
   or an Azure exchange certificate named as an external, unattested key).
4. The memory is checked again (a rotation notice may have come while the person decided), then the
   share is decrypted, checked against the commitments, sealed to the attested exchange key and the
   release signed (:mod:`sdquorum.envelopes`). Submit it.

A domain notice (the node's signed header of a domain this agent holds a slot of, sent at activation,
after each rotation and on connection) is checked (:func:`responder.check_notice`) and remembered;
it is never answered.

A failed check is denied towards the node with "a check failed"; the specific check goes to the
local log and the agent's output. The agent dials out (no inbound port) and reconnects with capped
exponential backoff. Its state directory is checked before it starts (0700, ours, writable by
nobody else: :meth:`ApprovalBox.check`), and every file it writes there is 0600. A damaged memory
file stops the agent at start-up.
Its hello carries its wrapping certificate: the node serves it only slots whose key bears the name
of its mTLS identity (``custodian/<name>``), and it warns at start when the two names differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.x509.oid import NameOID

from custodian_agent import responder
from custodian_agent.approvals import ApprovalBox, asks_person, check_mode
from custodian_agent.memory import DomainMemory
from sdquorum import envelopes, pki
from sdquorum.envelopes import CeremonyKind
from sdquorum.errors import SdquorumError, TransportError
from sdquorum.keys import WrappingKey
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc.client import NodeClient
from sdquorum_rpc.convert import request_from_proto
from sdquorum_rpc.files import replace_private_file
from sdquorum_rpc.observability import announce
from sdquorum_rpc.tls import TlsFiles

__all__ = ["Agent", "AgentConfig", "read_heartbeat"]

HEARTBEAT_FILE = "heartbeat.json"
HEARTBEAT_SECONDS = 5.0
_SENT_WORD: dict[str, str] = {
    CeremonyKind.DRILL: "proved",
    CeremonyKind.ROTATION: "approved",
}  # else "released"


def read_heartbeat(state_dir: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads((state_dir / HEARTBEAT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("time"), (int, float)) else None


log = logging.getLogger("sdquorum.agent")
CHECK_FAILED = "the agent refused the request: a check failed"
BACKOFF_START, BACKOFF_MAX = 0.2, 5.0


@dataclass(frozen=True)
class AgentConfig:
    node: str
    tls: TlsFiles
    policy: envelopes.CustodianPolicy
    state_dir: Path
    approval: str = "manual"  # or "auto-drills"; see approvals.check_mode

    def __post_init__(self) -> None:
        check_mode(self.approval)


class Agent:
    def __init__(
        self, config: AgentConfig, key: WrappingKey, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.key = key
        self.thumbprint = pki.thumbprint_sha256(key.certificate_der())
        self.approvals = ApprovalBox(config.state_dir)
        self.memory = DomainMemory(config.state_dir)  # a damaged file raises here: loud, at start-up
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self.released: list[str] = []  # request ids released (for status and tests)
        self.connected = False
        self.connections = 0  # streams opened (after a successful handshake) since start
        self.detail = "starting"
        self._warn_if_misnamed()

    def _warn_if_misnamed(self) -> None:
        """The node serves an agent only slots whose key is named for its TLS identity
        (``custodian/<name>``): say so at start if the wrapping certificate names someone else."""
        try:
            role = pki.role_from_cert(self.config.tls.cert.read_bytes())
            cert = pki.load_cert(self.key.certificate_der())
        except (OSError, SdquorumError):
            return  # a TLS file that cannot be read is reported when the agent connects
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if role.kind == "custodian" and names != [role.name]:
            log.warning(
                "the wrapping certificate is named %s but this agent is %s: the node will send it no "
                "request; use a wrapping key made with 'custodian-agent keygen --name %s'",
                ", ".join(repr(n[:64]) for n in names) or "nothing",
                role,
                role.name,
            )

    def _beat(self) -> None:
        """Write the heartbeat that ``custodian-agent health`` reads (no secret in it)."""
        try:
            self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            beat = {
                "time": self._clock(),
                "node": self.config.node,
                "connected": self.connected,
                "detail": self.detail,
            }
            replace_private_file(self.config.state_dir / HEARTBEAT_FILE, json.dumps(beat).encode())
        except OSError as e:
            log.warning("cannot write the heartbeat in %s: %s", self.config.state_dir, e.strerror)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT_SECONDS)

    async def run(self, stop: asyncio.Event) -> None:
        self.approvals.check()  # a state directory others can write to is refused before anything
        beats = asyncio.create_task(self._heartbeat(stop))
        try:
            await self._run(stop)
        finally:
            beats.cancel()
            self.connected = False
            self.detail = "stopped"
            self._beat()

    async def _run(self, stop: asyncio.Event) -> None:
        backoff = BACKOFF_START
        while not stop.is_set():
            before = self.connections
            try:
                await self._connect_once(stop)
                backoff = BACKOFF_START
            except SdquorumError as e:
                if self.connections > before:  # it was up: a fresh failure starts a fresh backoff
                    backoff = BACKOFF_START
                self.connected, self.detail = False, str(e)
                self._beat()
                log.warning("connection to %s lost: %s; retrying in %.1fs", self.config.node, e, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        for t in list(self._tasks):
            t.cancel()

    async def _connect_once(self, stop: asyncio.Event) -> None:
        async with NodeClient(self.config.node, self.config.tls) as client:
            call = client.custodian.WatchRequests(
                pb.AgentHello(
                    wrapping_cert_sha256=self.thumbprint,
                    agent_version="1",
                    # its CN names the custodian: the node serves a slot only to that name's stream
                    wrapping_certificate=self.key.certificate_der(),
                )
            )

            seen: set[str] = set()  # per connection: the node resends only unsettled requests

            async def consume() -> None:
                async for msg in call:
                    if msg.request_id in seen:
                        continue
                    seen.add(msg.request_id)
                    task = asyncio.create_task(self._handle_logged(client, msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                raise TransportError("the node closed the request stream")

            log.info("dialling %s", self.config.node)

            async def connected_then_consume() -> None:
                await call.initial_metadata()  # the node answers at once: the stream is up
                if call.done():  # a failed call returns empty metadata too: the handshake failed
                    details = await call.details()
                    raise TransportError(f"cannot open the request stream: {await call.code()}: {details}")
                self.connected, self.detail = True, ""
                self.connections += 1
                self._beat()
                log.info("connected to %s; waiting for requests", self.config.node)
                await consume()

            consumer = asyncio.create_task(connected_then_consume())
            stopper = asyncio.create_task(stop.wait())
            try:
                with client.errors():
                    done, _ = await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if consumer in done:
                        consumer.result()
            finally:
                call.cancel()
                for t in (consumer, stopper, *self._tasks):
                    t.cancel()
                await asyncio.gather(consumer, stopper, *self._tasks, return_exceptions=True)

    async def _handle_logged(self, client: NodeClient, req: pb.CustodianRequest) -> None:
        try:
            await self.handle(client, req)
        except SdquorumError as e:
            log.warning("request %r: %s", req.request_id[:80], e)
        except Exception:  # a bug, or an environment error: nothing was released; say so locally
            log.exception("request %r: failed; nothing was released", req.request_id[:80])

    async def handle(self, client: NodeClient, msg: pb.CustodianRequest) -> str:
        """Process one request; returns "released" (or "proved"/"approved"), "denied" or "refused"."""
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        if msg.kind == pb.DOMAIN_NOTICE:
            return self._take_notice(msg)
        try:
            req = request_from_proto(msg)
        except SdquorumError as e:  # not a request at all (its id could be anything): no answer
            log.warning("request %r ignored: %s", msg.request_id[:80], e)
            return "refused"
        try:
            checked = responder.check(req, self.thumbprint, self.config.policy, now, self.memory.known())
            self._remember(checked)
        except SdquorumError as e:
            self._refused(req.kind, req.request_id, e)
            await self._deny(client, msg, CHECK_FAILED)
            return "refused"
        log.debug("request %s passed every check before decryption", req.request_id)
        details = responder.describe(req, checked)
        log.info("request %s: %s", req.request_id, json.dumps(details, sort_keys=True))
        if not asks_person(self.config.approval, req.kind):
            log.info("request %s: a %s, answered without a person (auto-drills)", req.request_id, req.kind)
        else:
            digest = self.approvals.post(req.request_id, details)
            announce(
                log.name,
                f"approval needed: {req.kind} request {req.request_id} from {details['initiator']} on node "
                f"{details['node_id']}: {details['reason']!r}; destination: {details['destination']}. "
                f"Run '{self.approvals.command('approve', req.request_id)}' "
                f"or '{self.approvals.command('deny', req.request_id)}'.",
            )
            decision = await self.approvals.wait(
                req.request_id, deadline=checked.statement.expires_at, details_sha256=digest
            )
            if not decision.approved:
                log.info("request %s denied by the custodian: %s", req.request_id, decision.reason)
                await self._deny(client, msg, f"denied by the custodian: {decision.reason}"[:200])
                return "denied"
        try:
            if isinstance(checked, envelopes.CheckedRequest):  # a notice may have come meanwhile
                envelopes.check_remembered(checked.header, self.memory.known())
        except SdquorumError as e:
            self._refused(req.kind, req.request_id, e)
            await self._deny(client, msg, CHECK_FAILED)
            return "refused"
        try:
            answer = responder.answer(req, checked, self.key, os.urandom)
        except SdquorumError as e:
            log.error("request %s: cannot answer: %s", req.request_id, e)
            await self._deny(client, msg, CHECK_FAILED)
            return "refused"
        with client.errors():
            if req.kind in (CeremonyKind.RECOVERY, CeremonyKind.AZURE_RECOVERY):
                await client.custodian.SubmitRelease(
                    pb.ShareRelease(request_id=req.request_id, release=answer)
                )
            else:
                await client.custodian.SubmitProof(
                    pb.ProofSubmission(request_id=req.request_id, proof=answer)
                )
        self.released.append(req.request_id)
        log.info(
            "request %s: %s answer for slot %d sent to node %s",
            req.request_id,
            req.kind,
            req.x,
            details["node_id"],
        )
        return _SENT_WORD.get(req.kind, "released")

    def _take_notice(self, msg: pb.CustodianRequest) -> str:
        """Remember the domain of a node's notice (its signed header); "noted" or "refused"."""
        try:
            header = responder.check_notice(
                bytes(msg.sd_header),
                bytes(msg.sd_header_signature),
                self.thumbprint,
                self.config.policy,
                self.memory.known(),
            )
            changed = self.memory.observe(header.domain_id, header.signing_public_key, header.epoch)
        except SdquorumError as e:
            log.warning("domain notice %r refused: %s", msg.request_id[:80], e)
            announce(log.name, f"refused a domain notice from the node: {e}", logged_already=True)
            return "refused"
        if changed:
            log.info(
                "domain %s: signing key %s pinned, epoch %d",
                header.domain_id.hex(),
                header.signing_public_key.hex()[:16],
                header.epoch,
            )
        return "noted"

    def _remember(self, checked: responder.Checked) -> None:
        if isinstance(checked, envelopes.CheckedRequest):
            h = checked.header
            if self.memory.observe(h.domain_id, h.signing_public_key, h.epoch):
                log.info("domain %s: epoch %d remembered", h.domain_id.hex(), h.epoch)

    def _refused(self, kind: str, request_id: str, e: SdquorumError) -> None:
        """The specific check that failed, for the local log and the custodian's own output."""
        log.warning("request %s refused before decryption: %s", request_id, e)
        announce(log.name, f"refused: {kind} request {request_id}: {e}", logged_already=True)

    async def _deny(self, client: NodeClient, msg: pb.CustodianRequest, reason: str) -> None:
        """A denial signed with the wrapping key, so nobody else can deny in this custodian's name."""
        denial = envelopes.make_denial(
            self.key,
            session_id=msg.session_id,
            request_id=msg.request_id,
            x=msg.x,
            reason=reason,
            attestation=bytes(msg.attestation),
        )
        try:
            with client.errors():
                await client.custodian.Deny(pb.Denial(request_id=msg.request_id, signed=denial.to_bytes()))
        except SdquorumError as e:
            log.info("request %s: the node did not take the denial: %s", msg.request_id, e)
