"""The one reconcile shell's parts that need no cluster: what a failed S3 read means, and the operator's watch
cache (newest object wins, the graph version moves only when a pipeline's graph does)."""

from __future__ import annotations

from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from gradatim.operator.world import WatchCache
from gradatim.storage.runfiles import storage_fault
from tests.test_planner import pipeline

URI = "s3://models/ml/recipe/sft/abc/results.json"


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")


def test_what_a_failed_read_means_a_fault_that_may_pass_or_a_field_to_fix():
    pipe = pipeline()
    assert storage_fault(pipe, URI, EndpointConnectionError(endpoint_url="http://s3:9000")).transient
    assert storage_fault(pipe, URI, ReadTimeoutError(endpoint_url="http://s3:9000")).transient, "a frozen S3"
    assert storage_fault(pipe, URI, client_error("SlowDown")).transient
    assert storage_fault(pipe, URI, client_error("InternalError")).transient
    bucket = storage_fault(pipe, URI, client_error("NoSuchBucket"))
    assert not bucket.transient and "spec.storage.bucket: bucket 'models' does not exist" in bucket.message
    refused = storage_fault(pipe, URI, client_error("InvalidAccessKeyId"))
    assert not refused.transient and "spec.storage.secretRef" in refused.message


def stage_body(name: str, version: str, generation: int = 1, pipeline: str = "recipe", phase: str = "Pending") -> dict:
    return {"apiVersion": "gradatim.io/v1alpha1", "kind": "TrainingStage",
            "metadata": {"name": name, "namespace": "ml", "uid": f"{name}-uid", "generation": generation, "resourceVersion": version,
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"pipeline": pipeline, "type": "sft", "inputs": {"model": {"hf": "org/base"}, "data": [{"uri": "s3://data/train/"}]}, "sft": {}},
            "status": {"phase": phase}}


def test_the_watch_cache_keeps_the_newest_object_and_versions_the_graph():
    cache = WatchCache()
    cache.put_stage(stage_body("a", "10"))
    first = cache.graph_version("ml", "recipe")
    assert first > 0 and cache.stage("ml", "a").status.phase == "Pending"
    assert "managedFields" not in cache.stage("ml", "a").metadata
    cache.put_stage(stage_body("a", "12", phase="Running"))  # our status write's response
    cache.put_stage(stage_body("a", "11", phase="Pending"))  # an older watch event, arriving late
    assert cache.stage("ml", "a").status.phase == "Running", "an older event does not undo a newer write"
    assert cache.graph_version("ml", "recipe") == first, "a status change leaves the graph as it was"
    cache.put_stage(stage_body("a", "13", generation=2, phase="Running"))
    assert cache.graph_version("ml", "recipe") > first, "a new spec (generation) changes the graph"
    cache.put_stage(stage_body("b", "14"))
    assert set(cache.pipeline_stages("ml", "recipe")) == {"a", "b"}
    before = cache.graph_version("ml", "recipe")
    cache.drop_stage("ml", "b")
    assert set(cache.pipeline_stages("ml", "recipe")) == {"a"} and cache.graph_version("ml", "recipe") > before
    cache.put_stage(stage_body("a", "15", generation=2, pipeline="other"))
    assert cache.pipeline_stages("ml", "recipe") == {} and set(cache.pipeline_stages("ml", "other")) == {"a"}
