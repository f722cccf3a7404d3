"""Kubernetes Events on a SpamPolicy or UnsubscribeStore (what `kubectl describe`
shows)."""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

from mailwarden_operator.common.kube import EVENTS, Kube
from mailwarden_operator.common.naming import API_VERSION

COMPONENT = "mailwarden-operator"


def render_event(owner: dict[str, Any], kind: str, event_type: str, reason: str, message: str,
                 now: datetime.datetime) -> dict[str, Any]:
    """An Event about `owner`, a custom resource of `kind`."""
    meta = owner["metadata"]
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{time.time_ns():x}",
                     "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": owner.get("apiVersion") or API_VERSION,
                           "kind": owner.get("kind") or kind,
                           "name": meta["name"], "namespace": meta["namespace"],
                           "uid": meta.get("uid", "")},
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": os.environ.get("POD_NAME", COMPONENT),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def post(kube: Kube, owner: dict[str, Any], kind: str, event_type: str, reason: str,
         message: str, now: datetime.datetime) -> None:
    kube.create(EVENTS, owner["metadata"]["namespace"],
                render_event(owner, kind, event_type, reason, message, now))
