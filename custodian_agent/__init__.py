"""``custodian-agent``: one per custodian; verifies requests and releases its own share, re-encrypted.

Importing the package first pins grpc's TLS cipher suites (see :mod:`sdquorum_rpc`).
"""

import sdquorum_rpc as _rpc  # noqa: F401  # must run before any grpc import in this process

__all__: list[str] = []
