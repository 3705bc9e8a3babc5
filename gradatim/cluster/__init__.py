"""The embedded local control plane: `ControlPlane(state_dir).up()` -> `ClusterInfo`."""

from gradatim.cluster.controlplane import ControlPlane
from gradatim.cluster.errors import ClusterError
from gradatim.cluster.state import ClusterInfo, ComponentStatus

__all__ = ["ClusterError", "ClusterInfo", "ComponentStatus", "ControlPlane"]
