"""Logs, metrics and health for the long-running processes.

* Logs: ``text`` for people, ``json`` for machines: one event a line with ``ts``, ``level``,
  ``logger``, ``msg`` and, when known, ``session_id`` and ``request_id`` (context variables set
  per RPC and per ceremony operation). No secret is ever passed to a log call. In ``json`` mode
  every line a process writes is JSON: what it tells a person (``announce``: "serving on port",
  "stopped", the agent's "approval needed") is a log event, and any other line printed to standard
  output is wrapped as one (logger ``stdout``), so a log shipper never meets a plain line.
* Metrics (node): Prometheus counters and histograms on their own registry, served over HTTPS with
  client certificates required (the same transport CA as gRPC): ceremonies by kind and outcome
  and their durations; every RPC by method and status code and its latency (the data-plane
  methods ``Encrypt``, ``Sign`` and so on among them). prometheus_client is imported only where
  the node's metrics are made, so the clients that share this module do not pay for it.
* Health: the standard ``grpc.health.v1`` service on the node's mTLS port; SERVING while up,
  NOT_SERVING once a drain has begun.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdquorum_rpc.config import check_host_port
from sdquorum_rpc.listen import bind_failure

if TYPE_CHECKING:  # prometheus_client is imported where metrics are made (module docstring)
    from prometheus_client.core import Metric

__all__ = [
    "REQUEST_ID",
    "SESSION_ID",
    "JsonFormatter",
    "NodeMetrics",
    "NodeSnapshot",
    "announce",
    "setup_logging",
]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
SESSION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)
LOG_LEVEL_ENV = "SDQUORUM_LOG_LEVEL"


_base_factory = logging.getLogRecordFactory()


def _record_with_ids(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Stamp the current session and request ids on each record when it is made (in its context)."""
    record = _base_factory(*args, **kwargs)
    record.session_id = SESSION_ID.get()
    record.request_id = REQUEST_ID.get()
    return record


logging.setLogRecordFactory(_record_with_ids)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("session_id", "request_id"):
            value = getattr(record, key, None)
            if value:
                event[key] = value
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


class _ContextText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [f"{k}={v}" for k in ("session", "request") if (v := getattr(record, f"{k}_id", None))]
        return f"{text} [{' '.join(ids)}]" if ids else text


