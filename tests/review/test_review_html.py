"""The HTML review as a browser shows it: headless Chromium renders the page, then we read what it shows.

Chromium dumps the DOM it built (after parsing: a value that broke out of its escaping would show up
here as an element) and takes a screenshot. Without a ``chromium`` binary these tests skip, saying
how to install it (``scripts/ensure-test-tools.sh`` as root); with ``SDQUORUM_REQUIRE_TOOLS=1``
(CI) a missing binary fails instead.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sdquorum.review import CustodyRecord, DrillResult, RetiredEpoch, Review, build_review, render_html

if TYPE_CHECKING:
    from conftest import SealFactory

DAY = 86_400
CHROMIUM_TIMEOUT = 120  # seconds for one headless run; a cold first start in a container takes a few
NOTE = '<script>document.title="pwned"</script> "&amp; <img src=x>'


def find_chromium() -> str:
    """The chromium binary, else skip (or fail when SDQUORUM_REQUIRE_TOOLS=1) with the fix in the reason."""
    path = shutil.which("chromium")
    if path:
        return path
    reason = (
        "no chromium binary on PATH: run scripts/ensure-test-tools.sh as root "
        "(apt-get install chromium) to run the headless HTML rendering test"
    )
    if os.environ.get("SDQUORUM_REQUIRE_TOOLS") == "1":
        pytest.fail(f"SDQUORUM_REQUIRE_TOOLS=1 but {reason}")
    pytest.skip(reason)


def headless(chromium: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run chromium headless with a fresh profile, no network services, no first-run UI."""
    with tempfile.TemporaryDirectory(prefix="sdquorum-chromium-") as profile:
        return subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",  # tests run as root in containers, where the sandbox cannot start
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=CHROMIUM_TIMEOUT,
            check=False,
        )


@dataclass(frozen=True)
class Rendered:
    review: Review
    dom: str
    png: Path


class _Shown(HTMLParser):
    """What the dumped DOM shows: banner text, custodian names, finding rows, and element counts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: dict[str, int] = {}
        self.banner = ""
        self.names: list[str] = []
        self.findings: list[tuple[str, str, str]] = []  # (class, data-rule, text)
        self.title = ""
        self._section = ""
        self._stack: list[str] = []  # what the text being read belongs to
        self._text: list[str] = []
        self._finding: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "section":
            self._section = a.get("id", "")
        if a.get("id") == "banner":
            self._start("banner")
        elif tag == "td" and "name" in a.get("class", "").split() and self._section == "custodians":
            self._start("name")
        elif tag == "tr" and a.get("class", "").startswith("finding "):
            self._finding = (a["class"], a.get("data-rule", ""))
            self._start("finding")
        elif tag == "title":
            self._start("title")

    def handle_endtag(self, tag: str) -> None:
        if not self._stack:
            return
        what = self._stack[-1]
        ends = {"banner": "div", "name": "td", "finding": "tr", "title": "title"}[what]
        if tag != ends:
            return
        self._stack.pop()
        text = " ".join("".join(self._text).split())
        if what == "banner":
            self.banner = text
        elif what == "name":
            self.names.append(text)
        elif what == "finding" and self._finding:
            self.findings.append((*self._finding, text))
        elif what == "title":
            self.title = text

    def handle_data(self, data: str) -> None:
        if self._stack:
            self._text.append(data + " ")

    def _start(self, what: str) -> None:
        self._stack.append(what)
        self._text = []


@pytest.fixture(scope="module")
def rendered(make_sealed: SealFactory, t0: int, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    chromium = find_chromium()
    header = make_sealed(2, 4).sd.header  # alice, bob, carol, dave
    records = [
        CustodyRecord(t0 + 3600, "location", "alice", location="Safe 1, Berlin", actor="admin"),
        CustodyRecord(t0 + 3600, "location", "bob", location="Safe 1, Berlin", actor="admin"),
        CustodyRecord(t0 + 2 * DAY, "handoff", "bob", holder="Bo Chen", note=NOTE, actor="admin"),
        CustodyRecord(t0 + 3 * DAY, "lost", "carol", note="USB drive lost in transit", actor="admin"),
    ]
    drills = [
        DrillResult(t0 + DAY, "alice", 1, "proved"),
        DrillResult(t0 + DAY, "bob", 2, "failed", detail=NOTE),
        DrillResult(t0 + DAY, "dave", 4, "unreachable"),
    ]
    retired = [RetiredEpoch(0, bytes(range(32)), t0 - DAY)]
    review = build_review(
        header, records, drills, retired, compromised=False, node_id="node-a", now=t0 + 10 * DAY
    )
    out = tmp_path_factory.mktemp("review-html")
    page = out / "review.html"
    page.write_text(render_html(review), encoding="utf-8")
    url = page.as_uri()
    dumped = headless(chromium, "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    png = out / "review.png"
    shot = headless(chromium, f"--screenshot={png}", "--window-size=1200,1600", "--hide-scrollbars", url)
    assert shot.returncode == 0, shot.stderr[-2000:]
    return Rendered(review, dumped.stdout, png)


def shown(rendered: Rendered) -> _Shown:
    parser = _Shown()
    parser.feed(rendered.dom)
    return parser


def test_banner_says_at_risk(rendered: Rendered) -> None:
    assert rendered.review.at_risk
    assert shown(rendered).banner.startswith("AT RISK")


def test_every_custodian_is_in_the_custodians_table(rendered: Rendered) -> None:
    assert shown(rendered).names == ["alice", "bob", "carol", "dave"]


def test_every_finding_is_shown_with_its_message(rendered: Rendered) -> None:
    rows = shown(rendered).findings
    review = rendered.review
    assert len(rows) == len(review.findings) >= 6
    for (cls, rule, text), finding in zip(rows, review.findings, strict=True):
        assert (cls, rule) == (f"finding {finding.severity}", finding.rule)
        assert " ".join(finding.message.split()) in text
    assert {"lost-key", "drill-failed", "separate-locations", "old-epochs"} <= {rule for _, rule, _ in rows}


def test_hostile_note_stays_text(rendered: Rendered) -> None:
    page = shown(rendered)
    assert page.tags.get("script", 0) == 0 and page.tags.get("img", 0) == 0
    assert page.title.startswith("Security domain review")  # the note's script did not run
    failed = next(text for _, rule, text in page.findings if rule == "drill-failed")
    assert " ".join(NOTE.split()) in failed  # shown literally, "&amp;" included


def test_screenshot_is_a_real_page(rendered: Rendered) -> None:
    data = rendered.png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 1600)
    assert len(data) > 10_000  # a blank or error page compresses to far less


@pytest.mark.parametrize(("required", "outcome"), [("1", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_chromium_skips_or_fails(
    monkeypatch: pytest.MonkeyPatch, required: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("SDQUORUM_REQUIRE_TOOLS", required)
    with pytest.raises(outcome, match=r"scripts/ensure-test-tools\.sh"):
        find_chromium()
