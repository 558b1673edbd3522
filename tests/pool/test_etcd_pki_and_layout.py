"""The pool's etcd certificates (sdquorum.etcd_pki, ``sdctl pki init --etcd-member``), its key layout
and its client configuration: offline, no etcd needed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from etcd_cluster import etcd_binary

from hsm_node.pool.etcd import EtcdConfig, Layout, prefix_end
from sdctl.pkifiles import init_pki, issue_etcd
from sdquorum import etcd_pki, pki
from sdquorum.errors import UsageError

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def etcd_ca() -> pki.IssuedCert:
    return etcd_pki.make_etcd_ca(NOW)


def cert(issued: pki.IssuedCert) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_pem)


def cn(c: x509.Certificate) -> str:
    return str(c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def ekus(c: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# ------------------------------------------------------------------------------ certificates


def test_member_certificate_serves_the_cluster_name_loopback_and_its_own_address(
    etcd_ca: pki.IssuedCert,
) -> None:
    c = cert(etcd_pki.issue_etcd_member_cert(etcd_ca, "etcd1", NOW, ip_addresses=("10.77.0.11",)))
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "etcd1", etcd_pki.ETCD_CLUSTER_NAME}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.77.0.11"}
    assert ekus(c) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}  # peer port: both
    assert cn(c) == etcd_pki.ETCD_MEMBER_CN  # what --peer-cert-allowed-cn admits
    assert c.issuer == cert(etcd_ca).subject


def test_client_certificates_name_the_etcd_user_and_cannot_serve(etcd_ca: pki.IssuedCert) -> None:
    node = cert(etcd_pki.issue_etcd_client_cert(etcd_ca, etcd_pki.etcd_user("node-a"), NOW))
    assert cn(node) == "node.node-a"
    assert ekus(node) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cn(cert(etcd_pki.issue_etcd_client_cert(etcd_ca, "root", NOW))) == "root"


@pytest.mark.parametrize(
    ("user", "why"),
    [
        ("admin", "neither 'root' nor 'node.<node id>'"),  # any other etcd user: refused
        ("node.", "cannot name an etcd user"),
        ("node.../x", "cannot name an etcd user"),
        (etcd_pki.ETCD_MEMBER_CN, "neither"),  # a client certificate that looks like a member
    ],
)
def test_no_client_certificate_for_another_etcd_user(etcd_ca: pki.IssuedCert, user: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        etcd_pki.issue_etcd_client_cert(etcd_ca, user, NOW)


def test_a_node_id_never_becomes_the_etcd_root_user() -> None:
    assert etcd_pki.etcd_user("root") == "node.root"
    for bad in ("", "../x", "a/b", "x" * 59, "-lead"):
        with pytest.raises(UsageError, match="cannot name an etcd user"):
            etcd_pki.etcd_user(bad)


def test_etcd_certificates_are_no_sdquorum_role(etcd_ca: pki.IssuedCert) -> None:
    """An etcd certificate (even from a misconfigured shared CA) carries no role URI SAN, so no
    sdquorum service accepts it as admin, app, node or custodian."""
    for issued in (
        etcd_pki.issue_etcd_client_cert(etcd_ca, "node.node-a", NOW),
        etcd_pki.issue_etcd_member_cert(etcd_ca, "etcd0", NOW),
    ):
        with pytest.raises(Exception, match="role"):
            pki.role_from_cert(issued.cert_pem)


def test_member_names_are_dns_labels(etcd_ca: pki.IssuedCert) -> None:
    for bad in ("Etcd0", "etcd_0", "etcd0.example", "", "-x"):
        with pytest.raises(UsageError, match="etcd member name"):
            etcd_pki.issue_etcd_member_cert(etcd_ca, bad, NOW)


# ------------------------------------------------------------------------------ sdctl pki


def test_pki_init_without_etcd_members_writes_what_it_always_wrote(tmp_path: Path) -> None:
    init_pki(tmp_path / "p", ["node-a"], ["alice", "bob", "carol"], NOW)
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert not [n for n in names if n.startswith("etcd")]
    assert len(names) == 18


def test_pki_init_with_etcd_members_adds_the_etcd_ca_and_its_certificates(tmp_path: Path) -> None:
    d = tmp_path / "p"
    init_pki(
        d, ["node-a", "node-b"], ["alice", "bob", "carol"], NOW, etcd_members=["etcd0", "etcd1=10.77.0.11"]
    )
    etcd = sorted(p.name for p in d.iterdir() if p.name.startswith("etcd"))
    assert etcd == [
        f"etcd-{stem}.{ext}"
        for stem in ("ca", "member-etcd0", "member-etcd1", "node-node-a", "node-node-b", "root")
        for ext in ("key", "pem")
    ]
    assert all((d / n).stat().st_mode & 0o777 == 0o600 for n in etcd if n.endswith(".key"))
    etcd_ca = x509.load_pem_x509_certificate((d / "etcd-ca.pem").read_bytes())
    transport_ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    assert etcd_ca.public_key() != transport_ca.public_key()  # two CAs, never one
    node_b = x509.load_pem_x509_certificate((d / "etcd-node-node-b.pem").read_bytes())
    assert cn(node_b) == "node.node-b" and node_b.issuer == etcd_ca.subject
    issue_etcd(d, NOW, node_id="node-c")
    assert cn(x509.load_pem_x509_certificate((d / "etcd-node-node-c.pem").read_bytes())) == "node.node-c"


@pytest.mark.parametrize("member", ["Bad_Name", "etcd0=", "etcd0=not-an-ip"])
def test_pki_init_checks_etcd_members_before_writing_anything(tmp_path: Path, member: str) -> None:
    with pytest.raises(UsageError, match=r"etcd-member|etcd member name"):
        init_pki(tmp_path / "p", ["node-a"], ["alice", "bob", "carol"], NOW, etcd_members=[member])
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_sdctl_pki_issue_etcd_node_without_an_etcd_ca_says_what_to_do(tmp_path: Path) -> None:
    init_pki(tmp_path / "p", ["node-a"], ["alice", "bob", "carol"], NOW)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdctl.cli",
            "pki",
            "issue",
            "--dir",
            str(tmp_path / "p"),
            "--etcd-node",
            "node-c",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        f"sdctl: error: {tmp_path / 'p'} has no etcd CA: make one with 'sdctl pki init ... --etcd-member NAME'"
    ]


# ------------------------------------------------------------------------------ layout and config


def test_layout_puts_every_key_of_a_domain_under_its_prefix() -> None:
    lay = Layout(bytes.fromhex("00ff" * 8))
    p = b"/sdquorum/00ff00ff00ff00ff00ff00ff00ff00ff/"
    assert lay.key("signing-1") == p + b"keys/signing-1"
    assert lay.header() == p + b"header" and lay.epoch() == p + b"epoch"
    assert lay.member("node-a") == p + b"members/node-a" and lay.allowed("node-a") == p + b"allowed/node-a"
    assert lay.audit("domain", 7) == p + b"audit/domain/00000000000000000007"
    assert lay.ceremony_lock() == p + b"lock/ceremony"
    assert lay.custody("42") == p + b"custody/42"


@pytest.mark.parametrize("name", ["", "../header", "a/b", "..", ".hidden", "x" * 129, "k\x00", "ключ"])
def test_layout_refuses_a_name_that_could_leave_its_place(name: str) -> None:
    lay = Layout(b"\x01" * 16)
    for build in (lay.key, lay.member, lay.allowed, lay.custody):
        with pytest.raises(UsageError, match="cannot be an etcd key segment"):
            build(name)


def test_prefix_end_covers_exactly_the_prefix() -> None:
    assert prefix_end(b"/sdquorum/ab/keys/") == b"/sdquorum/ab/keys0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"


@pytest.mark.parametrize(
    ("endpoints", "timeouts", "match"),
    [
        ((), {}, "etcd_endpoints is empty"),
        (("127.0.0.1",), {}, "not host:port"),
        (("https://127.0.0.1:2379",), {}, "not host:port"),
        (
            ("127.0.0.1:2379",),
            {"attempt_timeout": 5.0, "call_timeout": 1.0},
            "attempt_timeout <= call_timeout",
        ),
    ],
)
def test_config_names_the_field_and_the_fix(
    endpoints: tuple[str, ...], timeouts: dict[str, float], match: str
) -> None:
    with pytest.raises(UsageError, match=match):
        EtcdConfig(endpoints=endpoints, ca_pem=b"", cert_pem=b"", key_pem=b"", **timeouts)


def test_the_client_key_never_shows_in_a_repr(etcd_ca: pki.IssuedCert) -> None:
    issued = etcd_pki.issue_etcd_client_cert(etcd_ca, "node.node-a", NOW)
    cfg = EtcdConfig(("127.0.0.1:2379",), etcd_ca.cert_pem, issued.cert_pem, issued.key_pem)
    assert b"PRIVATE KEY" in cfg.key_pem and "PRIVATE KEY" not in repr(cfg)


# ------------------------------------------------------------------------------ the test harness


@pytest.mark.parametrize(("required", "outcome"), [("1", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_etcd_skips_or_fails_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, required: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("SDQUORUM_REQUIRE_TOOLS", required)
    with pytest.raises(outcome, match=r"scripts/ensure-test-tools\.sh as root \(Debian's etcd-server\)"):
        etcd_binary()
