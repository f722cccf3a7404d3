"""Pods on the process node agents, driven by the real controllers (Deployment, ReplicaSet,
Job, EndpointSlice, node lifecycle) and scheduler, checked the way a user would."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from datetime import datetime
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.nodes.agents import SOURCE_ROOT
from mailwarden.wire import FILTER_GRPC_PORT
from tests.nodes.conftest import Cluster, wait_for

IMAGE = "ghcr.io/mailwarden/mailwarden:0.1.0"
SECURE = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
          "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}

# A gRPC health server that answers NOT_SERVING until /tmp/ready exists.
GRPC_HEALTH = """
import os, time, grpc
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
h = health.HealthServicer()
s = grpc.server(futures.ThreadPoolExecutor(2))
health_pb2_grpc.add_HealthServicer_to_server(h, s)
s.add_insecure_port("[::]:50051")
s.start()
while True:
    ok = os.path.exists("/tmp/ready")
    h.set("", health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING)
    time.sleep(0.2)
"""

MINI_POLICY = {
    "thresholds": {"tag": 4, "quarantine": 12, "reject": 20},
    "rules": [{"name": "SUBJ_MONEY", "target": "header", "header": "Subject",
               "pattern": r"(?i)\bfree money\b", "score": 2.0}],
}


def python_container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "command": ["python3", "-u", "-c", script],
            "securityContext": SECURE, **extra}


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": containers, **spec}}


def deployment(name: str, replicas: int, containers: list[dict[str, Any]],
               **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": containers, **spec}}}}


def ready(p: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])


def pods(cluster: Cluster, ns: str, selector: str) -> list[client.V1Pod]:
    return cluster.core.list_namespaced_pod(ns, label_selector=selector).items


def wait_pods_ready(cluster: Cluster, ns: str, selector: str, count: int,
                    timeout: float = 120) -> list[client.V1Pod]:
    def check() -> list[client.V1Pod] | None:
        ps = [p for p in pods(cluster, ns, selector) if p.metadata.deletion_timestamp is None]
        return ps if len(ps) == count and all(ready(p) for p in ps) else None
    return wait_for(check, timeout, f"{count} Ready pods {selector} in {ns}")


def exec_py(cluster: Cluster, ns: str, pod_name: str, script: str, timeout: float = 60) -> str:
    return cluster.kubectl("exec", "-n", ns, pod_name, "--", "python3", "-c", script,
                           timeout=timeout).stdout


def condition_time(p: client.V1Pod, kind: str) -> datetime:
    return next(c.last_transition_time for c in p.status.conditions if c.type == kind)


def test_deployment_of_mailwarden_serve_becomes_ready_through_a_replicaset(
        cluster: Cluster, namespace: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "policy"},
                   "data": {"policy.yaml": yaml.safe_dump(MINI_POLICY)}}, namespace)
    serve = {"name": "filter", "image": IMAGE,
             "args": ["serve", "--policy-dir", "/etc/mailwarden/policy", "--workers", "1"],
             "ports": [{"name": "grpc", "containerPort": FILTER_GRPC_PORT}],
             "readinessProbe": {"grpc": {"port": FILTER_GRPC_PORT}, "periodSeconds": 1},
             "securityContext": SECURE,
             "volumeMounts": [{"name": "policy", "mountPath": "/etc/mailwarden/policy",
                               "readOnly": True}]}
    cluster.apply(deployment("filter", 3, [serve],
                             volumes=[{"name": "policy", "configMap": {"name": "policy"}}]),
                  namespace)
    ps = wait_pods_ready(cluster, namespace, "app=filter", 3)
    rs = cluster.apps.list_namespaced_replica_set(namespace).items
    assert len(rs) == 1 and rs[0].status.ready_replicas == 3
    nodes = {n.metadata.name: n for n in cluster.core.list_node().items}
    for p in ps:
        owner = p.metadata.owner_references[0]
        assert owner.kind == "ReplicaSet" and owner.name == rs[0].metadata.name
        cidr = ipaddress.ip_network(nodes[p.spec.node_name].spec.pod_cidr)
        assert ipaddress.ip_address(p.status.pod_ip) in cidr, (p.status.pod_ip, cidr)
        assert p.status.host_ip == cluster.nodes.node_ip(p.spec.node_name)
        st = p.status.container_statuses[0]
        assert st.ready and st.started and st.state.running and st.restart_count == 0
        scheduled = condition_time(p, "PodScheduled")
        running = st.state.running.started_at
        print(f"{p.metadata.name} on {p.spec.node_name}: bind->Running "
              f"{(running - scheduled).total_seconds():.1f} s, bind->Ready "
              f"{(condition_time(p, 'Ready') - scheduled).total_seconds():.1f} s")
    # Classify through the pod IP, from the host, as a client off the cluster network would.
    import grpc
    from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
    with grpc.insecure_channel(f"{ps[0].status.pod_ip}:{FILTER_GRPC_PORT}") as ch:
        reply = filter_pb2_grpc.FilterStub(ch).Classify(
            filter_pb2.ClassifyRequest(request_id="x", message=b"Subject: free money\r\n\r\nhi"),
            timeout=10)
    assert "SUBJ_MONEY" in str(reply)


def test_grpc_readiness_probe_gates_ready(cluster: Cluster, namespace: str) -> None:
    c = python_container("health", GRPC_HEALTH,
                         readinessProbe={"grpc": {"port": 50051}, "periodSeconds": 1,
                                         "failureThreshold": 1},
                         volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}])
    cluster.apply(pod("health", [c], volumes=[{"name": "tmp", "emptyDir": {}}]), namespace)
    running = wait_for(lambda: (p := cluster.core.read_namespaced_pod("health", namespace))
                       .status.phase == "Running" and p, 60, "pod Running")
    time.sleep(4)  # four probe periods answered NOT_SERVING
    p = cluster.core.read_namespaced_pod("health", namespace)
    assert running and not ready(p), "Ready while the health service says NOT_SERVING"
    events = cluster.core.list_namespaced_event(namespace, field_selector="involvedObject.name=health")
    assert any(e.reason == "Unhealthy" and "Readiness probe failed" in e.message
               for e in events.items)
    cluster.kubectl("exec", "-n", namespace, "health", "--", "touch", "/tmp/ready")
    wait_for(lambda: ready(cluster.core.read_namespaced_pod("health", namespace)), 15,
             "Ready once SERVING")


def test_headless_service_resolves_to_the_ready_pod_ips_from_inside_a_pod(
        cluster: Cluster, namespace: str) -> None:
    web = python_container("web", "import http.server as h; h.HTTPServer(('', 8080), "
                           "h.SimpleHTTPRequestHandler).serve_forever()",
                           readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})
    never = python_container("web", "import time; time.sleep(3600)",
                             readinessProbe={"exec": {"command": ["false"]}, "periodSeconds": 1})
    cluster.apply([deployment("web", 2, [web]),
                   {**pod("web-unready", [never]),
                    "metadata": {"name": "web-unready", "labels": {"app": "web"}}},
                   {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                    "spec": {"clusterIP": "None", "selector": {"app": "web"},
                             "ports": [{"name": "http", "port": 8080}]}},
                   pod("client", [python_container("client", "import time; time.sleep(3600)")])],
                  namespace)
    ready_pods = wait_pods_ready(cluster, namespace, "app=web,pod-template-hash", 2)
    want = sorted(p.status.pod_ip for p in ready_pods)
    wait_for(lambda: ready(cluster.core.read_namespaced_pod("client", namespace)), 60, "client")
    script = ("import socket, json; "
              "a = sorted({i[4][0] for i in socket.getaddrinfo('web', 8080, socket.AF_INET)}); "
              "b = sorted({i[4][0] for i in socket.getaddrinfo("
              f"'web.{namespace}.svc.cluster.local', 8080, socket.AF_INET)}}); "
              "print(json.dumps([a, b]))")

    def resolved() -> bool:
        short, fqdn = json.loads(exec_py(cluster, namespace, "client", script))
        return short == want and fqdn == want
    wait_for(resolved, 30, f"web to resolve to {want}", interval=1)
    out = exec_py(cluster, namespace, "client",
                  "import socket\ntry:\n socket.getaddrinfo('no-such-service', 80)\n print('found')\n"
                  "except socket.gaierror as e:\n print('gaierror', e.errno)")
    assert out.startswith("gaierror"), out
    # The in-cluster path to the API server: projected token, CA, KUBERNETES_SERVICE_*.
    out = exec_py(cluster, namespace, "client", """
