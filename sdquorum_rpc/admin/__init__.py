"""A typed client for the operator's calls: one async method per ``Node``, ``NodeAdmin`` and ``Keys``
call that ``sdctl`` and the tests make, over one mTLS channel.

The calls come in facets, one per responsibility, each a client of its own over the same channel
type: :class:`CeremonyClient` (the node's state and its ceremony sessions), :class:`CustodyClient`
(custody records, audit, backup) and :class:`KeysClient` (the data plane). :class:`AdminClient`
composes the three for ``sdctl``, which makes calls of every facet on one connection.

Invariants:

* Streams are chunked in exactly one place (``_streams``): ``CHUNK``-sized messages up, one
  empty message for empty data, and every message's data joined in order down.
* Methods take and return plain Python values or the wire's response messages, never a request
  message: a caller cannot build one with a field left unset by mistake.
* Errors are translated where the caller says so, as with :class:`NodeClient`: make calls inside
  ``with c.errors():`` and a ``grpc.RpcError`` leaves as a project error with one actionable line.
"""

from __future__ import annotations

from sdquorum_rpc.admin._ceremonies import CeremonyClient
from sdquorum_rpc.admin._custody import CustodyClient
from sdquorum_rpc.admin._keys import KeysClient
from sdquorum_rpc.admin._streams import CHUNK, Started

__all__ = ["CHUNK", "AdminClient", "CeremonyClient", "CustodyClient", "KeysClient", "Started"]


class AdminClient(CeremonyClient, CustodyClient, KeysClient):
    """``async with AdminClient(target, tls) as c, c.errors(): await c.status()``: every facet's
    calls on one channel."""
