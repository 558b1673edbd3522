"""Fixtures of the Azure tests: the harness's PKIs."""

from harness import foreign_pki_dir, pki_dir

__all__ = ["foreign_pki_dir", "pki_dir"]
