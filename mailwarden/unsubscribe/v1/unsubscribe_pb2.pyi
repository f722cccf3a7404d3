import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    UNSUBSCRIBE: _ClassVar[Reason]
    COMPLAINT: _ClassVar[Reason]
    BOUNCE: _ClassVar[Reason]
    MANUAL: _ClassVar[Reason]

class MailClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAIL_CLASS_UNSPECIFIED: _ClassVar[MailClass]
    BULK: _ClassVar[MailClass]
    TRANSACTIONAL: _ClassVar[MailClass]

class ChangeOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_OP_UNSPECIFIED: _ClassVar[ChangeOp]
    SUPPRESS: _ClassVar[ChangeOp]
    RESUBSCRIBE: _ClassVar[ChangeOp]

class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORMAT_UNSPECIFIED: _ClassVar[Format]
    CSV: _ClassVar[Format]
    JSONL: _ClassVar[Format]
REASON_UNSPECIFIED: Reason
UNSUBSCRIBE: Reason
COMPLAINT: Reason
BOUNCE: Reason
MANUAL: Reason
MAIL_CLASS_UNSPECIFIED: MailClass
BULK: MailClass
TRANSACTIONAL: MailClass
CHANGE_OP_UNSPECIFIED: ChangeOp
SUPPRESS: ChangeOp
RESUBSCRIBE: ChangeOp
FORMAT_UNSPECIFIED: Format
CSV: Format
JSONL: Format

