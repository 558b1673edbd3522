"""Atheris target: offline ceremony files (CeremonyRequest.from_bytes, OfflineAnswer.from_bytes).

Every input goes to each decoder of the family (see ``_harness.DECODERS``); project errors are
expected, anything else is a crash. Run by ``fuzz/run.py`` (``make fuzz``), or alone:
``python fuzz/fuzz_offline.py fuzz/corpus/offline -max_total_time=60``.
"""

import sys

import atheris

with atheris.instrument_imports(include=["sdquorum"]):
    import _harness

TestOneInput = _harness.target("offline")

if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
