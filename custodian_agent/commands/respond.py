"""``custodian-agent respond``: the offline agent. One request file in, one answer (or denial) file
out, with the same checks and cryptography as ``run``.

Invariants:

* What the person got wrong (``--yes`` on a release, an ``--out`` that exists, an unreadable request or
  attestation root, a damaged state directory) is refused before the key is unlocked; a request that
  fails a check is refused naming the check, and nothing is written.
* The answer file must not exist: it is never overwritten. With ``--state-dir`` the domain's
  signing key and highest epoch are remembered and enforced as ``run`` does; without it nothing
  is written but the answer.
* ``--yes`` answers possession drills only; a request that releases the share or approves a
  rotation always asks the person, and the end of the input is an error, not an answer.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path

from custodian_agent import responder
from custodian_agent.approvals import asks_person
from custodian_agent.commands import FORMAT, custodian_policy, passphrase_flag, token_flags
from custodian_agent.commands.keys import load_key
from custodian_agent.commands.requests import cell
from custodian_agent.memory import DomainMemory
from sdquorum import envelopes, pki
from sdquorum.envelopes import CeremonyKind
from sdquorum.errors import UsageError
from sdquorum.offline import CeremonyRequest, OfflineAnswer
from sdquorum_rpc.files import read_input_file, write_private_file

__all__ = ["add_parser", "respond_command"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    o = sub.add_parser(
        "respond",
        help="answer a request file on an offline machine (same checks and crypto as 'run')",
        epilog="example: custodian-agent respond --request alice-x1.request.json --out alice-x1.answer.json \\\n"
        "    --attestation-root attestation-root.pem --wrapping-key alice.wrap.key --wrapping-cert alice.wrap.pem",
        formatter_class=FORMAT,
    )
    o.add_argument("--request", type=Path, required=True, help="the request file the admin gave you")
    o.add_argument("--out", type=Path, required=True, help="where to write the answer file (must not exist)")
    o.add_argument("--attestation-root", type=Path, required=True)
    o.add_argument("--wrapping-key", type=Path, help="passphrase-encrypted key file (or --pkcs11-*)")
    o.add_argument("--wrapping-cert", type=Path, required=True)
    token_flags(o)
    passphrase_flag(o)
    o.add_argument("--allow-domain", action="append", default=[], metavar="HEX")
    o.add_argument("--pin-domain-key", action="append", default=[], metavar="HEX")
    o.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="remember the domain's signing key and highest epoch here (as 'run' does) and refuse "
        "another key or a retired epoch; without it nothing is remembered",
    )
    o.add_argument(
        "--azure-restore",
        action="store_true",
        help="answer an Azure restore request (refused without it: its result goes to an external key)",
    )
    o.add_argument(
        "--yes",
        action="store_true",
        help="answer a possession drill without asking; refused for a request that releases your "
        "share or approves a rotation (those always ask you)",
    )
    o.add_argument("--deny", action="store_true", help="write a denial instead of an answer")


def _ask_yes_no(question: str) -> bool:
    """Exactly yes or no (any case, spaces around ignored); anything else asks again. The end of
    the input is an error, not an answer, so nothing is written."""
    while True:
        try:
            reply = input(question).strip().lower()
        except EOFError:
            raise UsageError(
                "no answer given (the input ended): nothing was written; run again and type yes or no, "
                "or use --yes / --deny"
            ) from None
        if reply in ("yes", "no"):
            return reply == "yes"
        print(f"please type yes or no (you typed {reply[:20]!r})", flush=True)


def respond_command(args: argparse.Namespace) -> int:
    """The offline agent: one request file in, one answer file out, nothing else touched."""
    req = CeremonyRequest.from_bytes(read_input_file(args.request, "request file"))
    if args.yes and asks_person("auto-drills", req.kind):  # the rule 'run' keeps with auto-drills
        raise UsageError(
            f"--yes answers drills only: this {req.kind} request "
            + ("approves a rotation" if req.kind == CeremonyKind.ROTATION else "releases your share")
            + "; run again without --yes, read it and type 'yes' at the prompt"
        )
    policy = custodian_policy(args)
    if args.out.exists():
        raise UsageError(f"{args.out} exists already: choose another --out")
    memory = DomainMemory(args.state_dir) if args.state_dir is not None else None  # damaged: raises
    key = load_key(args, args.passphrase_file)
    thumbprint = pki.thumbprint_sha256(key.certificate_der())
    remembered = memory.known() if memory is not None else None
    checked = responder.check(
        req, thumbprint, policy, datetime.now(UTC), remembered
    )  # raises, naming the check
    if memory is not None and isinstance(checked, envelopes.CheckedRequest):
        h = checked.header
        memory.observe(h.domain_id, h.signing_public_key, h.epoch)
    details = responder.describe(req, checked)
    print(f"request file fingerprint {req.fingerprint} (compare with what the admin read out):")
    for k in (
        "kind",
        "initiator",
        "reason",
        "node_id",
        "node_address",
        "domain_id",
        "epoch",
        "slot",
        "expires_at",
        "destination",
        "proposal",
    ):
        if k in details:
            print(f"  {k:<13} {cell(details[k])}")
    if args.deny:
        approved = False
    elif args.yes:
        approved = True
    else:
        approved = _ask_yes_no(f"Release your answer for this {req.kind}? Type yes or no: ")
    if approved:
        answer = OfflineAnswer(
            req.request_id, req.session_id, req.kind, responder.answer(req, checked, key, os.urandom)
        )
    else:
        answer = OfflineAnswer(
            req.request_id,
            req.session_id,
            req.kind,
            envelopes.make_denial(
                key,
                session_id=req.session_id,
                request_id=req.request_id,
                x=req.x,
                reason="denied by the custodian",
                attestation=req.attestation,
            ).to_bytes(),
            denied=True,
            reason="denied by the custodian",
        )
    write_private_file(args.out, answer.to_bytes(), mode=0o644)
    print(
        f"wrote {args.out}: {'answer' if approved else 'denial'}; give it to the admin ('sdctl upload-answer {args.out.name}')"
    )
    return 0
