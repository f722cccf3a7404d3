"""Persistent volumes for a cluster of process nodes: statically provisioned `local` volumes.

There is no storage driver on these nodes, so persistent storage is what a cluster
administrator sets up with local disks: a StorageClass with no provisioner and
`volumeBindingMode: WaitForFirstConsumer`, and `local` PersistentVolumes (a directory each,
with node affinity to one Node). Everything else is Kubernetes' own: the API server's
DefaultStorageClass admission gives claims the class, the scheduler picks a node whose free
volume fits the claim, the PV controller binds claim and volume, and the node agent mounts
the volume's directory (group-owned by the pod's fsGroup, as the kubelet's local volume
plugin does). Volumes are `Retain`: a released one is not reused (nothing wipes it).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORAGE_CLASS = "standard"
NO_PROVISIONER = "kubernetes.io/no-provisioner"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


@dataclass
class LocalVolumes:
    """`per_node` volumes of `size` on each node, directories under `directory`."""
    directory: Path
    per_node: int = 3
    size: str = "10Gi"
    storage_class: str = STORAGE_CLASS

    def manifests(self, nodes: list[str]) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = [{
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": self.storage_class,
                         "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "provisioner": NO_PROVISIONER,
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Retain",
        }]
        for node in nodes:
            for index in range(self.per_node):
                name = f"local-{node}-{index}"
                docs.append({
                    "apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": name},
                    "spec": {
                        "capacity": {"storage": self.size},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": self.storage_class,
                        "volumeMode": "Filesystem",
                        "local": {"path": str(self.directory / name)},
                        "nodeAffinity": {"required": {"nodeSelectorTerms": [{
                            "matchExpressions": [{"key": "kubernetes.io/hostname",
                                                  "operator": "In", "values": [node]}]}]}},
                    },
                })
        return docs

    def create(self, api: Any, nodes: list[str]) -> None:
        """Make the directories and create the StorageClass and the volumes."""
        from kubernetes import client, utils

        for doc in self.manifests(nodes):
            if doc["kind"] == "PersistentVolume":
                # As an administrator formats a disk: root-owned; the node agent gives the
                # pod's fsGroup access when it mounts it.
                Path(doc["spec"]["local"]["path"]).mkdir(parents=True, exist_ok=True, mode=0o755)
            try:
                utils.create_from_dict(api, doc)
            except utils.FailToCreateError as exc:
                if not all(isinstance(e, client.ApiException) and e.status == 409
                           for e in exc.api_exceptions):
                    raise

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
