"""Secret hygiene that reads the code: no secret compared with == (timing), passphrases never echoed."""

from __future__ import annotations

import ast
import getpass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["sdquorum", "sdquorum_rpc", "coordinator", "hsm_node", "custodian_agent", "sdctl"]
PUBLIC_NAMES = {"len", "kind", "status", "state", "x", "type", "none", "quorum", "n", "epoch"}
PUBLIC_PARTS = ("public", "domain_id", "_type")
SECRET_WORDS = (
    "share",
    "secret",
    "kek",
    "dek",
    "data_encryption_key",
    "passphrase",
    "private",
    "signing_key",
    "backup_key",
)


def _names(node: ast.AST) -> list[str]:
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.append(n.id.lower())
        elif isinstance(n, ast.Attribute):
            out.append(n.attr.lower())
    return out


def is_secret_comparison(node: ast.AST) -> bool:
    """An == or != whose operands name a secret (kinds, lengths, ids and public halves excepted)."""
    if not isinstance(node, ast.Compare) or not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
        return False
    names = _names(node)
    secret = any(w in n for n in names for w in SECRET_WORDS)
    public = any(n in PUBLIC_NAMES or any(p in n for p in PUBLIC_PARTS) for n in names)
    return secret and not public


def test_no_secret_is_compared_with_equality_operators() -> None:
    """Secrets are compared with hmac.compare_digest (constant time), never == or !=."""
    offenders = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "_proto" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if is_secret_comparison(node):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []


@pytest.mark.parametrize(
    ("planted", "flagged"),
    [
        ("share.to_bytes() == other_share.to_bytes()", True),
        ("secrets.data_encryption_key != stored", True),
        ("secrets.signing_public_key != header.signing_public_key", False),
        ("len(share) == 32", False),
    ],
)
def test_the_equality_check_can_fail(planted: str, flagged: bool) -> None:
    (cmp,) = [n for n in ast.walk(ast.parse(planted)) if isinstance(n, ast.Compare)]
    assert is_secret_comparison(cmp) is flagged


def test_passphrase_prompts_do_not_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SDQUORUM_PASSPHRASE the agent asks through getpass (no echo), never input()."""
    from custodian_agent import keyfile

    asked: list[str] = []
    monkeypatch.delenv(keyfile.PASSPHRASE_ENV, raising=False)
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": asked.append(prompt) or "a long passphrase")
    monkeypatch.setattr(
        "builtins.input", lambda *a: pytest.fail("a passphrase must not be read with input()")
    )
    assert keyfile.read_passphrase(confirm=True) == b"a long passphrase"
    assert len(asked) == 2  # asked, then asked again to confirm


def test_every_test_named_in_the_security_page_exists() -> None:
    """docs/SECURITY.md names the test of each defence (``path``, ``path::test``, then ``::test``
    for more tests of the same file): each must exist, or the page promises what nothing checks."""
    import re

    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "SECURITY.md").read_text()
    missing = []
    current: Path | None = None
    for path, name in re.findall(r"`(tests/[\w/.-]+\.(?:py|pml))?(?:::(\w+))?[^`]*`", text):
        if path:
            current = root / path
            if not current.exists():
                missing.append(path)
                continue
        if (
            name
            and current is not None
            and current.suffix == ".py"
            and not re.search(rf"^(async )?def {name}\(", current.read_text(), re.M)
        ):
            missing.append(f"{current.relative_to(root)}::{name}")
    assert missing == []
