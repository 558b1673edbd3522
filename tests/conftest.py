"""Fixtures shared by the tests.

Everything slow (RSA key generation) is made once per test session: six RSA-2048 wrapping keys,
one attestation root and one node attestation key. Time is pinned once per session (``now``, the
wall clock at start, whole seconds, so that certificates made from it also work where a real clock
is read, as in TLS); code under test gets it passed in. The ceremony state machines take unix
seconds: ``t0`` is ``now`` in those.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import Rng

from coordinator.ceremony import CustodianRequest
from coordinator.recovery import RecoverySession
from sdquorum import pki, shamir
from sdquorum.envelopes import (
    Attestation,
    CheckedRequest,
    CustodianPolicy,
    ExchangeStatement,
    Release,
    check_request,
    decrypt_share,
    make_release,
    sign_attestation,
)
from sdquorum.keys import SoftwareWrappingKey
from sdquorum.sdfile import (
    DomainSecrets,
    SecurityDomainFile,
    SignedHeader,
    new_domain_secrets,
    seal_domain,
    share_label,
)

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = int(NOW.timestamp())
CUSTODIAN_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank")
SESSION_SECONDS = 600


# ---------------------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class NodeAttestation:
    """A node's attestation certificate and its loaded Ed25519 key."""

    issued: pki.IssuedCert
    key: Ed25519PrivateKey
    certificate_der: bytes

    def sign(self, statement: ExchangeStatement) -> Attestation:
        return sign_attestation(statement, self.key, self.certificate_der)


def load_node_attestation(issued: pki.IssuedCert) -> NodeAttestation:
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    der = pki.load_cert(issued.cert_pem).public_bytes(serialization.Encoding.DER)
    return NodeAttestation(issued, key, der)


@pytest.fixture(scope="session")
def now() -> datetime:
    return NOW


@pytest.fixture(scope="session")
def wrapping_private_keys(now: datetime) -> list[tuple[rsa.RSAPrivateKey, bytes]]:
    """Six RSA-2048 key pairs with their self-signed certificates (DER); CN = CUSTODIAN_NAMES[i]."""
    pairs = []
    for name in CUSTODIAN_NAMES:
        key, cert_pem = pki.make_wrapping_key(name, now, bits=2048)
        pairs.append((key, pki.load_cert(cert_pem).public_bytes(serialization.Encoding.DER)))
    return pairs


@pytest.fixture(scope="session")
def wrapping_keys(wrapping_private_keys: list[tuple[rsa.RSAPrivateKey, bytes]]) -> list[SoftwareWrappingKey]:
    return [SoftwareWrappingKey(key, der) for key, der in wrapping_private_keys]


@pytest.fixture(scope="session")
def attestation_root(now: datetime) -> pki.IssuedCert:
    return pki.make_attestation_root("sdquorum test attestation root", now)


@pytest.fixture(scope="session")
def node_attestation(attestation_root: pki.IssuedCert, now: datetime) -> NodeAttestation:
    return load_node_attestation(pki.issue_attestation_cert(attestation_root, "node-b", now))


@pytest.fixture(scope="session")
def foreign_node_attestation(now: datetime) -> NodeAttestation:
    """A node called node-b too, but attested under another root than ``attestation_root``."""
    root = pki.make_attestation_root("another vendor's root", now)
    return load_node_attestation(pki.issue_attestation_cert(root, "node-b", now))


# ---------------------------------------------------------------------------------------- SD files


@dataclass(frozen=True)
class Sealed:
    """A sealed SD file with everything a test needs to open it."""

    secrets: DomainSecrets
    sd: SecurityDomainFile
    data: bytes
    keys: tuple[SoftwareWrappingKey, ...]  # keys[x - 1] holds slot x

    def share(self, x: int) -> shamir.Share:
        header = self.sd.header
        raw = self.keys[x - 1].decrypt(
            header.slot(x).encrypted_share, share_label(header.domain_id, header.epoch, x)
        )
        return shamir.Share.from_bytes(x, raw)

    @functools.cached_property
    def secret(self) -> int:
        """The scalar s, reconstructed from slots 1..m."""
        header = self.sd.header
        shares = [self.share(x) for x in range(1, header.quorum + 1)]
        return shamir.combine(shares, header.quorum, header.n)


