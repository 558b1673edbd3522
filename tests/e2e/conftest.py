"""Fixtures of the end-to-end tests: the harness's PKIs and a running single-node cluster."""

from harness import cluster, foreign_pki_dir, pki_dir

__all__ = ["cluster", "foreign_pki_dir", "pki_dir"]
