"""Certificates for the pool's etcd cluster (docs/adr/0013-pool-on-etcd.md): a CA of its own.

etcd authenticates a client by two things only: the certificate chains to ``--trusted-ca-file``, and
(with ``auth enable``) the certificate's CN names an etcd user. So the CA etcd trusts decides who can
even open a connection. That CA is **not** the transport CA: an admin, app or custodian certificate
must not reach etcd at all, and an etcd certificate must not be accepted by any sdquorum service
(its CN is not a role and it carries no role URI SAN, which :func:`sdquorum.pki.role_from_cert`
requires).

What the etcd CA issues:

* **member** certificates, one per etcd member, used for both the client port (server) and the peer
  port (server and client): EKU serverAuth and clientAuth, CN :data:`ETCD_MEMBER_CN` for every
  member (etcd runs with ``--peer-cert-allowed-cn`` set to it, so no client certificate can speak
  Raft), SANs ``localhost``, ``127.0.0.1``, ``::1``, the member's name and any address given, and the
  cluster name :data:`ETCD_CLUSTER_NAME` that clients verify (they reach several members through
  one TLS name).
* **client** certificates (EKU clientAuth only): one per pool member, CN :func:`etcd_user` of its
  node id, which etcd maps to an etcd user holding the read-write role on ``/sdquorum/`` only; and
  one for the etcd ``root`` user, for bootstrap (users, roles, ``auth enable``) and for ending a
  member's etcd user. The root certificate belongs offline with the operator, like the CA keys.

Invariants: no I/O and no clock (``now`` is passed); every certificate is ECDSA P-256 and never
outlives its CA; no etcd user name can be ``root`` unless asked for as the root certificate.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sdquorum import pki
from sdquorum.errors import MalformedError, UsageError
from sdquorum.pki._certs import require_aware
from sdquorum.pki._issue import leaf_builder, load_issuer, pkcs8_pem  # one PKI code path

__all__ = [
    "ETCD_CLUSTER_NAME",
    "ETCD_MEMBER_CN",
    "ETCD_ROOT_USER",
    "check_member_name",
    "etcd_user",
    "etcd_user_of",
    "issue_etcd_client_cert",
    "issue_etcd_member_cert",
    "make_etcd_ca",
]

ETCD_MEMBER_CN = "sdquorum-etcd-member"
ETCD_CLUSTER_NAME = "etcd.sdquorum.internal"  # the TLS name every member serves; clients check it
ETCD_ROOT_USER = "root"
_MEMBER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # a DNS label: it goes into a DNS SAN
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,57}")  # "node." + id fits a 64-character CN


def make_etcd_ca(now: datetime, days: int = 3650) -> pki.IssuedCert:
    """A self-signed ECDSA P-256 CA for the etcd cluster alone (never the transport CA)."""
    return pki.make_ca("sdquorum etcd CA", now, days)


def etcd_user(node_id: str) -> str:
    """The etcd user (and client certificate CN) of pool member ``node_id``: ``node.<node_id>``."""
    if not _NODE_ID.fullmatch(node_id):
        raise UsageError(
            f"node id {node_id!r} cannot name an etcd user: use 1-58 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return f"node.{node_id}"


def etcd_user_of(cert_pem_or_der: bytes) -> str:
    """The etcd user a client certificate logs in as: its one subject CN (etcd reads nothing else).
    MalformedError for a certificate without exactly one CN."""
    names = pki.load_cert(cert_pem_or_der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise MalformedError("an etcd client certificate names its etcd user in exactly one subject CN")
    return names[0].value


def check_member_name(member: str) -> str:
    """``member`` if it is a valid etcd member name (a DNS label: it goes into a DNS SAN)."""
    if not _MEMBER_NAME.fullmatch(member):
        raise UsageError(
            f"etcd member name {member!r} is invalid: use 1-63 characters of a-z 0-9 - starting with "
            "a letter or digit"
        )
    return member


def issue_etcd_member_cert(
    ca: pki.IssuedCert,
    member: str,
    now: datetime,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = 397,
) -> pki.IssuedCert:
    """Member ``member``'s certificate for its client and peer ports (serverAuth + clientAuth)."""
    check_member_name(member)
    sans: list[x509.GeneralName] = [
        x509.DNSName(name) for name in dict.fromkeys(("localhost", member, ETCD_CLUSTER_NAME, *dns_names))
    ]
    for ip in dict.fromkeys(("127.0.0.1", "::1", *ip_addresses)):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as e:
            raise UsageError(f"IP address {ip!r} is invalid: give a literal IPv4 or IPv6 address") from e
    ekus = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(ca, ETCD_MEMBER_CN, now, days, sans, ekus)


def issue_etcd_client_cert(
    ca: pki.IssuedCert, user: str, now: datetime, *, days: int = 397
) -> pki.IssuedCert:
    """A client certificate whose CN is etcd user ``user`` (:func:`etcd_user` or ``root``)."""
    if user != ETCD_ROOT_USER and not (user.startswith("node.") and etcd_user(user[5:]) == user):
        raise UsageError(f"etcd user {user!r} is neither 'root' nor 'node.<node id>'")
    return _issue(ca, user, now, days, [], [ExtendedKeyUsageOID.CLIENT_AUTH])


def _issue(
    ca: pki.IssuedCert,
    common_name: str,
    now: datetime,
    days: int,
    sans: list[x509.GeneralName],
    ekus: list[x509.ObjectIdentifier],
) -> pki.IssuedCert:
    require_aware(now, "now")
    ca_cert, ca_key = load_issuer(ca, "etcd CA")
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise UsageError("the etcd CA key is not an ECDSA key: make it with make_etcd_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = leaf_builder(ca_cert, key.public_key(), common_name, now, now - pki.CLOCK_SKEW, days)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return pki.IssuedCert(cert.public_bytes(serialization.Encoding.PEM), pkcs8_pem(key))
