"""A distributed restore of an Azure Managed HSM security domain (format version 2).

Azure's own ``az keyvault security-domain restore-blob`` loads every quorum private key onto one
workstation. Here each custodian's agent decrypts only its own share and releases it sealed to this
session's exchange key; the coordinator combines m shares (GF(257)), opens the EncData items (their
MACs are what proves the shares right: Azure files carry no commitments, so a wrong share is found
only there), and writes Azure's transfer file: every item re-encrypted under a fresh master key
wrapped to the Azure HSM's exchange certificate. The host reads ``transfer_file`` on COMPLETED.

Where the result goes: the exchange certificate is an EXTERNAL key the node cannot attest. It is
bound in the attested statement (``destination_certificate``, which every agent shows its custodian)
and the transfer file is wrapped to that bound certificate and to no other. An sdquorum domain never
leaves this way: :meth:`AzureRestoreSession.start` refuses, before any custodian is asked, a file
with an item tagged ``AZURE_PAYLOAD_TAG`` (a native domain exported with ``sdctl sd-file --format
azure``) or whose slots are encrypted to a certificate of the domain the host holds
(``held_thumbprints``); an answer whose certificate holds a key of that domain (``held_keys``, SPKI
digests) is rejected; and a file that opens to an sdquorum SD payload fails the session without a
transfer file.

A share's x is its slot in the file, never what the answer says (:func:`open_azure_answer` rejects
and names a share carrying another x), so no custodian can take another's x. A wrong share must
neither block the good ones nor go unnamed. Once m shares are in, every m of them not tried yet are
combined in turn (n <= 10: at most 252 sets), and the first set that opens the file's MACs wins;
each other share received is then checked against that set's polynomials, and one that does not lie
on them is rejected and named. While no set opens, the session keeps collecting; it fails only when
no slot that could still answer is left.

Late answers: on completion the shares (and the master key made from them) are dropped at once;
what is kept, until the deadline and not past it, is the exchange key and, for every slot that has
not answered, the SHA-256 of the share an honest custodian would release there (the winning set's
polynomials evaluated at its x). A late release is opened and compared with that digest in constant
time: a wrong one is REJECTED and named, a good one stays NOT_NEEDED. At the first tick at or after
the deadline (or when the session fails) the exchange key and the digests are dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools

from cryptography.hazmat.primitives import serialization

from coordinator.ceremony import (
    AttestationSigner,
    Ceremony,
    CustodianRequest,
    CustodianStatus,
)
from sdquorum import pki
from sdquorum.azure import gf257
from sdquorum.azure.ceremony import (
    AZURE_PURPOSE,
    AzureAnswer,
    azure_domain_id,
    exchange_certificate_summary,
    holds_sdquorum_domain,
    open_azure_answer,
)
from sdquorum.azure.sdfile import (
    MASTER_KEY_BYTES,
    AzureSecurityDomain,
    combine_master_key,
    decrypt_items,
    make_transfer_file,
)
from sdquorum.encoding import b64e
from sdquorum.envelopes import Attestation
from sdquorum.errors import SdquorumError, StateError, UnauthenticatedError, UsageError, VerificationError

__all__ = ["AzureRestoreSession"]

NATIVE_DOMAIN_REFUSED = "an sdquorum domain's shares go only into a native recovery ('sdctl recover')"


class AzureRestoreSession(Ceremony):
    kind = AZURE_PURPOSE
    answer_word = "shares"
    checks_late_answers = True

    def _setup(self) -> None:
        self.transfer_file: bytes | None = None
        self._sd: AzureSecurityDomain | None = None
        self._sd_bytes = b""
        self._held_keys: frozenset[bytes] = frozenset()
        self._shares: dict[int, gf257.Share] = {}
        self._tried: set[tuple[int, ...]] = set()  # sets of slots whose shares did not open the file
        self._expected: dict[int, bytes] = {}  # slot -> SHA-256 of its honest share (late answers)

    def start(
        self,
        sd_bytes: bytes,
        exchange_cert_der: bytes,
        now: int,
        sign: AttestationSigner,
        *,
        held_thumbprints: frozenset[bytes] = frozenset(),
        held_keys: frozenset[bytes] = frozenset(),
    ) -> Attestation:
        """Attest the restore of ``sd_bytes`` to ``exchange_cert_der``. ``held_thumbprints`` and
        ``held_keys``: the certificate thumbprints and SPKI digests of the custodians of the domain
        the host holds, whose shares must never go into an Azure restore."""
        sd = AzureSecurityDomain.from_bytes(sd_bytes)  # strict: refused before any custodian is asked
        why = holds_sdquorum_domain(sd)
        if why:
            raise UsageError(
                f"the Azure file holds an sdquorum security domain ({why}): {NATIVE_DOMAIN_REFUSED}"
            )
        for i, share in enumerate(sd.shares, start=1):
            if share.x5t_256 in held_thumbprints:
                raise UsageError(
                    f"slot {i} of the Azure file is encrypted to a custodian certificate of the domain this "
                    f"node holds: {NATIVE_DOMAIN_REFUSED}"
                )
        destination = pki.load_cert(exchange_cert_der).public_bytes(serialization.Encoding.DER)
        exchange_certificate_summary(destination)  # an RSA certificate, or refused here
        self._sd, self._sd_bytes, self._held_keys = sd, sd_bytes, held_keys
        slots = [(i, f"x5t:{b64e(s.x5t_256)[:12]}", s.x5t_256) for i, s in enumerate(sd.shares, start=1)]
        return self._open_slots(
            slots,
            domain_id=azure_domain_id(sd_bytes),
            epoch=0,
            required=sd.required,
            file_sha256=hashlib.sha256(sd_bytes).digest(),
            file_bytes=sd_bytes,
            file_signature=b"",
            now=now,
            sign=sign,
            destination_certificate=destination,
        )

    @property
    def destination_certificate(self) -> bytes:
        """The exchange certificate bound in the attested statement: the transfer file's only key."""
        if self._attestation is None:
            raise StateError("the Azure restore has not started")
        return self._attestation.statement.destination_certificate

    def _collecting_message(self) -> str:
        return f"Azure restore: collecting {self.required()} of {self._n} shares"

    def _slot_certificate(self, req: CustodianRequest, offered: bytes) -> bytes:
        if self._sd is None or hashlib.sha256(offered).digest() != self._sd.shares[req.x - 1].x5t_256:
            raise UnauthenticatedError(
                f"the certificate offered is not the one Azure slot {req.x} is encrypted to"
            )
        return offered

    def _open_answer(self, req: CustodianRequest, answer: bytes) -> gf257.Share:
        """Every check of an Azure answer for ``req``'s slot; its share (x = the slot)."""
        if self._sd is None or self._attestation is None or self._exchange_key is None:  # pragma: no cover
            raise StateError("the session has ended")
        parsed = AzureAnswer.from_bytes(answer)
        share = open_azure_answer(
            parsed,
            sd=self._sd,
            sd_bytes=self._sd_bytes,
            slot=req.x,
            session_id=self.session_id,
            attestation_sha256=self._attestation.sha256,
            exchange_key=self._exchange_key,
        )
        if pki.spki_sha256(parsed.certificate_der) in self._held_keys:
            raise VerificationError(
                f"Azure slot {req.x}'s certificate holds a key of the domain this node holds: "
                f"{NATIVE_DOMAIN_REFUSED}"
            )
        if len(share.ys) != MASTER_KEY_BYTES:
            raise VerificationError(f"the share of slot {req.x} is not a share of this file's master key")
        return share

    def _accept(self, req: CustodianRequest, answer: bytes) -> str:
        share = self._open_answer(req, answer)
        self._shares[req.x] = share
        return f"share x={share.x} received"

    def _verify_late(self, req: CustodianRequest, answer: bytes) -> None:
        share = self._open_answer(req, answer)
        expected = self._expected.get(req.x)
        if expected is None:  # pragma: no cover - every slot left open at completion has one
            raise StateError(f"slot {req.x} has no expected share")
        if not hmac.compare_digest(hashlib.sha256(share.to_bytes()).digest(), expected):
            raise VerificationError(
                f"the share of slot {req.x} does not lie on the shares that opened the file"
            )

    def _at_quorum(self) -> None:
        """At least m shares: open the Azure file with a set of them, then make the transfer file."""
        sd = self._sd
        if sd is None:  # pragma: no cover - set by start
            raise StateError("no Azure file")
        for slots in itertools.combinations(sorted(self._shares), sd.required):
            if slots in self._tried:
                continue
            self._tried.add(slots)
            shares = [self._shares[x] for x in slots]
            try:
                items = decrypt_items(sd.data, combine_master_key(sd, shares))
            except SdquorumError:
                continue  # one of these is wrong: another set may open it
            why = holds_sdquorum_domain(sd, items)
            if why:
                del items
                self._fail(
                    f"the Azure file opened to an sdquorum security domain ({why}): no transfer file was "
                    f"made; {NATIVE_DOMAIN_REFUSED}"
                )
                return
            self.transfer_file = make_transfer_file(items, self.destination_certificate, self._rng).to_bytes()
            for x in sorted(set(self._shares) - set(slots)):
                if not gf257.lies_on(self._shares[x], shares):
                    self._reject(x, f"the share of slot {x} does not lie on the shares that opened the file")
            self._expected = {
                x: hashlib.sha256(gf257.share_at(shares, x).to_bytes()).digest()
                for x in self._slots.open_slots()
            }
            self._settle_open(CustodianStatus.NOT_NEEDED)
            self._complete(f"Azure security domain opened with {len(shares)} shares; transfer file ready")
            return
        if not self._slots.open_slots():  # no slot left to answer
            names = ", ".join(self._slots[x].name for x in sorted(self._shares))
            self._fail(
                f"no {sd.required} of the {len(self._shares)} shares received ({names}) open the Azure "
                "file: at least one of them is wrong"
            )

    def _reject(self, x: int, reason: str) -> None:
        self._slots.set(x, CustodianStatus.REJECTED, reason)

    def _end(self) -> None:
        super()._end()
        self._shares.clear()

    def _drop_late_material(self) -> None:
        super()._drop_late_material()
        self._expected = {}
