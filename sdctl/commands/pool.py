"""``sdctl pool allow|remove NODE_ID`` (an HSM pool: let a node join with no custodian, or end a
member; both audited by the node) and the pool part of ``sdctl status``.

Each command has two halves, in this order: the custody decision at the node (audited, an admin's
certificate), then the member's etcd user, with etcd's ``root`` certificate (``--etcd``,
``--etcd-cert``, ``--etcd-key``, ``--etcd-ca``, or ``[etcd]`` / ``SDCTL_ETCD*``;
:mod:`hsm_node.pool.access`). Invariants:

* ``pool remove`` exits 0 only when the member is marked removed **and** its etcd user is gone, so
  its certificate can no longer write. Without the etcd root settings it refuses before anything is
  done, unless ``--etcd-user-later`` says the operator deletes the user; it then marks the member
  removed and exits 3 with a line saying the member can still write and the step that ends it.
* A failure of the etcd half leaves the node's half done (the member is refused and serves
  nothing; for ``allow``: allowed, but it cannot reach etcd yet); the one line says so, why, and
  that running the same command again finishes it. Both halves can be repeated and say what they
  found (removed already, user gone already, user existed already).
* Only a certificate whose CN is etcd's ``root`` user is used for the etcd half: another (a
  member's) is refused with one line before the node's half, so nothing is done (etcd would refuse
  it too, but only after the node's half).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sdctl.commands import Command, arg
from sdctl.config import ETCD_ROOT_SETTINGS
from sdctl.ctl import Ctl

if TYPE_CHECKING:
    from hsm_node.pool.access import EndedAccess
    from hsm_node.pool.etcd import EtcdClient, EtcdConfig
    from sdquorum.errors import SdquorumError

_T = TypeVar("_T")
_ETCD_FLAGS = "--etcd ENDPOINTS --etcd-cert ROOT.pem --etcd-key ROOT.key --etcd-ca CA.pem"
_ETCDCTL = "etcdctl --endpoints ENDPOINTS --cacert etcd-ca.pem --cert etcd-root.pem --key etcd-root.key"


def _etcd_root(ctl: Ctl) -> EtcdConfig | None:
    """etcd's root settings from flags, environment or the config file; None if none is set,
    UsageError naming what is missing if only some are."""
    from sdquorum.errors import UsageError
    from sdquorum_rpc.config import load_settings

    values = load_settings(ETCD_ROOT_SETTINGS, ctl.args)
    for dest, value in values.items():
        setattr(ctl.args, dest, value)  # whichever source set it, the lines below name the file used
    if all(v is None for v in values.values()):
        return None
    missing = [s.flag for s in ETCD_ROOT_SETTINGS if values[s.dest] is None]
    if missing:
        raise UsageError(
            f"give {', '.join(missing)} too (or SDCTL_ETCD*, [etcd] in the config file): etcd's root "
            "settings are the endpoints, certificate, key and CA together"
        )
    from hsm_node.pool.etcd import EtcdConfig  # etcd's stubs: only for the commands that use etcd

    files = {}
    for s in ETCD_ROOT_SETTINGS[1:]:
        try:
            files[s.dest] = values[s.dest].read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {s.flag} {values[s.dest]} ({e.strerror}): check the path") from e
    endpoints = tuple(e.strip() for e in values["etcd"].split(",") if e.strip())
    if not endpoints:
        raise UsageError(
            "--etcd (etcd.endpoints, $SDCTL_ETCD) is empty: give host:port,host:port of the etcd cluster"
        )
    from hsm_node.pool.access import require_root
    from sdquorum.errors import PermissionDeniedError

    try:  # before the node's half: a member's certificate in root's place changes nothing
        require_root(files["etcd_cert"], str(values["etcd_cert"]))
    except PermissionDeniedError as e:
        raise PermissionDeniedError(f"{e}; nothing was done") from e
    return EtcdConfig(
        endpoints=endpoints, ca_pem=files["etcd_ca"], cert_pem=files["etcd_cert"], key_pem=files["etcd_key"]
    )


def _unfinished(e: SdquorumError, done: str) -> SdquorumError:
    """The error for an etcd half that failed after the node's half: what is done, why the rest
    failed, and to run the same command again; the cause's kind (and exit code) is kept."""
    from sdquorum.errors import PermissionDeniedError, StateError, TransportError, UsageError

    text = f"{done}: {e}; fix that and run the same command again"
    for kind in (PermissionDeniedError, TransportError, UsageError):
        if isinstance(e, kind):
            return kind(text)
    return StateError(text)


