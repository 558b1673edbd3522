"""Multi-host test harness: each test host in its own Linux network namespace on a private bridge.

A :class:`Net` makes one bridge in the root namespace (no address on it: the root namespace never
joins the test network) and, per host, a network namespace with its loopback up and a veth pair,
one end on the bridge and the other, ``eth0`` inside the namespace, with the host's address in
``10.77.0.0/24``. The namespaces get no default route: nothing in them can reach any address but
their own loopback and the other test hosts.

Every name carries a random tag (``sdq`` + 8 hex digits), so parallel runs never clash, and every
tag this process made is remembered so that :func:`cleanup_run` (a session-scoped fixture calls it)
removes whatever a crashed test left behind. The addresses can repeat between nets: each net is its
own layer-2 segment and the namespaces are isolated from each other's nets.

Needs root and iproute2 (``ip``). :func:`probe` says why the harness cannot run here, or ``None``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

__all__ = ["SUBNET", "Host", "Net", "cleanup_run", "probe"]

SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
FIRST_AUTO_HOST = 10  # add_host without an address picks .10, .11, ...; lower ones are for fixed roles
_TAGS: set[str] = set()  # every tag made by this process (for cleanup_run)
_OPEN: dict[str, Net] = {}  # nets not closed yet


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"'ip {' '.join(args)}' failed ({r.returncode}): {r.stderr.strip()}")
    return r


def probe() -> str | None:
    """Why network namespaces cannot be used here (a sentence for a skip), or None if they can."""
    if os.geteuid() != 0:
        return "the multi-host tests need root (network namespaces, veth pairs, a bridge)"
    if shutil.which("ip") is None:
        return "no 'ip' on PATH: install Debian's iproute2 (apt-get install iproute2)"
    name = f"sdq-probe-{secrets.token_hex(4)}"
    bridge = f"sdq{secrets.token_hex(4)}p"
    try:
        r = _ip("netns", "add", name, check=False)
        if r.returncode != 0:
            return f"'ip netns add' is not permitted here: {r.stderr.strip()}"
        r = _ip("link", "add", bridge, "type", "bridge", check=False)
        if r.returncode != 0:
            return f"cannot create a bridge here: {r.stderr.strip()}"
        return None
    finally:
        _ip("link", "del", bridge, check=False)
        _ip("netns", "del", name, check=False)


@dataclass
class Host:
    name: str
    netns: str
    veth: str  # the bridge-side end, in the root namespace
    address: str
    cut: bool = False
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


class Net:
    """One private test network. Use as a context manager (or call :meth:`close` in a finally)."""

    def __init__(self) -> None:
        self.tag = f"sdq{secrets.token_hex(4)}"  # 11 characters: link names stay under IFNAMSIZ
        self.bridge = f"{self.tag}b"
        self.hosts: dict[str, Host] = {}
        self.closed = False
        _TAGS.add(self.tag)
        _OPEN[self.tag] = self
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Net:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ hosts

    def add_host(self, name: str, address: str | None = None) -> str:
        """Make host ``name`` (its own namespace, on the bridge); returns its address."""
        if self.closed:
            raise RuntimeError("this net is closed")
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists already")
        taken = {h.address for h in self.hosts.values()}
        if address is None:
            free = (str(SUBNET[i]) for i in range(FIRST_AUTO_HOST, 255) if str(SUBNET[i]) not in taken)
            address = next(free)
        elif ipaddress.IPv4Address(address) not in SUBNET or address in taken:
            raise ValueError(f"{address} is not a free address of {SUBNET}")
        index = len(self.hosts)
        host = Host(name, f"sdq-{self.tag[3:]}-{name}", f"{self.tag}h{index}", address)
        self.hosts[name] = host  # registered first: close() removes a half-made host too
        _ip("netns", "add", host.netns)
        _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.netns, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        return address

    def address(self, host: str) -> str:
        return self.hosts[host].address

    def run(
        self,
        host: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        log: Path | None = None,
        stdout: int | IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s namespace (``ip netns exec``, which execs: the Popen's pid
        is the program's). ``env`` is added to this process's environment. Output goes to ``log``
        (stdout and stderr together), else to ``stdout`` (default: discarded)."""
        h = self.hosts[host]
        full_env = {**os.environ, **(env or {})}
        out: int | IO[bytes] = subprocess.DEVNULL if stdout is None else stdout
        log_file = open(log, "ab") if log is not None else None  # noqa: SIM115  # closed right after Popen
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", h.netns, *argv],
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file if log_file is not None else out,
                stderr=subprocess.STDOUT
                if log_file is not None or stdout is not None
                else subprocess.DEVNULL,
            )
        finally:
            if log_file is not None:
                log_file.close()
        h.procs.append(proc)
        return proc

    def call(
        self, host: str, argv: Sequence[str], env: Mapping[str, str] | None = None, *, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host``'s namespace to the end; stdout and stderr captured as text."""
        h = self.hosts[host]
        return subprocess.run(
            ["ip", "netns", "exec", h.netns, *argv],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cut(self, host: str, how: Literal["down", "detach"] = "down") -> None:
        """Take ``host`` off the network without telling it: its packets are dropped silently.
        ``down`` sets the bridge-side veth end down (the host sees its carrier go); ``detach``
        takes that end off the bridge (the host sees nothing at all)."""
        h = self.hosts[host]
        if how == "down":
            _ip("link", "set", h.veth, "down")
        else:
            _ip("link", "set", h.veth, "nomaster")
        h.cut = True

    def restore(self, host: str) -> None:
        """Undo :meth:`cut` (either kind)."""
        h = self.hosts[host]
        _ip("link", "set", h.veth, "master", self.bridge)
        _ip("link", "set", h.veth, "up")
        h.cut = False

    # ------------------------------------------------------------------ teardown

    def stop(self, host: str, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        """Stop every process this net started in ``host`` (``sig``, then SIGKILL after ``timeout``)."""
        _stop_all(self.hosts[host].procs, sig, timeout)
        self.hosts[host].procs.clear()

    def close(self) -> None:
        """Stop the processes, then remove every namespace, veth and the bridge. Idempotent; goes on
        past errors and raises the first one at the end."""
        if self.closed:
            return
        self.closed = True
        errors: list[BaseException] = []
        _stop_all([p for h in self.hosts.values() for p in h.procs], signal.SIGTERM, 5.0)
        for h in self.hosts.values():
            h.procs.clear()
            try:
                _kill_netns_pids(h.netns)
                _ip("link", "del", h.veth, check=False)
                _ip("netns", "del", h.netns, check=False)
            except BaseException as e:  # pragma: no cover - best effort, reported below
                errors.append(e)
        _ip("link", "del", self.bridge, check=False)
        _OPEN.pop(self.tag, None)
        left = _leftovers(self.tag)
        if left:
            errors.append(RuntimeError(f"net {self.tag}: could not remove {left}"))
        if errors:
            raise errors[0]


def _stop_all(procs: list[subprocess.Popen[bytes]], sig: int, timeout: float) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _kill_netns_pids(netns: str) -> None:
    """SIGKILL, by pid, any process still inside one of our namespaces (children of what we ran)."""
    r = _ip("netns", "pids", netns, check=False)
    for pid in r.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _leftovers(tag: str) -> list[str]:
    namespaces = [
        line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()
    ]
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines()
        if ":" in line
    ]
    return [n for n in namespaces if n.startswith(f"sdq-{tag[3:]}-")] + [
        link for link in links if link.startswith(tag)
    ]


def cleanup_run() -> list[str]:
    """Close every net this process left open and remove anything else carrying one of its tags.
    Returns what had to be removed here (empty when every test cleaned up after itself)."""
    removed: list[str] = []
    for net in list(_OPEN.values()):
        removed += [f"net {net.tag}"]
        with contextlib.suppress(Exception):
            net.close()
    for tag in sorted(_TAGS):
        for name in _leftovers(tag):
            removed.append(name)
            if name.startswith("sdq-"):
                _kill_netns_pids(name)
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
    return removed
