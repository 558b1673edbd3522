"""Atheris target: audit exports and entries (verify_export on the input's lines, with and without an
attestation root; AuditEntry.from_json on the input as JSON).

Every input goes to each decoder of the family (see ``_harness.DECODERS``); project errors are
expected, anything else is a crash. Run by ``fuzz/run.py`` (``make fuzz``), or alone:
``python fuzz/fuzz_audit.py fuzz/corpus/audit -max_total_time=60``.
"""

import sys

import atheris

with atheris.instrument_imports(include=["sdquorum"]):
    import _harness

TestOneInput = _harness.target("audit")

if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
