"""Envelopes of the recovery protocol: the exchange-key attestation and the share release.

Order of a recovery, and what binds each step to the one before:

1. The node makes a session and an ephemeral X25519 exchange key, and signs an
   :class:`ExchangeStatement` with its attestation key (certificate chaining to the attestation
   root the agents trust). The statement binds session id, node id and address, domain id, epoch,
   SHA-256 of the SD header, the exchange public key, issue and expiry times, the initiating admin
   and the stated reason, and the key every released share (or the result made from them) ends
   up under: the exchange public key for a native recovery; for an Azure restore, also the Azure
   exchange certificate (``destination_certificate``, DER) the transfer file is wrapped to, which
   the agent shows its custodian as an EXTERNAL, unattested key. A statement names a destination
   certificate if and only if its purpose is ``azure-recovery``.
2. An agent checks, before any decryption (:func:`check_request`): the attestation chain, root and
   expiry; the signature; that the statement names the SD header it was sent; that the header
   signature verifies (and matches a pinned domain key, if any); that the domain is allowed; that
   the header is signed by the key the agent remembers for that domain (pinned at activation or
   first use, :class:`RememberedDomain`) and its epoch is not below the highest the agent has seen
   (a retired epoch is never served again); and that the requested slot's thumbprint is its own
   certificate's.
3. The agent decrypts its share, checks it against the Feldman commitments, seals
   ``{session, domain, epoch, x, share}`` to the exchange key (libsodium sealed box) and signs a
   :class:`ReleaseStatement` (session, domain, epoch, x, thumbprint, SHA-256 of the attestation,
   sealed share) with its wrapping key (RSA-PSS-SHA256) (:func:`make_release`).
4. The coordinator (:func:`open_release`) checks the signature against the slot's certificate from
   the SD header, every binding field of the outer statement, opens the sealed box, checks the inner
   fields equal the outer ones, and returns the share for VSS verification.

Statement version: ``sdquorum-exchange-attestation-v2`` (v2 added ``destination_certificate``).
Parsing is strict: exactly the v2 members, no other. A v1 statement is refused by this version and a
v2 one by older agents ("unknown type"), so each side fails closed and nothing is released to a
request whose destination its custodian could not be shown: upgrade nodes and agents together (a
session lives at most 24 h; a v1 session running during the upgrade is simply started again).

Nothing here does I/O or reads a clock: ``now`` is passed in.

Modules: :mod:`._attestation` (the statement and its attestation), :mod:`._request` (an agent's
checks before decryption), :mod:`._answers` (the signed answer envelopes and their bindings),
:mod:`._release` (sealing and opening a share) and :mod:`._proof` (possession proofs and denials).
"""

from __future__ import annotations

from sdquorum.envelopes._answers import (
    DENIAL_TYPE,
    PROOF_TYPE,
    RELEASE_TYPE,
    Denial,
    DenialStatement,
    Proof,
    ProofStatement,
    Release,
    ReleaseStatement,
    SlotKey,
)
from sdquorum.envelopes._attestation import (
    ATTESTATION_CONTEXT,
    ATTESTATION_TYPE,
    CHALLENGED,
    CLOCK_SKEW_SECONDS,
    MAX_DESTINATION_CERTIFICATE_BYTES,
    MAX_ENVELOPE_BYTES,
    PURPOSES,
    Attestation,
    CeremonyKind,
    CertifiedStatement,
    ExchangeStatement,
    sign_attestation,
    verify_attestation,
)
from sdquorum.envelopes._proof import make_denial, make_proof, proof_context, verify_denial, verify_proof
from sdquorum.envelopes._release import (
    SHARE_TYPE,
    decrypt_share,
    make_release,
    open_release,
    open_sealed_share,
    seal_release,
)
from sdquorum.envelopes._request import (
    CheckedRequest,
    CustodianPolicy,
    RememberedDomain,
    check_remembered,
    check_request,
)

__all__ = [
    "ATTESTATION_CONTEXT",
    "ATTESTATION_TYPE",
    "CHALLENGED",
    "CLOCK_SKEW_SECONDS",
    "DENIAL_TYPE",
    "MAX_DESTINATION_CERTIFICATE_BYTES",
    "MAX_ENVELOPE_BYTES",
    "PROOF_TYPE",
    "PURPOSES",
    "RELEASE_TYPE",
    "SHARE_TYPE",
    "Attestation",
    "CeremonyKind",
    "CertifiedStatement",
    "CheckedRequest",
    "CustodianPolicy",
    "Denial",
    "DenialStatement",
    "ExchangeStatement",
    "Proof",
    "ProofStatement",
    "Release",
    "ReleaseStatement",
    "RememberedDomain",
    "SlotKey",
    "check_remembered",
    "check_request",
    "decrypt_share",
    "make_denial",
    "make_proof",
    "make_release",
    "open_release",
    "open_sealed_share",
    "proof_context",
    "seal_release",
    "sign_attestation",
    "verify_attestation",
    "verify_denial",
    "verify_proof",
]
