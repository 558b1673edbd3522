"""The recovery ceremony: collect m verified shares and open the security domain.

Order and invariants (see :mod:`coordinator.ceremony` for what every ceremony shares):

1. :meth:`RecoverySession.load_sd_file` takes the SD file (header signature already verified by the
   parser) and opens the session: one request per slot, bound by the node's attestation.
2. Each release is checked: signature by the slot's wrapping key, session/domain/epoch/attestation
   binding, sealed-box opening with this session's exchange key, inner-outer binding, then the
   Feldman check of the share (y*B against the slot's public share sum_j x^j A_j, which the host
   has :meth:`RecoverySession.prepare` compute while the requests travel, or the check computes
   itself if the share comes first). A failing release marks its custodian REJECTED with
   the check named.
3. The first m valid shares reconstruct s; the payload is opened and the session COMPLETES with the
   domain secrets in ``result``; every slot not heard from becomes NOT_NEEDED.
4. At the deadline with fewer than m valid shares the session FAILS, naming the missing custodians;
   the host applies ``result`` only on COMPLETED, so nothing else changes.

The collected shares are dropped as soon as the session ends. A late release (one for a slot
settled NOT_NEEDED, arriving after completion and before the deadline) is still opened and checked
against the commitments (:meth:`RecoverySession._verify_late`): a wrong one is REJECTED and named, a
good one stays NOT_NEEDED; it never counts. For that the exchange key, and nothing secret else, is
kept until the deadline of a COMPLETED session and dropped by the first tick at or after it (at
once when the session fails). It opens only releases sealed to this session, and the node that holds
it holds the recovered domain already.
"""

from __future__ import annotations

from collections.abc import Iterable

from coordinator.ceremony import AttestationSigner, Ceremony, CustodianRequest, CustodianStatus
from sdquorum import shamir
from sdquorum.envelopes import Attestation, CeremonyKind, Release, open_release
from sdquorum.errors import SdquorumError, StateError, VerificationError
from sdquorum.sdfile import DomainSecrets, SecurityDomainFile, open_domain

__all__ = ["RecoverySession"]


class RecoverySession(Ceremony):
    kind = CeremonyKind.RECOVERY
    answer_word = "shares"
    checks_late_answers = True

    def _setup(self) -> None:
        self.result: DomainSecrets | None = None
        self._sd: SecurityDomainFile | None = None
        self._shares: dict[int, shamir.Share] = {}
        self._public: dict[int, bytes] = {}

    @property
    def sd_file(self) -> SecurityDomainFile | None:
        return self._sd

    def load_sd_file(self, sd: SecurityDomainFile, now: int, sign: AttestationSigner) -> Attestation:
        attestation = self._open(sd.signed_header, now, sign)
        self._sd = sd
        return attestation

    def prepare(self, xs: Iterable[int] | None = None) -> None:
        """Compute the public share s_x*B of the slots ``xs`` (default: every slot) from the
        commitments of the signed header, so that checking a share is then one base-point
        multiplication and a constant-time compare.

        The host calls this once the requests are out, while they travel (a slot at a time, so its
        event loop stays responsive). It checks nothing by itself and may be skipped: a share that
        arrives before its slot is prepared has its public share computed on demand.
        """
        if self._sd is None:
            raise StateError("no SD file has been given to this session yet")
        header = self._sd.header
        for x in [s.x for s in header.slots] if xs is None else xs:
            if x not in self._public:
                try:
                    self._public[x] = header.commitments.public_share(x)
                except SdquorumError:  # no share can match: its check fails and names the slot
                    continue

    def _public_share(self, x: int) -> bytes:
        expected = self._public.get(x)
        if expected is None:
            expected = self._public[x] = self.header.commitments.public_share(x)
        return expected

    def _collecting_message(self) -> str:
        return f"collecting {self.required()} of {self._n} shares"

    def _accept(self, req: CustodianRequest, answer: bytes) -> str:
        self._shares[req.x] = self._verified_share(req, answer)
        return "share verified"

    def _verify_late(self, req: CustodianRequest, answer: bytes) -> None:
        self._verified_share(req, answer)  # checked exactly as in time; kept nowhere

    def _verified_share(self, req: CustodianRequest, answer: bytes) -> shamir.Share:
        """Every check of a release for ``req``'s slot, then its share (VSS-verified)."""
        if self._attestation is None or self._exchange_key is None:  # pragma: no cover - set when open
            raise StateError("the session has ended")
        header = self.header
        share = open_release(
            Release.from_bytes(answer),
            session_id=self.session_id,
            header=header,
            expected_x=req.x,
            attestation_sha256=self._attestation.sha256,
            exchange_key=self._exchange_key,
        )
        try:
            expected = self._public_share(req.x)
        except SdquorumError as e:  # commitments whose sum at x is the identity: no share matches
            raise VerificationError(
                f"the share of slot {req.x} does not match the SD commitments (VSS)"
            ) from e
        if not shamir.matches_public_share(share, expected):
            raise VerificationError(f"the share of slot {req.x} does not match the SD commitments (VSS)")
        return share

    def _at_quorum(self) -> None:
        """m verified shares: reconstruct s and open the domain."""
        sd = self._sd
        if sd is None:  # pragma: no cover - set with the header
            raise StateError("no SD file")
        header = sd.header
        shares = [self._shares[x] for x in sorted(self._shares)][: header.quorum]
        try:
            secret = shamir.combine(shares, header.quorum, header.n)
            self.result = open_domain(sd, secret)
        except SdquorumError as e:
            self._fail(f"the security domain did not open: {e}")
            return
        self._settle_open(CustodianStatus.NOT_NEEDED)
        self._complete(f"security domain {header.domain_id.hex()} epoch {header.epoch} recovered")

    def _end(self) -> None:
        super()._end()
        self._shares.clear()
