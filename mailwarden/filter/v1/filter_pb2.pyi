from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MailClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAIL_CLASS_UNSPECIFIED: _ClassVar[MailClass]
    BULK: _ClassVar[MailClass]
    TRANSACTIONAL: _ClassVar[MailClass]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACCEPT: _ClassVar[Action]
    TAG: _ClassVar[Action]
    QUARANTINE: _ClassVar[Action]
    REJECT: _ClassVar[Action]

class SuppressionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUPPRESSION_STATE_UNSPECIFIED: _ClassVar[SuppressionState]
    SUPPRESSION_DISABLED: _ClassVar[SuppressionState]
    SUPPRESSION_FRESH: _ClassVar[SuppressionState]
    SUPPRESSION_STALE: _ClassVar[SuppressionState]

class Label(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_UNSPECIFIED: _ClassVar[Label]
    LABEL_HAM: _ClassVar[Label]
    LABEL_SPAM: _ClassVar[Label]

class LabelOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_ORIGIN_UNSPECIFIED: _ClassVar[LabelOrigin]
    USER_REPORT: _ClassVar[LabelOrigin]
    OPERATOR_REVIEW: _ClassVar[LabelOrigin]
    FILTER_VERDICT: _ClassVar[LabelOrigin]

class LearnOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEARN_OUTCOME_UNSPECIFIED: _ClassVar[LearnOutcome]
    RECORDED: _ClassVar[LearnOutcome]
    RELABELLED: _ClassVar[LearnOutcome]
    ALREADY_RECORDED: _ClassVar[LearnOutcome]
    ALREADY_KNOWN: _ClassVar[LearnOutcome]
MAIL_CLASS_UNSPECIFIED: MailClass
BULK: MailClass
TRANSACTIONAL: MailClass
ACTION_UNSPECIFIED: Action
ACCEPT: Action
TAG: Action
QUARANTINE: Action
REJECT: Action
SUPPRESSION_STATE_UNSPECIFIED: SuppressionState
SUPPRESSION_DISABLED: SuppressionState
SUPPRESSION_FRESH: SuppressionState
SUPPRESSION_STALE: SuppressionState
LABEL_UNSPECIFIED: Label
LABEL_HAM: Label
LABEL_SPAM: Label
LABEL_ORIGIN_UNSPECIFIED: LabelOrigin
USER_REPORT: LabelOrigin
OPERATOR_REVIEW: LabelOrigin
FILTER_VERDICT: LabelOrigin
LEARN_OUTCOME_UNSPECIFIED: LearnOutcome
RECORDED: LearnOutcome
RELABELLED: LearnOutcome
ALREADY_RECORDED: LearnOutcome
ALREADY_KNOWN: LearnOutcome

class Envelope(_message.Message):
    __slots__ = ("mail_from", "recipients", "client_ip", "helo")
    MAIL_FROM_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    HELO_FIELD_NUMBER: _ClassVar[int]
    mail_from: str
    recipients: _containers.RepeatedScalarFieldContainer[str]
    client_ip: str
    helo: str
    def __init__(self, mail_from: _Optional[str] = ..., recipients: _Optional[_Iterable[str]] = ..., client_ip: _Optional[str] = ..., helo: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("request_id", "message", "envelope", "mail_class", "list_scope")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    MAIL_CLASS_FIELD_NUMBER: _ClassVar[int]
    LIST_SCOPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    message: bytes
    envelope: Envelope
    mail_class: MailClass
    list_scope: str
    def __init__(self, request_id: _Optional[str] = ..., message: _Optional[bytes] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ..., mail_class: _Optional[_Union[MailClass, str]] = ..., list_scope: _Optional[str] = ...) -> None: ...

class RuleHit(_message.Message):
    __slots__ = ("name", "score", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    score: float
    description: str
    def __init__(self, name: _Optional[str] = ..., score: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("request_id", "action", "score", "hits", "spam_probability", "policy_hash", "suppressed_recipients", "suppression_state", "suppression_age_seconds", "unparseable_recipients", "authentication_results")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    SPAM_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_HASH_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSION_STATE_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSION_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UNPARSEABLE_RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATION_RESULTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    action: Action
    score: float
    hits: _containers.RepeatedCompositeFieldContainer[RuleHit]
    spam_probability: float
    policy_hash: str
    suppressed_recipients: _containers.RepeatedScalarFieldContainer[str]
    suppression_state: SuppressionState
    suppression_age_seconds: float
    unparseable_recipients: _containers.RepeatedScalarFieldContainer[str]
    authentication_results: str
    def __init__(self, request_id: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., score: _Optional[float] = ..., hits: _Optional[_Iterable[_Union[RuleHit, _Mapping]]] = ..., spam_probability: _Optional[float] = ..., policy_hash: _Optional[str] = ..., suppressed_recipients: _Optional[_Iterable[str]] = ..., suppression_state: _Optional[_Union[SuppressionState, str]] = ..., suppression_age_seconds: _Optional[float] = ..., unparseable_recipients: _Optional[_Iterable[str]] = ..., authentication_results: _Optional[str] = ...) -> None: ...

class LearnRequest(_message.Message):
    __slots__ = ("request_id", "message", "label", "origin")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    message: bytes
    label: Label
    origin: LabelOrigin
    def __init__(self, request_id: _Optional[str] = ..., message: _Optional[bytes] = ..., label: _Optional[_Union[Label, str]] = ..., origin: _Optional[_Union[LabelOrigin, str]] = ...) -> None: ...

class LearnResponse(_message.Message):
    __slots__ = ("request_id", "outcome", "action", "spam_probability", "ham_recorded", "spam_recorded")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SPAM_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    HAM_RECORDED_FIELD_NUMBER: _ClassVar[int]
    SPAM_RECORDED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    outcome: LearnOutcome
    action: Action
    spam_probability: float
    ham_recorded: int
    spam_recorded: int
    def __init__(self, request_id: _Optional[str] = ..., outcome: _Optional[_Union[LearnOutcome, str]] = ..., action: _Optional[_Union[Action, str]] = ..., spam_probability: _Optional[float] = ..., ham_recorded: _Optional[int] = ..., spam_recorded: _Optional[int] = ...) -> None: ...
