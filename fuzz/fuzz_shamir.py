"""Atheris target: the secret-sharing decoders (Share.from_bytes with x from the first byte,
Commitments.from_points on 32-byte chunks, SchnorrProof.from_bytes).

Every input goes to each decoder of the family (see ``_harness.DECODERS``); project errors are
expected, anything else is a crash. Run by ``fuzz/run.py`` (``make fuzz``), or alone:
``python fuzz/fuzz_shamir.py fuzz/corpus/shamir -max_total_time=60``.
"""

import sys

import atheris

with atheris.instrument_imports(include=["sdquorum"]):
    import _harness

TestOneInput = _harness.target("shamir")

if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
