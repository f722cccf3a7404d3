"""Validation of manifests against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields are errors) for Kubernetes 1.30 and the newest version it knows."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# Kinds that are not part of Kubernetes itself: checked elsewhere (CRD schema tests).
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
                ("mailwarden.dev/v1alpha1", "SpamPolicy"),
                ("mailwarden.dev/v1alpha1", "UnsubscribeStore"),
                ("kopf.dev/v1", "ClusterKopfPeering"), ("kopf.dev/v1", "KopfPeering"),
                ("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer")}


def validate_k8s(obj: dict[str, Any]) -> None:
    """Raise kubernetes_validate.ValidationError when `obj` is not valid for every version."""
    if (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_KINDS:
        return
    for version in VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)
