"""A corpus of invalid TrainingStage/TrainingPipeline objects, each with the field its error must name and a
fragment saying what is allowed. Each case is a deep-merge patch over a valid base object; DELETE removes a key."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

DELETE = object()

VALID_STAGE: dict[str, Any] = {
    "apiVersion": "gradatim.io/v1alpha1",
    "kind": "TrainingStage",
    "metadata": {"name": "sft"},
    "spec": {
        "pipeline": "recipe",
        "type": "sft",
        "dependsOn": ["midtrain"],
        "inputs": {
            "model": {"fromStage": "midtrain"},
            "data": [{"uri": "s3://bucket/traces/", "name": "traces"}],
        },
        "sft": {"learningRate": 1e-5, "batchSize": 32, "microBatchSize": 2},
    },
}

VALID_PIPELINE: dict[str, Any] = {
    "apiVersion": "gradatim.io/v1alpha1",
    "kind": "TrainingPipeline",
    "metadata": {"name": "recipe"},
    "spec": {"storage": {"bucket": "models", "secretRef": {"name": "s3"}}},
}

EVAL_SPEC = {
    "type": "eval",
    "sft": DELETE,
    "inputs": {"data": [], "evalData": [{"hf": "HuggingFaceH4/MATH-500", "name": "math500"}]},
    "eval": {},
}
GRPO_SPEC = {"type": "grpo", "sft": DELETE, "grpo": {"batchSize": 16, "numGenerations": 4}}
DPO_SPEC = {"type": "dpo", "sft": DELETE, "dpo": {}}
GENERATE_SPEC = {"type": "generate", "sft": DELETE, "generate": {}}


@dataclass(frozen=True)
class BadSpec:
    case: str
    kind: str
    patch: dict[str, Any]
    field: str
    allowed: str

    def body(self) -> dict[str, Any]:
        base = VALID_STAGE if self.kind == "TrainingStage" else VALID_PIPELINE
        return merge(copy.deepcopy(base), self.patch)


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is DELETE:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def stage(case: str, spec: dict[str, Any], field: str, allowed: str, **top: Any) -> BadSpec:
    return BadSpec(case, "TrainingStage", {"spec": spec, **top}, field, allowed)


def pipeline(case: str, spec: dict[str, Any], field: str, allowed: str) -> BadSpec:
    return BadSpec(case, "TrainingPipeline", {"spec": spec}, field, allowed)


BAD_SPECS: list[BadSpec] = [
    stage("name too long for child objects", {}, "metadata.name", "may not be more than 46", metadata={"name": "s" * 47}),
    stage("name not a DNS-1035 label", {}, "metadata.name", "should match", metadata={"name": "1st-stage"}),
    stage("unknown type", {"type": "ppo"}, "spec.type", 'supported values: "generate"'),
    stage("missing pipeline", {"pipeline": DELETE}, "spec.pipeline", "Required value"),
    stage("pipeline not a DNS label", {"pipeline": "My_Recipe"}, "spec.pipeline", "should match"),
    stage("type block missing", {"sft": DELETE}, "spec.sft", "sft settings are required when type is sft"),
    stage("another type's block", {"grpo": {}}, "spec.grpo", "grpo settings are only allowed when type is grpo"),
    stage("grpo without grpo block", {"type": "grpo", "sft": DELETE}, "spec.grpo", "required when type is grpo"),
    stage("depends on itself", {"dependsOn": ["midtrain", "sft"]}, "spec.dependsOn", "cannot depend on itself"),
    stage("dependsOn duplicate", {"dependsOn": ["midtrain", "midtrain"]}, "spec.dependsOn[1]", "Duplicate value"),
    stage("model with two sources", {"inputs": {"model": {"hf": "org/model", "fromStage": "midtrain"}}}, "spec.inputs.model", "set exactly one of hf, uri, fromStage, builtin or endpoint"),
    stage("data with two sources", {"inputs": {"data": [{"hf": "org/data", "uri": "/data/x"}]}}, "spec.inputs.data[0]", "set exactly one of hf, uri, fromStage or builtin"),
    stage("endpoint model on sft", {"dependsOn": [], "inputs": {"model": {"fromStage": DELETE, "endpoint": {"url": "http://r1.teachers:8000/v1", "model": "deepseek-r1"}}}},
          "spec.inputs.model.endpoint", "an endpoint model can only generate"),
    stage("endpoint as a dataset", {"inputs": {"data": [{"endpoint": {"url": "http://r1:8000/v1", "model": "r1"}}]}}, "spec.inputs.data[0].endpoint", "unknown field"),
    stage("endpoint url not http", {**GENERATE_SPEC, "dependsOn": [], "inputs": {"model": {"fromStage": DELETE, "endpoint": {"url": "r1:8000", "model": "r1"}}}},
          "spec.inputs.model.endpoint.url", "should match"),
    stage("endpoint with no concurrency", {**GENERATE_SPEC, "dependsOn": [], "inputs": {"model": {"fromStage": DELETE, "endpoint": {"url": "http://r1:8000/v1", "model": "r1", "maxConcurrency": 0}}}},
          "spec.inputs.model.endpoint.maxConcurrency", "greater than or equal to 1"),
    stage("tensor parallel with transformers", {**GENERATE_SPEC, "generate": {"engine": "hf", "tensorParallelSize": 4}}, "spec.generate.tensorParallelSize", "set engine to vllm or auto"),
    stage("unknown engine", {**EVAL_SPEC, "eval": {"engine": "sglang"}}, "spec.eval.engine", 'supported values: "auto", "vllm", "hf"'),
    stage("token budget too small", {**EVAL_SPEC, "eval": {"maxBatchTokens": 16}}, "spec.eval.maxBatchTokens", "greater than or equal to 256"),
    stage("eval batchSize is gone", {**EVAL_SPEC, "eval": {"batchSize": 64}}, "spec.eval.batchSize", "unknown field"),
    stage("grpo vLLM server without url", {**GRPO_SPEC, "grpo": {"batchSize": 16, "numGenerations": 4, "engine": "vllm", "vllmMode": "server"}}, "spec.grpo.vllmServerUrl", "needs vllmServerUrl"),
    stage("grpo vLLM url in colocate mode", {**GRPO_SPEC, "grpo": {"batchSize": 16, "numGenerations": 4, "vllmServerUrl": "http://vllm:8000"}}, "spec.grpo.vllmServerUrl", "only read in vllmMode server"),
    stage("chunk of no prompts", {**GENERATE_SPEC, "generate": {"chunkSize": 0}}, "spec.generate.chunkSize", "greater than or equal to 1"),
    stage("model with no source", {"inputs": {"model": {"fromStage": DELETE}}}, "spec.inputs.model", "set exactly one of"),
    stage("uri not s3 or absolute", {"inputs": {"data": [{"uri": "http://example.com/data"}]}}, "spec.inputs.data[0].uri", "should match"),
    stage("fromStage not in dependsOn", {"dependsOn": [], "inputs": {"model": {"hf": "org/model"}, "data": [{"fromStage": "generate"}]}}, "spec.inputs.data", "must name a stage that is listed in dependsOn"),
    stage("model fromStage not in dependsOn", {"dependsOn": ["other"]}, "spec.inputs.model.fromStage", "listed in dependsOn"),
    stage("output without fromStage", {"inputs": {"model": {"fromStage": DELETE, "hf": "org/model", "output": "model"}}}, "spec.inputs.model.output", "set fromStage too"),
    stage("training without data", {"inputs": {"data": []}}, "spec.inputs.data", "inputs.data is required"),
    stage("eval without evalData", {**EVAL_SPEC, "inputs": {"data": [], "evalData": []}}, "spec.inputs.evalData", "required for eval and decontaminate"),
    stage("decontaminate with a model", {"type": "decontaminate", "sft": DELETE, "decontaminate": {}, "inputs": {"evalData": [{"builtin": "tiny-math:eval"}]}}, "spec.inputs.model", "decontaminate reads no model"),
    stage("eval with training data", {**EVAL_SPEC, "inputs": {"data": [{"uri": "/data/x"}], "evalData": [{"builtin": "tiny-math:eval"}]}}, "spec.inputs.data", "move the eval sets there"),
    stage("training without model", {"dependsOn": [], "inputs": {"model": DELETE}}, "spec.inputs.model", "inputs.model is required"),
    stage("packing on dpo", {**DPO_SPEC, "dpo": {"packing": True}}, "spec.dpo.packing", "only supported for midtrain and sft"),
    stage("packing on grpo", {**GRPO_SPEC, "grpo": {"batchSize": 16, "numGenerations": 4, "packing": True}}, "spec.grpo.packing", "only supported for midtrain and sft"),
    stage("batch not a multiple of micro batch", {"sft": {"batchSize": 30, "microBatchSize": 4}}, "spec.sft.batchSize", "multiple of microBatchSize"),
    stage("grpo batch not a multiple of group", {**GRPO_SPEC, "grpo": {"batchSize": 18, "numGenerations": 4, "microBatchSize": 1}}, "spec.grpo.batchSize", "multiple of numGenerations"),
    stage("grpo epsilonHigh below epsilon", {**GRPO_SPEC, "grpo": {"batchSize": 16, "numGenerations": 4, "epsilon": 0.2, "epsilonHigh": 0.1}}, "spec.grpo.epsilonHigh", "at least epsilon"),
    stage("grpo group of one", {**GRPO_SPEC, "grpo": {"batchSize": 16, "numGenerations": 1}}, "spec.grpo.numGenerations", "greater than or equal to 2"),
    stage("two kinds of activation checkpointing", {"sft": {"fsdp": {"activationCheckpointing": True}}}, "spec.sft.gradientCheckpointing",
          "fsdp.activationCheckpointing replaces gradientCheckpointing; set gradientCheckpointing to false"),
    stage("unknown attention kernel", {"sft": {"attention": "fast please"}}, "spec.sft.attention", "should match"),
    stage("rope scaling without factor", {"sft": {"configOverrides": {"ropeScaling": {"ropeType": "yarn"}}}}, "spec.sft.configOverrides.ropeScaling.factor", "Required value"),
    stage("grpo entropy quantile above 1", {**GRPO_SPEC, "grpo": {"batchSize": 16, "numGenerations": 4, "topEntropyQuantile": 1.5}}, "spec.grpo.topEntropyQuantile", "less than or equal to 1"),
    stage("no checkpoint kept", {"checkpointsToKeep": 0}, "spec.checkpointsToKeep", "greater than or equal to 1"),
    stage("process group timeout too short", {"processGroupTimeoutSeconds": 5}, "spec.processGroupTimeoutSeconds", "greater than or equal to 60"),
    stage("negative learning rate", {"sft": {"learningRate": -1e-5}}, "spec.sft.learningRate", "greater than 0"),
    stage("unknown scheduler", {"sft": {"lrScheduler": "step"}}, "spec.sft.lrScheduler", 'supported values: "cosine"'),
    stage("unknown precision", {"sft": {"precision": "int8"}}, "spec.sft.precision", 'supported values: "bf16"'),
    stage("dpo beta zero", {**DPO_SPEC, "dpo": {"beta": 0}}, "spec.dpo.beta", "greater than 0"),
    stage("dpo unknown loss", {**DPO_SPEC, "dpo": {"lossType": "kto"}}, "spec.dpo.lossType", 'supported values: "sigmoid"'),
    stage("gate comparison", {"qualityGate": {"metric": "train_loss", "comparison": "==", "threshold": 1.0}}, "spec.qualityGate.comparison", 'supported values: ">"'),
    stage("gate metric of another type", {"qualityGate": {"metric": "pass@1", "threshold": 0.5}}, "spec.qualityGate.metric", "metrics a sft stage reports: train_loss, eval_loss"),
    stage("gate ratio out of range", {**EVAL_SPEC, "qualityGate": {"metric": "pass@1/math500", "threshold": 1.5}}, "spec.qualityGate.threshold", "between 0 and 1"),
    stage("gate without threshold", {"qualityGate": {"metric": "train_loss"}}, "spec.qualityGate.threshold", "Required value"),
    stage("greedy eval with several samples", {**EVAL_SPEC, "eval": {"samplesPerProblem": 4, "temperature": 0}}, "spec.eval.temperature", "set samplesPerProblem to 1 or a temperature above 0"),
    stage("pairs need two samples", {**GENERATE_SPEC, "generate": {"samplesPerPrompt": 1, "writePairs": True}}, "spec.generate.samplesPerPrompt", "samplesPerPrompt >= 2"),
    stage("pass-rate band inverted", {**GENERATE_SPEC, "generate": {"passRateBand": {"min": 0.8, "max": 0.2}}}, "spec.generate.passRateBand.min", "min must not exceed max"),
    stage("zero nodes", {"resources": {"nodes": 0}}, "spec.resources.nodes", "greater than or equal to 1"),
    stage("memory not a quantity", {"resources": {"memory": "lots"}}, "spec.resources.memory", "should match"),
    stage("negative memory", {"resources": {"memory": "-8Gi"}}, "spec.resources.memory", "should match"),
    stage("zero cpu", {"resources": {"cpu": "0"}}, "spec.resources.cpu", "should match"),
    stage("negative cpu as an integer", {"resources": {"cpu": -2}}, "spec.resources.cpu", "greater than or equal to 1"),
    stage("gpu resource name with spaces", {"resources": {"gpuResourceName": "NVIDIA GPU"}}, "spec.resources.gpuResourceName", "should match"),
    stage("negative retry limit", {"retryLimit": -1}, "spec.retryLimit", "greater than or equal to 0"),
    stage("unknown field", {"learningRate": 1e-5}, "spec.learningRate", "unknown field"),
    stage("checkpoints on eval", {**EVAL_SPEC, "checkpointInterval": 100}, "spec.checkpointInterval", "only used by training types"),
    stage("duplicate eval set names", {**EVAL_SPEC, "inputs": {"data": [], "evalData": [{"builtin": "a", "name": "x"}, {"builtin": "b", "name": "x"}]}}, "spec.inputs.evalData", "evalData names must be unique"),
    stage("env name invalid", {"env": [{"name": "1BAD", "value": "x"}]}, "spec.env[0].name", "should match"),
    stage("decontaminate threshold zero", {"type": "decontaminate", "sft": DELETE, "decontaminate": {"threshold": 0}, "inputs": {"model": DELETE, "evalData": [{"builtin": "tiny-math:eval"}]}, "dependsOn": []}, "spec.decontaminate.threshold", "greater than 0"),
    stage("all reward weights zero", {**GRPO_SPEC, "grpo": {"batchSize": 16, "numGenerations": 4, "rewards": {"correctness": 0, "repetition": 0, "format": 0}}}, "spec.grpo.rewards.correctness", "at least one reward weight must be positive"),
    stage("length-aware controls inverted", {**GRPO_SPEC, "grpo": {"batchSize": 16, "numGenerations": 4, "rewards": {"lengthAware": {"maxLength": 100, "positiveControlLength": 200}}}}, "spec.grpo.rewards.lengthAware.positiveControlLength", "below maxLength"),
    stage("hf id invalid", {"inputs": {"model": {"fromStage": DELETE, "hf": "not a repo!"}}}, "spec.inputs.model.hf", "should match"),
    stage("hf token in plain text", {"env": [{"name": "HF_TOKEN", "value": "hf_abc"}]}, "spec.env[0].value", "use valueFrom.secretKeyRef"),
    stage("env value and valueFrom", {"env": [{"name": "X", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}, "spec.env[0].valueFrom", "not both"),
    stage("env valueFrom empty", {"env": [{"name": "X", "valueFrom": {}}]}, "spec.env[0].valueFrom", "exactly one of secretKeyRef or configMapKeyRef"),
    stage("revision without hf", {"inputs": {"data": [{"uri": "s3://bucket/traces/", "revision": "main"}]}}, "spec.inputs.data[0].revision", "set hf too"),
    stage("revision given twice", {"inputs": {"model": {"fromStage": DELETE, "hf": "org/model@v1", "revision": "v2"}}}, "spec.inputs.model.revision", "give the revision once"),
    stage("choices without answer", {**EVAL_SPEC, "inputs": {"data": [], "evalData": [{"hf": "Idavidrein/gpqa", "config": "gpqa_diamond", "fields": {"prompt": "Question", "choices": ["A", "B"]}}]}}, "spec.inputs.evalData[0].fields.answer", "multiple choice needs answer"),
    pipeline("api key in plain text", {"env": [{"name": "OPENAI_API_KEY", "value": "sk-123"}]}, "spec.env[0].value", "use valueFrom.secretKeyRef"),
    pipeline("missing storage", {"storage": DELETE}, "spec.storage", "Required value"),
    pipeline("bucket name invalid", {"storage": {"bucket": "My_Bucket"}}, "spec.storage.bucket", "should match"),
    pipeline("missing credentials", {"storage": {"secretRef": DELETE}}, "spec.storage.secretRef", "Required value"),
    pipeline("prefix without slash", {"storage": {"prefix": "runs"}}, "spec.storage.prefix", "should match"),
    pipeline("endpoint not http", {"storage": {"endpoint": "ftp://s3.local"}}, "spec.storage.endpoint", "should match"),
    pipeline("unknown pull policy", {"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy", 'supported values: "Always"'),
    pipeline("negative GPUs", {"resources": {"gpusPerNode": -1}}, "spec.resources.gpusPerNode", "greater than or equal to 0"),
    pipeline("shm not a quantity", {"resources": {"shmSize": "1 GB"}}, "spec.resources.shmSize", "should match"),
    pipeline("zero shm", {"resources": {"shmSize": "0Mi"}}, "spec.resources.shmSize", "should match"),
    pipeline("negative default memory", {"resources": {"memory": "-1"}}, "spec.resources.memory", "should match"),
    pipeline("queue name invalid", {"queueName": "Team A"}, "spec.queueName", "should match"),
]
