"""The signing-key and fingerprint-key Secrets: created once when absent, never patched,
never owned.

No owner reference on purpose: tokens already in inboxes must keep working (CASL: at least
60 days), so deleting and re-creating a store must not replace its key. The Secret is not
`immutable` either, because rotating means editing it (new `current`, old one to
`previous`).
"""

from __future__ import annotations

import base64
from typing import Any

from mailwarden_operator.common.naming import MANAGED_BY
from mailwarden_operator.unsubscribestore import naming


def _generated_key_secret(owner: dict[str, Any], name: str, role: str, item: str,
                          value: str) -> dict[str, Any]:
    """A key Secret the operator generated: created once, never patched, and with no owner
    reference, so deleting the store object never deletes the key of its data."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": naming.child_metadata(
            owner, name, owned=False, extra_labels={naming.ROLE_LABEL: role},
            annotations={naming.GENERATED_ANNOTATION: MANAGED_BY}),
        "data": {item: base64.b64encode(value.encode("ascii")).decode("ascii")},
    }


def render_signing_key_secret(owner: dict[str, Any], key: str) -> dict[str, Any]:
    """The Secret holding `key` (text, e.g. `mailwarden.tokens
    .generate_key()`) as `current`, laid out for `--signing-key-dir`."""
    return _generated_key_secret(owner, naming.signing_key_secret(owner), "signing-key",
                                 naming.SIGNING_KEY_CURRENT, key)


def render_fingerprint_key_secret(owner: dict[str, Any], key_hex: str) -> dict[str, Any]:
    """The Secret holding the suppression fingerprint key (`key_hex`: hex text of at least
    32 random bytes, e.g. `secrets.token_hex(32)`) as `key`, the file the store's
    `--fingerprint-key-file` and the filter pods' `--suppression-key-file` name.

    Like the signing key: created once, never patched, no owner reference — forgotten
    suppressions exist only as fingerprints under this key (docs/unsubscribe.md, *Forget*),
    so a store deleted and re-created on the same data must find the same key."""
    return _generated_key_secret(owner, naming.fingerprint_key_secret(owner),
                                 "fingerprint-key", naming.FINGERPRINT_KEY_FILE, key_hex)
