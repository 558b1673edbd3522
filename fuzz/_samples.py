"""Valid encodings of every format the core parses, made with the real encoders.

They seed the atheris corpus (``make_corpus.py``) and are the starting points of the structure-aware
and mutation tests (``tests/fuzz``). Keys are fresh on every call (RSA-2048, three custodians, to keep
seeds small), except the backup's domain secrets, which come from a fixed seed
(:func:`_harness.backup_secrets`) so a fuzz target opening backups can hold the same key as its seeds
and get past the signature check.

``Samples.encodings`` maps a decoder name of :mod:`_harness` to its valid inputs, in the form that
decoder's adapter takes (bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import nacl.public
from _harness import Context, backup_secrets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sdquorum import audit, backup, pki, shamir
from sdquorum.encoding import b64e, canonical_json
from sdquorum.envelopes import (
    CheckedRequest,
    ExchangeStatement,
    make_denial,
    make_proof,
    make_release,
    sign_attestation,
)
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.offline import CeremonyRequest, OfflineAnswer
from sdquorum.proposal import RotationProposal
from sdquorum.review import CustodyRecord, DrillResult, RetiredEpoch
from sdquorum.sdfile import DomainSecrets, new_domain_secrets, seal_domain, share_label

__all__ = ["Samples", "build_samples"]

SESSION = "session-1"


@dataclass(frozen=True)
class Samples:
    context: Context
    encodings: dict[str, tuple[bytes, ...]]

    def of(self, decoder: str) -> tuple[bytes, ...]:
        return self.encodings.get(decoder, ())


def build_samples(now: datetime | None = None) -> Samples:
    """Every format, validly encoded; ``now`` pins certificate validity and statement times."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    t0 = int(now.timestamp())

    wrapping = []
    for name in ("alice", "bob", "carol"):
        key, cert_pem = pki.make_wrapping_key(name, now, bits=2048)
        der = pki.load_cert(cert_pem).public_bytes(serialization.Encoding.DER)
        wrapping.append(SoftwareWrappingKey(key, der))
    certs = [k.certificate_der() for k in wrapping]

    secrets = new_domain_secrets(os.urandom, admins=("admin",))
    sd = seal_domain(secrets, certs, 2, epoch=1, created_by="node-a", created_at=t0, rng=os.urandom)
    header = sd.header
    alice = wrapping[0]
    share = shamir.Share.from_bytes(
        1, alice.decrypt(header.slot(1).encrypted_share, share_label(header.domain_id, header.epoch, 1))
    )

    root = pki.make_attestation_root("sdquorum fuzz attestation root", now)
    node = pki.issue_attestation_cert(root, "node-b", now)
    node_key = serialization.load_pem_private_key(node.key_pem, password=None)
    assert isinstance(node_key, Ed25519PrivateKey)
    node_der = pki.load_cert(node.cert_pem).public_bytes(serialization.Encoding.DER)

    proposal = RotationProposal(
        domain_id=header.domain_id,
        from_epoch=1,
        quorum=2,
        certificates_der=tuple(certs),
        proposer="admin",
        reason="quarterly rotation",
        expires_at=t0 + 3600,
    )
    exchange = nacl.public.PrivateKey.generate().public_key.encode()
    statements = {
        purpose: ExchangeStatement(
            session_id=SESSION,
            purpose=purpose,
            node_id="node-b",
            node_address="node-b.example:7443",
            domain_id=header.domain_id,
            epoch=1,
            sd_header_sha256=sd.signed_header.sha256,
            exchange_public_key=exchange,
            issued_at=t0,
            expires_at=t0 + 600,
            initiator="admin",
            reason="fuzz seed",
            challenge=b"" if purpose == "recovery" else os.urandom(32),
            proposal_sha256=proposal_hash(proposal) if purpose == "rotation" else b"",
            destination_certificate=certs[2] if purpose == "azure-recovery" else b"",
        )
        for purpose in ("recovery", "drill", "rotation", "azure-recovery")
    }
    attestations = {p: sign_attestation(s, node_key, node_der) for p, s in statements.items()}
    release = make_release(
        CheckedRequest(statements["recovery"], attestations["recovery"].sha256, header, 1), share, alice
    )
    proof = make_proof(
        CheckedRequest(statements["drill"], attestations["drill"].sha256, header, 1), share, alice, os.urandom
    )

    request_ids = {
        "recovery": "0000000000000001",
        "drill": "0000000000000002",
        "rotation": "0000000000000003",
    }
    denial = make_denial(
        alice,
        session_id=SESSION,
        request_id=request_ids["drill"],
        x=1,
        reason="not today",
        attestation=attestations["drill"].to_bytes(),
    )

    requests = [
        CeremonyRequest(
            request_id=request_ids[kind],
            session_id=SESSION,
            kind=kind,
            x=1,
            custodian="alice",
            attestation=attestations[kind].to_bytes(),
            header=sd.signed_header.header_bytes,
            header_signature=sd.signed_header.signature,
            proposal=proposal.to_bytes() if kind == "rotation" else b"",
        ).to_bytes()
        for kind in ("recovery", "drill", "rotation")
    ]
    answers = [
        OfflineAnswer(request_ids["recovery"], SESSION, "recovery", release.to_bytes()).to_bytes(),
        OfflineAnswer(
            request_ids["drill"], SESSION, "drill", b"", denied=True, reason="not today"
        ).to_bytes(),
    ]

    bsecrets = backup_secrets()
    backup_file = backup.seal_backup(
        bsecrets, _key_rows_image(t0), key_count=2, node_id="node-b", created_at=t0, rng=os.urandom
    )
    backup_v1 = _seal_backup_v1(
        bsecrets,
        [
            {
                "name": "db-key",
                "type": 1,
                "public": b64e(b""),
                "private": b64e(os.urandom(32)),
                "created_at": t0,
            },
            {"name": "signing", "type": 2, "public": b64e(os.urandom(44)), "private": b64e(os.urandom(32))},
        ],
        t0,
    )

    entries: list[audit.AuditEntry] = []
    for event, details in (
        ("domain-created", {"epoch": 1, "quorum": 2}),
        ("custody-handoff", {"custodian": "alice", "holder": "Alice B.", "note": "café"}),
        ("recovery-started", {"session": SESSION, "slots": [1, 2], "ok": True, "why": None}),
    ):
        prev = entries[-1] if entries else None
        entries.append(
            audit.make_entry(prev, time=t0, event=event, actor="admin", details=details, key=node_key)
        )
    export = audit.export_lines(entries, node_id="node-b", certificate_der=node_der, key=node_key, time=t0)

    tls_ca = pki.make_ca("sdquorum fuzz tls ca", now)
    tls_certs = [
        pki.issue_tls_cert(tls_ca, pki.Role.parse(role), now).cert_pem
        for role in ("admin", "node", "custodian/alice")
    ]

    records = [
        CustodyRecord(t0, "handoff", "alice", holder="Alice B.", location="Safe 2, Geneva", actor="admin"),
        CustodyRecord(t0, "review", None, note="Q3 review"),
    ]
    drills = [DrillResult(t0, "alice", 1, "proved", "12 s"), DrillResult(t0, "bob", 2, "unreachable")]
    retired = [RetiredEpoch(1, sd.signed_header.sha256, t0)]

    encodings: dict[str, tuple[bytes, ...]] = {
        "SecurityDomainFile.from_bytes": (sd.to_bytes(),),
        "Header.from_bytes": (sd.signed_header.header_bytes,),
        "SignedHeader": (sd.signed_header.header_bytes,),
        "DomainSecrets.from_bytes": (secrets.to_bytes(), bsecrets.to_bytes()),
        "Attestation.from_bytes": tuple(a.to_bytes() for a in attestations.values()),
        "ExchangeStatement.from_bytes": tuple(s.to_bytes() for s in statements.values()),
        "Release.from_bytes": (release.to_bytes(),),
        "ReleaseStatement.from_bytes": (release.statement_bytes,),
        "Proof.from_bytes": (proof.to_bytes(),),
        "ProofStatement.from_bytes": (proof.statement_bytes,),
        "Denial.from_bytes": (denial.to_bytes(),),
        "DenialStatement.from_bytes": (denial.statement_bytes,),
        "Share.from_bytes": (bytes([share.x]) + share.to_bytes(),),
        "Commitments.from_points": (b"".join(header.commitments.points),),
        "SchnorrProof.from_bytes": (proof.statement.proof,),
        "open_backup": (backup_file,),
        "open_backup(v1)": (backup_v1,),
        "backup_domain_id": (backup_file,),
        "verify_export": ("\n".join(export).encode(),),
        "verify_export(root)": ("\n".join(export).encode(),),
        "AuditEntry.from_json": tuple(line.encode() for line in export[1:-1]),
        "CeremonyRequest.from_bytes": tuple(requests),
        "OfflineAnswer.from_bytes": tuple(answers),
        "RotationProposal.from_bytes": (proposal.to_bytes(),),
        "CustodyRecord.from_json": tuple(_json(r.to_json()) for r in records),
        "DrillResult.from_json": tuple(_json(d.to_json()) for d in drills),
        "RetiredEpoch.from_json": tuple(_json(r.to_json()) for r in retired),
        "b64d": (b"", b"AQIDBA", b"_-8", b"AQ=="),
        "parse_json_object": (statements["drill"].to_bytes(), b'{"a":[1,2.5,null,true,"x"],"b":{}}'),
        "load_cert": (certs[0], node.cert_pem, *tls_certs),
        "role_from_cert": tuple(tls_certs),
        "verify_attestation_chain": (node_der, node.cert_pem),
        "rsa_public_key_of": (certs[0],),
        "validate_download": (certs[0],),  # the context holds the other two
    }
    context = Context(
        backup_secrets=bsecrets,
        attestation_root_pem=root.cert_pem,
        now=now + timedelta(seconds=1),
        wrapping_certs=tuple(certs[1:]),
    )
    return Samples(context, encodings)