async def _as_etcd_root(
    ctl: Ctl, etcd: EtcdConfig, work: Callable[[EtcdClient], Awaitable[_T]], done: str
) -> _T:
    """``work`` on a client of etcd's ``root`` user (:func:`_etcd_root` checked the certificate); a
    failure says that ``done`` is done and the rest is not (:func:`_unfinished`)."""
    from hsm_node.pool.etcd import EtcdClient
    from sdquorum.errors import SdquorumError

    try:
        async with EtcdClient(etcd) as client:
            return await work(client)
    except SdquorumError as e:
        raise _unfinished(e, done) from e


async def allow(ctl: Ctl) -> int:
    from sdquorum import etcd_pki
    from sdquorum_rpc.pool_admin import allow_pool_member

    node_id = ctl.args.node_id
    user = etcd_pki.etcd_user(node_id)  # an id that cannot be an etcd user is refused before anything
    etcd = _etcd_root(ctl)
    async with ctl.client() as c, c.errors():
        await allow_pool_member(c, node_id)
    joins = (
        f"{node_id} may join the pool: start it with the pool's --pool-etcd settings; a member seals the "
        "domain to it (no custodian needed)"
    )
    if etcd is None:
        ctl.emit(
            f"{joins}. Its etcd user must exist: {_ETCDCTL} user add {user} --no-password && "
            f"{_ETCDCTL} user grant-role {user} sdquorum-member (or run this command with {_ETCD_FLAGS})",
            {"allowed": node_id, "etcd_user": user, "etcd_user_created": None},
        )
        return 0
    from hsm_node.pool.access import MEMBER_ROLE, grant_member_access

    created = await _as_etcd_root(
        ctl,
        etcd,
        lambda client: grant_member_access(client, node_id),
        f"{node_id} is allowed to join, but its etcd user {user} was not made, so it cannot reach the pool",
    )
    made = "created" if created else "existed already"
    ctl.emit(
        f"{joins}; its etcd user {user} {made}, with role {MEMBER_ROLE}",
        {"allowed": node_id, "etcd_user": user, "etcd_user_created": created},
    )
    return 0


async def remove(ctl: Ctl) -> int:
    from sdquorum import etcd_pki
    from sdquorum.errors import SdquorumError, StateError, UsageError
    from sdquorum_rpc import pool_admin

    node_id = ctl.args.node_id
    user = etcd_pki.etcd_user(node_id)
    etcd = _etcd_root(ctl)
    later = bool(ctl.args.etcd_user_later)
    if etcd is None and not later:
        raise UsageError(
            f"pool remove also deletes the etcd user {user}, or its certificate can still write the pool: "
            f"give {_ETCD_FLAGS} (etcd's root; or SDCTL_ETCD*, [etcd] in the config file), or "
            "--etcd-user-later to delete it yourself; nothing was done"
        )
    if etcd is not None and later:
        raise UsageError("--etcd-user-later and etcd's root settings contradict each other: give one of them")
    try:
        async with ctl.client() as c, c.errors():
            st = await pool_admin.pool_status(c)
            listed = node_id in st.members or node_id in st.allowed
            await pool_admin.remove_pool_member(c, node_id)
    except SdquorumError as e:
        if etcd is None or (isinstance(e, UsageError) and not isinstance(e, StateError)):
            raise  # not the pool's state but the request (no such member): nothing to end
        # the node could not mark it removed (its pool's state altered with an etcd certificate, say,
        # perhaps by the very member being removed): its etcd access ends all the same
        await _end_etcd_access(ctl, etcd, node_id, f"the node did not mark {node_id} removed ({e})")
        raise StateError(
            f"the node did not mark {node_id} removed ({e}); its etcd user {user} is gone, so its "
            "certificate can no longer write the pool: run this command again once the node can"
        ) from e
    marked = f"{node_id} {'is now' if listed else 'was already'} removed from pool {st.name}"
    if etcd is None:
        ctl.emit(
            f"{marked}: the members refuse it and it serves nothing",
            {"removed": node_id, "etcd_user": user, "etcd_user_deleted": False},
        )
        raise StateError(
            f"{node_id} can still write every row of the pool until its etcd user goes: run '{_ETCDCTL} user "
            f"delete {user}', or this command again with {_ETCD_FLAGS} instead of --etcd-user-later"
        )
    ended = await _end_etcd_access(ctl, etcd, node_id, f"{marked} (the members refuse it, it serves nothing)")
    gone = "deleted" if ended.user_deleted else "was deleted already"
    locks = f"; {ended.leases_revoked} ceremony lock(s) it held freed" if ended.leases_revoked else ""
    ctl.emit(
        f"{marked}: the members refuse it, it serves nothing, and its etcd user {user} {gone}, so its "
        f"certificate can no longer write the pool{locks}. Wipe its data directory and sealing key",
        {
            "removed": node_id,
            "etcd_user": user,
            "etcd_user_deleted": ended.user_deleted,
            "locks_freed": ended.leases_revoked,
        },
    )
    return 0


