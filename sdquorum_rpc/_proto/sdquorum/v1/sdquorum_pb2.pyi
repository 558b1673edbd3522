from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    PROVISIONED: _ClassVar[NodeState]
    RECOVERY_PENDING: _ClassVar[NodeState]
    ACTIVATED: _ClassVar[NodeState]

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    AWAITING_SD_FILE: _ClassVar[SessionState]
    COLLECTING: _ClassVar[SessionState]
    COMPLETED: _ClassVar[SessionState]
    FAILED: _ClassVar[SessionState]

class CustodianStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CUSTODIAN_STATUS_UNSPECIFIED: _ClassVar[CustodianStatus]
    NOT_CONNECTED: _ClassVar[CustodianStatus]
    REQUESTED: _ClassVar[CustodianStatus]
    ACCEPTED: _ClassVar[CustodianStatus]
    REJECTED: _ClassVar[CustodianStatus]
    DENIED: _ClassVar[CustodianStatus]
    NOT_NEEDED: _ClassVar[CustodianStatus]
    UNREACHABLE: _ClassVar[CustodianStatus]

class KeyType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_TYPE_UNSPECIFIED: _ClassVar[KeyType]
    AES256_GCM: _ClassVar[KeyType]
    ED25519: _ClassVar[KeyType]
    RSA3072: _ClassVar[KeyType]

class RequestKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_KIND_UNSPECIFIED: _ClassVar[RequestKind]
    RECOVERY: _ClassVar[RequestKind]
    DRILL: _ClassVar[RequestKind]
    ROTATION: _ClassVar[RequestKind]
    AZURE_RECOVERY: _ClassVar[RequestKind]
    DOMAIN_NOTICE: _ClassVar[RequestKind]
