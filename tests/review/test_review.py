"""The quarterly security-domain review (sdquorum.review): every rule, the renderings, the JSON forms.

Scenarios start from a healthy 3-of-5 domain (alice..erin, each at a site of their own, drilled the
day after sealing, reviewed the day before ``now``), which yields no finding at all; each case changes
one thing and lists every finding the review must then give, so a rule that fires too often fails
as surely as one that never fires.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from sdquorum.errors import MalformedError, UsageError
from sdquorum.review import (
    CustodyRecord,
    DrillResult,
    RetiredEpoch,
    Review,
    build_review,
    render_html,
    render_markdown,
    review_to_json,
)
from sdquorum.sdfile import Header

if TYPE_CHECKING:
    from conftest import SealFactory

DAY = 86_400
HOUR = 3_600


# ------------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    header: Header
    records: tuple[CustodyRecord, ...]
    drills: tuple[DrillResult, ...]
    now: int
    retired: tuple[RetiredEpoch, ...] = ()
    compromised: bool = False

    def review(self) -> Review:
        return build_review(
            self.header,
            self.records,
            self.drills,
            self.retired,
            compromised=self.compromised,
            node_id="node-a",
            now=self.now,
        )

    def add(self, *records: CustodyRecord) -> Scenario:
        return dataclasses.replace(self, records=self.records + records)

    def drop(self, kind: str, custodian: str | None) -> Scenario:
        kept = tuple(r for r in self.records if not (r.kind == kind and r.custodian == custodian))
        assert kept != self.records, f"no {kind} record for {custodian} to drop"
        return dataclasses.replace(self, records=kept)

    def drill(self, name: str, outcome: str, at: int, *, x: int | None = None, detail: str = "") -> Scenario:
        x = x if x is not None else next(s.x for s in self.header.slots if s.name == name)
        return dataclasses.replace(self, drills=(*self.drills, DrillResult(at, name, x, outcome, detail)))

    def undrill(self, name: str) -> Scenario:
        return dataclasses.replace(self, drills=tuple(d for d in self.drills if d.custodian != name))


@dataclass(frozen=True)
class Kit:
    t0: int  # when every header here was sealed (its created_at)
    h35: Header  # 3-of-5, alice..erin, epoch 1
    h25: Header  # 2-of-5
    h35_epoch3: Header
    keys: tuple[rsa.RSAPrivateKey, ...]  # keys[x - 1] is slot x's wrapping key

    def healthy(self, header: Header | None = None) -> Scenario:
        """No finding: own holder and site per custodian, drilled at t0 + 1 day, reviewed at t0 + 9 days."""
        header = header or self.h35
        t0 = self.t0
        located = tuple(
            CustodyRecord(t0 + HOUR, "location", s.name, location=f"Safe {s.x}, site {s.x}", actor="admin")
            for s in header.slots
        )
        records = (
            *located,
            CustodyRecord(t0 + 9 * DAY, "review", None, note="quarterly review", actor="admin"),
        )
        drills = tuple(DrillResult(t0 + DAY, s.name, s.x, "proved") for s in header.slots)
        return Scenario(header, records, drills, now=t0 + 10 * DAY)

    def with_cert(self, header: Header, x: int, not_after: datetime) -> Header:
        der = _certificate(self.keys[x - 1], header.slot(x).name, not_after)
        slots = tuple(
            dataclasses.replace(s, certificate_der=der, thumbprint=hashlib.sha256(der).digest())
            if s.x == x
            else s
            for s in header.slots
        )
        return dataclasses.replace(header, slots=slots)


def _certificate(key: rsa.RSAPrivateKey, cn: str, not_after: datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(days=800))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _roster(header: Header, n: int) -> Header:
    """``header`` with n slots c1..cn (certificates reused: seal_domain refuses n > 10, the review must not)."""
    slots = tuple(
        dataclasses.replace(header.slots[(x - 1) % header.n], x=x, name=f"c{x}") for x in range(1, n + 1)
    )
    return dataclasses.replace(header, slots=slots)


@pytest.fixture(scope="module")
def kit(
    make_sealed: SealFactory, wrapping_private_keys: list[tuple[rsa.RSAPrivateKey, bytes]], t0: int
) -> Kit:
    return Kit(
        t0=t0,
        h35=make_sealed(3, 5).sd.header,
        h25=make_sealed(2, 5).sd.header,
        h35_epoch3=make_sealed(3, 5, epoch=3).sd.header,
        keys=tuple(k for k, _ in wrapping_private_keys),
    )


def rec(kit: Kit, days: float, kind: str, custodian: str | None, **kw: str) -> CustodyRecord:
    return CustodyRecord(kit.t0 + int(days * DAY), kind, custodian, actor="admin", **kw)


# --------------------------------------------------------------------------------------- the case table

Expected = tuple[tuple[str, str, str], ...]  # (severity, rule, fragment of the message)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Kit], Scenario]
    expected: Expected


def _retired(kit: Kit) -> Scenario:
    retired = (
        RetiredEpoch(2, bytes([2]) * 32, kit.t0 - DAY),
        RetiredEpoch(1, bytes([1]) * 32, kit.t0 - 90 * DAY),
    )
    return dataclasses.replace(kit.healthy(kit.h35_epoch3), retired=retired)


def _review_aged(kit: Kit, days: int) -> Scenario:
    sc = kit.healthy().drop("review", None)
    return sc.add(CustodyRecord(sc.now - days * DAY, "review", None, actor="admin"))


def _stale_drill(kit: Kit) -> Scenario:
    """now = t0 + 92 days; everyone drilled and reviewed at t0 + 90 days except erin (t0 + 1 day)."""
    sc = kit.healthy().drop("review", None).add(rec(kit, 90, "review", None))
    sc = dataclasses.replace(sc, now=kit.t0 + 92 * DAY)
    for s in sc.header.slots[:4]:
        sc = sc.drill(s.name, "proved", kit.t0 + 90 * DAY)
    return sc


CASES = [
    Case("healthy 3-of-5: no finding", lambda k: k.healthy(), ()),
    # quorum-min
    Case(
        "2-of-5: warning, m >= 3 recommended",
        lambda k: k.healthy(k.h25),
        (("warning", "quorum-min", "m >= 3 recommended"),),
    ),
    Case(
        "1-of-5 (seal_domain refuses it; a forged or old header): critical",
        lambda k: k.healthy(dataclasses.replace(k.h35, quorum=1)),
        (("critical", "quorum-min", "one person can rebuild"),),
    ),
    # max-custodians
    Case("10 custodians: at the maximum, no finding", lambda k: k.healthy(_roster(k.h35, 10)), ()),
    Case(
        "11 custodians: critical",
        lambda k: k.healthy(_roster(k.h35, 11)),
        (("critical", "max-custodians", "11 custodians exceed the maximum of 10"),),
    ),
    # one-holder-per-share
    Case(
        "alice and bob handed to two different people: no finding",
        lambda k: k.healthy().add(
            rec(k, 2, "handoff", "alice", holder="Ann Lee"), rec(k, 2, "handoff", "bob", holder="Bo Chen")
        ),
        (),
    ),
    Case(
        "alice and bob handed to one person (spelled differently): critical, names both",
        lambda k: k.healthy().add(
            rec(k, 2, "handoff", "alice", holder="Dana Lee"), rec(k, 3, "handoff", "bob", holder="dana  LEE")
        ),
        (("critical", "one-holder-per-share", "alice and bob are held by one person, Dana Lee"),),
    ),
    Case(
        "alice and carol handed to bob, who now holds a quorum: critical, says so",
        lambda k: k.healthy().add(
            rec(k, 2, "handoff", "alice", holder="bob"), rec(k, 2, "handoff", "carol", holder="bob")
        ),
        (
            (
                "critical",
                "one-holder-per-share",
                "bob holds 3 shares (alice, bob and carol), as many as the quorum",
            ),
        ),
    ),
    Case(
        "alice handed to Dana, bob handed to Dana, then alice handed back: the last hand-off counts",
        lambda k: k.healthy().add(
            rec(k, 2, "handoff", "alice", holder="Dana"),
            rec(k, 3, "handoff", "bob", holder="Dana"),
            rec(k, 4, "handoff", "alice", holder="alice"),
        ),
        (),
    ),
    # separate-locations
    Case(
        "carol moved to alice's site: warning, names both",
        lambda k: k.healthy().add(rec(k, 2, "location", "carol", location="SAFE 1,  Site 1")),
        (("warning", "separate-locations", "alice and carol keep their keys at the same location"),),
    ),
    Case(
        "dave handed off with erin's site as the new location: warning",
        lambda k: k.healthy().add(rec(k, 2, "handoff", "dave", holder="Dee", location="Safe 5, site 5")),
        (("warning", "separate-locations", "dave and erin"),),
    ),
    Case(
        "carol moved to alice's site and then on to a site of her own: no finding",
        lambda k: k.healthy().add(
            rec(k, 2, "location", "carol", location="Safe 1, site 1"),
            rec(k, 3, "location", "carol", location="Safe 9, site 9"),
        ),
        (),
    ),
    # location-unknown
    Case(
        "no location recorded for erin: warning",
        lambda k: k.healthy().drop("location", "erin"),
        (("warning", "location-unknown", "erin has no recorded location"),),
    ),
    Case(
        "erin's only location comes with a hand-off: no finding",
        lambda k: (
            k.healthy()
            .drop("location", "erin")
            .add(rec(k, 2, "handoff", "erin", holder="Eve", location="Vault 7"))
        ),
        (),
    ),
    # review-age
    Case(
        "no review recorded: warning",
        lambda k: k.healthy().drop("review", None),
        (("warning", "review-age", "no security domain review is recorded"),),
    ),
    Case(
        "last review 91 days ago: warning",
        lambda k: _review_aged(k, 91),
        (("warning", "review-age", "91 days ago"),),
    ),
    Case("last review exactly 90 days ago: no finding", lambda k: _review_aged(k, 90), ()),
    # drill-age
    Case(
        "erin never drilled: warning",
        lambda k: k.healthy().undrill("erin"),
        (("warning", "drill-age", "erin has not proved possession"),),
    ),
    Case(
        "erin drilled only before this epoch was sealed: warning (that share no longer exists)",
        lambda k: k.healthy().undrill("erin").drill("erin", "proved", k.t0 - DAY),
        (("warning", "drill-age", "erin has not proved possession"),),
    ),
    Case(
        "a drill naming erin with dave's x does not count for erin",
        lambda k: k.healthy().undrill("erin").drill("erin", "proved", k.t0 + DAY, x=4),
        (("warning", "drill-age", "erin has not proved possession"),),
    ),
    Case(
        "erin's last drill 91 days ago: warning",
        _stale_drill,
        (("warning", "drill-age", "erin's last possession drill was on"),),
    ),
    # drill-failed
    Case(
        "erin proved, then failed: critical",
        lambda k: k.healthy().drill("erin", "failed", k.t0 + 2 * DAY, detail="VSS check failed"),
        (("critical", "drill-failed", "failed (VSS check failed)"),),
    ),
    Case(
        "erin denied the last drill: critical",
        lambda k: k.healthy().drill("erin", "denied", k.t0 + 2 * DAY),
        (("critical", "drill-failed", "erin denied the possession drill"),),
    ),
    Case(
        "erin unreachable at the last drill: warning",
        lambda k: k.healthy().drill("erin", "unreachable", k.t0 + 2 * DAY),
        (("warning", "drill-failed", "erin's agent was unreachable"),),
    ),
    Case(
        "erin failed, then proved: no finding",
        lambda k: k.healthy().drill("erin", "failed", k.t0 + DAY // 2),
        (),
    ),
    # lost-key
    Case(
        "carol's key recorded lost: critical, rotate at once",
        lambda k: k.healthy().add(rec(k, 2, "lost", "carol", note="USB drive lost in transit")),
        (("critical", "lost-key", "carol's key is recorded lost: rotate the quorum at once (sdctl rotate)"),),
    ),
    Case(
        "carol's key recorded compromised: critical",
        lambda k: k.healthy().add(rec(k, 2, "compromised", "carol")),
        (("critical", "lost-key", "carol's key is recorded compromised: rotate the quorum at once"),),
    ),
    Case(
        "carol lost, undrilled and unlocated: only lost-key (rotation replaces the key)",
        lambda k: k.healthy().undrill("carol").drop("location", "carol").add(rec(k, 2, "lost", "carol")),
        (("critical", "lost-key", "carol's key is recorded lost"),),
    ),
    Case(
        "loss recorded before this epoch was sealed: info, confirm the rotation replaced the key",
        lambda k: k.healthy().add(rec(k, -30, "lost", "carol")),
        (("info", "lost-key", "before epoch 1 was sealed"),),
    ),
    Case(
        "loss recorded for zed, not in this roster: info",
        lambda k: k.healthy().add(rec(k, 2, "lost", "zed")),
        (("info", "lost-key", "record for a custodian not in this epoch"),),
    ),
    Case(
        "hand-off and location records for zed, not in this roster: ignored",
        lambda k: k.healthy().add(
            rec(k, 2, "handoff", "zed", holder="alice"),
            rec(k, 2, "location", "zed", location="Safe 1, site 1"),
        ),
        (),
    ),
    Case(
        "two of 3-of-5 keys lost: two lost-key findings, the domain can still be recovered",
        lambda k: k.healthy().add(rec(k, 2, "lost", "alice"), rec(k, 2, "lost", "bob")),
        (("critical", "lost-key", "alice's key"), ("critical", "lost-key", "bob's key")),
    ),
    Case(
        "three of 3-of-5 keys lost: the domain counts as compromised and can no longer be recovered",
        lambda k: k.healthy().add(
            rec(k, 2, "lost", "alice"), rec(k, 2, "lost", "bob"), rec(k, 2, "compromised", "carol")
        ),
        (
            (
                "critical",
                "compromised",
                "alice, bob and carol's keys are lost or compromised, as many as the quorum",
            ),
            ("critical", "lost-key", "alice's key"),
            ("critical", "lost-key", "bob's key"),
            ("critical", "lost-key", "carol's key is recorded compromised"),
            ("critical", "lost-key", "only 2 of 5 custodian keys remain"),
        ),
    ),
    # compromised
    Case(
        "domain flagged compromised: critical, new HSM and new security domain",
        lambda k: dataclasses.replace(k.healthy(), compromised=True),
        (
            (
                "critical",
                "compromised",
                "stop using it; decrypt your data with the current keys, provision a new HSM with a new security "
                "domain and re-encrypt the data under new keys (docs/runbooks/compromise.md)",
            ),
        ),
    ),
    # old-epochs
    Case(
        "epochs 1 and 2 retired: warning listing both with their header hashes",
        _retired,
        (
            (
                "warning",
                "old-epochs",
                "destroy every copy of the SD files of epochs 1 (header sha256 0101010101010101…), 2 (header sha256 0202",
            ),
        ),
    ),
    Case("epoch 3, nothing retired: no finding", lambda k: k.healthy(k.h35_epoch3), ()),
    # cert-expiry
    Case(
        "erin's certificate expired yesterday: warning",
        lambda k: k.healthy(k.with_cert(k.h35, 5, datetime.fromtimestamp(k.t0 + 9 * DAY, UTC))),
        (("warning", "cert-expiry", "erin's wrapping certificate expired on"),),
    ),
    Case(
        "erin's certificate expires in 30 days: info",
        lambda k: k.healthy(k.with_cert(k.h35, 5, datetime.fromtimestamp(k.t0 + 40 * DAY, UTC))),
        (("info", "cert-expiry", "expires on"),),
    ),
    Case(
        "erin's certificate expires in exactly 90 days: info",
        lambda k: k.healthy(k.with_cert(k.h35, 5, datetime.fromtimestamp(k.t0 + 100 * DAY, UTC))),
        (("info", "cert-expiry", "in 90 days"),),
    ),
    Case(
        "erin's certificate expires in 91 days: no finding",
        lambda k: k.healthy(k.with_cert(k.h35, 5, datetime.fromtimestamp(k.t0 + 101 * DAY, UTC))),
        (),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rules(kit: Kit, case: Case) -> None:
    review = case.build(kit).review()
    got = sorted((f.severity, f.rule) for f in review.findings)
    assert got == sorted((s, r) for s, r, _ in case.expected), [f.message for f in review.findings]
    for severity, rule, fragment in case.expected:
        messages = [f.message for f in review.findings if (f.severity, f.rule) == (severity, rule)]
        assert any(fragment in m for m in messages), (fragment, messages)
    assert review.at_risk == any(s == "critical" for s, _, _ in case.expected)
    for f in review.findings:
        assert f.message and "\n" not in f.message


def test_each_rule_has_a_triggering_and_a_quiet_case() -> None:
    rules = {"quorum-min", "max-custodians", "one-holder-per-share", "separate-locations", "location-unknown"}
    rules |= {
        "review-age",
        "drill-age",
        "drill-failed",
        "lost-key",
        "compromised",
        "old-epochs",
        "cert-expiry",
    }
    triggered = {rule for c in CASES for _, rule, _ in c.expected}
    assert triggered == rules
    assert sum(1 for c in CASES if not c.expected) >= 10


# ------------------------------------------------------------------------------------ the review itself


def test_findings_sorted_critical_warning_info(kit: Kit) -> None:
    sc = (
        kit.healthy(kit.h25)
        .drop("review", None)
        .add(rec(kit, 2, "lost", "zed"), rec(kit, 2, "lost", "carol"))
    )
    severities = [f.severity for f in sc.review().findings]
    assert severities == ["critical", "warning", "warning", "info"]


def test_custodian_rows(kit: Kit) -> None:
    sc = kit.healthy()
    # given out of time order: the review orders them
    sc = sc.add(
        rec(kit, 5, "handoff", "bob", holder="Bo Chen", location="Vault B"),
        rec(kit, 3, "handoff", "bob", holder="Temp Holder"),
        rec(kit, 4, "lost", "dave"),
    ).drill("bob", "unreachable", kit.t0 + 2 * DAY)
    review = sc.review()
    assert (review.domain_id, review.epoch, review.quorum, review.n) == (kit.h35.domain_id.hex(), 1, 3, 5)
    assert (review.node_id, review.generated_at, review.last_review) == ("node-a", sc.now, kit.t0 + 9 * DAY)
    bob = review.custodians[1]
    assert (bob.x, bob.name, bob.holder, bob.location, bob.key_bits) == (2, "bob", "Bo Chen", "Vault B", 2048)
    assert [r.time for r in bob.history] == sorted(r.time for r in bob.history)
    assert [r.kind for r in bob.history] == ["location", "handoff", "handoff"]
    assert bob.last_drill is not None and bob.last_drill.outcome == "unreachable"
    cert = x509.load_der_x509_certificate(kit.h35.slot(2).certificate_der)
    assert bob.cert_not_after == int(cert.not_valid_after_utc.timestamp())
    assert [c.status for c in review.custodians] == ["ok", "ok", "ok", "lost", "ok"]
    assert [c.name for c in review.custodians] == ["alice", "bob", "carol", "dave", "erin"]


def test_review_to_json(kit: Kit) -> None:
    sc = dataclasses.replace(_retired(kit), compromised=True)
    obj = review_to_json(sc.review())
    again = json.loads(json.dumps(obj))
    assert again == obj
    assert again["at_risk"] is True and again["compromised"] is True
    assert again["domain_id"] == kit.h35_epoch3.domain_id.hex() and again["epoch"] == 3
    assert [c["name"] for c in again["custodians"]] == ["alice", "bob", "carol", "dave", "erin"]
    assert [RetiredEpoch.from_json(r) for r in again["retired"]] == list(sc.review().retired)
    assert {f["rule"] for f in again["findings"]} == {"compromised", "old-epochs"}
    drill = again["custodians"][0]["last_drill"]
    assert DrillResult.from_json(drill) == DrillResult(kit.t0 + DAY, "alice", 1, "proved")


# ------------------------------------------------------------------------------------------ renderings

NASTY = '<script>alert("x")</script> "& | *bold* [link](javascript:x)'


class _Rows(HTMLParser):
    """Collects ids, finding rows (class, data-rule, text) and whether any script/link/img element exists."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.findings: list[tuple[str, str, str]] = []
        self.forbidden: list[str] = []
        self._in_finding: tuple[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"] or "")
        if tag in ("script", "link", "img", "iframe", "object", "embed", "base"):
            self.forbidden.append(tag)
        if tag == "tr" and (a.get("class") or "").startswith("finding "):
            self._in_finding = (a["class"] or "", a.get("data-rule") or "")
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._in_finding:
            self.findings.append((*self._in_finding, " ".join("".join(self._text).split())))
            self._in_finding = None

    def handle_data(self, data: str) -> None:
        if self._in_finding:
            self._text.append(data + " ")


def _nasty_review(kit: Kit) -> Review:
    return (
        kit.healthy(kit.h25)
        .add(
            rec(kit, 2, "handoff", "alice", holder=NASTY, location='Vault "A" & <b>B</b>', note=NASTY),
            rec(kit, 3, "lost", "carol", note=NASTY),
        )
        .drill("bob", "failed", kit.t0 + 2 * DAY, detail=NASTY)
        .review()
    )


def test_html_escapes_every_value(kit: Kit) -> None:
    review = _nasty_review(kit)
    page = render_html(review)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &quot;&amp; |" in page
    assert "Vault &quot;A&quot; &amp; &lt;b&gt;B&lt;/b&gt;" in page
    parser = _Rows()
    parser.feed(page)
    assert parser.forbidden == []
    # every value came back as the exact text it was: escaped once, not twice
    rows = {rule: text for _, rule, text in parser.findings}
    assert " ".join(NASTY.split()) in rows["drill-failed"]


def test_html_is_self_contained(kit: Kit) -> None:
    page = render_html(_nasty_review(kit)).lower()
    for marker in ("http:", "https:", "//", "src=", "href=", "url(", "@import", "<script"):
        assert marker not in page, marker
    assert "<style>" in page and "content-security-policy" in page


def test_html_structure(kit: Kit) -> None:
    review = _nasty_review(kit)
    parser = _Rows()
    parser.feed(render_html(review))
    for element_id in ("banner", "summary", "findings", "custodians", "history", "retired"):
        assert element_id in parser.ids
    assert [(cls, rule) for cls, rule, _ in parser.findings] == [
        (f"finding {f.severity}", f.rule) for f in review.findings
    ]
    assert [text.split(" ", 2)[2] for _, _, text in parser.findings] == [
        " ".join(f.message.split()) for f in review.findings
    ]


def test_html_banner_only_when_at_risk(kit: Kit) -> None:
    calm = kit.healthy(kit.h25).review()
    assert not calm.at_risk and calm.findings  # a warning, but nothing critical
    assert "AT RISK" not in render_html(calm)
    risky = kit.healthy().add(rec(kit, 2, "lost", "carol")).review()
    assert '<div id="banner" class="banner at-risk" role="alert"><strong>AT RISK</strong>' in render_html(
        risky
    )


def test_markdown_tables(kit: Kit) -> None:
    sc = _retired(kit).add(rec(kit, 2, "handoff", "bob", holder="Bo Chen", note="moved office"))
    review = sc.review()
    md = render_markdown(review)
    for heading in ("## Summary", "## Findings", "## Custodians", "## Hand-off history", "## Retired epochs"):
        assert heading in md
    assert "| Quorum | 3 of 5 |" in md
    assert "| Node | node-a |" in md
    assert "| Severity | Rule | Finding |" in md
    assert "| x | Name | Holder | Location | Key | Certificate expires | Last drill | Status |" in md
    assert "| 2 | bob | Bo Chen | Safe 2, site 2 | RSA-2048 |" in md
    assert f"| proved {datetime.fromtimestamp(kit.t0 + DAY, UTC):%Y-%m-%d} | ok |" in md
    assert "| Time | Event | Holder | Location | Note | Recorded by |" in md
    assert "| handoff | Bo Chen |  | moved office | admin |" in md
    assert f"| 1 | `{'01' * 32}` |" in md and f"| 2 | `{'02' * 32}` |" in md
    assert "AT RISK" not in md
    findings = md.split("## Findings")[1].split("## Custodians")[0]
    assert "| warning | old-epochs | destroy every copy" in findings


def test_markdown_escapes_values_and_keeps_tables_whole(kit: Kit) -> None:
    md = render_markdown(_nasty_review(kit))
    assert "**AT RISK**" in md
    assert re.search(r"(?<!\\)<", md) is None  # every "<" escaped: no HTML reaches a Markdown renderer
    assert r"\<script>" in md and r"\<b>" in md and r"\|" in md and r"\*bold\*" in md and r"\[link\]" in md
    for line in md.splitlines():
        if line.startswith("|"):
            unescaped = line.replace("\\|", "")
            assert unescaped.count("|") in (3, 4, 7, 9), line  # 2, 3, 6 or 8 columns


def test_markdown_without_findings_or_records(kit: Kit) -> None:
    sc = kit.healthy()
    sc = dataclasses.replace(sc, records=tuple(r for r in sc.records if r.custodian != "erin"))
    md = render_markdown(dataclasses.replace(sc.review(), findings=()))
    assert "No findings." in md and "No records." in md and "None." in md


# ------------------------------------------------------------------------------------- JSON round trips

_line = st.text(st.characters(blacklist_categories=("Cc", "Zl", "Zp", "Cs")), max_size=40)
_name = st.text("abcdefghij-", min_size=1, max_size=12)


@st.composite
def _records(draw: st.DrawFn) -> CustodyRecord:
    kind = draw(st.sampled_from(["handoff", "location", "lost", "compromised", "review"]))
    return CustodyRecord(
        time=draw(st.integers(0, 2**40)),
        kind=kind,
        custodian=None if kind == "review" and draw(st.booleans()) else draw(_name),
        holder=draw(_name) if kind == "handoff" else draw(_line),
        location=draw(_name) if kind == "location" else draw(_line),
        note=draw(_line),
        actor=draw(_line),
    )


@given(_records())
def test_custody_record_round_trip(record: CustodyRecord) -> None:
    assert CustodyRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


@given(
    st.builds(
        DrillResult,
        time=st.integers(0, 2**40),
        custodian=_name,
        x=st.integers(1, 10),
        outcome=st.sampled_from(["proved", "failed", "unreachable", "denied"]),
        detail=_line,
    )
)
def test_drill_round_trip(drill: DrillResult) -> None:
    assert DrillResult.from_json(json.loads(json.dumps(drill.to_json()))) == drill


def test_retired_round_trip() -> None:
    retired = RetiredEpoch(7, hashlib.sha256(b"header").digest(), 1_700_000_000)
    assert retired.to_json()["sd_header_sha256"] == hashlib.sha256(b"header").hexdigest()
    assert RetiredEpoch.from_json(json.loads(json.dumps(retired.to_json()))) == retired


GOOD = {"time": 1_700_000_000, "kind": "handoff", "custodian": "alice", "holder": "Ann"}


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ([GOOD], "must be a JSON object"),
        ({**GOOD, "kind": "stolen"}, "kind 'stolen' is unknown"),
        ({**GOOD, "custodian": None}, "must name its custodian"),
        ({k: v for k, v in GOOD.items() if k != "custodian"}, "lacks custodian"),
        ({**GOOD, "holder": ""}, "must name the new holder"),
        ({**GOOD, "kind": "location"}, "must name the new location"),
        ({**GOOD, "note": "line one\nline two"}, "one line"),
        ({**GOOD, "note": "bell\x07"}, "one line"),
        ({**GOOD, "note": "para\u2029graph"}, "one line"),
        ({**GOOD, "location": "x" * 501}, "keep it to 500"),
        ({**GOOD, "time": True}, "unix seconds"),
        ({**GOOD, "time": -1}, "unix seconds"),
        ({**GOOD, "time": "1700000000"}, "unix seconds"),
        ({**GOOD, "holder": 5}, "must be a string"),
        ({**GOOD, "loction": "typo"}, "unknown fields: loction"),
    ],
)
def test_custody_record_from_json_refuses(obj: object, fragment: str) -> None:
    with pytest.raises(MalformedError, match="custody record") as err:
        CustodyRecord.from_json(obj)
    assert fragment in str(err.value)


