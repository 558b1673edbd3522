"""The floor for ``sdctl status``: import grpc, dial the node with the same mTLS, call GetStatus.

``python bench/_min_status.py TARGET CERT KEY CA`` prints the node's state. Nothing else: no
argument parsing library, no settings, no file checks, no error translation, no asyncio.
"""

import sys

import grpc

from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2 as pb
from sdquorum_rpc._proto.sdquorum.v1 import sdquorum_pb2_grpc as pbg

target, cert, key, ca = sys.argv[1:5]
with open(cert, "rb") as c, open(key, "rb") as k, open(ca, "rb") as a:
    creds = grpc.ssl_channel_credentials(
        root_certificates=a.read(), private_key=k.read(), certificate_chain=c.read()
    )
with grpc.secure_channel(target, creds) as channel:
    status = pbg.NodeStub(channel).GetStatus(pb.GetStatusRequest(), timeout=30)  # type: ignore[no-untyped-call]
print(pb.NodeState.Name(status.state))
