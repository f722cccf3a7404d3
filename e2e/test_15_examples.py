"""Every file in examples/ applies as it is and its resources become Ready: pods Running and
Ready through the Deployment controller's real ReplicaSets, and Classify answers through each
SpamPolicy's headless Service name, from a client pod in the cluster.

The production examples say what to prepare first (their comments); the suite does exactly
that: the namespace `mail` (restricted Pod Security, like every namespace here), the model
ConfigMap, a real PostgreSQL with a synchronous standby and a login of its own (`pg-app`
Secret), the Resubscribe credential, and the filter pods' certificate for mutual TLS."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import install
from e2e.conftest import E2E, EXAMPLES, OUT, pick_messages, postgres_dsn
from e2e.jobs import run_job
from e2e.kube import Kube, is_true, observed, pod_ready, wait_for
from mailwarden_operator.spampolicy import naming as policy_naming
from mailwarden_operator.unsubscribestore import naming as store_naming
from testkit.pg import PgCluster

pytestmark = pytest.mark.timeout(900)

FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
KINDS = {"SpamPolicy": "spampolicy", "UnsubscribeStore": "unsubscribestore"}
CLIENT_SECRET = "e2e-filter-client"   # the test client's certificate, in the e2e namespace
READY_TIMEOUT = 300


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def secret_from_files(kube: Kube, name: str, files: dict[str, Path | str]) -> None:
    args = [f"--from-file={key}={value}" if isinstance(value, Path)
            else f"--from-literal={key}={value}" for key, value in files.items()]
    text = kube.run("create", "secret", "generic", name, *args, "--dry-run=client",
                    "-o", "yaml").stdout
    kube.apply(text)


def filter_certificates(directory: Path, policy: str, namespace: str) -> dict[str, Path]:
    """A CA, the filter pods' serving certificate (the Service names a client dials) and a
    client certificate, for `spec.tls.requireClientCert`."""
    from e2e.cluster.pki import CertificateAuthority

    ca = CertificateAuthority.create(directory, "ca", "mailwarden-e2e-filter-ca")
    names = tuple(f"{service}{suffix}" for service in (policy_naming.workload_name(policy),
                                                       policy_naming.headless_name(policy))
                  for suffix in ("", f".{namespace}", f".{namespace}.svc",
                                 f".{namespace}.svc.cluster.local"))
    server = ca.issue("server", names[0], server=True, dns_names=names)
    client = ca.issue("client", "e2e-client", client=True)
    return {"ca": ca.cert_path, "server.crt": server.cert, "server.key": server.key,
            "client.crt": client.cert, "client.key": client.key}


@pytest.fixture(scope="module")
def prepared(e2e: E2E, postgres: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the examples' comments ask for, in their own namespaces."""
    work = tmp_path_factory.mktemp("examples")
    for name in FILES:
        for doc in documents(name):
            namespace = doc["metadata"].get("namespace")
            if not namespace:
                continue
            kube = e2e.kube_in(namespace)
            install.restricted_namespace(kube, namespace)
            install.model_configmap(kube, OUT / "model.json.gz")
            if doc["kind"] == "UnsubscribeStore":
                spec = doc["spec"]
                dsn = spec["storage"]["postgres"]["dsnSecretRef"]
                secret_from_files(kube, dsn["name"], {
                    dsn["key"]: postgres_dsn(e2e, postgres, f"e2e_{namespace}")})
                resubscribe = spec["resubscribe"]["secretRef"]
                secret_from_files(kube, resubscribe["name"],
                                  {resubscribe.get("key", "token"): secrets.token_urlsafe(32)})
            if doc["kind"] == "SpamPolicy" and "tls" in doc["spec"]:
                certs = filter_certificates(work / doc["metadata"]["name"],
                                            doc["metadata"]["name"], namespace)
                secret_from_files(kube, doc["spec"]["tls"]["secretName"], {
                    "tls.crt": certs["server.crt"], "tls.key": certs["server.key"],
                    "ca.crt": certs["ca"]})
                secret_from_files(e2e.kube, CLIENT_SECRET, {
                    "tls.crt": certs["client.crt"], "tls.key": certs["client.key"],
                    "ca.crt": certs["ca"]})
    return work


def file_namespace(name: str) -> str | None:
    """The namespace the file's resources name (one per file), None for the suite's own."""
    (namespace,) = {d["metadata"].get("namespace") for d in documents(name)}
    return namespace


