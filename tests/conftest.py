"""Shared fixtures: one real control plane for the whole test session.

`cluster` starts it with the same code as `gradatim cluster up`, in a temp state dir,
and stops it at the end. To keep one running between test runs, start it yourself
(`python -m gradatim.cluster up --state-dir DIR`) and set GRADATIM_TEST_CLUSTER_STATE=DIR;
a healthy cluster there is reused and left running.
"""

from __future__ import annotations

import os
import uuid
import threading
from contextlib import contextmanager
from typing import Iterator

import pytest
from kubernetes import client, config

from gradatim.cluster import ClusterInfo, ControlPlane
from gradatim.cluster.components import NODE_SELECTOR_ANNOTATION
from gradatim.cluster.progress import PlainProgress


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    reused_state = os.environ.get("GRADATIM_TEST_CLUSTER_STATE")
    if reused_state and ControlPlane(reused_state).is_running():
        yield ControlPlane(reused_state).info()
        return
    control_plane = ControlPlane(tmp_path_factory.mktemp("cluster"))
    info = control_plane.up(PlainProgress())
    try:
        yield info
    finally:
        control_plane.down(PlainProgress())


@pytest.fixture(scope="session")
def kube(cluster: ClusterInfo) -> Iterator[client.ApiClient]:
    """An admin (system:masters) API client for the test cluster."""
    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api_client
    api_client.close()


def own_node(namespace: str) -> dict:
    """A namespace whose pods only a test's own pod runner (Node `node-<namespace>`) runs: the API server's
    PodNodeSelector gives each of its pods that node's selector, so the cluster's pod runner leaves them alone."""
    return {"metadata": {"name": namespace, "annotations": {NODE_SELECTOR_ANNOTATION: f"kubernetes.io/hostname={node_for(namespace)}"}}}


def node_for(namespace: str) -> str:
    return f"node-{namespace}"


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (the namespace controller empties it); its pods are for a
    pod runner of the test's own (`node_for(namespace)`)."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube)
    core.create_namespace(own_node(name))
    yield name
    core.delete_namespace(name)


@contextmanager
def running(runner) -> Iterator:
    """A pod runner's loop in a thread for the test's length; its processes stopped afterwards."""
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        stop.set()
        thread.join(30)
