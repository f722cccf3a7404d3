"""Kubernetes Events on a SpamPolicy or UnsubscribeStore (what `kubectl describe`
shows)."""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

from mailwarden_operator import naming
from mailwarden_operator.kube import EVENTS, Kube

COMPONENT = "mailwarden-operator"


def render_event(owner: dict[str, Any], event_type: str, reason: str, message: str,
                 now: datetime.datetime) -> dict[str, Any]:
    meta = owner["metadata"]
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{time.time_ns():x}",
                     "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": owner.get("apiVersion") or naming.API_VERSION,
                           "kind": owner.get("kind") or naming.KIND,
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


def post(kube: Kube, owner: dict[str, Any], event_type: str, reason: str, message: str,
         now: datetime.datetime) -> None:
    kube.create(EVENTS, owner["metadata"]["namespace"],
                render_event(owner, event_type, reason, message, now))
