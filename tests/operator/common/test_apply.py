"""Create-or-patch decisions: what counts as 'already as desired'."""

from __future__ import annotations

from mailwarden_operator.common.apply import _without, is_subset


def test_server_defaulted_fields_do_not_count_as_drift():
    want = {"spec": {"ports": [{"name": "grpc", "port": 9090}], "type": "ClusterIP"}}
    have = {"spec": {"ports": [{"name": "grpc", "port": 9090, "protocol": "TCP"}],
                     "type": "ClusterIP", "clusterIP": "10.0.0.1"}, "status": {}}
    assert is_subset(want, have)


def test_changed_values_lists_and_types_are_drift():
    assert not is_subset({"a": 1}, {"a": 2})
    assert not is_subset({"a": [1, 2]}, {"a": [1, 2, 3]})
    assert not is_subset({"a": {"b": 1}}, {"a": {}})
    assert not is_subset({"a": True}, {"a": 1})
    assert not is_subset({"a": "0"}, {"a": 0})


def test_quantities_compare_by_value():
    assert is_subset({"cpu": "1000m", "memory": "1Gi"}, {"cpu": "1", "memory": "1024Mi"})
    assert not is_subset({"cpu": "500m"}, {"cpu": "1"})
    assert not is_subset({"image": "a:1"}, {"image": "a:2"})


def test_the_replica_count_is_only_set_on_creation():
    desired = {"kind": "Deployment", "spec": {"replicas": 2, "template": {}}}
    patch = _without(desired, (("spec", "replicas"),))
    assert patch == {"kind": "Deployment", "spec": {"template": {}}}
    assert desired["spec"]["replicas"] == 2
    # The HPA scaled the Deployment to 7: not drift.
    assert is_subset(patch, {"kind": "Deployment", "spec": {"replicas": 7, "template": {}}})
