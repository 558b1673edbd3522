"""Translate errors once at each boundary.

Servers: :func:`rpc` wraps every servicer method. It checks the caller's role, then maps project
errors to status codes. A peer's failed check is reported to a custodian peer only as "a check
failed" (the node log keeps the detail); the operator roles (admin) get the one-line message, since
it is about their own input. Anything unexpected is logged with its traceback and returned as
INTERNAL with no detail.

Every refusal (a project error, a role not allowed, a malformed request) goes to the servicer's
refusal hook as a :class:`sdquorum.refusals.Refusal` naming the caller by its verified TLS
certificate: role (if any), subject and the SHA-256 of its public key, also when it holds no role
or a role the method does not allow. The hook (the node's) decides what is written when.

Clients: :func:`translate_rpc_error` maps a ``grpc.RpcError`` to a project error ``from e``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
import grpc.aio

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
from sdquorum.refusals import Refusal
from sdquorum_rpc.observability import REQUEST_ID
from sdquorum_rpc.tls import Ctx, caller_role

if TYPE_CHECKING:
    from sdquorum import pki

__all__ = [
    "RequestGuard",
    "bounded",
    "refusal_of",
    "report_refusal",
    "rpc",
    "status_for",
    "translate_rpc_error",
]

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


NOT_OPEN = "the request is not open"


def _public_message(e: SdquorumError, role: pki.Role | None) -> str:
    """A custodian (or unknown) peer whose message failed a check learns only that, and one that
    came at the wrong time only that its request is not open (a session's state message names
    other custodians and why they failed); operators and applications get the one-line reason,
    since it is about their own input."""
    if role is None or role.kind == "custodian":
        if isinstance(e, PeerError):
            return CHECK_FAILED
        if isinstance(e, StateError):
            return NOT_OPEN
    return bounded(str(e))


MAX_MESSAGE_CHARS = 500  # of an error's text in a log line, an audit entry or a status detail


def bounded(text: str) -> str:
    """``text`` cut to MAX_MESSAGE_CHARS (it may quote a caller's input)."""
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


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
                text = bounded(str(e))  # a message may quote the caller's input: never all of it
                audit_log = getattr(getattr(servicer, "node", None), "audit_log", None)
                hook = getattr(audit_log, "refusal", None)
                report_refusal(refusal_of(context, name, code.name, text), hook)
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

        @contextlib.asynccontextmanager
        async def translated(servicer: Any, context: Ctx) -> AsyncIterator[_Call]:
            """The one translation: authorise, then map any failure to a status, audited and timed."""
            call = _Call()
            started, code = _begin(context), "OK"
            try:
                call.role = await authorise(context)
                yield call
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except Exception as e:
                code = _code_for(e)
                await fail(servicer, context, e, call.role)
            finally:
                _observe(servicer, name, code, started)

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                async with translated(self, context) as call:
                    async for item in fn(self, request, context, call.role):
                        yield item

            return cast(F, stream_wrapper)

        @functools.wraps(fn)
        async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
            async with translated(self, context) as call:
                return await fn(self, request, context, call.role)

        return cast(F, unary_wrapper)

    return decorate


class _Call:
    """One guarded call: the caller's role once it is authorised (None before, or if it is not)."""

    role: pki.Role | None = None


def _begin(context: Ctx) -> float:
    """Per call: a request id (the caller's x-request-id, or a new one) for every log line."""
    given = dict(context.invocation_metadata() or ()).get("x-request-id")
    rid = (
        given
        if isinstance(given, str) and 0 < len(given) <= 64 and given.isprintable()
        else os.urandom(8).hex()
    )
    REQUEST_ID.set(rid)
    return time.perf_counter()


def _code_for(e: BaseException) -> str:
    return status_for(e).name if isinstance(e, SdquorumError) else "INTERNAL"


def _code_of(context: Ctx) -> str:
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else "ABORTED"


def _observe(servicer: Any, method: str, code: str, started: float) -> None:
    metrics = getattr(getattr(servicer, "node", None), "metrics", None)
    if metrics is not None:
        metrics.rpc(method, code, started)


def report_refusal(refusal: Refusal, hook: RefusalHook | None) -> None:
    """Audit a refusal through ``hook`` (the node's ``audit_log.refusal``, where there is one), then
    log it: WARNING when it was written in full, DEBUG when the hook only counted it (a flood of
    refused calls fills neither the audit log nor the node's log)."""
    written = True
    if callable(hook):
        try:
            written = hook(refusal) is not False
        except Exception:  # the refusal itself must still reach the caller
            log.exception("could not audit the refusal of %s", refusal.method)
    log.log(
        logging.WARNING if written else logging.DEBUG,
        "%s by %s [key %s] refused (%s): %s%s",
        refusal.method,
        refusal.actor,
        refusal.spki_sha256[:16] or "none",
        refusal.code,
        refusal.reason,
        "" if written else " (counted)",
    )


MAX_SUBJECT_CHARS = 256  # of a certificate subject in a log line or an audit entry


def refusal_of(context: Ctx | None, method: str, code: str, reason: str) -> Refusal:
    """A refused call, its caller named by the verified TLS peer certificate (role, subject and
    public-key SHA-256), whether or not the certificate holds a role, or one this method allows."""
    certs = list((context.auth_context().get("x509_pem_cert") or []) if context is not None else [])
    role, subject, spki = _identity(bytes(certs[0])) if len(certs) == 1 else ("", "", "")
    return Refusal(method, code, reason, role, subject, spki)


@functools.lru_cache(maxsize=1024)
def _identity(cert_pem: bytes) -> tuple[str, str, str]:
    """Role ("" if none), subject and SPKI SHA-256 (hex) of a peer certificate, parsed once."""
    from sdquorum import pki  # servers only: a client never reads a refused peer's certificate

    try:
        cert = pki.load_cert(cert_pem)
        spki = pki.spki_sha256(cert_pem).hex()
    except SdquorumError:  # TLS verified it, so this does not happen; still, name what we can
        return "", "unparsable certificate", ""
    try:
        role = str(pki.role_from_cert(cert_pem))
    except SdquorumError:
        role = ""
    return role, _bounded_subject(cert.subject.rfc4514_string()), spki


def _bounded_subject(text: str) -> str:
    """At most MAX_SUBJECT_CHARS, one line: a control character is written as its escape."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= MAX_SUBJECT_CHARS else text[: MAX_SUBJECT_CHARS - 1] + "…"


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
            # Under TLS 1.3 a server that refuses the client certificate just closes the connection,
            # which looks the same as a network cut or a node restart.
            return TransportError(
                f"{target} closed the connection: the network was cut, the node restarted, or it refused "
                "your client certificate (check --cert and --key come from this deployment's CA)"
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


class _Malformed:
    """Stands in for a request whose bytes did not parse as its protobuf message."""


MALFORMED = _Malformed()
MALFORMED_DETAILS = "malformed request"
RefusalHook = Callable[[Refusal], bool]  # True: written in full; False: only counted


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in the stubs
    """Refuse requests whose bytes are not the method's protobuf message.

    grpc would answer UNKNOWN with the parser's exception text; this answers INVALID_ARGUMENT
    "malformed request", tells nothing more, and audits the refusal (``on_refusal``).
    """

    def __init__(self, on_refusal: RefusalHook | None = None) -> None:
        self._on_refusal = on_refusal

    def _refused(self, method: str, context: Ctx | None) -> None:
        report_refusal(refusal_of(context, method, "INVALID_ARGUMENT", MALFORMED_DETAILS), self._on_refusal)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = details.method
        parse = handler.request_deserializer

        def safe(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception:  # any parser failure: the peer sent bytes that are not the message
                return MALFORMED

        def guarded_stream(requests: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
            async def gen() -> AsyncIterator[Any]:
                async for r in requests:
                    if r is MALFORMED:
                        self._refused(method, context)
                        raise MalformedError("a message of the request stream is malformed")
                    yield r

            return gen()

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def uu(request: Any, context: Ctx) -> Any:
                if request is MALFORMED:
                    self._refused(method, context)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_DETAILS)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(uu, safe, handler.response_serializer)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def us(request: Any, context: Ctx) -> AsyncIterator[Any]:
                if request is MALFORMED:
                    self._refused(method, context)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_DETAILS)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(us, safe, handler.response_serializer)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def su(requests: AsyncIterator[Any], context: Ctx) -> Any:
                return await inner_su(guarded_stream(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(su, safe, handler.response_serializer)
        inner_ss = handler.stream_stream

        async def ss(requests: AsyncIterator[Any], context: Ctx) -> AsyncIterator[Any]:
            async for item in inner_ss(guarded_stream(requests, context), context):
                yield item

        return grpc.stream_stream_rpc_method_handler(ss, safe, handler.response_serializer)
