"""One verdict, said in each protocol's words: the headers added to a message, the SMTP
reply for a rejection, spamd's `Spam:` line and report, Rspamd's action — and what a
refused call (gRPC status) becomes for a mail server.

What the policy says about mail servers lives in the policy's optional `mta` block
(filter_server/policy/schema.py): reply texts, header names, the authserv-id, and whether
milter removes suppressed recipients. Absent fields take the defaults below; they are read
per message from the policy that answered, so a reload changes them like any rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import grpc

from mailwarden.filter.v1 import filter_pb2

DEFAULT_REJECT_REASON = "Message rejected as spam"
DEFAULT_QUARANTINE_REASON = "Message held for review as suspected spam"
DEFAULT_HEADER_PREFIX = "X-Spam"
DEFAULT_AUTHSERV_ID = "mailwarden"
DEFAULT_LIST_SCOPE_HEADER = "X-Mailwarden-List-Scope"
DEFAULT_MAIL_CLASS_HEADER = "X-Mailwarden-Mail-Class"
# The method name in Authentication-Results (RFC 8601 allows x- methods).
AR_METHOD = "x-mailwarden"
ACTION_NAMES = {filter_pb2.ACCEPT: "ACCEPT", filter_pb2.TAG: "TAG",
                filter_pb2.QUARANTINE: "QUARANTINE", filter_pb2.REJECT: "REJECT"}
# Rspamd's action names (QUARANTINE: see rspamd_http.check_result for Rspamd's proxy).
RSPAMD_ACTIONS = {filter_pb2.ACCEPT: "no action", filter_pb2.TAG: "add header",
                  filter_pb2.QUARANTINE: "quarantine", filter_pb2.REJECT: "reject"}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f%]")


def clean_text(text: str, limit: int = 400) -> str:
    """Text safe in an SMTP reply or a header value: no control characters (a CR/LF would
    start a new line of the protocol) and no `%` (Sendmail expands it in replies)."""
    return _UNSAFE.sub(" ", text)[:limit].strip()


@dataclass(frozen=True)
class MtaOptions:
    reject_reason: str = DEFAULT_REJECT_REASON
    quarantine_reason: str = DEFAULT_QUARANTINE_REASON
    header_prefix: str = DEFAULT_HEADER_PREFIX
    authserv_id: str = DEFAULT_AUTHSERV_ID
    remove_suppressed_recipients: bool = False
    list_scope_header: str = DEFAULT_LIST_SCOPE_HEADER
    mail_class_header: str = DEFAULT_MAIL_CLASS_HEADER
    tag_threshold: float = 5.0
    reject_threshold: float = 20.0
    # authserv-id of sender authentication's results (policy `authentication`), when on
    auth_authserv_id: str = ""

    @classmethod
    def of(cls, policy: dict[str, Any] | None) -> "MtaOptions":
        if policy is None:
            return cls()
        mta = policy.get("mta") or {}
        thresholds = policy.get("thresholds") or {}
        authentication = policy.get("authentication") or {}
        return cls(
            reject_reason=clean_text(mta.get("rejectReason", DEFAULT_REJECT_REASON)),
            quarantine_reason=clean_text(mta.get("quarantineReason",
                                                 DEFAULT_QUARANTINE_REASON)),
            header_prefix=mta.get("headerPrefix", DEFAULT_HEADER_PREFIX),
            authserv_id=mta.get("authservId", DEFAULT_AUTHSERV_ID),
            remove_suppressed_recipients=bool(mta.get("removeSuppressedRecipients", False)),
            list_scope_header=mta.get("listScopeHeader", DEFAULT_LIST_SCOPE_HEADER),
            mail_class_header=mta.get("mailClassHeader", DEFAULT_MAIL_CLASS_HEADER),
            tag_threshold=float(thresholds.get("tag", 5.0)),
            reject_threshold=float(thresholds.get("reject", 20.0)),
            auth_authserv_id=authentication.get("authservId", DEFAULT_AUTHSERV_ID)
            if authentication.get("enabled") else "")

    def owned_header(self, name: str, value: str) -> bool:
        """Headers this filter writes: an incoming copy (forged, or from a filter upstream)
        is removed before ours are added (RFC 8601 section 5 for Authentication-Results)."""
        lower = name.lower()
        if lower.startswith(self.header_prefix.lower() + "-"):
            return True
        if lower != "authentication-results":
            return False
        authserv_id = value.strip().split(";", 1)[0].strip().lower()
        return authserv_id in (self.authserv_id.lower(), self.auth_authserv_id.lower())


def is_spam(response: filter_pb2.ClassifyResponse) -> bool:
    """Every action but ACCEPT means spam: TAG starts at the tag threshold, which is the
    `required` score spamd and Rspamd report."""
    return response.action != filter_pb2.ACCEPT


def action_name(response: filter_pb2.ClassifyResponse) -> str:
    return ACTION_NAMES.get(response.action, "ACCEPT")


def hit_names(response: filter_pb2.ClassifyResponse) -> list[str]:
    return [hit.name for hit in response.hits]


def result_headers(response: filter_pb2.ClassifyResponse,
                   options: MtaOptions) -> list[tuple[str, str]]:
    """The headers added to a message that is delivered (ACCEPT, TAG, QUARANTINE)."""
    prefix = options.header_prefix
    spam = is_spam(response)
    score = f"{response.score:.1f}"
    required = f"{options.tag_threshold:.1f}"
    tests = ",".join(hit_names(response)) or "none"
    action = action_name(response).lower()
    result = "fail" if spam else "pass"
    return [
        (f"{prefix}-Flag", "YES" if spam else "NO"),
        (f"{prefix}-Score", score),
        (f"{prefix}-Action", action),
        (f"{prefix}-Status", f"{'Yes' if spam else 'No'}, score={score} required={required} "
                             f"tests={tests} policy={response.policy_hash[:12]}"),
        ("Authentication-Results",
         f"{options.authserv_id}; {AR_METHOD}={result} (score {score}, required {required}) "
         f"policy.action={action} policy.score={score} policy.hits={tests}"
         + _authentication_results(response)),
    ]


def _authentication_results(response: filter_pb2.ClassifyResponse) -> str:
    """Sender authentication's results (SPF, DKIM, DMARC, ARC; the policy's
    `authentication`), appended to our Authentication-Results header as more methods:
    one header for what this filter found, under one authserv-id."""
    _, _, results = response.authentication_results.partition(";")
    results = " ".join(results.split())  # unfolded
    return "" if results in ("", "none") else f"; {results}"


def report_text(response: filter_pb2.ClassifyResponse, options: MtaOptions) -> str:
    """A SpamAssassin-style report: the hits with their scores and descriptions."""
    lines = [f"Content analysis details:   ({response.score:.1f} points, "
             f"{options.tag_threshold:.1f} required; action {action_name(response)})", "",
             " pts rule name              description",
             "---- ---------------------- " + "-" * 50]
    for hit in response.hits:
        description = clean_text(hit.description, 200) or "-"
        lines.append(f"{hit.score:4.1f} {hit.name:<22} {description}")
    return "\r\n".join(lines) + "\r\n"


def header_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    lower = name.lower()
    for key, value in headers:
        if key.lower() == lower:
            return value.strip()
    return None


def mail_class_and_scope(headers: Iterable[tuple[str, str]],
                         options: MtaOptions) -> tuple[int, str]:
    """The suppression inputs a gRPC caller passes as fields, read from the message's
    headers (the sending system sets them): mail class (bulk unless `transactional`) and
    list scope ("" = no list; global suppressions apply all the same)."""
    headers = list(headers)
    mail_class = (header_value(headers, options.mail_class_header) or "").lower()
    scope = (header_value(headers, options.list_scope_header) or "").lower()
    return (filter_pb2.TRANSACTIONAL if mail_class == "transactional" else filter_pb2.BULK,
            scope)


def header_fields(raw: bytes, limit: int = 256 * 1024) -> list[tuple[str, str]]:
    """(name, value) of each header field at the top of a raw message (unfolded), from at
    most `limit` bytes."""
    head = raw[:limit]
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    if end >= 0:
        head = head[:end]
    fields: list[tuple[str, str]] = []
    for line in head.decode("latin-1").splitlines():
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name.strip(), value.strip()))
    return fields


# --- refusals --------------------------------------------------------------------------
@dataclass(frozen=True)
class Refusal:
    """A call the server did not answer with a verdict, for a mail server: `temporary`
    (4xx: try again later, or elsewhere) or permanent (5xx), with SMTP codes and text."""
    temporary: bool
    smtp_code: str
    enhanced: str
    text: str

    @property
    def smtp_reply(self) -> str:
        return f"{self.smtp_code} {self.enhanced} {self.text}"


def refusal(code: grpc.StatusCode, details: str) -> Refusal:
    """Classify's status → the mail server's view. Only a message the filter can never take
    (too large) is permanent; capacity, deadlines and a policy not loaded yet are
    temporary, like the MTA's own 4xx for a busy filter."""
    text = clean_text(f"mail filter: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at capacity" not in details:
        return Refusal(False, "552", "5.3.4", text)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return Refusal(False, "554", "5.6.0", text)
    return Refusal(True, "451", "4.7.1", text)