async def _end_etcd_access(ctl: Ctl, etcd: EtcdConfig, node_id: str, done: str) -> EndedAccess:
    """Delete ``node_id``'s etcd user and free its locks as etcd's root; a failure says that ``done``
    is done and its etcd user is not."""
    from hsm_node.pool.access import end_member_access
    from sdquorum import etcd_pki

    return await _as_etcd_root(
        ctl,
        etcd,
        lambda client: end_member_access(client, node_id),
        f"{done}, but its etcd user {etcd_pki.etcd_user(node_id)} was not deleted, so its certificate can "
        "still write the pool",
    )


async def pool_status(c: Any) -> Any:
    """The node's PoolStatus, or None (a node standing alone, or a caller who is no admin)."""
    import grpc.aio

    from sdquorum_rpc import pool_admin

    try:
        return await pool_admin.pool_status(c)
    except grpc.aio.AioRpcError:
        return None


def describe_pool(st: Any, obj: dict[str, Any]) -> str:
    """The status text's pool line (empty without a pool); adds ``pool`` to the JSON ``obj``."""
    if st is None:
        return ""
    members, allowed = list(st.members), list(st.allowed)
    obj["pool"] = {
        "name": st.name,
        "members": members,
        "allowed": allowed,
        "staleness_seconds": round(st.staleness_seconds, 3),
    }
    return (
        f"\n  pool {st.name}: members {', '.join(members) or '-'}; allowed to join "
        f"{', '.join(allowed) or '-'}; etcd view {st.staleness_seconds:.1f} s old"
    )


_NODE_ID = arg("node_id", metavar="NODE_ID")
_ETCD_ROOT = tuple(
    arg(s.flag, dest=s.dest, metavar=metavar, help=f"{s.help} (${s.env}, {s.key} in the config file)")
    for s, metavar in zip(ETCD_ROOT_SETTINGS, ("ENDPOINTS", "ROOT.pem", "ROOT.key", "CA.pem"), strict=True)
)
_ROOT = "--etcd 10.0.0.11:2379,10.0.0.12:2379 --etcd-cert etcd-root.pem --etcd-key etcd-root.key --etcd-ca etcd-ca.pem"

COMMANDS = [
    Command(
        "pool",
        "an HSM pool: let a node join (no custodian needed), or end a member",
        ("sdctl --node node-a:7443 pool allow node-c",),
        sub=(
            Command(
                "allow",
                "let NODE_ID join the pool: a member seals the domain to it (audited); with etcd's root "
                "certificate, also create its etcd user",
                (
                    f"sdctl pool allow node-c {_ROOT}",
                    "sdctl --config sdctl.toml pool allow node-c",
                    "sdctl pool allow node-c",
                ),
                (_NODE_ID, *_ETCD_ROOT),
                run=allow,
            ),
            Command(
                "remove",
                "end a member: the others refuse it, it serves nothing (audited), and its etcd user is "
                "deleted with etcd's root certificate, so it can no longer write",
                (
                    f"sdctl pool remove node-c {_ROOT}",
                    "sdctl --config sdctl.toml pool remove node-c",
                    "sdctl pool remove node-c --etcd-user-later",
                ),
                (
                    _NODE_ID,
                    *_ETCD_ROOT,
                    arg(
                        "--etcd-user-later",
                        action="store_true",
                        help="only mark it removed; you delete its etcd user yourself (it can still "
                        "write until then: exits 3 and prints the step)",
                    ),
                ),
                run=remove,
            ),
        ),
    )
]
