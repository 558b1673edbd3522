"""What the fuzzers check, shared by the atheris targets (``fuzz_*.py``) and the hypothesis tests.

Every decoder of the core is listed in :data:`DECODERS` with an adapter from bytes (what a fuzzer
produces) to the decoder's own argument: ``from_json`` decoders get ``json.loads`` of the bytes (input
that is not JSON is skipped: the decoder never sees it), ``verify_export`` gets the lines of the bytes
as ``sdctl audit verify`` reads them, ``Share.from_bytes`` takes x from the first byte,
``Commitments.from_points`` takes 32-byte chunks.

The oracle, for any input:

1. The decoder returns a value or raises :class:`~sdquorum.errors.SdquorumError`. Any other
   exception is a bug: a peer's bytes crash the process or reach the user as a traceback.
2. For a decoder with an encoder: the accepted value re-encodes (or the encoder raises a project
   error), that encoding decodes, and it re-encodes to the same bytes. A parser that accepts what its
   own format cannot carry breaks whoever signs, hashes or stores the value next.

Known bugs are pinned by strict xfail tests in ``tests/fuzz/test_fuzz_parsers.py``. :func:`exercise`
tolerates them, matched narrowly (decoder, exception type and the sdquorum function that raised it),
so the fuzzers keep looking for new ones; set ``SDQUORUM_FUZZ_STRICT=1`` to tolerate none. When a fix
lands, its xfail test passes (strict: the suite fails) and the entry here is deleted with the marker.

``SDQUORUM_FUZZ_SELFTEST=1`` makes the input :data:`SELFTEST_INPUT` raise, so a test can check a
crash really stops a fuzz run with a non-zero exit code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives import serialization

from sdquorum import (
    audit,
    backup,
    encoding,
    envelopes,
    keys,
    offline,
    pki,
    policy,
    proposal,
    review,
    sdfile,
    shamir,
)
from sdquorum.errors import SdquorumError

__all__ = [
    "DECODERS",
    "FAMILIES",
    "KNOWN_BUGS",
    "SELFTEST_INPUT",
    "Context",
    "Decoder",
    "KnownBug",
    "RoundTripError",
    "backup_secrets",
    "exercise",
    "known_bug",
    "make_context",
    "raised_in",
    "target",
]

FAMILIES = (
    "sdfile",
    "envelopes",
    "shamir",
    "backup",
    "audit",
    "offline",
    "proposal",
    "review",
    "encoding",
    "pki",
)
SELFTEST_INPUT = b"sdquorum fuzz self-test: crash here"
_PACKAGE_DIR = str(Path(sdfile.__file__).resolve().parent)


@dataclass(frozen=True)
class Context:
    """What some decoders need besides the input: a domain to open backups, a root and a clock."""

    backup_secrets: sdfile.DomainSecrets
    attestation_root_pem: bytes
    now: datetime
    wrapping_certs: tuple[bytes, ...]  # two RSA wrapping certificates; validate_download adds the input


@dataclass(frozen=True)
class Decoder:
    name: str
    family: str
    decode: Callable[[Context, bytes], object]
    encode: Callable[[Any], bytes] | None = None  # inverse of ``decode``, for the round-trip oracle


class RoundTripError(AssertionError):
    """A decoder accepted a value that does not survive encode -> decode -> encode."""


class _Skip(Exception):
    """The adapter has nothing for the decoder to parse (input that is not JSON for a from_json)."""


def backup_secrets() -> sdfile.DomainSecrets:
    """Domain secrets from a fixed seed: the backup seeds and the backup target share them."""
    counter = 0

    def rng(k: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < k:
            out += hashlib.sha256(b"sdquorum fuzz backup v1" + counter.to_bytes(8, "big")).digest()
            counter += 1
        return out[:k]

    return sdfile.new_domain_secrets(rng, admins=("admin",))


# ------------------------------------------------------------------------------------------ adapters


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise _Skip from e


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _lines(data: bytes) -> list[str]:
    return data.decode(errors="replace").splitlines()  # as `sdctl audit verify` reads a file


def _points(data: bytes) -> list[bytes]:
    return [data[i : i + 32] for i in range(0, len(data), 32)]


def _share(data: bytes) -> shamir.Share:
    return shamir.Share.from_bytes(data[0] if data else 0, data[1:])


def _to_bytes(value: Any) -> bytes:
    data = value.to_bytes()
    assert isinstance(data, bytes)
    return data


def _record_json(value: Any) -> bytes:
    """What the node does with an accepted record: audit it (canonical JSON, signed)."""
    return encoding.canonical_json(value.to_json())


def _entry_json(value: audit.AuditEntry) -> bytes:
    """What the node stores for an audit entry (hsm_node.node.Node.audit)."""
    return json.dumps(value.to_json(), sort_keys=True).encode()


def _cert_der(value: Any) -> bytes:
    data = value.public_bytes(serialization.Encoding.DER)
    assert isinstance(data, bytes)
    return data


def _decoders() -> tuple[Decoder, ...]:
    sd, env = sdfile, envelopes
    return (
        Decoder(
            "SecurityDomainFile.from_bytes",
            "sdfile",
            lambda c, d: sd.SecurityDomainFile.from_bytes(d),
            _to_bytes,
        ),
        Decoder("Header.from_bytes", "sdfile", lambda c, d: sd.Header.from_bytes(d), _to_bytes),
        Decoder("SignedHeader", "sdfile", lambda c, d: sd.SignedHeader(d, bytes(64))),
        Decoder("DomainSecrets.from_bytes", "sdfile", lambda c, d: sd.DomainSecrets.from_bytes(d), _to_bytes),
        Decoder("Attestation.from_bytes", "envelopes", lambda c, d: env.Attestation.from_bytes(d), _to_bytes),
        Decoder(
            "ExchangeStatement.from_bytes",
            "envelopes",
            lambda c, d: env.ExchangeStatement.from_bytes(d),
            _to_bytes,
        ),
        Decoder("Release.from_bytes", "envelopes", lambda c, d: env.Release.from_bytes(d), _to_bytes),
        Decoder(
            "ReleaseStatement.from_bytes",
            "envelopes",
            lambda c, d: env.ReleaseStatement.from_bytes(d),
            _to_bytes,
        ),
        Decoder("Proof.from_bytes", "envelopes", lambda c, d: env.Proof.from_bytes(d), _to_bytes),
        Decoder(
            "ProofStatement.from_bytes", "envelopes", lambda c, d: env.ProofStatement.from_bytes(d), _to_bytes
        ),
        Decoder("Denial.from_bytes", "envelopes", lambda c, d: env.Denial.from_bytes(d), _to_bytes),
        Decoder(
            "DenialStatement.from_bytes",
            "envelopes",
            lambda c, d: env.DenialStatement.from_bytes(d),
            _to_bytes,
        ),
        Decoder("Share.from_bytes", "shamir", lambda c, d: _share(d), lambda v: bytes([v.x]) + v.to_bytes()),
        Decoder(
            "Commitments.from_points",
            "shamir",
            lambda c, d: shamir.Commitments.from_points(_points(d)),
            lambda v: b"".join(v.points),
        ),
        Decoder(
            "SchnorrProof.from_bytes", "shamir", lambda c, d: shamir.SchnorrProof.from_bytes(d), _to_bytes
        ),
        Decoder("open_backup", "backup", lambda c, d: backup.open_backup(d, c.backup_secrets)),
        Decoder("open_backup(v1)", "backup", lambda c, d: backup.open_backup(d, c.backup_secrets)),
        Decoder("backup_domain_id", "backup", lambda c, d: backup.backup_domain_id(d)),
        Decoder("verify_export", "audit", lambda c, d: audit.verify_export(_lines(d))),
        Decoder(
            "verify_export(root)",
            "audit",
            lambda c, d: audit.verify_export(_lines(d), root_pem=c.attestation_root_pem, now=c.now),
        ),
        Decoder(
            "AuditEntry.from_json", "audit", lambda c, d: audit.AuditEntry.from_json(_json(d)), _entry_json
        ),
        Decoder(
            "CeremonyRequest.from_bytes",
            "offline",
            lambda c, d: offline.CeremonyRequest.from_bytes(d),
            _to_bytes,
        ),
        Decoder(
            "OfflineAnswer.from_bytes", "offline", lambda c, d: offline.OfflineAnswer.from_bytes(d), _to_bytes
        ),
        Decoder(
            "RotationProposal.from_bytes",
            "proposal",
            lambda c, d: proposal.RotationProposal.from_bytes(d),
            _to_bytes,
        ),
        Decoder(
            "CustodyRecord.from_json",
            "review",
            lambda c, d: review.CustodyRecord.from_json(_json(d)),
            _record_json,
        ),
        Decoder(
            "DrillResult.from_json",
            "review",
            lambda c, d: review.DrillResult.from_json(_json(d)),
            _record_json,
        ),
        Decoder(
            "RetiredEpoch.from_json",
            "review",
            lambda c, d: review.RetiredEpoch.from_json(_json(d)),
            _record_json,
        ),
        Decoder(
            "b64d", "encoding", lambda c, d: encoding.b64d(_text(d)), lambda v: encoding.b64e(v).encode()
        ),
        Decoder(
            "parse_json_object",
            "encoding",
            lambda c, d: encoding.parse_json_object(d, "fuzz input"),
            encoding.canonical_json,
        ),
        Decoder("load_cert", "pki", lambda c, d: pki.load_cert(d), _cert_der),
        Decoder("role_from_cert", "pki", lambda c, d: pki.role_from_cert(d)),
        # Beyond the list: three more functions that parse certificates a peer supplies.
        Decoder(
            "verify_attestation_chain",
            "pki",
            lambda c, d: pki.verify_attestation_chain(d, c.attestation_root_pem, c.now),
        ),
        Decoder("rsa_public_key_of", "pki", lambda c, d: keys.rsa_public_key_of(d)),
        Decoder(
            "validate_download",
            "pki",
            lambda c, d: policy.validate_download([d, *c.wrapping_certs], 2, c.now),
        ),
    )


DECODERS: tuple[Decoder, ...] = _decoders()


# ---------------------------------------------------------------------------------------- known bugs


@dataclass(frozen=True)
class KnownBug:
    """A bug the fuzzers found, pinned by an xfail test; matched by where it raises, not by input."""

    id: str
    exceptions: tuple[type[BaseException], ...]  # exact types
    raised_in: str  # "module.function" of the innermost sdquorum frame
    stage: str | None = None  # "decode"; "round-trip" (re-encoding what was accepted); None: either
    decoders: frozenset[str] | None = None  # None: any decoder reaching that code


KNOWN_BUGS: tuple[KnownBug, ...] = ()


def known_bug(
    decoder: str, exc: BaseException, stage: str = "decode", *, strict: bool = False
) -> KnownBug | None:
    """The known bug ``exc`` is an instance of, if any; never one when strict (or SDQUORUM_FUZZ_STRICT=1)."""
    if strict or _STRICT:
        return None
    cause = exc.__cause__ if isinstance(exc, RoundTripError) and exc.__cause__ is not None else exc
    where = raised_in(cause)
    for bug in KNOWN_BUGS:
        if (
            (bug.decoders is None or decoder in bug.decoders)
            and type(cause) in bug.exceptions
            and where == bug.raised_in
            and bug.stage in (None, stage)
        ):
            return bug
    return None


def raised_in(exc: BaseException) -> str:
    """``module.function`` of the innermost sdquorum frame of ``exc``'s traceback ("" if none)."""
    where = ""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        # A comprehension or lambda counts as the function around it.
        if code.co_filename.startswith(_PACKAGE_DIR) and not code.co_name.startswith("<"):
            where = f"{Path(code.co_filename).stem}.{code.co_name}"
        tb = tb.tb_next
    return where


