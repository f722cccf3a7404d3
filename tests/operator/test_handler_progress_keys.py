"""kopf records a handler's progress (retries, failures) in annotations named after the
handler's id, under our prefix. The API server refuses an annotation whose name part does not
start and end with an alphanumeric character (422 FieldValueInvalid): with such an id a
handler that fails once can never record it, and kopf retries the patch forever. Seen on the
real control plane (e2e) for `_register_store.<locals>.store_created`."""

from __future__ import annotations

import re

import kopf
import pytest

from mailwarden_operator.handlers import build_registry

PREFIX = "kopf.mailwarden.dev"  # operator/main.py's AnnotationsProgressStorage prefix
# apimachinery's IsQualifiedName: optional DNS-subdomain prefix, then a name of at most
# 63 characters.
NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def qualified_name_errors(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    errors = []
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        errors.append(f"prefix {prefix!r} is not a DNS subdomain")
    if not name or len(name) > 63 or not NAME.match(name):
        errors.append(f"name part {name!r} must be 1-63 alphanumerics, '-', '_' or '.', "
                      "starting and ending with an alphanumeric")
    return errors


def changing_handler_ids() -> list[str]:
    registry = build_registry(lambda: None, webhook=True,  # type: ignore[arg-type,return-value]
                              get_store_reconciler=lambda: None)  # type: ignore[arg-type,return-value]
    return [handler.id for handler in registry._changing.get_all_handlers()]


@pytest.mark.parametrize("handler_id", changing_handler_ids())
def test_progress_annotations_of_every_handler_are_valid_names(handler_id: str) -> None:
    storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    for key in storage.make_keys(handler_id):
        assert not qualified_name_errors(key), (handler_id, key, qualified_name_errors(key))