import json, os, ssl, urllib.request
d = '/var/run/secrets/kubernetes.io/serviceaccount/'
ctx = ssl.create_default_context(cafile=d + 'ca.crt')
url = 'https://%s:%s/version' % (os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'])
req = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + open(d + 'token').read()})
print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['gitVersion'])
""")
    assert out.strip() == "v1.37.2", out


def test_configmap_update_swaps_data_inside_a_running_pod(cluster: Cluster,
                                                          namespace: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
                   "data": {"greeting": "hello"}}, namespace)
    c = python_container("app", "import time; time.sleep(3600)",
                         volumeMounts=[{"name": "cfg", "mountPath": "/cfg", "readOnly": True}])
    cluster.apply(pod("cfg", [c], volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}]),
                  namespace)
    wait_for(lambda: ready(cluster.core.read_namespaced_pod("cfg", namespace)), 60, "pod Ready")
    look = ("import os; print(os.readlink('/cfg/..data'), os.readlink('/cfg/greeting'), "
            "open('/cfg/greeting').read())")
    data_before, link, text = exec_py(cluster, namespace, "cfg", look).split()
    assert (link, text) == ("..data/greeting", "hello")
    started = time.monotonic()
    cluster.core.patch_namespaced_config_map("cfg", namespace, {"data": {"greeting": "bonjour"}})

    def swapped() -> bool:
        data_now, _, now = exec_py(cluster, namespace, "cfg", look).split()
        return now == "bonjour" and data_now != data_before
    wait_for(swapped, 20, "the new ..data", interval=0.5)
    print(f"ConfigMap update visible in the pod after {time.monotonic() - started:.1f} s")


def test_delete_runs_prestop_then_sigterm_within_the_grace_period(cluster: Cluster,
                                                                  namespace: str) -> None:
    script = """
