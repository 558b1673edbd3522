"""Benchmarks of sdquorum against their physical floors (issue 6): ``python -m bench``."""