def test_custody_record_constructor_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="500"):
        CustodyRecord(0, "handoff", "alice", holder="x" * 501)
    assert CustodyRecord(0, "review", None).custodian is None
    assert CustodyRecord(0, "location", "alice", location="x" * 500).location == "x" * 500


@pytest.mark.parametrize(
    ("cls", "obj", "fragment"),
    [
        (
            DrillResult,
            {"time": 1, "custodian": "bob", "x": 2, "outcome": "skipped"},
            "outcome 'skipped' is unknown",
        ),
        (DrillResult, {"time": 1, "custodian": "bob", "x": 0, "outcome": "proved"}, "x must be"),
        (DrillResult, {"time": 1, "custodian": "", "x": 2, "outcome": "proved"}, "must not be empty"),
        (
            DrillResult,
            {"time": 1, "custodian": "bob", "x": 2, "outcome": "proved", "detail": "a\rb"},
            "one line",
        ),
        (RetiredEpoch, {"epoch": 1, "sd_header_sha256": "zz" * 32, "retired_at": 1}, "must be hex"),
        (RetiredEpoch, {"epoch": 1, "sd_header_sha256": "00" * 31, "retired_at": 1}, "64 hex digits"),
        (
            RetiredEpoch,
            {"epoch": -1, "sd_header_sha256": "00" * 32, "retired_at": 1},
            "retired epoch must be",
        ),
        (RetiredEpoch, {"epoch": 1, "sd_header_sha256": "00" * 32}, "lacks retired_at"),
    ],
)
def test_drill_and_retired_from_json_refuse(
    cls: type[DrillResult] | type[RetiredEpoch], obj: object, fragment: str
) -> None:
    with pytest.raises(MalformedError) as err:
        cls.from_json(obj)
    assert fragment in str(err.value)