NODE_STATE_UNSPECIFIED: NodeState
PROVISIONED: NodeState
RECOVERY_PENDING: NodeState
ACTIVATED: NodeState
SESSION_STATE_UNSPECIFIED: SessionState
AWAITING_SD_FILE: SessionState
COLLECTING: SessionState
COMPLETED: SessionState
FAILED: SessionState
CUSTODIAN_STATUS_UNSPECIFIED: CustodianStatus
NOT_CONNECTED: CustodianStatus
REQUESTED: CustodianStatus
ACCEPTED: CustodianStatus
REJECTED: CustodianStatus
DENIED: CustodianStatus
NOT_NEEDED: CustodianStatus
UNREACHABLE: CustodianStatus
KEY_TYPE_UNSPECIFIED: KeyType
AES256_GCM: KeyType
ED25519: KeyType
RSA3072: KeyType
REQUEST_KIND_UNSPECIFIED: RequestKind
RECOVERY: RequestKind
DRILL: RequestKind
ROTATION: RequestKind
AZURE_RECOVERY: RequestKind
DOMAIN_NOTICE: RequestKind

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("state", "node_id", "domain_id", "epoch", "quorum", "custodians", "active_session_id", "key_count", "session_kind", "session_state", "session_expires_at_unix", "compromised")
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    CUSTODIANS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_COUNT_FIELD_NUMBER: _ClassVar[int]
    SESSION_KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_STATE_FIELD_NUMBER: _ClassVar[int]
    SESSION_EXPIRES_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    COMPROMISED_FIELD_NUMBER: _ClassVar[int]
    state: NodeState
    node_id: str
    domain_id: str
    epoch: int
    quorum: int
    custodians: int
    active_session_id: str
    key_count: int
    session_kind: str
    session_state: SessionState
    session_expires_at_unix: int
    compromised: bool
    def __init__(self, state: _Optional[_Union[NodeState, str]] = ..., node_id: _Optional[str] = ..., domain_id: _Optional[str] = ..., epoch: _Optional[int] = ..., quorum: _Optional[int] = ..., custodians: _Optional[int] = ..., active_session_id: _Optional[str] = ..., key_count: _Optional[int] = ..., session_kind: _Optional[str] = ..., session_state: _Optional[_Union[SessionState, str]] = ..., session_expires_at_unix: _Optional[int] = ..., compromised: _Optional[bool] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("custodian_certificates", "quorum")
    CUSTODIAN_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    custodian_certificates: _containers.RepeatedScalarFieldContainer[bytes]
    quorum: int
    def __init__(self, custodian_certificates: _Optional[_Iterable[bytes]] = ..., quorum: _Optional[int] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("data", "warnings")
    DATA_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, data: _Optional[bytes] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class InitRecoveryRequest(_message.Message):
    __slots__ = ("reason", "ttl_seconds")
    REASON_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    ttl_seconds: int
    def __init__(self, reason: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class InitRecoveryResponse(_message.Message):
    __slots__ = ("session_id", "expires_at_unix")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    expires_at_unix: int
    def __init__(self, session_id: _Optional[str] = ..., expires_at_unix: _Optional[int] = ...) -> None: ...

class SdFileChunk(_message.Message):
    __slots__ = ("session_id", "data")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    data: bytes
    def __init__(self, session_id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class CustodianProgress(_message.Message):
    __slots__ = ("x", "name", "status", "detail")
    X_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    x: int
    name: str
    status: CustodianStatus
    detail: str
    def __init__(self, x: _Optional[int] = ..., name: _Optional[str] = ..., status: _Optional[_Union[CustodianStatus, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class RecoveryProgress(_message.Message):
    __slots__ = ("session_id", "state", "required", "accepted", "custodians", "expires_at_unix", "message", "domain_id", "epoch", "kind")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CUSTODIANS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: SessionState
    required: int
    accepted: int
    custodians: _containers.RepeatedCompositeFieldContainer[CustodianProgress]
    expires_at_unix: int
    message: str
    domain_id: str
    epoch: int
    kind: str
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., required: _Optional[int] = ..., accepted: _Optional[int] = ..., custodians: _Optional[_Iterable[_Union[CustodianProgress, _Mapping]]] = ..., expires_at_unix: _Optional[int] = ..., message: _Optional[str] = ..., domain_id: _Optional[str] = ..., epoch: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class WatchSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CancelSessionRequest(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id", "expires_at_unix")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    expires_at_unix: int
    def __init__(self, session_id: _Optional[str] = ..., expires_at_unix: _Optional[int] = ...) -> None: ...

class StartDrillRequest(_message.Message):
    __slots__ = ("reason", "ttl_seconds")
    REASON_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    ttl_seconds: int
    def __init__(self, reason: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class RotationRequest(_message.Message):
    __slots__ = ("custodian_certificates", "quorum", "reason", "ttl_seconds")
    CUSTODIAN_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    custodian_certificates: _containers.RepeatedScalarFieldContainer[bytes]
    quorum: int
    reason: str
    ttl_seconds: int
    def __init__(self, custodian_certificates: _Optional[_Iterable[bytes]] = ..., quorum: _Optional[int] = ..., reason: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class GetSecurityDomainRequest(_message.Message):
    __slots__ = ("format",)
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    format: str
    def __init__(self, format: _Optional[str] = ...) -> None: ...

class ExportRequestsRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class OfflineRequest(_message.Message):
    __slots__ = ("custodian", "request")
    CUSTODIAN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    custodian: str
    request: CustodianRequest
    def __init__(self, custodian: _Optional[str] = ..., request: _Optional[_Union[CustodianRequest, _Mapping]] = ...) -> None: ...

class ExportRequestsResponse(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[OfflineRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[OfflineRequest, _Mapping]]] = ...) -> None: ...

class OfflineResponse(_message.Message):
    __slots__ = ("request_id", "answer", "denied")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    answer: bytes
    denied: bool
    def __init__(self, request_id: _Optional[str] = ..., answer: _Optional[bytes] = ..., denied: _Optional[bool] = ...) -> None: ...

class AzureRestoreRequest(_message.Message):
    __slots__ = ("sd_file", "exchange_certificate", "reason", "ttl_seconds")
    SD_FILE_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    sd_file: bytes
    exchange_certificate: bytes
    reason: str
    ttl_seconds: int
    def __init__(self, sd_file: _Optional[bytes] = ..., exchange_certificate: _Optional[bytes] = ..., reason: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CustodyRecordRequest(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    def __init__(self, record: _Optional[bytes] = ...) -> None: ...

class CompromiseRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class PoolMemberRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("name", "members", "allowed", "staleness_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    STALENESS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    members: _containers.RepeatedScalarFieldContainer[str]
    allowed: _containers.RepeatedScalarFieldContainer[str]
    staleness_seconds: float
    def __init__(self, name: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., allowed: _Optional[_Iterable[str]] = ..., staleness_seconds: _Optional[float] = ...) -> None: ...

class GetCustodyStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CustodyState(_message.Message):
    __slots__ = ("node_id", "sd_header", "sd_header_signature", "records", "drills", "retired", "compromised")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SD_HEADER_FIELD_NUMBER: _ClassVar[int]
    SD_HEADER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    DRILLS_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    COMPROMISED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    sd_header: bytes
    sd_header_signature: bytes
    records: bytes
    drills: bytes
    retired: bytes
    compromised: bool
    def __init__(self, node_id: _Optional[str] = ..., sd_header: _Optional[bytes] = ..., sd_header_signature: _Optional[bytes] = ..., records: _Optional[bytes] = ..., drills: _Optional[bytes] = ..., retired: _Optional[bytes] = ..., compromised: _Optional[bool] = ...) -> None: ...

class ExportAuditRequest(_message.Message):
    __slots__ = ("chain",)
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    chain: str
    def __init__(self, chain: _Optional[str] = ...) -> None: ...

class AuditChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("keys_restored",)
    KEYS_RESTORED_FIELD_NUMBER: _ClassVar[int]
    keys_restored: int
    def __init__(self, keys_restored: _Optional[int] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("name", "type", "public_key_der", "created_at_unix", "owner", "deleted_at_unix", "purge_at_unix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_DER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DELETED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    PURGE_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: KeyType
    public_key_der: bytes
    created_at_unix: int
    owner: str
    deleted_at_unix: int
    purge_at_unix: int
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[KeyType, str]] = ..., public_key_der: _Optional[bytes] = ..., created_at_unix: _Optional[int] = ..., owner: _Optional[str] = ..., deleted_at_unix: _Optional[int] = ..., purge_at_unix: _Optional[int] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "type", "owner")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: KeyType
    owner: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[KeyType, str]] = ..., owner: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class DeleteKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteKeyResponse(_message.Message):
    __slots__ = ("purge_at_unix",)
    PURGE_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    purge_at_unix: int
    def __init__(self, purge_at_unix: _Optional[int] = ...) -> None: ...

class RecoverKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PurgeKeyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PurgeKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EncryptRequest(_message.Message):
    __slots__ = ("name", "plaintext", "aad")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    AAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    plaintext: bytes
    aad: bytes
    def __init__(self, name: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., aad: _Optional[bytes] = ...) -> None: ...

class EncryptResponse(_message.Message):
    __slots__ = ("ciphertext",)
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    def __init__(self, ciphertext: _Optional[bytes] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("name", "ciphertext", "aad")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    AAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    ciphertext: bytes
    aad: bytes
    def __init__(self, name: _Optional[str] = ..., ciphertext: _Optional[bytes] = ..., aad: _Optional[bytes] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("plaintext",)
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    plaintext: bytes
    def __init__(self, plaintext: _Optional[bytes] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("name", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    message: bytes
    def __init__(self, name: _Optional[str] = ..., message: _Optional[bytes] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("name", "message", "signature")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    message: bytes
    signature: bytes
    def __init__(self, name: _Optional[str] = ..., message: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("valid",)
    VALID_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    def __init__(self, valid: _Optional[bool] = ...) -> None: ...

class EncryptBatchRequest(_message.Message):
    __slots__ = ("name", "plaintexts", "plaintext_lengths", "aad", "aads", "aad_lengths")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXTS_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    AAD_FIELD_NUMBER: _ClassVar[int]
    AADS_FIELD_NUMBER: _ClassVar[int]
    AAD_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    name: str
    plaintexts: bytes
    plaintext_lengths: _containers.RepeatedScalarFieldContainer[int]
    aad: bytes
    aads: bytes
    aad_lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., plaintexts: _Optional[bytes] = ..., plaintext_lengths: _Optional[_Iterable[int]] = ..., aad: _Optional[bytes] = ..., aads: _Optional[bytes] = ..., aad_lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class EncryptBatchResponse(_message.Message):
    __slots__ = ("ciphertexts", "ciphertext_lengths")
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    ciphertexts: bytes
    ciphertext_lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ciphertexts: _Optional[bytes] = ..., ciphertext_lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class SignBatchRequest(_message.Message):
    __slots__ = ("name", "messages", "message_lengths")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    name: str
    messages: bytes
    message_lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., messages: _Optional[bytes] = ..., message_lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class SignBatchResponse(_message.Message):
    __slots__ = ("signatures", "signature_lengths")
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    signatures: bytes
    signature_lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, signatures: _Optional[bytes] = ..., signature_lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class AgentHello(_message.Message):
    __slots__ = ("wrapping_cert_sha256", "agent_version", "wrapping_certificate")
    WRAPPING_CERT_SHA256_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    WRAPPING_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    wrapping_cert_sha256: bytes
    agent_version: str
    wrapping_certificate: bytes
    def __init__(self, wrapping_cert_sha256: _Optional[bytes] = ..., agent_version: _Optional[str] = ..., wrapping_certificate: _Optional[bytes] = ...) -> None: ...

class CustodianRequest(_message.Message):
    __slots__ = ("request_id", "session_id", "kind", "attestation", "sd_header", "sd_header_signature", "x", "proposal")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    SD_HEADER_FIELD_NUMBER: _ClassVar[int]
    SD_HEADER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    session_id: str
    kind: RequestKind
    attestation: bytes
    sd_header: bytes
    sd_header_signature: bytes
    x: int
    proposal: bytes
    def __init__(self, request_id: _Optional[str] = ..., session_id: _Optional[str] = ..., kind: _Optional[_Union[RequestKind, str]] = ..., attestation: _Optional[bytes] = ..., sd_header: _Optional[bytes] = ..., sd_header_signature: _Optional[bytes] = ..., x: _Optional[int] = ..., proposal: _Optional[bytes] = ...) -> None: ...

class ShareRelease(_message.Message):
    __slots__ = ("request_id", "release")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    release: bytes
    def __init__(self, request_id: _Optional[str] = ..., release: _Optional[bytes] = ...) -> None: ...

class ProofSubmission(_message.Message):
    __slots__ = ("request_id", "proof")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    proof: bytes
    def __init__(self, request_id: _Optional[str] = ..., proof: _Optional[bytes] = ...) -> None: ...

class Denial(_message.Message):
    __slots__ = ("request_id", "signed")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    signed: bytes
    def __init__(self, request_id: _Optional[str] = ..., signed: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
