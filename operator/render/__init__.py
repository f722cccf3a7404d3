"""Pure builders of the child objects of a SpamPolicy, one module per kind.

Each takes the SpamPolicy (its spec already defaulted by `spec.with_defaults`) and returns
the full desired object as a dict; nothing here talks to the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RenderSettings:
    """Operator-wide settings the renderers need."""
    default_image: str = "ghcr.io/mailwarden/mailwarden:0.1.0"
