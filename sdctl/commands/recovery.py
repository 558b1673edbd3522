"""``sdctl recover`` (rebuild a node from an SD file through the custodians) and ``sdctl
upload-answer`` (answers made offline). A file that is not an SD file at all is refused before a
session opens (exit 2); one that fails a check goes to the node, which refuses and audits it (exit 4).
"""

from __future__ import annotations

from pathlib import Path

from sdctl.commands import Command, arg
from sdctl.ctl import OFFLINE_REQUEST_HELP, Ctl, Running, check_offline_dir, pb, progress_json
from sdquorum.errors import MalformedError, SdquorumError, StateError, UsageError
from sdquorum_rpc.files import read_input_file


async def recover(ctl: Ctl) -> int:
    a = ctl.args
    sd = read_input_file(a.sd_file, "SD file")
    require_sd_file(sd, a.sd_file)
    check_offline_dir(a.offline_request)
    async with ctl.client() as c, c.errors():
        session_id, expires_at = await c.init_recovery(a.reason, a.ttl)
        ctl.running = Running(session_id, "recovery", expires_at)
        first = await c.upload_sd_file(session_id, sd)
        ctl.say(
            f"session {session_id}: domain {first.domain_id} epoch {first.epoch}, "
            f"{first.required} of {len(first.custodians)} custodians needed"
        )
        final = await ctl.follow(c, session_id, a.offline_request)
    if final.state == pb.COMPLETED:
        ctl.emit(f"recovered: {final.message}", progress_json(final))
        return 0
    raise StateError(
        f"recovery failed: {final.message}; start a new session with 'sdctl recover' when the custodians are ready"
    )


SD_FILE_FIELDS = frozenset({"format", "header", "header_signature", "payload"})


def require_sd_file(data: bytes, path: Path) -> None:
    """Refuse, before a session opens, a file that is not an SD file at all (exit 2: the wrong file was
    picked): not JSON, or JSON with none of an SD file's fields. An SD file altered anywhere (its
    format marker included) goes to the node, which is the one to refuse it: it audits the refusal
    ("sd-file-refused", with the reason) and ends the session it opened, and sdctl exits 4 (a
    verification failed), whichever part was altered."""
    import json

    from sdquorum.sdfile import FORMAT

    if FORMAT.encode() in data[:4096] or FORMAT.encode() in data[-4096:]:
        return
    try:
        obj = json.loads(data)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and SD_FILE_FIELDS & obj.keys():
        return
    raise UsageError(
        f"{path} is not an SD file: pick the file 'sdctl download' or 'sdctl rotate' wrote (sd*.json)"
    )


async def upload_answer(ctl: Ctl) -> int:
    from sdquorum.offline import OfflineAnswer

    answers = []
    for path in ctl.args.files:
        try:
            answers.append(OfflineAnswer.from_bytes(read_input_file(path, "answer file")))
        except MalformedError as e:  # a person picked the wrong file: name it (exit 2)
            raise UsageError(f"{path} is not an answer file: {e}") from e
    async with ctl.client() as c:
        for path, ans in zip(ctl.args.files, answers, strict=True):
            try:
                with c.errors():
                    await c.submit_offline_response(ans.request_id, ans.answer, ans.denied)
            except SdquorumError as e:  # which of several files the node refused, same exit code
                raise type(e)(f"{path}: {e}") from e
            ctl.emit(
                f"uploaded {path}: {'denial' if ans.denied else ans.kind + ' answer'} accepted by the node",
                {"file": str(path), "request_id": ans.request_id, "denied": ans.denied},
            )
    return 0


COMMANDS = [
    Command(
        "recover",
        "rebuild this (new) node from an SD file through the custodian agents",
        (
            'sdctl recover --sd-file sd.json --reason "datacentre A lost"',
            'sdctl recover --sd-file sd.json --reason "site lost" --offline-request requests/',
        ),
        (
            arg(
                "--sd-file",
                type=Path,
                required=True,
                help="the latest epoch's SD file; one the node refuses (altered, or a retired epoch) exits 4",
            ),
            arg("--reason", required=True, help="shown to every custodian before approving"),
            arg("--ttl", type=int, default=0, help="session deadline in seconds (default: node's, 600)"),
            arg("--offline-request", type=Path, metavar="DIR", help=OFFLINE_REQUEST_HELP),
        ),
        run=recover,
    ),
    Command(
        "upload-answer",
        "upload answer files made offline by 'custodian-agent respond'",
        ("sdctl upload-answer alice-x1.answer.json", "sdctl upload-answer answers/*.answer.json"),
        (arg("files", type=Path, nargs="+"),),
        run=upload_answer,
    ),
]
