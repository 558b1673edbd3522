"""The HSM pool: several hsm-node members sharing one security domain through etcd (issue 16).

:mod:`.etcd` the typed etcd client; :mod:`.view` a member's cache, watch, freshness proof and
transactions; :mod:`.store` the node's storage seam over it (``hsm-node run --pool-etcd ...`` opens
it); :mod:`.rows` the pool's own rows; :mod:`.member` joining and membership
(:mod:`sdquorum.pooljoin` is the protocol); :mod:`.service` the pool inside a running node;
:mod:`.rpc` its admin RPCs; :mod:`.access` a member's etcd user, made and deleted with etcd's
root certificate (``sdctl pool allow|remove``, never a node). Nothing is imported here, so a node standing alone (which imports
:mod:`.rpc` for its admin servicer) never loads etcd's stubs.
"""