class UnsubscribeRequest(_message.Message):
    __slots__ = ("address", "scope", "reason", "source", "idempotency_key")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    address: str
    scope: str
    reason: Reason
    source: str
    idempotency_key: str
    def __init__(self, address: _Optional[str] = ..., scope: _Optional[str] = ..., reason: _Optional[_Union[Reason, str]] = ..., source: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class UnsubscribeResponse(_message.Message):
    __slots__ = ("sequence", "already_existed", "address", "scope")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    already_existed: bool
    address: str
    scope: str
    def __init__(self, sequence: _Optional[int] = ..., already_existed: _Optional[bool] = ..., address: _Optional[str] = ..., scope: _Optional[str] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("addresses", "scope", "mail_class")
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MAIL_CLASS_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    scope: str
    mail_class: MailClass
    def __init__(self, addresses: _Optional[_Iterable[str]] = ..., scope: _Optional[str] = ..., mail_class: _Optional[_Union[MailClass, str]] = ...) -> None: ...

class Suppression(_message.Message):
    __slots__ = ("address", "scope", "reason", "source", "first_seen", "sequence")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    address: str
    scope: str
    reason: Reason
    source: str
    first_seen: _timestamp_pb2.Timestamp
    sequence: int
    def __init__(self, address: _Optional[str] = ..., scope: _Optional[str] = ..., reason: _Optional[_Union[Reason, str]] = ..., source: _Optional[str] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class CheckResult(_message.Message):
    __slots__ = ("address", "matched")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    address: str
    matched: _containers.RepeatedCompositeFieldContainer[Suppression]
    def __init__(self, address: _Optional[str] = ..., matched: _Optional[_Iterable[_Union[Suppression, _Mapping]]] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("suppressed", "head_sequence")
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    suppressed: _containers.RepeatedCompositeFieldContainer[CheckResult]
    head_sequence: int
    def __init__(self, suppressed: _Optional[_Iterable[_Union[CheckResult, _Mapping]]] = ..., head_sequence: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("from_sequence", "snapshot", "heartbeat_seconds", "batch_changes")
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_CHANGES_FIELD_NUMBER: _ClassVar[int]
    from_sequence: int
    snapshot: bool
    heartbeat_seconds: float
    batch_changes: bool
    def __init__(self, from_sequence: _Optional[int] = ..., snapshot: _Optional[bool] = ..., heartbeat_seconds: _Optional[float] = ..., batch_changes: _Optional[bool] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("sequence", "op", "address", "scope", "reason", "source", "at")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    op: ChangeOp
    address: str
    scope: str
    reason: Reason
    source: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., op: _Optional[_Union[ChangeOp, str]] = ..., address: _Optional[str] = ..., scope: _Optional[str] = ..., reason: _Optional[_Union[Reason, str]] = ..., source: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ChangeBatch(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    def __init__(self, changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("suppressions",)
    SUPPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    suppressions: _containers.RepeatedCompositeFieldContainer[Suppression]
    def __init__(self, suppressions: _Optional[_Iterable[_Union[Suppression, _Mapping]]] = ...) -> None: ...

class SnapshotEnd(_message.Message):
    __slots__ = ("sequence", "count")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    count: int
    def __init__(self, sequence: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("head_sequence", "server_time")
    HEAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    head_sequence: int
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, head_sequence: _Optional[int] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("snapshot_chunk", "snapshot_end", "change", "heartbeat", "change_batch")
    SNAPSHOT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_END_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CHANGE_BATCH_FIELD_NUMBER: _ClassVar[int]
    snapshot_chunk: SnapshotChunk
    snapshot_end: SnapshotEnd
    change: Change
    heartbeat: Heartbeat
    change_batch: ChangeBatch
    def __init__(self, snapshot_chunk: _Optional[_Union[SnapshotChunk, _Mapping]] = ..., snapshot_end: _Optional[_Union[SnapshotEnd, _Mapping]] = ..., change: _Optional[_Union[Change, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., change_batch: _Optional[_Union[ChangeBatch, _Mapping]] = ...) -> None: ...

class FingerprintSnapshotRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: bytes
    def __init__(self, key_id: _Optional[bytes] = ...) -> None: ...

class FingerprintSnapshotChunk(_message.Message):
    __slots__ = ("data", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class ForgetResponse(_message.Message):
    __slots__ = ("suppressions", "history")
    SUPPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    suppressions: int
    history: int
    def __init__(self, suppressions: _Optional[int] = ..., history: _Optional[int] = ...) -> None: ...

class ResubscribeRequest(_message.Message):
    __slots__ = ("address", "scope", "source")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    address: str
    scope: str
    source: str
    def __init__(self, address: _Optional[str] = ..., scope: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ResubscribeResponse(_message.Message):
    __slots__ = ("sequence", "removed")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    removed: bool
    def __init__(self, sequence: _Optional[int] = ..., removed: _Optional[bool] = ...) -> None: ...

class ImportChunk(_message.Message):
    __slots__ = ("format", "default_scope", "default_reason", "default_source", "skip_invalid", "data")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SCOPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REASON_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SKIP_INVALID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    format: Format
    default_scope: str
    default_reason: Reason
    default_source: str
    skip_invalid: bool
    data: bytes
    def __init__(self, format: _Optional[_Union[Format, str]] = ..., default_scope: _Optional[str] = ..., default_reason: _Optional[_Union[Reason, str]] = ..., default_source: _Optional[str] = ..., skip_invalid: _Optional[bool] = ..., data: _Optional[bytes] = ...) -> None: ...

class ImportError(_message.Message):
    __slots__ = ("line", "message")
    LINE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    line: int
    message: str
    def __init__(self, line: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ImportSummary(_message.Message):
    __slots__ = ("rows", "inserted", "already_existed", "errors", "invalid_rows", "last_sequence")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    INVALID_ROWS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    rows: int
    inserted: int
    already_existed: int
    errors: _containers.RepeatedCompositeFieldContainer[ImportError]
    invalid_rows: int
    last_sequence: int
    def __init__(self, rows: _Optional[int] = ..., inserted: _Optional[int] = ..., already_existed: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[ImportError, _Mapping]]] = ..., invalid_rows: _Optional[int] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("format", "scope")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    format: Format
    scope: str
    def __init__(self, format: _Optional[_Union[Format, str]] = ..., scope: _Optional[str] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StoreStatus(_message.Message):
    __slots__ = ("ready", "reason", "backend", "highly_available", "durability", "head_sequence", "sync_standbys", "suppressions")
    READY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    HIGHLY_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SYNC_STANDBYS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    reason: str
    backend: str
    highly_available: bool
    durability: str
    head_sequence: int
    sync_standbys: int
    suppressions: int
    def __init__(self, ready: _Optional[bool] = ..., reason: _Optional[str] = ..., backend: _Optional[str] = ..., highly_available: _Optional[bool] = ..., durability: _Optional[str] = ..., head_sequence: _Optional[int] = ..., sync_standbys: _Optional[int] = ..., suppressions: _Optional[int] = ...) -> None: ...
