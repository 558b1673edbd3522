"""Why a listener could not bind, said in one line a person can act on.

gRPC (with ``grpc.so_reuseport`` off, see :func:`sdquorum_rpc.tls.server_options`) and the metrics
server report a failed bind as a bare 0 port or an ``OSError``. :func:`bind_failure` probes the
address once with a plain socket to tell "in use" (another process listens there: a second node on
a live node's port must not start) from "not an address of this machine".
"""

from __future__ import annotations

import errno
import os
import socket

from sdquorum.errors import SdquorumError, TransportError, UsageError

__all__ = ["bind_failure"]


def bind_failure(listen: str, setting: str, cause: BaseException | None = None) -> SdquorumError:
    """The error to raise when binding ``listen`` (host:port) failed; ``setting`` names the knob."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - only probed, never served
    code = cause.errno if isinstance(cause, OSError) else None
    if code is None:
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, int(port_text)))
        except OSError as e:
            code = e.errno
        except ValueError:
            code = errno.EINVAL
    if code == errno.EADDRINUSE:
        return TransportError(
            f"cannot listen on {listen} ({setting}): the address is already in use, another process "
            "(perhaps another node) serves there; stop it or choose another port"
        )
    if code in (errno.EACCES, errno.EPERM):
        return TransportError(
            f"cannot listen on {listen} ({setting}): permission denied; use a port above 1023 or run "
            "with the capability to bind it"
        )
    if code in (None, errno.EADDRNOTAVAIL, errno.EINVAL, errno.EAFNOSUPPORT):
        return UsageError(
            f"cannot listen on {listen} ({setting}): not an address of this machine; give a local "
            "host:port (port 0 picks a free one)"
        )
    return TransportError(f"cannot listen on {listen} ({setting}): {os.strerror(code)}")
