"""Fixtures of the deployment tests: the harness's test PKI (for its attestation files)."""

from harness import pki_dir

__all__ = ["pki_dir"]
