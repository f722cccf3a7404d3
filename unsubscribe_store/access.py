"""Who may call which method of the store's gRPC API.

- Check, Watch, GetStatus and Unsubscribe: every caller the transport admits. With
  ``--require-client-cert`` that is every client with a certificate of the configured CA
  (filter pods, senders); without TLS, everyone who reaches the port — keep it behind the
  NetworkPolicy the operator renders.
- Import, Export, Resubscribe and Forget (every address out, or suppressions in and out): only a
  client whose verified certificate names one of ``--admin-client`` (common name or DNS
  subject alternative name), or a call with ``authorization: Bearer <admin credential>``
  (``--admin-token-file``), compared in constant time. With neither configured these
  methods are disabled.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from mailwarden.bearer import bearer_credential
from unsubscribe_store import metrics

log = logging.getLogger(__name__)

ADMIN_METHODS = frozenset({"Import", "Export", "Resubscribe", "Forget"})
_NAME_PROPERTIES = ("x509_common_name", "x509_subject_alternative_name")


def client_names(context: grpc.aio.ServicerContext) -> frozenset[str]:
    """The names in the caller's verified client certificate (empty without one)."""
    auth = context.auth_context() or {}
    names: set[str] = set()
    for prop in _NAME_PROPERTIES:
        for value in auth.get(prop, ()):
            names.add(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return frozenset(names)


@dataclass(frozen=True)
class AccessPolicy:
    admin_token: bytes | None = None
    admin_clients: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, admin_token: bytes | None, admin_clients: Iterable[str] = ()) -> AccessPolicy:
        return cls(admin_token or None, frozenset(admin_clients))

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_token or self.admin_clients)

    async def authorise(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Abort the call unless the caller may call ``method`` (an admin method)."""
        if not self.admin_enabled:
            metrics.DENIED.labels(method).inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{method} is disabled on this server: it has no admin "
                                "credential (--admin-token-file) and no --admin-client")
        names = client_names(context)
        if names & self.admin_clients:
            return
        given = bearer_credential(context.invocation_metadata())
        if given is not None and self.admin_token is not None \
                and hmac.compare_digest(given, self.admin_token):
            return
        metrics.DENIED.labels(method).inc()
        shown = ", ".join(sorted(names))[:200]
        log.info("%s refused to %s", method, f"client {shown}" if names else "an anonymous "
                 "caller")
        if names and given is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"client {shown} may not call {method} (not an --admin-client)")
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            f"{method} needs a client certificate named in --admin-client or "
                            "'authorization: Bearer <admin credential>' metadata")
