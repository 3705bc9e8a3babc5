"""The typed training settings reach transformers/TRL/accelerate as they say: FSDP2, the checkpoint interval,
the process-group timeout, the attention kernel and model-config overrides, GRPO's entropy terms; the CPU's threads
and kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import TrainingArguments

from gradatim.api.hyperparams import GRPOParams, SFTParams
from gradatim.cluster.kubelet import free_port
from gradatim.api.resolved import ResolvedSource, ResolvedStageSpec
from gradatim.storage import s3
from gradatim.trainer.hf import fsdp_config, model_settings, training_arguments
from gradatim.trainer.kernels import AVX2_KERNELS, cpuinfo, pin_cpu_kernels
from gradatim.trainer.runtime import Runtime, cpu_threads
from gradatim.trainer.sources import InputError, SourceError, load_model
from gradatim.trainer.stages import grpo
from gradatim.trainer.tiny import build_model, build_tokenizer
from tests.trainer_harness import stage_spec, trainer_command


def spec(type_: str, params: dict, interval: int | None = None, timeout: int = 1800) -> ResolvedStageSpec:
    return ResolvedStageSpec(namespace="t", pipeline="p", stage="s", type=type_, attempt=1, cache_key="k", params=params, inputs={},
                             output={"uri": "s3://b/o/", "checkpointUri": "s3://b/o/checkpoints/", "checkpointInterval": interval},
                             storage={"bucket": "b"}, process_group_timeout_seconds=timeout)


def cpu(world_size: int = 1, tmp: Path = Path("/tmp")) -> Runtime:
    return Runtime(rank=0, world_size=world_size, local_rank=0, device=torch.device("cpu"), workdir=tmp)


BASE = {"batchSize": 8, "microBatchSize": 8, "maxSteps": 20, "gradientCheckpointing": False}


def test_a_run_without_checkpoint_interval_still_saves_every_tenth_of_it(tmp_path):
    args = training_arguments(SFTParams.model_validate(BASE), spec("sft", BASE), cpu(), tmp_path, TrainingArguments)
    assert args.save_strategy == "steps" and args.save_steps == 0.1
    args = training_arguments(SFTParams.model_validate(BASE), spec("sft", BASE, interval=7), cpu(), tmp_path, TrainingArguments)
    assert args.save_steps == 7


def test_the_process_group_timeout_comes_from_the_spec(tmp_path):
    args = training_arguments(SFTParams.model_validate(BASE), spec("sft", BASE, timeout=5400), cpu(), tmp_path, TrainingArguments)
    assert args.ddp_timeout == 5400


def test_fsdp_settings_become_accelerates_fsdp2_plugin_with_sharded_checkpoints():
    params = SFTParams.model_validate(BASE | {"sharding": "fsdp", "fsdp": {"reshardAfterForward": False, "activationCheckpointing": True}})
    model = build_model(build_tokenizer())
    config = fsdp_config(params, model)
    assert config == {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "reshard_after_forward": False,
                      "activation_checkpointing": True, "cpu_ram_efficient_loading": True, "cpu_offload": False,
                      "state_dict_type": "SHARDED_STATE_DICT"}


def test_fsdp_activation_checkpointing_with_gradient_checkpointing_is_refused_with_the_fix(tmp_path):
    params = SFTParams.model_validate(BASE | {"gradientCheckpointing": True, "fsdp": {"activationCheckpointing": True}})
    with pytest.raises(ValueError, match="set gradientCheckpointing to false"):
        training_arguments(params, spec("sft", BASE), cpu(), tmp_path, TrainingArguments)


def test_the_attention_kernel_must_be_one_transformers_knows_or_a_hub_id():
    assert SFTParams.model_validate(BASE | {"attention": "kernels-community/flash-attn3"}).attention == "kernels-community/flash-attn3"
    with pytest.raises(ValidationError, match="attention"):
        SFTParams.model_validate(BASE | {"attention": "fast please"})


def test_config_overrides_and_attention_change_the_loaded_model(tmp_path):
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    params = SFTParams.model_validate(BASE | {"attention": "eager", "configOverrides": {
        "ropeTheta": 20000.0, "maxPositionEmbeddings": 1024, "ropeScaling": {"ropeType": "linear", "factor": 2.0}}})
    model, _ = load_model(ResolvedSource(uri=str(tmp_path / "m")), None, Runtime.single(tmp_path), **model_settings(params, cpu()))
    plain, _ = load_model(ResolvedSource(uri=str(tmp_path / "m")), None, Runtime.single(tmp_path))
    assert model.config._attn_implementation == "eager" and plain.config._attn_implementation == "sdpa"
    assert model.config.max_position_embeddings == 1024 and plain.config.max_position_embeddings == 512
    assert model.config.rope_parameters == {"rope_type": "linear", "rope_theta": 20000.0, "factor": 2.0}
    # The rotary frequencies are computed from the new base and scaling, not left at the saved ones.
    expected = 1.0 / (20000.0 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32)) / 2.0
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, expected)
    assert not torch.allclose(plain.model.rotary_emb.inv_freq, expected)
    with pytest.raises(InputError) as failure:
        load_model(ResolvedSource(builtin="tiny-teacher"), None, Runtime.single(tmp_path), **model_settings(params, cpu()))
    assert isinstance(failure.value.__cause__, SourceError) and "tiny-teacher is cached as built" in str(failure.value.__cause__)


def test_grpo_entropy_terms_reach_trl(tmp_path):
    p = {"batchSize": 8, "microBatchSize": 8, "numGenerations": 4, "maxSteps": 1, "gradientCheckpointing": False,
         "entropyCoef": 0.01, "topEntropyQuantile": 0.2}
    args = grpo.arguments(GRPOParams.model_validate(p), spec("grpo", p), cpu(), tmp_path)
    assert args.entropy_coef == 0.01 and args.top_entropy_quantile == 0.2
    default = grpo.arguments(GRPOParams.model_validate(BASE | {"numGenerations": 4}), spec("grpo", p), cpu(), tmp_path)
    assert default.entropy_coef == 0.0 and default.top_entropy_quantile == 1.0


def test_cpu_threads_follow_the_containers_cpu_limit_shared_by_the_nodes_processes():
    assert cpu_threads({"GRADATIM_CPU_LIMIT": "1"}, 1) == 1
    assert cpu_threads({"GRADATIM_CPU_LIMIT": "32"}, 8) == 4
    assert cpu_threads({"GRADATIM_CPU_LIMIT": "2"}, 4) == 1, "at least one thread"
    assert cpu_threads({"GRADATIM_CPU_LIMIT": "32", "OMP_NUM_THREADS": "6"}, 1) is None, "the user's (or torchrun's) setting wins"
    assert cpu_threads({}, 1) is None and cpu_threads({"GRADATIM_CPU_LIMIT": ""}, 1) is None, "no limit known: torch's default"


def test_the_cpu_limits_threads_hold_after_accelerate_sets_up_the_process_group():
    """accelerate's CPU setup sets torch's threads to the machine's cores unless OMP_NUM_THREADS says otherwise:
    two trainers side by side then spun against each other, about 7x slower."""
    code = ("import os, torch; from gradatim.trainer.runtime import set_cpu_threads; from accelerate import PartialState; "
            "set_cpu_threads(os.environ, 1); PartialState(cpu=True); print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(GRADATIM_CPU_LIMIT="1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), ACCELERATE_USE_CPU="true", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["1", "1"], done.stdout + done.stderr[-1000:]


def test_the_trainer_pins_avx2_kernels_where_the_cpu_has_them_and_leaves_a_setting_already_made():
    env: dict[str, str] = {}
    assert pin_cpu_kernels(env, flags="sse2 avx avx2 fma avx512f", machine="x86_64") == AVX2_KERNELS and env == AVX2_KERNELS
    env = {"MKL_CBWR": "COMPATIBLE"}  # the stage's env, or a local run's shell
    assert pin_cpu_kernels(env, flags="avx2 fma", machine="x86_64") == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert env["MKL_CBWR"] == "COMPATIBLE"
    assert pin_cpu_kernels(env := {}, flags="sse2 avx", machine="x86_64") == {} and env == {}, "no AVX2: its code would stop on SIGILL"
    assert pin_cpu_kernels(env := {}, flags="", machine="aarch64") == {} and env == {}


def test_a_cpu_run_computes_the_same_whatever_kernels_the_machine_would_pick(cluster, tmp_path):
    """The same midtrain three times through `torchrun -m gradatim.trainer`: with no kernel settings (the trainer
    pins AVX2) it trains exactly what explicit AVX2 settings train, and says so in its log and results; the kernels
    of a CPU without AVX2 (settings a user may still make, and they win) train other numbers, so the pin is what
    makes the first two agree."""
    assert {"avx2", "fma"} <= set(cpuinfo("flags").split()), "these tests run on x86-64 CPUs with AVX2 (every CI machine)"
    params = {"learningRate": 3e-3, "batchSize": 8, "microBatchSize": 8, "maxSteps": 6, "maxLength": 256, "precision": "fp32",
              "gradientCheckpointing": False, "warmupRatio": 0.0}
    inputs = {"model": {"builtin": "tiny-model"}, "data": [{"builtin": "tiny-math:train:120"}]}
    runs = {}
    for name, settings in (("pinned", {}), ("avx2", AVX2_KERNELS),
                           ("no-avx2", {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"})):
        spec = stage_spec(cluster, "midtrain", params, inputs)
        argv, env = trainer_command(cluster, spec, tmp_path / name, env={"GRADATIM_CPU_LIMIT": "1"})
        env = {k: v for k, v in env.items() if k not in AVX2_KERNELS} | settings  # none from this shell
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        results = s3.read_json(cluster.s3_client(), spec.output.uri + "results.json")
        runs[name] = ([h["loss"] for h in results["history"] if "loss" in h], results["cpuKernels"], done.stderr)
    losses, kernels, log = runs["pinned"]
    assert kernels.startswith("ATen AVX2, MKL AVX2, oneDNN AVX2, 1 thread(s) on "), kernels
    assert "CPU kernels: ATen AVX2, MKL AVX2" in log
    assert len(losses) == 6 and losses == runs["avx2"][0], (losses, runs["avx2"][0])
    assert runs["no-avx2"][1].startswith("ATen DEFAULT, MKL COMPATIBLE"), runs["no-avx2"][1]
    assert runs["no-avx2"][0] != losses, "other kernels sum in another order: the losses differ in their last bits"