def proposal_hash(proposal: RotationProposal) -> bytes:
    return hashlib.sha256(proposal.to_bytes()).digest()


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def _key_rows_image(t0: int) -> bytes:
    """A small SQLite image of a key table, as a version 2 backup's body holds (its rows are random
    bytes standing for keys sealed under a data encryption key: open_backup does not open them)."""
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE keys (name TEXT PRIMARY KEY NOT NULL, type INTEGER NOT NULL, public_der BLOB NOT NULL, "
        "sealed BLOB NOT NULL, created_at INTEGER NOT NULL) WITHOUT ROWID, STRICT"
    )
    db.executemany(
        "INSERT INTO keys VALUES (?, ?, ?, ?, ?)",
        [("db-key", 1, b"", os.urandom(60), t0), ("signing", 2, os.urandom(44), os.urandom(60), t0 + 1)],
    )
    image = db.serialize()
    db.close()
    return image


def _seal_backup_v1(secrets: DomainSecrets, items: list[dict[str, object]], t0: int) -> bytes:
    """A version 1 backup (JSON, keys in the clear inside the ciphertext), which sdquorum still reads
    but no longer writes: its layout, written out here from the version 1 description."""
    header = canonical_json(
        {"domain_id": secrets.domain_id.hex(), "node_id": "node-b", "created_at": t0, "key_count": len(items)}
    )
    nonce = os.urandom(12)
    ciphertext = AESGCM(secrets.backup_key).encrypt(
        nonce, canonical_json(items), hashlib.sha256(header).digest()
    )
    signature = secrets.sign(backup.BACKUP_CONTEXT + header + hashlib.sha256(nonce + ciphertext).digest())
    return canonical_json(
        {
            "format": "sdquorum-backup",
            "version": 1,
            "header": b64e(header),
            "nonce": b64e(nonce),
            "ciphertext": b64e(ciphertext),
            "signature": b64e(signature),
        }
    )
