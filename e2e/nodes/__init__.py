"""Nodes for the real control plane: process node agents (hack/nodeagent) and the cluster DNS.

    from e2e.nodes import NodeAgents, NodeSpec, ClusterInfo

    nodes = NodeAgents(workdir, ClusterInfo.from_control_plane(cp),
                       [NodeSpec("node-a", "zone-a"), NodeSpec("node-b", "zone-b")])
    nodes.start()              # pod network (host side), DNS, agents; waits for Ready Nodes
    nodes.kill_node("node-b")  # SIGKILL of the agent and every process of its pods, netns gone
    nodes.restart_node("node-b")
    nodes.stop()               # pods terminated gracefully, agents and DNS stopped, host cleaned

See docs/node-agent.md.
"""

from e2e.nodes.agents import NodeAgentError, NodeAgents, NodeSpec
from e2e.nodes.build import bin_dir
from e2e.nodes.cluster import ClusterInfo, NodeIdentity
from e2e.nodes.network import HostNetwork, cluster_ranges

__all__ = ["ClusterInfo", "HostNetwork", "NodeAgentError", "NodeAgents", "NodeIdentity",
           "NodeSpec", "bin_dir", "cluster_ranges"]
