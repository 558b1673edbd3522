"""``custodian-agent keygen`` and ``import-key``: the custodian's wrapping key, made or taken in, kept
in a passphrase-encrypted file (0600) or inside a PKCS#11 token; and :func:`load_key`, which opens
that key for ``run`` and ``respond``.

Invariants:

* A private key is written only encrypted under the custodian's passphrase (typed twice when
  asked on the terminal), or stored in a token as not extractable; a plain key given to ``import-key`` is never copied, and the command says to
  destroy it.
* The certificate's path is reserved before a token is touched: a taken path stores nothing.
* The PIN comes from ``$SDQUORUM_PKCS11_PIN`` or the terminal, never a flag. python-pkcs11 is
  imported only when a token is used.
"""

from __future__ import annotations

import argparse
import getpass
import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from custodian_agent.commands import FORMAT, passphrase_flag, token_flags
from custodian_agent.config import AgentSettings
from custodian_agent.keyfile import (
    has_terminal,
    import_key,
    keygen,
    load_wrapping_key,
    passphrase,
    read_plain_key,
)
from sdquorum import pki
from sdquorum.errors import UsageError
from sdquorum.keys import WrappingKey
from sdquorum_rpc.files import PendingFile, read_input_file

__all__ = ["PIN_ENV", "add_parsers", "import_key_command", "keygen_command", "load_key", "pin"]

PIN_ENV = "SDQUORUM_PKCS11_PIN"  # the name of a variable, not a secret


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser(
        "keygen",
        help="make a wrapping key (passphrase-encrypted, 0600) and its certificate",
        epilog="examples:\n  custodian-agent keygen --name alice --key alice.wrap.key --cert alice.wrap.pem\n"
        "  custodian-agent keygen --name alice --cert alice.wrap.pem --pkcs11-module /usr/lib/softhsm/libsofthsm2.so \\\n"
        "      --pkcs11-token alice --pkcs11-key-label alice-wrap      # the key is made inside the token",
        formatter_class=FORMAT,
    )
    k.add_argument(
        "--name",
        required=True,
        help="custodian name (the certificate's CN): the <name> of your mTLS certificate's custodian/<name>; "
        "the node serves an agent only keys bearing its name",
    )
    k.add_argument("--key", type=Path, help="where to write the encrypted private key (not with --pkcs11-*)")
    k.add_argument(
        "--cert", type=Path, required=True, help="where to write the certificate to hand to the admin"
    )
    k.add_argument("--bits", type=int, default=3072, help="RSA key size (default 3072; at least 2048)")
    token_flags(k)
    passphrase_flag(k)

    im = sub.add_parser(
        "import-key",
        help="take a plain PEM RSA key made with openssl (and its certificate) into the agent's encrypted form",
        epilog="example (an Azure custodian's key made with 'openssl genpkey' and 'openssl req'):\n"
        "  custodian-agent import-key --key alice.plain.key --cert alice.cer \\\n"
        "      --out alice.wrap.key --out-cert alice.wrap.pem\n"
        "  shred -u alice.plain.key      # then destroy every other copy of the plain key\n"
        "  custodian-agent import-key --key alice.plain.key --cert alice.cer --out-cert alice.wrap.pem \\\n"
        "      --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --pkcs11-token alice --pkcs11-key-label alice-wrap",
        formatter_class=FORMAT,
    )
    im.add_argument("--key", type=Path, required=True, help="the plain (unencrypted) PEM RSA private key")
    im.add_argument("--cert", type=Path, required=True, help="its certificate (PEM or DER)")
    im.add_argument("--out", type=Path, help="where to write the encrypted key (0600); not with --pkcs11-*")
    im.add_argument("--out-cert", type=Path, required=True, help="where to write the certificate (PEM)")
    passphrase_flag(im)
    token_flags(im)


def _import_into_token(args: argparse.Namespace) -> str:
    """import-key into a token: the pair stored there (not extractable), the certificate beside it."""
    if args.out is not None or not args.pkcs11_token or not args.pkcs11_key_label:
        raise UsageError("for a token give --pkcs11-module, --pkcs11-token and --pkcs11-key-label, not --out")
    from custodian_agent.pkcs11key import token_import  # python-pkcs11 only where a token is used

    key, cert_pem = read_plain_key(args.key, args.cert)
    with PendingFile(args.out_cert, mode=0o644) as out:  # reserved first: a taken path stores nothing
        token_import(args.pkcs11_module, args.pkcs11_token, pin(), args.pkcs11_key_label, key)
        out.write(cert_pem)
    return (
        f"stored the key in token {args.pkcs11_token!r} as {args.pkcs11_key_label!r} (not extractable) "
        f"and wrote {args.out_cert}"
    )


