"""Fixtures of the PKCS#11 tests: a SoftHSM2 token, and the harness's PKI."""

from harness import pki_dir
from softhsm import softhsm

__all__ = ["pki_dir", "softhsm"]