@pytest.fixture(scope="module")
def applied(e2e: E2E, prepared: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """`kubectl apply -f examples/NAME` of every file at once, as the file says (in its own
    namespace if it names one), so that their pods start side by side; each test then
    checks its own file's outcome."""
    results = {}
    for name in FILES:
        namespace = file_namespace(name)
        kube = e2e.kube_in(namespace) if namespace else e2e.kube
        results[name] = kube.run("apply", "-f", str(EXAMPLES / name), check=False,
                                 namespaced=namespace is None)
    return results


def startup_kills(kube: Kube, workload_name: str) -> list[str]:
    """Containers of the workload's pods that the kubelet killed because their startup probe
    used up its whole budget: such a pod cannot become Ready, waiting longer shows nothing."""
    return [f"{e['involvedObject']['name']}: {e['message']}"
            for e in kube.items("events", "--field-selector", "reason=Killing")
            if e["involvedObject"]["name"].startswith(f"{workload_name}-")
            and "failed startup probe" in e.get("message", "")]


def ready_resource(kube: Kube, kind: str, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        body = kube.get(KINDS[kind], name)
        killed = startup_kills(kube, workload(kind, name))
        assert not killed, f"{kind} {kube.namespace}/{name} cannot become Ready: {killed}"
        return body if observed(body) and is_true(body, "Ready") else None
    return wait_for(ready, READY_TIMEOUT, f"{kind} {kube.namespace}/{name} to be Ready",
                    interval=2)


def check_pods_through_replicasets(kube: Kube, deployment_name: str) -> str:
    """The Deployment's current ReplicaSet owns every pod, all Running and Ready."""
    deployment = kube.json("get", "deployment", deployment_name)
    want = deployment["spec"]["replicas"]
    sets = [rs for rs in kube.items("replicasets")
            if any(ref["uid"] == deployment["metadata"]["uid"]
                   for ref in rs["metadata"].get("ownerReferences") or [])]
    current = [rs for rs in sets if (rs["status"].get("replicas") or 0) > 0]
    assert len(current) == 1, [rs["metadata"]["name"] for rs in current]
    (rs,) = current
    assert rs["status"].get("readyReplicas") == want, rs["status"]
    pods = [p for p in kube.items("pods")
            if any(ref["uid"] == rs["metadata"]["uid"]
                   for ref in p["metadata"].get("ownerReferences") or [])]
    assert len(pods) == want
    for pod in pods:
        assert pod["status"]["phase"] == "Running" and pod_ready(pod), pod["status"]
    return f"{deployment_name}: {want} pods Running and Ready via ReplicaSet " \
           f"{rs['metadata']['name']}"


def workload(kind: str, name: str) -> str:
    return (policy_naming.workload_name(name) if kind == "SpamPolicy"
            else store_naming.workload_name(name))


@pytest.mark.parametrize("name", FILES)
def test_example_applies_and_becomes_ready(
        e2e: E2E, applied: dict[str, subprocess.CompletedProcess[str]], name: str) -> None:
    """`kubectl apply -f` as the file says, every custom resource Ready with its pods Running
    and Ready through the Deployment's ReplicaSet, and for a SpamPolicy Classify answering
    through its headless Service (mutual TLS when it asks for it)."""
    result = applied[name]
    assert result.returncode == 0, f"kubectl apply -f examples/{name}:\n{result.stderr}"
    print(result.stdout)
    namespace = file_namespace(name)
    kube = e2e.kube_in(namespace) if namespace else e2e.kube
    for doc in documents(name):
        if doc["kind"] not in KINDS:
            continue  # e.g. the Ingress in front of the one-click endpoint: just applied
        body = ready_resource(kube, doc["kind"], doc["metadata"]["name"])
        print(f"{doc['kind']} {kube.namespace}/{doc['metadata']['name']} Ready "
              f"(readyReplicas {body['status'].get('readyReplicas')}); " +
              check_pods_through_replicasets(kube, workload(doc["kind"],
                                                            doc["metadata"]["name"])))
        if doc["kind"] == "SpamPolicy":
            classify_through_the_headless_service(e2e, kube, body)


def classify_through_the_headless_service(e2e: E2E, kube: Kube, policy: dict[str, Any]) -> None:
    """`mailwarden classify` in a client pod, at dns:///<policy>-filter-headless...:9090."""
    name, tls = policy["metadata"]["name"], "tls" in policy["spec"]
    host = f"{policy_naming.headless_name(name)}.{kube.namespace}.svc.cluster.local"
    messages = sorted(pick_messages(e2e.split))[:4]
    command = ["mailwarden", "classify", "--json", "--deadline", "20",
               "--target", f"dns:///{host}:{policy_naming.GRPC_PORT}"]
    volumes = []
    if tls:
        command += ["--tls-ca", f"/e2e/{CLIENT_SECRET}/ca.crt",
                    "--tls-cert", f"/e2e/{CLIENT_SECRET}/tls.crt",
                    "--tls-key", f"/e2e/{CLIENT_SECRET}/tls.key"]
        volumes.append({"name": CLIENT_SECRET, "secret": {"secretName": CLIENT_SECRET}})
    output = run_job(e2e.kube, e2e.image, "classify",
                     command + [f"/e2e/messages/{m}" for m in messages], volumes=volumes)
    verdicts = [json.loads(line[line.find("{"):]) for line in output.splitlines()
                if '"action"' in line]
    assert len(verdicts) == len(messages), output
    assert {v["policy_hash"] for v in verdicts} == {policy["status"]["policyHash"]}, output
    print(f"Classify through {host}: {len(verdicts)} verdicts from policy "
          f"{policy['status']['policyHash']}{' over mutual TLS' if tls else ''}")


