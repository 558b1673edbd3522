"""sdquorum core: I/O-free building blocks shared by every process.

Nothing in this package opens a socket, touches the disk, reads the clock or imports grpc; time and
randomness are passed in. Modules:

* :mod:`sdquorum.shamir`: Shamir over the ed25519 scalar field, Feldman commitments, Schnorr proofs.
* :mod:`sdquorum.sdfile`: the security domain file, format version 2 (version 1 is still read).
* :mod:`sdquorum.envelopes`: exchange-key attestation and share release.
* :mod:`sdquorum.policy`: activation policy checks.
* :mod:`sdquorum.pki`: certificates and roles.
* :mod:`sdquorum.keys`: custodian wrapping-key handles.
* :mod:`sdquorum.errors`: the project's error hierarchy.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
