class ClusterError(RuntimeError):
    """The embedded control plane could not be built, started, stopped or read."""
