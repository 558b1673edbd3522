"""Atheris target: the security domain file (SecurityDomainFile.from_bytes, Header.from_bytes, SignedHeader
construction, DomainSecrets.from_bytes).

Every input goes to each decoder of the family (see ``_harness.DECODERS``); project errors are
expected, anything else is a crash. Run by ``fuzz/run.py`` (``make fuzz``), or alone:
``python fuzz/fuzz_sdfile.py fuzz/corpus/sdfile -max_total_time=60``.
"""

import sys

import atheris

with atheris.instrument_imports(include=["sdquorum"]):
    import _harness

TestOneInput = _harness.target("sdfile")

if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
