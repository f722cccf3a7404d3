"""kopf's diff base ("last handled configuration") as a digest of the spec.

kopf stores the object's essence in an annotation to tell a real change from its own
bookkeeping. The stock storage copies the whole spec there: a SpamPolicy of about 1,400
rules (about 700 when `kubectl apply` also keeps its own copy) passes the API server's
256 KiB limit on all annotations together, and kopf then loops on the 422. The reconcile
never uses kopf's diff (it renders from the whole object), so a digest of `spec` is all the
essence needs to be: it changes exactly when the spec does. Metadata edits (labels,
annotations) no longer count as a change, so they do not trigger a reconcile either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, cast

import kopf


def spec_digest(spec: Any) -> str:
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class SpecDigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """The diff base annotation holds `{"spec": {"digest": "sha256:…"}}` (under 100 bytes)."""

    def build(self, *, body: Any, extra_fields: Iterable[Any] | None = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        return cast(Any, {"spec": {"digest": spec_digest(essence.get("spec"))}})