_STRICT = os.environ.get("SDQUORUM_FUZZ_STRICT") == "1"
_SELFTEST = os.environ.get("SDQUORUM_FUZZ_SELFTEST") == "1"


# ------------------------------------------------------------------------------------------- oracle


def exercise(decoder: Decoder, ctx: Context, data: bytes, *, strict: bool = False) -> object:
    """Run the oracle on one input; return the decoded value (None if refused). Raises on a bug.

    ``strict``: tolerate no known bug (the pinned tests use it to reproduce theirs).
    """
    if _SELFTEST and data == SELFTEST_INPUT:
        raise RuntimeError("fuzz harness self-test input: a crash is reported")
    try:
        value = decoder.decode(ctx, data)
    except (SdquorumError, _Skip):
        return None
    except Exception as e:
        if known_bug(decoder.name, e, strict=strict) is None:
            e.add_note(f"fuzz: {decoder.name} raised {type(e).__name__} on input {data[:300]!r}")
            raise
        return None
    if decoder.encode is not None:
        try:
            _round_trip(decoder, ctx, value)
        except Exception as e:
            if known_bug(decoder.name, e, "round-trip", strict=strict) is None:
                e.add_note(f"fuzz: round trip of {decoder.name} failed on input {data[:300]!r}")
                raise
    return value


