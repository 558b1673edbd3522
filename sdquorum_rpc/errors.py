"""Translate errors once at each boundary.

Servers: :func:`rpc` wraps every servicer method. It checks the caller's role, then maps project
errors to status codes. A peer's failed check is reported to a custodian peer only as "a check
failed" (the node log keeps the detail); the operator roles (admin) get the one-line message, since
it is about their own input. Anything unexpected is logged with its traceback and returned as
INTERNAL with no detail.

Clients: :func:`translate_rpc_error` maps a ``grpc.RpcError`` to a project error ``from e``.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, TypeVar, cast

import grpc
import grpc.aio

from sdquorum import pki
from sdquorum.errors import (
    AlreadyExistsError,
    MalformedError,
    NotFoundError,
    PeerError,
    PermissionDeniedError,
    SdquorumError,
    StateError,
    TransportError,
    UsageError,
    VerificationError,
)
from sdquorum_rpc.tls import Ctx, caller_role

__all__ = ["rpc", "status_for", "translate_rpc_error"]

log = logging.getLogger("sdquorum.rpc")
F = TypeVar("F", bound=Callable[..., Any])
CHECK_FAILED = "a check failed"
ERROR_KIND_KEY = "sdquorum-error-kind"  # trailing metadata: lets clients tell a failed check from bad usage


def status_for(e: SdquorumError) -> grpc.StatusCode:
    if isinstance(e, PermissionDeniedError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(e, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(e, AlreadyExistsError):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(e, StateError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(e, TransportError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INVALID_ARGUMENT


def _public_message(e: SdquorumError, role: pki.Role | None) -> str:
    """A custodian (or unknown) peer whose message failed a check learns only that; operators and
    applications get the one-line reason, since it is about their own input."""
    if isinstance(e, PeerError) and (role is None or role.kind == "custodian"):
        return CHECK_FAILED
    return str(e)


def rpc(*roles: str) -> Callable[[F], F]:
    """Guard a servicer method: allowed role kinds, then error translation."""
    allowed: Collection[str] = frozenset(roles)

    def decorate(fn: F) -> F:
        name = fn.__name__

        async def authorise(context: Ctx) -> pki.Role:
            role = caller_role(context)
            if role.kind not in allowed:
                raise PermissionDeniedError(f"role {role} may not call {name}")
            return role

        async def fail(servicer: Any, context: Ctx, e: BaseException, role: pki.Role | None) -> None:
            if isinstance(e, SdquorumError):
                code = status_for(e)
                log.warning("%s by %s refused (%s): %s", name, role or "unknown peer", code.name, e)
                _audit_refusal(servicer, name, role, code.name, str(e))
                kind = (
                    "verification"
                    if isinstance(e, VerificationError)
                    else "malformed"
                    if isinstance(e, PeerError)
                    else ""
                )
                await context.abort(
                    code,
                    _public_message(e, role),
                    trailing_metadata=(((ERROR_KIND_KEY, kind),) if kind else ()),
                )
            log.exception("%s by %s failed unexpectedly", name, role or "unknown peer")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the node log")

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                role: pki.Role | None = None
                try:
                    role = await authorise(context)
                    async for item in fn(self, request, context, role):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as e:
                    await fail(self, context, e, role)

            return cast(F, stream_wrapper)

        @functools.wraps(fn)
        async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
            role: pki.Role | None = None
            try:
                role = await authorise(context)
                return await fn(self, request, context, role)
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await fail(self, context, e, role)

        return cast(F, unary_wrapper)

    return decorate


def _audit_refusal(servicer: Any, method: str, role: pki.Role | None, code: str, reason: str) -> None:
    """Every refusal is audited where the servicer offers a hook (``servicer.node.audit_refusal``)."""
    hook = getattr(getattr(servicer, "node", None), "audit_refusal", None)
    if callable(hook):
        try:
            hook(method, role, code, reason)
        except Exception:  # the refusal itself must still reach the caller
            log.exception("could not audit the refusal of %s", method)


def translate_rpc_error(e: grpc.RpcError, target: str) -> SdquorumError:
    """A project error for a failed call to ``target``, with one actionable line."""
    # grpc.aio's AioRpcError is not a grpc.Call, but both carry code() and details().
    code_fn, details_fn = getattr(e, "code", None), getattr(e, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = (details_fn() if callable(details_fn) else None) or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        low = details.lower()
        if "ssl" in low or "handshake" in low or "certificate" in low or "tls" in low:
            return TransportError(
                f"TLS handshake with {target} failed: check --ca, --cert and --key belong to this deployment's CA"
            )
        if "socket closed" in low or "connection reset" in low:
            # Under TLS 1.3 a server that refuses the client certificate just closes the connection.
            return TransportError(
                f"{target} closed the connection: it may have refused your client certificate; "
                "check --cert and --key come from this deployment's CA"
            )
        return TransportError(
            f"cannot reach {target} ({details or 'unavailable'}): check the address and that the node runs"
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return TransportError(f"{target} did not answer in time: check the network and retry")
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(f"permission denied by {target}: {details}")
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFoundError(details)
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExistsError(details)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return StateError(details)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        meta_fn = getattr(e, "trailing_metadata", None)
        meta = dict(meta_fn() or ()) if callable(meta_fn) else {}
        if meta.get(ERROR_KIND_KEY) == "verification":
            return VerificationError(details)
        if meta.get(ERROR_KIND_KEY) == "malformed":
            return MalformedError(details)
        return UsageError(details)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return UsageError(f"{target} refused a message over its size limit: {details}")
    return TransportError(f"{target} failed ({code.name}): {details or 'no detail'}")