SealFactory = Callable[..., Sealed]


@pytest.fixture(scope="session")
def make_sealed(wrapping_keys: list[SoftwareWrappingKey]) -> SealFactory:
    """``make_sealed(quorum=3, n=5, ...)``: a fresh SD file sealed to wrapping_keys[:n] (slot x = key x-1)."""

    def make(
        quorum: int = 3,
        n: int = 5,
        *,
        secrets: DomainSecrets | None = None,
        epoch: int = 1,
        created_by: str = "node-a",
        rng: Rng = os.urandom,
    ) -> Sealed:
        keys = wrapping_keys[:n]
        secrets = secrets or new_domain_secrets(os.urandom, admins=("admin",))
        sd = seal_domain(
            secrets,
            [k.certificate_der() for k in keys],
            quorum,
            epoch=epoch,
            created_by=created_by,
            created_at=T0,
            rng=rng,
        )
        return Sealed(secrets, sd, sd.to_bytes(), tuple(keys))

    return make


@pytest.fixture(scope="session")
def sealed(make_sealed: SealFactory) -> Sealed:
    """One 3-of-5 SD file (alice..erin hold slots 1..5), shared by read-only tests."""
    return make_sealed(3, 5)


# ---------------------------------------------------------------------------------------- ceremony


@dataclass(frozen=True)
class HonestAgent:
    """Plays a custodian agent that follows the protocol (DESIGN.md, Recovery)."""

    key: SoftwareWrappingKey
    policy: CustodianPolicy

    @property
    def thumbprint(self) -> bytes:
        return pki.thumbprint_sha256(self.key.certificate_der())

    def request(self, session: RecoverySession) -> CustodianRequest:
        (req,) = session.requests_for(self.thumbprint)
        return req

    def check(self, req: CustodianRequest, now: datetime = NOW) -> CheckedRequest:
        return check_request(
            Attestation.from_bytes(req.attestation),
            SignedHeader(req.header_bytes, req.header_signature),
            req.x,
            self.thumbprint,
            self.policy,
            now,
        )

    def release(
        self, req: CustodianRequest, now: datetime = NOW, share: shamir.Share | None = None
    ) -> Release:
        """The release an honest agent sends, or one carrying ``share`` instead, validly signed."""
        checked = self.check(req, now)
        return make_release(checked, share or decrypt_share(checked, self.key), self.key)

    def answer(self, session: RecoverySession, now: datetime = NOW) -> bytes:
        return self.release(self.request(session), now).to_bytes()


@pytest.fixture(scope="session")
def custodian_policy(attestation_root: pki.IssuedCert) -> CustodianPolicy:
    return CustodianPolicy(attestation_root.cert_pem)


@pytest.fixture(scope="session")
def agents(wrapping_keys: list[SoftwareWrappingKey], custodian_policy: CustodianPolicy) -> list[HonestAgent]:
    """agents[i] holds wrapping_keys[i], so agents[x - 1] answers slot x of a sealed file."""
    return [HonestAgent(k, custodian_policy) for k in wrapping_keys]


SessionFactory = Callable[..., RecoverySession]


@pytest.fixture(scope="session")
def t0(now: datetime) -> int:
    """``now`` in unix seconds, the clock of the ceremony state machines."""
    return int(now.timestamp())


@pytest.fixture(scope="session")
def start_session(node_attestation: NodeAttestation) -> SessionFactory:
    """``start_session(sd, session_id="session-1")``: a recovery session on node-b with ``sd`` loaded.

    Created at T0, deadline T0 + SESSION_SECONDS; the attestation is signed by ``node_attestation``.
    """

    def start(sd: SecurityDomainFile, session_id: str = "session-1") -> RecoverySession:
        return _start_session(sd, node_attestation, session_id)

    return start


def _start_session(sd: SecurityDomainFile, node: NodeAttestation, session_id: str) -> RecoverySession:
    session = RecoverySession(
        session_id=session_id,
        node_id="node-b",
        node_address="node-b.example:7443",
        initiator="admin",
        reason="disaster recovery drill",
        created_at=T0,
        expires_at=T0 + SESSION_SECONDS,
        rng=os.urandom,
    )
    session.load_sd_file(sd, T0, node.sign)
    return session