def _round_trip(decoder: Decoder, ctx: Context, value: object) -> None:
    assert decoder.encode is not None
    try:
        first = decoder.encode(value)
    except SdquorumError:
        return  # the encoder refuses the value, naming why: a documented outcome
    try:
        again = decoder.decode(ctx, first)
    except Exception as e:
        raise RoundTripError(f"{decoder.name} refuses the re-encoding of a value it accepted: {e!r}") from e
    second = decoder.encode(again)
    if second != first:
        raise RoundTripError(
            f"{decoder.name}: encode(decode(encode(v))) != encode(v): {first[:200]!r} vs {second[:200]!r}"
        )


# ------------------------------------------------------------------------------------------- targets


def make_context(family: str, now: datetime | None = None) -> Context:
    """A context for a fuzz target: the fixed backup secrets, a fresh attestation root, and (only
    for the ``pki`` family, which needs them) two fresh RSA wrapping certificates."""
    now = now or datetime.now(UTC)
    root = pki.make_attestation_root("sdquorum fuzz attestation root", now)
    certs: tuple[bytes, ...] = ()
    if family == "pki":
        certs = tuple(
            pki.load_cert(pki.make_wrapping_key(name, now, bits=2048)[1]).public_bytes(
                serialization.Encoding.DER
            )
            for name in ("bob", "carol")
        )
    return Context(backup_secrets(), root.cert_pem, now, certs)


def target(family: str) -> Callable[[bytes], None]:
    """The ``TestOneInput`` of a family's atheris target: every decoder of the family on each input."""
    if family not in FAMILIES:
        raise ValueError(f"unknown fuzz family {family!r}: one of {', '.join(FAMILIES)}")
    decoders = [d for d in DECODERS if d.family == family]
    ctx = make_context(family)

    def test_one_input(data: bytes) -> None:
        for decoder in decoders:
            exercise(decoder, ctx, data)

    return test_one_input
