"""``python -P -m hsm_node.cryptopool ...``: how the pool starts a worker (see :mod:`._worker`)."""

import sys

from hsm_node.cryptopool._worker import main

raise SystemExit(main(sys.argv[1:]))
