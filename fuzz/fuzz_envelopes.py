"""Atheris target: the recovery envelopes (Attestation, ExchangeStatement, Release, ReleaseStatement,
Proof, ProofStatement: from_bytes).

Every input goes to each decoder of the family (see ``_harness.DECODERS``); project errors are
expected, anything else is a crash. Run by ``fuzz/run.py`` (``make fuzz``), or alone:
``python fuzz/fuzz_envelopes.py fuzz/corpus/envelopes -max_total_time=60``.
"""

import sys

import atheris

with atheris.instrument_imports(include=["sdquorum"]):
    import _harness

TestOneInput = _harness.target("envelopes")

if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
