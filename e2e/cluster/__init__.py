"""A real Kubernetes control plane for tests, from Kubernetes' own binaries: etcd,
kube-apiserver, kube-controller-manager, kube-scheduler and metrics-server as processes on
this host (docs/control-plane.md)."""

from e2e.cluster.binaries import BinariesMissing, bin_dir
from e2e.cluster.controlplane import ControlPlane, ControlPlaneError, NodeCredentials

__all__ = ["BinariesMissing", "ControlPlane", "ControlPlaneError", "NodeCredentials",
           "bin_dir"]
