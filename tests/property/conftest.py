"""The world the stateful adversary tests share: three SD files (the domain at epochs 1 and 2, and
another domain), the custodians' agents, an outsider's key, and nodes attested under the root and
under another root."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import pytest
from attack import M, N, World

from sdquorum.keys import SoftwareWrappingKey

if TYPE_CHECKING:
    from conftest import HonestAgent, NodeAttestation, Sealed, SealFactory


@pytest.fixture
def world(
    sealed: Sealed,
    make_sealed: SealFactory,
    agents: list[HonestAgent],
    wrapping_keys: list[SoftwareWrappingKey],
    node_attestation: NodeAttestation,
    foreign_node_attestation: NodeAttestation,
    t0: int,
    now: datetime,
) -> World:
    return World(
        files=(sealed, make_sealed(M, N, secrets=sealed.secrets, epoch=2), make_sealed(M, N)),
        agents=tuple(agents[:N]),
        outsider=wrapping_keys[N],
        node=node_attestation,
        foreign=foreign_node_attestation,
        t0=t0,
        now=now,
    )
