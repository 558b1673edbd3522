"""Fixtures of the node's in-process tests: the harness's PKI (certificates and attestation keys)."""

from harness import pki_dir

__all__ = ["pki_dir"]
