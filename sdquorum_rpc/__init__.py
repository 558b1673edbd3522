"""gRPC glue shared by every process: generated stubs, mTLS credentials, error translation.

Importing this package pins the TLS 1.2 cipher suites grpc may offer or accept to forward-secret
AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305); TLS 1.3 suites are all AEAD with forward
secrecy and TLS 1.1 and below are refused by grpc's defaults. The variable is read when grpc's core
initialises, so it is set before grpc is imported anywhere in the process.
"""

import os

FORWARD_SECRET_AEAD_SUITES = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
os.environ["GRPC_SSL_CIPHER_SUITES"] = FORWARD_SECRET_AEAD_SUITES
# grpc's own log lines would break the one-line error a person gets; our code logs what matters.
# GRPC_VERBOSITY=DEBUG (or ERROR) in the environment brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

__all__ = ["FORWARD_SECRET_AEAD_SUITES"]