import os, signal, sys, time
def term(*_):
    print("SIGTERM prestop-done=%s" % os.path.exists("/shared/prestop"), flush=True)
    time.sleep(1)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("up", flush=True)
while True:
    time.sleep(0.1)
"""
    c = python_container("app", script,
                         lifecycle={"preStop": {"exec": {"command": [
                             "python3", "-c", "import time; time.sleep(2); "
                             "open('/shared/prestop', 'w').write('1')"]}}},
                         volumeMounts=[{"name": "shared", "mountPath": "/shared"}])
    cluster.apply(pod("stopper", [c], terminationGracePeriodSeconds=15,
                      volumes=[{"name": "shared", "emptyDir": {}}]), namespace)
    wait_for(lambda: ready(cluster.core.read_namespaced_pod("stopper", namespace)), 60,
             "pod Ready")
    follow = subprocess.Popen([str(cluster.cp.bin_dir / "kubectl"), "--kubeconfig",
                               str(cluster.cp.kubeconfig), "logs", "-f", "-n", namespace,
                               "stopper"], stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: follow.stdout.readline().strip() == "up", 30, "the log stream")
        start = time.monotonic()
        cluster.core.delete_namespaced_pod("stopper", namespace)

        def gone() -> bool:
            try:
                cluster.core.read_namespaced_pod("stopper", namespace)
                return False
            except client.ApiException as exc:
                return exc.status == 404
        wait_for(gone, 30, "the pod to be deleted")
        took = time.monotonic() - start
        rest = follow.communicate(timeout=10)[0]
    finally:
        follow.kill()
    assert "SIGTERM prestop-done=True" in rest, rest
    # preStop took 2 s, the process 1 s after SIGTERM: the pod goes well inside its 15 s.
    assert 3 <= took < 12, took


def test_crashing_container_backs_off_with_crashloopbackoff(cluster: Cluster,
                                                            namespace: str) -> None:
    c = python_container("crash", "import sys, time; print('attempt', time.time()); sys.exit(3)")
    cluster.apply(pod("crash", [c]), namespace)

    def backing_off() -> client.V1ContainerStatus | None:
        st = (cluster.core.read_namespaced_pod("crash", namespace).status.container_statuses
              or [None])[0]
        waiting = st and st.state.waiting
        return st if waiting and waiting.reason == "CrashLoopBackOff" and st.restart_count >= 2 \
            else None
    st = wait_for(backing_off, 90, "CrashLoopBackOff after two restarts", interval=0.5)
    assert st.last_state.terminated.exit_code == 3
    assert "back-off 10s restarting failed container=crash" in st.state.waiting.message or \
        "back-off 20s" in st.state.waiting.message, st.state.waiting.message
    p = cluster.core.read_namespaced_pod("crash", namespace)
    assert p.status.phase == "Running"
    previous = cluster.kubectl("logs", "-n", namespace, "crash", "--previous").stdout
    assert previous.startswith("attempt "), previous


def test_a_volume_over_the_checkout_leaves_the_image_intact(cluster: Cluster,
                                                            namespace: str) -> None:
    """The "image" is this checkout's virtualenv and sources on the host. A pod volume
    mounted over their directory (a filter pod's emptyDir at /tmp, with the clone in /tmp)
    hid them, and every such pod crash-looped with `mailwarden` not found; a real image's
    files are never under a volume."""
    over = str(SOURCE_ROOT)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "covered"},
           "spec": {"backoffLimit": 0, "template": {"spec": {
               "restartPolicy": "Never",
               "volumes": [{"name": "scratch", "emptyDir": {}}],
               "containers": [python_container(
                   "covered", "import mailwarden.cli; print('imported')",
                   volumeMounts=[{"name": "scratch", "mountPath": over}])]}}}}
    cluster.apply(job, namespace)

    def finished() -> bool:
        st = cluster.batch.read_namespaced_job("covered", namespace).status
        return any(c.type in ("Complete", "Failed") and c.status == "True"
                   for c in st.conditions or [])
    wait_for(finished, 90, "Job finished")
    p = pods(cluster, namespace, "batch.kubernetes.io/job-name=covered")[0]
    log = cluster.kubectl("logs", "-n", namespace, p.metadata.name).stdout
    assert p.status.phase == "Succeeded" and log == "imported\n", log


def test_job_completes(cluster: Cluster, namespace: str) -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
           "spec": {"backoffLimit": 0, "template": {"spec": {
               "restartPolicy": "Never",
               "containers": [python_container("once", "print('done')")]}}}}
    cluster.apply(job, namespace)

    def complete() -> bool:
        st = cluster.batch.read_namespaced_job("once", namespace).status
        return any(c.type == "Complete" and c.status == "True" for c in st.conditions or [])
    wait_for(complete, 90, "Job Complete")
    p = pods(cluster, namespace, "batch.kubernetes.io/job-name=once")[0]
    assert p.status.phase == "Succeeded"
    assert p.status.container_statuses[0].state.terminated.reason == "Completed"
    assert cluster.kubectl("logs", "-n", namespace, p.metadata.name).stdout == "done\n"


def test_metrics_server_reports_pod_cpu(cluster: Cluster, namespace: str) -> None:
    cluster.apply(pod("burn", [python_container("burn", "while True: pass")]), namespace)
    wait_for(lambda: ready(cluster.core.read_namespaced_pod("burn", namespace)), 60, "pod Ready")

    def top() -> int:
        r = cluster.kubectl("top", "pod", "burn", "-n", namespace, "--no-headers", check=False)
        if r.returncode != 0:
            return 0
        cpu = r.stdout.split()[1]  # e.g. "987m"
        return int(cpu.rstrip("m")) if cpu.endswith("m") else int(cpu) * 1000
    millicores = wait_for(top, 120, "kubectl top pod to report CPU", interval=3)
    # A busy loop uses one core, less whatever the shared 2-core machine takes from it.
    assert millicores >= 200, millicores
    nodes = cluster.kubectl("top", "node", "--no-headers").stdout
    assert len(nodes.strip().splitlines()) == 3, nodes


@pytest.mark.slow
def test_node_loss_makes_the_node_notready_and_its_pods_are_replaced(
        cluster: Cluster, namespace: str) -> None:
    fast = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
             "effect": "NoExecute", "tolerationSeconds": 2},
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
             "effect": "NoExecute", "tolerationSeconds": 2}]
    web = python_container("web", "import http.server as h; h.HTTPServer(('', 8080), "
                           "h.SimpleHTTPRequestHandler).serve_forever()",
                           readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})
    spread = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
               "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]
    cluster.apply(deployment("web", 3, [web], tolerations=fast,
                             topologySpreadConstraints=spread), namespace)
    before = wait_pods_ready(cluster, namespace, "app=web", 3)
    victim = "node-c"
    lost = {p.metadata.name for p in before if p.spec.node_name == victim}
    assert lost, [p.spec.node_name for p in before]
    killed_at = time.monotonic()
    cluster.nodes.kill_node(victim)
    try:
        def not_ready() -> bool:
            n = cluster.core.read_node(victim)
            return any(c.type == "Ready" and c.status != "True" for c in n.status.conditions)
        wait_for(not_ready, 120, f"{victim} NotReady", interval=1)
        notready_after = time.monotonic() - killed_at

        def replaced() -> bool:
            ps = [p for p in pods(cluster, namespace, "app=web")
                  if p.metadata.name not in lost and p.metadata.deletion_timestamp is None]
            return len(ps) == 3 and all(ready(p) and p.spec.node_name != victim for p in ps)
        wait_for(replaced, 180, "three Ready pods off the lost node", interval=1)
        print(f"node loss: NotReady after {notready_after:.0f} s, full capacity after "
              f"{time.monotonic() - killed_at:.0f} s")
    finally:
        cluster.nodes.restart_node(victim)


def test_drain_evicts_through_the_pdb_and_pods_come_back_elsewhere(cluster: Cluster,
                                                                   namespace: str) -> None:
    web = python_container("web", "import http.server as h; h.HTTPServer(('', 8080), "
                           "h.SimpleHTTPRequestHandler).serve_forever()",
                           readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})
    spread = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
               "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": {"app": "drained"}}}]
    cluster.apply([deployment("drained", 3, [web], topologySpreadConstraints=spread),
                   {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                    "metadata": {"name": "drained"},
                    "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "drained"}}}}],
                  namespace)
    before = wait_pods_ready(cluster, namespace, "app=drained", 3)
    victim = next(p.spec.node_name for p in before)
    try:
        # (a label no other test uses: drain selects pods in every namespace of the node)
        started = time.monotonic()
        cluster.kubectl("drain", victim, "--ignore-daemonsets", "--delete-emptydir-data",
                        "--pod-selector", "app=drained", "--timeout=120s", timeout=150)
        print(f"drain of {victim} took {time.monotonic() - started:.1f} s")
        after = wait_pods_ready(cluster, namespace, "app=drained", 3)
        assert all(p.spec.node_name != victim for p in after), [p.spec.node_name for p in after]
        assert cluster.core.read_node(victim).spec.unschedulable
    finally:
        cluster.kubectl("uncordon", victim)


def test_readiness_gate_set_by_another_controller_drives_ready(cluster: Cluster,
                                                               namespace: str) -> None:
    gate = "example.com/warmed-up"
    cluster.apply(pod("gated", [python_container("app", "import time; time.sleep(3600)")],
                      readinessGates=[{"conditionType": gate}]), namespace)

    def conditions() -> dict[str, str]:
        p = cluster.core.read_namespaced_pod("gated", namespace)
        return {c.type: c.status for c in p.status.conditions or []}
    wait_for(lambda: conditions().get("ContainersReady") == "True", 60, "ContainersReady")
    time.sleep(2)
    assert conditions().get("Ready") == "False", conditions()
    cluster.kubectl("patch", "pod", "gated", "-n", namespace, "--subresource=status",
                    "--type=strategic", "-p", json.dumps(
                        {"status": {"conditions": [{"type": gate, "status": "True"}]}}))
    wait_for(lambda: conditions().get("Ready") == "True", 15, "Ready once the gate is True")
    # The agent's later status writes keep the other controller's condition.
    time.sleep(2)
    assert conditions().get(gate) == "True", conditions()
