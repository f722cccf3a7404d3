"""The `mailwarden.filter.v1.Learning` service: Learn records a message a person labelled
ham or spam in the learning folder (`--learn-dir`), for the next `mailwarden train` run
(`--ham LEARN_DIR/ham --spam LEARN_DIR/spam` next to the site's other mail). The served
model never changes in place: a model trained on its own answers drifts with its own
mistakes, so every new model goes through training, fitting and review.

Guards against training the model on its own mistakes and against a flood:

- authentication: an admin call (`authorization: Bearer <admin credential>`, compared in
  constant time); without an admin credential the method is disabled;
- origin: only a person's judgement (USER_REPORT, OPERATOR_REVIEW) is learnt; the
  filter's own verdict (FILTER_VERDICT) or no origin is refused;
- train on mistakes and doubt only: a message the filter already gives the label with a
  sure model (spam probability >= SURE / <= 1 - SURE) is not stored (ALREADY_KNOWN):
  storing it would only repeat what the model already believes;
- rate: at most `--learn-max-per-hour` new messages of each class per hour (counted from
  the folder, so across workers and restarts);
- size and balance: at most `--learn-max-messages` of each class, and never more than
  MAX_CLASS_RATIO times the other class once past BALANCE_SLACK (a user bulk-marking a
  folder would otherwise swamp the other class);
- each message is stored once, by content hash; a new label moves it (RELABELLED).

Files: LEARN_DIR/{ham,spam}/<sha256>.eml, written to LEARN_DIR/tmp and renamed (a reader
never sees half a file, and several workers can share the folder).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from filter_server.server.policy import PolicyHolder
from filter_server.server.receiving import shown
from mailwarden.bearer import bearer_credential
from mailwarden.filter.v1 import filter_pb2
from mailwarden.wire import ADMIN_TOKEN_ENV

SERVICE_NAME = filter_pb2.DESCRIPTOR.services_by_name["Learning"].full_name
SURE = 0.99                  # model probability beyond which agreeing is "already known"
MAX_CLASS_RATIO = 10         # one class may hold at most this many times the other ...
BALANCE_SLACK = 1000         # ... once it holds more than this many messages
HOUR_SECONDS = 3600.0
CLASS_DIRS = {filter_pb2.LABEL_HAM: "ham", filter_pb2.LABEL_SPAM: "spam"}
_ACTIONS = {name: filter_pb2.Action.Value(name)
            for name in ("ACCEPT", "TAG", "QUARANTINE", "REJECT")}
_PERSON = (filter_pb2.USER_REPORT, filter_pb2.OPERATOR_REVIEW)


@dataclass(frozen=True)
class LearnSettings:
    directory: Path | None        # None: Learn is disabled (no --learn-dir)
    admin_token: bytes | None     # None: Learn is disabled (no admin credential)
    max_per_hour: int = 500
    max_messages: int = 25000
    max_message_bytes: int = 25 * 1024 * 1024
    cpu_budget_seconds: float = 1.0


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def read_admin_token(path: Path | None) -> bytes | None:
    """The admin credential: the file's content, else $MAILWARDEN_ADMIN_TOKEN, else None.
    (`ServeConfig.problems` checked the file is readable.)"""
    if path is not None:
        value = path.read_text().strip()
    else:
        value = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    return value.encode() or None


class LearningFolder:
    """The labelled messages waiting for the next training run."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        for name in ("ham", "spam", "tmp"):
            (directory / name).mkdir(parents=True, exist_ok=True)

    def path(self, label: int, digest: str) -> Path:
        return self.directory / CLASS_DIRS[label] / f"{digest}.eml"

    def counts(self, since: float) -> dict[int, tuple[int, int]]:
        """Per label: (messages stored, of which stored after `since`)."""
        out = {}
        for label, name in CLASS_DIRS.items():
            total = recent = 0
            with os.scandir(self.directory / name) as entries:
                for entry in entries:
                    if entry.name.endswith(".eml") and entry.is_file():
                        total += 1
                        if entry.stat().st_mtime >= since:
                            recent += 1
            out[label] = (total, recent)
        return out

    def store(self, label: int, digest: str, raw: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory / "tmp", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path(label, digest))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class LearningServicer:
    def __init__(self, holder: PolicyHolder, settings: LearnSettings,
                 log: logging.Logger) -> None:
        self._holder = holder
        self._settings = settings
        self._log = log
        self._folder = LearningFolder(settings.directory) \
            if settings.directory is not None else None
        self._lock = threading.Lock()   # one Learn at a time per worker: they are rare

    def Learn(self, request: filter_pb2.LearnRequest,
              context: grpc.ServicerContext) -> filter_pb2.LearnResponse:
        try:
            self._authorise(context)
            return self._learn(request)
        except Refused as exc:
            self._log.info("learn refused", extra={"request_id": shown(request.request_id),
                                                   "code": exc.code.name,
                                                   "reason": exc.details})
            context.abort(exc.code, exc.details)
            raise  # not reached: abort raises

    def _authorise(self, context: grpc.ServicerContext) -> None:
        token = self._settings.admin_token
        if not token:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          "Learn is disabled on this server: it has no admin credential "
                          "(--admin-token-file or $MAILWARDEN_ADMIN_TOKEN)")
        given = bearer_credential(context.invocation_metadata())
        if given is None or not hmac.compare_digest(given, token):
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                          "Learn needs 'authorization: Bearer <admin credential>' metadata")
        if self._folder is None:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          "Learn is disabled on this server: it has no learning folder "
                          "(--learn-dir)")

    def _check(self, request: filter_pb2.LearnRequest) -> None:
        if request.label not in CLASS_DIRS:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          "label must be LABEL_HAM or LABEL_SPAM")
        if request.origin == filter_pb2.FILTER_VERDICT:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          "a label that is the filter's own verdict is not learnt (it would "
                          "train the model on its own mistakes): send labels a person gave "
                          "(USER_REPORT, OPERATOR_REVIEW)")
        if request.origin not in _PERSON:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          "origin must say who labelled the message: USER_REPORT or "
                          "OPERATOR_REVIEW")
        if not request.message:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "empty message")
        if len(request.message) > self._settings.max_message_bytes:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"message of {len(request.message):,} bytes is over the limit of "
                          f"{self._settings.max_message_bytes:,} (--max-message-bytes)")

    def _learn(self, request: filter_pb2.LearnRequest) -> filter_pb2.LearnResponse:
        self._check(request)
        folder = self._folder
        assert folder is not None, "checked by _authorise"
        policy = self._holder.current
        if policy is None:
            raise Refused(grpc.StatusCode.UNAVAILABLE, "no policy loaded yet")
        raw = request.message
        label = request.label
        other = filter_pb2.LABEL_SPAM if label == filter_pb2.LABEL_HAM else filter_pb2.LABEL_HAM
        verdict = policy.classify(raw, cpu_budget_seconds=self._settings.cpu_budget_seconds
                                  or None)
        response = filter_pb2.LearnResponse(request_id=request.request_id,
                                            action=_ACTIONS[verdict.action],
                                            spam_probability=verdict.spam_probability)
        digest = hashlib.sha256(raw).hexdigest()
        with self._lock:
            if folder.path(label, digest).exists():
                response.outcome = filter_pb2.ALREADY_RECORDED
            elif folder.path(other, digest).exists():
                folder.store(label, digest, raw)
                folder.path(other, digest).unlink(missing_ok=True)
                response.outcome = filter_pb2.RELABELLED
            elif _already_known(label, verdict.action, verdict.spam_probability):
                response.outcome = filter_pb2.ALREADY_KNOWN
            else:
                self._within_limits(folder, label, other)
                folder.store(label, digest, raw)
                response.outcome = filter_pb2.RECORDED
            counts = folder.counts(since=time.time())
        response.ham_recorded = counts[filter_pb2.LABEL_HAM][0]
        response.spam_recorded = counts[filter_pb2.LABEL_SPAM][0]
        self._log.info("learnt", extra={
            "request_id": shown(request.request_id),
            "label": CLASS_DIRS[label], "origin": filter_pb2.LabelOrigin.Name(request.origin),
            "outcome": filter_pb2.LearnOutcome.Name(response.outcome),
            "action": verdict.action, "digest": digest[:16]})
        return response

    def _within_limits(self, folder: LearningFolder, label: int, other: int) -> None:
        counts = folder.counts(since=time.time() - HOUR_SECONDS)
        total, recent = counts[label]
        name = CLASS_DIRS[label]
        if recent >= self._settings.max_per_hour:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{recent} {name} messages learnt in the last hour: the limit is "
                          f"{self._settings.max_per_hour} (--learn-max-per-hour); try later")
        if total >= self._settings.max_messages:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"the learning folder holds {total} {name} messages, the limit "
                          f"(--learn-max-messages): train on them and empty it")
        other_total = counts[other][0]
        if total >= BALANCE_SLACK and total >= MAX_CLASS_RATIO * other_total:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"the learning folder holds {total} {name} messages against "
                          f"{other_total} of the other class: more than {MAX_CLASS_RATIO} "
                          "times as many would swamp it; learn the other class too")


def _already_known(label: int, action: str, probability: float) -> bool:
    """The filter already gives `label` and its model is sure of it."""
    if label == filter_pb2.LABEL_SPAM:
        return action != "ACCEPT" and probability >= SURE
    return action == "ACCEPT" and 0 <= probability <= 1 - SURE


def add_learning_service(servicer: LearningServicer, server: grpc.Server) -> None:
    handlers = {
        "Learn": grpc.unary_unary_rpc_method_handler(
            servicer.Learn,
            request_deserializer=filter_pb2.LearnRequest.FromString,
            response_serializer=filter_pb2.LearnResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                          handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
