"""A distributed restore of an Azure Managed HSM security domain (format version 2).

Azure's own ``az keyvault security-domain restore-blob`` loads every quorum private key onto one
workstation. Here each custodian's agent decrypts only its own share and releases it sealed to this
session's exchange key; the coordinator combines m shares (GF(257), duplicate and zero x refused),
opens the EncData items (their MACs are what proves the shares right: Azure files carry no
commitments, so a wrong share is found only there), and writes Azure's transfer file: every item
re-encrypted under a fresh master key wrapped to the Azure HSM's exchange certificate. The host
reads ``transfer_file`` on COMPLETED; the master keys are dropped when the session ends.

A wrong share must neither block the good ones nor go unnamed. A share whose index or length is
impossible is rejected on arrival. Otherwise, once m shares are in, every m of them not tried yet
are combined in turn (n <= 10: at most 252 sets), and the first set that opens the file's MACs
wins; each other share received is then checked against that set's polynomials, and one that does
not lie on them is rejected and named. While no set opens, the session keeps collecting; it fails
only when no slot that could still answer is left.
"""

from __future__ import annotations

import hashlib
import itertools

from coordinator.ceremony import (
    OPEN,
    AttestationSigner,
    Ceremony,
    CustodianProgress,
    CustodianRequest,
    CustodianStatus,
)
from sdquorum.azure import gf257
from sdquorum.azure.ceremony import AZURE_PURPOSE, AzureAnswer, azure_domain_id, open_azure_answer
from sdquorum.azure.sdfile import (
    MASTER_KEY_BYTES,
    AzureSecurityDomain,
    combine_master_key,
    decrypt_items,
    make_transfer_file,
)
from sdquorum.encoding import b64e
from sdquorum.envelopes import Attestation
from sdquorum.errors import SdquorumError, StateError, UnauthenticatedError, VerificationError
from sdquorum.pki import load_cert

__all__ = ["AzureRestoreSession"]


class AzureRestoreSession(Ceremony):
    kind = AZURE_PURPOSE
    answer_word = "shares"

    def _setup(self) -> None:
        self.transfer_file: bytes | None = None
        self._sd: AzureSecurityDomain | None = None
        self._sd_bytes = b""
        self._exchange_cert = b""
        self._shares: dict[int, gf257.Share] = {}
        self._certs: dict[int, bytes] = {}
        self._tried: set[tuple[int, ...]] = set()  # sets of slots whose shares did not open the file

    def start(
        self, sd_bytes: bytes, exchange_cert_der: bytes, now: int, sign: AttestationSigner
    ) -> Attestation:
        sd = AzureSecurityDomain.from_bytes(sd_bytes)  # strict: refused before any custodian is asked
        load_cert(exchange_cert_der)
        self._sd, self._sd_bytes, self._exchange_cert = sd, sd_bytes, exchange_cert_der
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
        )

    def _collecting_message(self) -> str:
        return f"Azure restore: collecting {self.required()} of {self._n} shares"

    def _slot_certificate(self, req: CustodianRequest, offered: bytes) -> bytes:
        if self._sd is None or hashlib.sha256(offered).digest() != self._sd.shares[req.x - 1].x5t_256:
            raise UnauthenticatedError(
                f"the certificate offered is not the one Azure slot {req.x} is encrypted to"
            )
        return offered

    def _accept(self, req: CustodianRequest, answer: bytes) -> str:
        if self._sd is None or self._attestation is None or self._exchange_key is None:  # pragma: no cover
            raise StateError("the session has ended")
        share = open_azure_answer(
            AzureAnswer.from_bytes(answer),
            sd=self._sd,
            sd_bytes=self._sd_bytes,
            slot=req.x,
            session_id=self.session_id,
            attestation_sha256=self._attestation.sha256,
            exchange_key=self._exchange_key,
        )
        if share.x in {s.x for s in self._shares.values()}:
            raise VerificationError(
                f"the share of slot {req.x} repeats x={share.x}, already released by another slot"
            )
        if not 1 <= share.x <= self._sd.n or len(share.ys) != MASTER_KEY_BYTES:
            raise VerificationError(f"the share of slot {req.x} is not a share of this file's master key")
        self._shares[req.x] = share
        return f"share x={share.x} received"

    def _after_answer(self) -> None:
        if len(self._shares) >= self.required() and not self.finished:
            self._restore()
        else:
            self._fail_if_quorum_unreachable()

    def _restore(self) -> None:
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
            self.transfer_file = make_transfer_file(items, self._exchange_cert, self._rng).to_bytes()
            for x in sorted(set(self._shares) - set(slots)):
                if not gf257.lies_on(self._shares[x], shares):
                    self._reject(x, f"the share of slot {x} does not lie on the shares that opened the file")
            self._settle_open(CustodianStatus.NOT_NEEDED)
            self._complete(f"Azure security domain opened with {len(shares)} shares; transfer file ready")
            return
        if not any(p.status in OPEN for p in self._status.values()):  # no slot left to answer
            names = ", ".join(self._status[x].name for x in sorted(self._shares))
            self._fail(
                f"no {sd.required} of the {len(self._shares)} shares received ({names}) open the Azure "
                "file: at least one of them is wrong"
            )

    def _reject(self, x: int, reason: str) -> None:
        p = self._status[x]
        self._status[x] = CustodianProgress(p.x, p.name, CustodianStatus.REJECTED, reason)

    def _end(self) -> None:
        super()._end()
        self._shares.clear()
