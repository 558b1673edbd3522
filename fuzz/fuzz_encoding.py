"""Atheris target: the shared encodings (b64d on the input as text, parse_json_object).

Every input goes to each decoder of the family (see ``_harness.DECODERS``); project errors are
expected, anything else is a crash. Run by ``fuzz/run.py`` (``make fuzz``), or alone:
``python fuzz/fuzz_encoding.py fuzz/corpus/encoding -max_total_time=60``.
"""

import sys

import atheris

with atheris.instrument_imports(include=["sdquorum"]):
    import _harness

TestOneInput = _harness.target("encoding")

if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
