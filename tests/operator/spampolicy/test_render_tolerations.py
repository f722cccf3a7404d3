"""The filter pods' node-failure tolerations (issue 14, node loss): rendered by default with a
short tolerationSeconds, never overriding what the policy's scheduling.tolerations say."""

from __future__ import annotations

import copy

import pytest

from mailwarden_operator.spampolicy.render.deployment import render_deployment
from mailwarden_operator.spampolicy.render.tolerations import (
    NODE_FAILURE_TOLERATION_SECONDS,
    pod_tolerations,
)
from tests.operator.k8s_schemas import validate_k8s
from tests.operator.spampolicy.test_render import SETTINGS, owner

UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"


def short(key: str) -> dict:
    return {"key": key, "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": NODE_FAILURE_TOLERATION_SECONDS}


def pod_spec(**spec) -> dict:
    return render_deployment(owner(**spec), "h", SETTINGS)["spec"]["template"]["spec"]


def test_default_pods_tolerate_node_failure_briefly_not_the_admission_default() -> None:
    # Without these the DefaultTolerationSeconds admission plugin gives 300 s: five minutes
    # at reduced capacity after a node is lost.
    assert pod_spec()["tolerations"] == [short(NOT_READY), short(UNREACHABLE)]
    assert 0 < NODE_FAILURE_TOLERATION_SECONDS <= 30


def test_user_tolerations_come_first_and_are_kept() -> None:
    mine = {"key": "mail", "operator": "Exists", "effect": "NoSchedule"}
    pod = pod_spec(scheduling={"tolerations": [mine]})
    assert pod["tolerations"] == [mine, short(NOT_READY), short(UNREACHABLE)]
    validate_k8s(render_deployment(owner(scheduling={"tolerations": [mine]}), "h", SETTINGS))


@pytest.mark.parametrize("theirs", [
    {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 600},
    {"key": UNREACHABLE, "operator": "Exists"},                      # any effect, forever
    {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"},  # forever
], ids=["longer", "any-effect", "forever"])
def test_a_user_toleration_for_the_taint_wins(theirs: dict) -> None:
    """The taint manager applies the shortest matching tolerationSeconds, so adding ours
    beside the user's would silently cut the wait the user asked for."""
    tolerations = pod_spec(scheduling={"tolerations": [theirs]})["tolerations"]
    assert tolerations == [theirs, short(NOT_READY)]


def test_a_toleration_of_every_taint_leaves_nothing_to_add() -> None:
    everything = {"operator": "Exists"}
    assert pod_tolerations([everything]) == [everything]
    no_execute = {"operator": "Exists", "effect": "NoExecute"}
    assert pod_tolerations([no_execute]) == [no_execute]


def test_a_toleration_for_another_effect_does_not_count() -> None:
    no_schedule = {"key": NOT_READY, "operator": "Exists", "effect": "NoSchedule"}
    assert pod_tolerations([no_schedule]) == [no_schedule, short(NOT_READY),
                                              short(UNREACHABLE)]


def test_the_spec_is_not_modified() -> None:
    user = [{"key": "mail", "operator": "Exists"}]
    snapshot = copy.deepcopy(user)
    pod_tolerations(user)[0]["key"] = "changed"
    assert user == snapshot