# ------------------------------------------------------------------------- keys are public keys (class 3)


def _spki(key: rsa.RSAPrivateKey) -> bytes:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def test_a_slot_holding_a_key_recorded_lost_is_lost_under_any_name_certificate_or_epoch(kit: Kit) -> None:
    """Issue 13, class 3: alice's key was recorded lost (under her name, before this epoch); this
    epoch's slot 5, "erin", holds that same RSA key under a fresh certificate. The review compares
    keys (SPKI SHA-256), so erin's slot is lost and the review is at risk; by name and certificate
    bytes it looked healthy."""
    header = kit.h35
    der = _certificate(kit.keys[0], "erin", datetime.fromtimestamp(kit.t0 + 400 * DAY, UTC))
    slots = tuple(
        dataclasses.replace(s, certificate_der=der, thumbprint=hashlib.sha256(der).digest())
        if s.x == 5
        else s
        for s in header.slots
        if s.x != 1  # alice left the roster
    )
    header = dataclasses.replace(header, slots=tuple(dataclasses.replace(s, x=s.x - 1) for s in slots))
    lost = CustodyRecord(kit.t0 - 30 * DAY, "lost", "alice", actor="admin", key_sha256=_spki(kit.keys[0]))
    review = kit.healthy(header).add(lost).review()
    erin = next(c for c in review.custodians if c.name == "erin")
    assert erin.status == "lost"
    assert review.at_risk
    assert any(
        f.rule == "lost-key" and f.severity == "critical" and "erin" in f.message for f in review.findings
    )


def test_a_lost_key_no_slot_holds_is_reported_as_gone(kit: Kit) -> None:
    gone = CustodyRecord(kit.t0 - DAY, "lost", "frank", actor="admin", key_sha256=_spki(kit.keys[5]))
    review = kit.healthy().add(gone).review()
    assert not review.at_risk
    (info,) = [f for f in review.findings if f.rule == "lost-key"]
    assert info.severity == "info" and "no slot of epoch 1 holds it" in info.message


def test_custody_record_key_round_trips_and_a_bad_one_is_refused() -> None:
    record = CustodyRecord(5, "lost", "alice", key_sha256=bytes(range(32)))
    assert record.to_json()["key_sha256"] == bytes(range(32)).hex()
    assert CustodyRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert "key_sha256" not in CustodyRecord(5, "lost", "alice").to_json()  # old records read the same
    for bad in ("ab" * 31, "AB" * 32, "zz" * 32, 5):
        with pytest.raises(MalformedError, match="key_sha256"):
            CustodyRecord.from_json({"time": 5, "kind": "lost", "custodian": "alice", "key_sha256": bad})
    with pytest.raises(UsageError, match="key_sha256"):
        CustodyRecord(5, "lost", "alice", key_sha256=b"short")
