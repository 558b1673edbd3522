"""Issue 13, classes 3 and 4: a key is its public key, and a wire identifier is its peer's.

Class 3: a key recorded lost came back in a rotation under a freshly self-signed certificate over
the same RSA key; approvers saw NEW KEY and the node accepted. Class 4: identifiers from the wire
not tied to the authenticated peer (a custodian's request stream, its answers).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import Cluster, certs_of, running_cluster
from recertify import fresh_certificate

from sdquorum import envelopes, pki
from sdquorum.envelopes import CustodianPolicy
from sdquorum.errors import UsageError
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.pki import Role
from sdquorum.review import CustodyRecord
from sdquorum.sdfile import SecurityDomainFile, SignedHeader

pytestmark = pytest.mark.asyncio


async def approve_rotation(a: Cluster, keys: list[SoftwareWrappingKey], names: list[str]) -> None:
    """Each of ``keys`` (held by custodian ``names[i]``) approves the open rotation, as its agent would."""
    policy = CustodianPolicy((a.pki / "attestation-root.pem").read_bytes())
    for key, name in zip(keys, names, strict=True):
        thumb = pki.thumbprint_sha256(key.certificate_der())
        (req,) = a.node.pending_requests(thumb)
        checked = envelopes.check_request(
            envelopes.Attestation.from_bytes(req.attestation),
            SignedHeader(req.header_bytes, req.header_signature),
            req.x,
            thumb,
            policy,
            datetime.fromtimestamp(a.clock(), tz=UTC),
            purpose="rotation",
            proposal=req.proposal,
        )
        proof = envelopes.make_proof(checked, envelopes.decrypt_share(checked, key), key, os.urandom)
        await a.node.submit_answer(req.request_id, proof.to_bytes(), Role("custodian", name))


# ------------------------------------------------------------------------------------------- class 3


async def test_a_key_recorded_lost_is_refused_under_a_fresh_certificate(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    """The class-3 example: alice's key is recorded lost; the admin proposes a rotation whose roster
    holds alice's RSA key under a freshly self-signed certificate (CN=alice). Refused, naming alice;
    on the code before, the thumbprint differed and the rotation started."""
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        a.node.add_custody_record(CustodyRecord(0, "lost", "alice", note="token lost"), Role("admin"))
        again = fresh_certificate(wrapping_keys[0], "alice", now)
        assert pki.thumbprint_sha256(again) != pki.thumbprint_sha256(wrapping_keys[0].certificate_der())
        roster = [again, *certs_of(wrapping_keys[1:5])]
        with pytest.raises(UsageError, match="keeps alice's key, which is recorded lost, under CN=alice"):
            await a.node.propose_rotation(roster, 3, "alice has a new certificate", 60, Role("admin"))
        renamed = [fresh_certificate(wrapping_keys[0], "zoe", now), *certs_of(wrapping_keys[1:5])]
        with pytest.raises(UsageError, match="keeps alice's key, which is recorded lost, under CN=zoe"):
            await a.node.propose_rotation(renamed, 3, "zoe joins", 60, Role("admin"))
        assert a.node.session is None  # nothing started


async def test_a_lost_key_stays_lost_after_the_rotation_that_removed_it(
    pki_dir: Path, tmp_path: Path, wrapping_keys: list[SoftwareWrappingKey], now: datetime
) -> None:
    """alice's key is recorded lost in epoch 1; a rotation to epoch 2 leaves her out. A later
    rotation bringing her key back under a new certificate and another name is still refused: the
    custody record names the key (SPKI SHA-256), not only the custodian. On the code before, the
    epoch-2 check looked only at losses since epoch 2 and only by thumbprint, and accepted it."""
    async with running_cluster(pki_dir, tmp_path / "a") as a:
        await a.download(certs_of(wrapping_keys[:5]), quorum=3)
        stamped = a.node.add_custody_record(CustodyRecord(0, "lost", "alice"), Role("admin"))
        assert stamped.key_sha256 == pki.spki_sha256(wrapping_keys[0].certificate_der())
        a.clock.advance(10)
        await a.node.propose_rotation(certs_of(wrapping_keys[1:6]), 3, "alice leaves", 60, Role("admin"))
        await approve_rotation(a, wrapping_keys[1:4], ["bob", "carol", "dave"])
        assert SecurityDomainFile.from_bytes(a.node.security_domain_file()).header.epoch == 2
        a.clock.advance(10)
        back = [fresh_certificate(wrapping_keys[0], "zoe", now), *certs_of(wrapping_keys[1:5])]
        with pytest.raises(UsageError, match="keeps alice's key, which is recorded lost, under CN=zoe"):
            await a.node.propose_rotation(back, 3, "zoe joins", 60, Role("admin"))
        review_header = SecurityDomainFile.from_bytes(a.node.security_domain_file()).header
        assert all(s.name != "alice" for s in review_header.slots)