def pin() -> str:
    """The token's PIN: ``$SDQUORUM_PKCS11_PIN``, else asked on the terminal (never a flag)."""
    value = os.environ.get(PIN_ENV)
    if value is not None:
        return value
    if not has_terminal():
        raise UsageError(f"no token PIN and no terminal to ask on: set ${PIN_ENV}")
    try:
        return getpass.getpass("Token PIN: ")
    except EOFError:
        raise UsageError(f"no token PIN given (the input ended): set ${PIN_ENV} or type it") from None


def load_key(args: argparse.Namespace | AgentSettings, passphrase_file: Path | None) -> WrappingKey:
    """The custodian's key: a passphrase-protected file, or a token object that never leaves it."""
    if args.pkcs11_module is not None:
        if not args.pkcs11_token or not args.pkcs11_key_label:
            raise UsageError("a token key needs --pkcs11-module, --pkcs11-token and --pkcs11-key-label")
        from custodian_agent.pkcs11key import open_token_key  # python-pkcs11 only where a token is used

        cert = pki.load_cert(read_input_file(args.wrapping_cert, "wrapping certificate"))
        return open_token_key(
            args.pkcs11_module,
            args.pkcs11_token,
            pin(),
            args.pkcs11_key_label,
            cert.public_bytes(serialization.Encoding.DER),
        )
    if args.wrapping_key is None:
        raise UsageError("give --wrapping-key FILE, or --pkcs11-module/--pkcs11-token/--pkcs11-key-label")
    return load_wrapping_key(args.wrapping_key, args.wrapping_cert, passphrase(passphrase_file))


def keygen_command(args: argparse.Namespace) -> int:
    if args.bits < 2048:
        raise UsageError("--bits must be at least 2048 (3072 recommended)")
    if args.pkcs11_module is not None:
        if args.key is not None or not args.pkcs11_token or not args.pkcs11_key_label:
            raise UsageError(
                "for a token key give --pkcs11-module, --pkcs11-token and --pkcs11-key-label, not --key"
            )
        from custodian_agent.pkcs11key import token_keygen

        with PendingFile(args.cert, mode=0o644) as out:
            out.write(
                token_keygen(
                    args.pkcs11_module,
                    args.pkcs11_token,
                    pin(),
                    args.pkcs11_key_label,
                    args.name,
                    datetime.now(UTC),
                    args.bits,
                )
            )
        print(
            f"made the key pair inside token {args.pkcs11_token!r}; wrote {args.cert}: give it to the HSM admin"
        )
        return 0
    if args.key is None:
        raise UsageError("give --key FILE for a key file, or --pkcs11-* for a key made inside a token")
    keygen(
        args.name,
        args.key,
        args.cert,
        passphrase(args.passphrase_file, confirm=True),
        datetime.now(UTC),
        bits=args.bits,
    )
    print(f"wrote {args.key} (encrypted, 0600) and {args.cert}: give {args.cert} to the HSM admin")
    return 0


def import_key_command(args: argparse.Namespace) -> int:
    read_input_file(args.key, "key (--key)")  # a wrong path is named before the passphrase prompt
    read_input_file(args.cert, "certificate (--cert)")
    if args.pkcs11_module is not None:
        where = _import_into_token(args)
    elif args.out is None:
        raise UsageError("give --out FILE for the encrypted key, or --pkcs11-* to store it in a token")
    else:
        phrase = passphrase(args.passphrase_file, confirm=True)
        identity = import_key(args.key, args.cert, args.out, args.out_cert, phrase)
        where = f"wrote {args.out} (encrypted, 0600) and {args.out_cert} for key {identity.hex()[:16]}"
    print(
        f"{where}. "
        f"Now destroy the plain key: 'shred -u {args.key}', and every copy of it (backups, other "
        "machines; on SSDs and copy-on-write file systems shred cannot reach every block)"
    )
    return 0