class _JsonLines:
    """Standard output in ``json`` mode: each line written becomes one JSON event (logger ``stdout``);
    a line that is a JSON object already passes unchanged."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._pending = ""
        self._format = JsonFormatter()

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            if line.strip():
                self._stream.write(self._json(line) + "\n")
        return len(text)

    def _json(self, line: str) -> str:
        if line.startswith("{"):
            try:
                if isinstance(json.loads(line), dict):
                    return line
            except ValueError:
                pass
        record = logging.LogRecord("stdout", logging.INFO, "", 0, line, None, None)
        return self._format.format(record)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, ...: the real stream's
        return getattr(self._stream, name)


_announce_as_log = False


def announce(logger: str, message: str, *, logged_already: bool = False) -> None:
    """Tell the person running the process: a plain line on standard output, or, in ``json`` mode,
    an INFO event of ``logger`` (none when ``logged_already``: the same news is a log event already)."""
    if not _announce_as_log:
        print(message, flush=True)
    elif not logged_already:
        logging.getLogger(logger).info("%s", message)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr; $SDQUORUM_LOG_LEVEL (e.g. DEBUG) overrides the level for every process at once.
    ``fmt="json"``: every line is JSON, standard output included (module docstring)."""
    global _announce_as_log
    level = os.environ.get(LOG_LEVEL_ENV) or level
    root = logging.getLogger()
    if root.handlers:  # like logging.basicConfig: a host (a test runner, an embedding app) has its own
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else _ContextText("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    if fmt == "json":
        _announce_as_log = True
        sys.stdout = _JsonLines(sys.stdout)  # a text stream in all that is used of it


NODE_STATES = ("PROVISIONED", "RECOVERY_PENDING", "ACTIVATED")
SESSION_STATES = ("awaiting SD file", "collecting", "completed", "failed")


@dataclass(frozen=True)
class NodeSnapshot:
    """What the gauges show, read from the node at scrape time (never a secret)."""

    state: str
    compromised: bool
    session_kind: str | None  # None: no session
    session_state: str | None
    custodians: tuple[str, ...]  # the current domain's custodians (0 or 1 each below)
    connected: frozenset[str]  # custodians whose agent holds a request stream now


class _NodeGauges:
    """Gauges computed when Prometheus scrapes, so they can never be stale or drift from the node."""

    def __init__(self, snapshot: Callable[[], NodeSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        snap = self._snapshot()
        state = GaugeMetricFamily("sdquorum_node_state", "1 for the node's current state", labels=["state"])
        for name in NODE_STATES:
            state.add_metric([name], 1.0 if snap.state == name else 0.0)
        yield state
        yield GaugeMetricFamily(
            "sdquorum_node_compromised",
            "1 once an admin has marked the domain compromised",
            value=snap.compromised,
        )
        session = GaugeMetricFamily(
            "sdquorum_session_state",
            "1 for the ceremony session's kind and state (no sample: no session)",
            labels=["kind", "state"],
        )
        if snap.session_kind is not None and snap.session_state is not None:
            session.add_metric([snap.session_kind, snap.session_state], 1.0)
        yield session
        agents = GaugeMetricFamily(
            "sdquorum_agent_connected",
            "1 while the custodian's agent holds its request stream open, 0 otherwise",
            labels=["custodian"],
        )
        for name in sorted({*snap.custodians, *snap.connected}):
            agents.add_metric([name], 1.0 if name in snap.connected else 0.0)
        yield agents


class NodeMetrics:
    """The node's Prometheus metrics, on a registry of their own."""

    def observe(self, snapshot: Callable[[], NodeSnapshot]) -> None:
        """Serve the node, session and agent gauges from ``snapshot``, called at each scrape."""
        self.registry.register(_NodeGauges(snapshot))

    def __init__(self) -> None:
        # imported here: the clients (sdctl, the agent) share this module and never serve metrics
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.ceremonies = Counter(
            "sdquorum_ceremonies_total",
            "Ceremonies ended, by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.ceremony_seconds = Histogram(
            "sdquorum_ceremony_duration_seconds",
            "Time from a ceremony's start to its end",
            ["kind"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=self.registry,
        )
        self.rpcs = Counter(
            "sdquorum_rpc_total",
            "RPCs handled, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "sdquorum_rpc_duration_seconds",
            "RPC latency by method (data-plane methods: Encrypt, Decrypt, Sign, Verify, CreateKey, ...)",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )

    def ceremony_ended(self, kind: str, outcome: str, seconds: float) -> None:
        self.ceremonies.labels(kind, outcome).inc()
        self.ceremony_seconds.labels(kind).observe(max(0.0, seconds))

    def rpc(self, method: str, code: str, started: float) -> None:
        self.rpcs.labels(method, code).inc()
        self.rpc_seconds.labels(method).observe(time.perf_counter() - started)

    def serve(self, listen: str, cert: Path, key: Path, ca: Path) -> int:
        """HTTPS /metrics with client certificates required; returns the bound port."""
        from prometheus_client import start_http_server

        host, _, port = check_host_port(listen, "observability.metrics_listen").rpartition(":")
        try:
            server, _thread = start_http_server(
                int(port),
                addr=host.strip("[]"),
                registry=self.registry,
                certfile=str(cert),
                keyfile=str(key),
                client_cafile=str(ca),
                client_auth_required=True,
                tls_min_version=ssl.TLSVersion.TLSv1_2,
            )
        except OSError as e:
            raise bind_failure(listen, "observability.metrics_listen", e) from e
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
