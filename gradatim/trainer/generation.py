"""Sampling k completions per prompt, with one of three engines behind one interface:

- `HFEngine`: transformers' `generate`, sequences batched up to a token budget (prompt plus new tokens), so the KV
  cache stays bounded however long the completions or many the samples.
- `VLLMEngine`: vLLM (paged KV cache, continuous batching), `SamplingParams(n=k, seed=...)` per prompt, tensor
  parallel across a node's GPUs. Built with `distributed_executor_backend="external_launcher"` under torchrun, as
  TRL's colocated GRPO does: consecutive ranks form one engine's tensor-parallel group.
- `EndpointEngine`: an OpenAI-compatible server (a teacher too large to load here), with bounded concurrency and the
  `openai` client's retries with backoff on timeouts, lost connections, 408, 409, 429 and 5xx.

Each engine takes prompts as chat messages and applies the chat template itself (the endpoint's server applies its
own), and counts the tokens it read and wrote.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradatim.api.common import Endpoint
from gradatim.api.hyperparams import GenerationBudget, Sampling
from gradatim.api.resolved import ENDPOINT_API_KEY_ENV, ResolvedSource
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import SourceError, load_model, model_dir

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # empty from an endpoint, which returns text
    finished: bool  # ended on its own (EOS / stop) rather than at max_new_tokens
    length: int = -1  # completion tokens; -1: len(token_ids)

    @property
    def tokens(self) -> int:
        return self.length if self.length >= 0 else len(self.token_ids)


@dataclass
class Usage:
    """Tokens and requests of one engine's work so far."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    retries: int = 0  # endpoint requests sent again after a timeout, a lost connection, 408, 409, 429 or 5xx

    reported: int = 0  # completion tokens already passed on to the progress counters

    def unreported_tokens(self) -> int:
        """Completion tokens generated since the last call: the increment the progress counters take."""
        new, self.reported = self.completion_tokens - self.reported, self.completion_tokens
        return new


def messages(prompt: str, system_message: str | None) -> Messages:
    return ([{"role": "system", "content": system_message}] if system_message else []) + [{"role": "user", "content": prompt}]


def chat_text(tokenizer: Any, prompt: Messages) -> str:
    """The prompt as the model reads it: its chat template, ready for the assistant's turn."""
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def token_batches(lengths: Sequence[int], k: int, max_new_tokens: int, max_batch_tokens: int) -> list[list[tuple[int, int]]]:
    """(prompt, sample) pairs in order, cut into batches whose sequences hold at most `max_batch_tokens` tokens at
    full length (prompt padded to the batch's longest, plus `max_new_tokens`); a sequence longer than the budget goes
    alone. The budget, not a prompt count, bounds the KV cache."""
    batches: list[list[tuple[int, int]]] = []
    batch: list[tuple[int, int]] = []
    longest = 0
    for i, n in enumerate(lengths):
        for j in range(k):
            wider = max(longest, n)
            if batch and (len(batch) + 1) * (wider + max_new_tokens) > max_batch_tokens:
                batches.append(batch)
                batch, wider = [], n
            batch.append((i, j))
            longest = wider
    if batch:
        batches.append(batch)
    return batches


class HFEngine:
    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, max_batch_tokens: int, device: torch.device) -> None:
        self.model, self.tokenizer, self.max_batch_tokens = model.to(device), tokenizer, max_batch_tokens
        self.device = device
        self.usage = Usage()

    @torch.no_grad()
    def sample(self, prompts: Sequence[Messages], k: int, sampling: Sampling, seed: int,
               on_batch: Callable[[int], None] | None = None) -> list[list[Completion]]:
        """k completions for each prompt, in order; `on_batch(prompts finished)` after each batch."""
        tok, model = self.tokenizer, self.model
        model.eval()
        tok.padding_side = "left"
        ids = [tok(chat_text(tok, m), add_special_tokens=False)["input_ids"] for m in prompts]
        out: list[list[Completion | None]] = [[None] * k for _ in prompts]
        eos, greedy = tok.eos_token_id, sampling.temperature == 0
        finished_prompts = 0
        for number, batch in enumerate(token_batches([len(x) for x in ids], k, sampling.max_new_tokens, self.max_batch_tokens)):
            enc = tok.pad([{"input_ids": ids[i]} for i, _ in batch], return_tensors="pt").to(self.device)
            torch.manual_seed(seed * 1_000_003 + number)
            gen = model.generate(
                **enc, do_sample=not greedy, temperature=sampling.temperature if not greedy else None,
                top_p=sampling.top_p if not greedy else None, top_k=(sampling.top_k or None) if not greedy else None,
                max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos,
            )
            new = gen[:, enc["input_ids"].shape[1]:]
            for row, (i, j) in enumerate(batch):
                seq = new[row].tolist()
                done = eos in seq
                seq = seq[: seq.index(eos) + 1] if done else [t for t in seq if t != tok.pad_token_id]
                out[i][j] = Completion(tok.decode(seq, skip_special_tokens=False).replace(tok.eos_token, "").strip(), seq, done)
                self.usage.prompt_tokens += len(ids[i])
                self.usage.completion_tokens += len(seq)
            self.usage.requests += 1
            last_prompt, last_sample = batch[-1]  # batches go in order: every prompt before the last one is complete
            now_done = last_prompt + 1 if last_sample == k - 1 else last_prompt
            if on_batch and now_done > finished_prompts:
                on_batch(now_done - finished_prompts)
            finished_prompts = now_done
        return [[c for c in group if c is not None] for group in out]


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # an image without vLLM, or one whose vLLM cannot load here
        return False
    return True


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """KV cache one token takes: keys and values of every layer's KV heads."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def cpu_settings(model_dir: Path, max_batch_tokens: int) -> dict[str, Any]:
    """vLLM on CPUs. Its memory check takes `gpu_memory_utilization` as a share of the host's RAM and refuses to start
    on a shared machine, so the KV cache is sized from the token budget instead. In-process and eager: a
    multiprocess, compiled engine decodes faster but starts a minute or two later, more than a small run takes.
    float32, as the tiny models are saved: the log-probs then match transformers' to about 1e-6."""
    from transformers import AutoConfig

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    config = AutoConfig.from_pretrained(model_dir)
    return {"enforce_eager": True, "dtype": "float32", "kv_cache_memory_bytes": max_batch_tokens * kv_bytes_per_token(config, 4)}


class VLLMEngine:
    name = "vllm"

    def __init__(self, model_dir: Path, tokenizer: Any, *, tensor_parallel_size: int, gpu_memory_utilization: float,
                 max_batch_tokens: int, seed: int, distributed: bool) -> None:
        extra: dict[str, Any] = {}
        if distributed:  # inside torchrun: consecutive ranks are one engine's tensor-parallel group
            extra["distributed_executor_backend"] = "external_launcher"
        if not torch.cuda.is_available():  # vLLM's CPU build, as in the tests: see cpu_settings
            extra |= cpu_settings(model_dir, max_batch_tokens)
        from vllm import LLM

        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, max_num_batched_tokens=max_batch_tokens, seed=seed,
                       enable_prefix_caching=True, **extra)
        self.tokenizer = tokenizer
        self.usage = Usage()

    def sample(self, prompts: Sequence[Messages], k: int, sampling: Sampling, seed: int,
               on_batch: Callable[[int], None] | None = None) -> list[list[Completion]]:
        from vllm import SamplingParams

        greedy = sampling.temperature == 0
        texts = [chat_text(self.tokenizer, m) for m in prompts]
        params = [SamplingParams(n=k, temperature=sampling.temperature, top_p=1.0 if greedy else sampling.top_p,
                                 top_k=-1 if greedy or not sampling.top_k else sampling.top_k, max_tokens=sampling.max_new_tokens,
                                 seed=seed * 1_000_003 + i, skip_special_tokens=False) for i in range(len(texts))]
        results = self.llm.generate(texts, params, use_tqdm=False)
        out = []
        for result in results:
            self.usage.prompt_tokens += len(result.prompt_token_ids) * k
            group = []
            for o in result.outputs:
                self.usage.completion_tokens += len(o.token_ids)
                text = o.text.replace(self.tokenizer.eos_token or "\0", "").strip()
                group.append(Completion(text, list(o.token_ids), o.finish_reason == "stop"))
            out.append(group)
        self.usage.requests += 1
        if on_batch:
            on_batch(len(prompts))
        return out


@dataclass
class EndpointEngine:
    """Completions from an OpenAI-compatible server. `concurrency` requests are in flight at once; each is retried
    by the `openai` client on timeouts, lost connections, 408, 409, 429 and 5xx, with exponential backoff."""

    endpoint: Endpoint
    concurrency: int
    api_key: str | None = None
    usage: Usage = field(default_factory=Usage)
    name: str = "endpoint"

    def __post_init__(self) -> None:
        import openai

        self._lock = threading.Lock()  # usage is counted from the pool's threads
        self.client = openai.OpenAI(base_url=self.endpoint.url, api_key=self.api_key or os.environ.get("OPENAI_API_KEY") or "none",
                                    timeout=float(self.endpoint.timeout_seconds), max_retries=self.endpoint.max_retries)

    def _ask(self, prompt: Messages, n: int, sampling: Sampling, seed: int) -> list[Completion]:
        body: dict[str, Any] = {"model": self.endpoint.model, "messages": prompt, "n": n, "max_tokens": sampling.max_new_tokens,
                                "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": seed}
        # topK is not part of the OpenAI API (strict servers refuse it): an endpoint samples without it.
        raw = self.client.chat.completions.with_raw_response.create(**body)
        reply = raw.parse()
        with self._lock:
            self.usage.requests += 1
            self.usage.retries += raw.retries_taken
            if reply.usage is not None:
                self.usage.prompt_tokens += reply.usage.prompt_tokens or 0
                self.usage.completion_tokens += reply.usage.completion_tokens or 0
        out = []
        for choice in reply.choices:
            content = choice.message.content or ""
            reasoning = getattr(choice.message, "reasoning_content", None) or (choice.message.model_extra or {}).get("reasoning_content")
            if reasoning and "<think>" not in content:  # a reasoning model's trace, returned beside the answer
                content = f"<think>{reasoning.strip()}</think> {content.strip()}"
            tokens = round((reply.usage.completion_tokens or 0) / len(reply.choices)) if reply.usage else -1
            out.append(Completion(content.strip(), [], choice.finish_reason == "stop", tokens))
        return out

    def _group(self, prompt: Messages, k: int, sampling: Sampling, seed: int) -> list[Completion]:
        """k completions of one prompt; asked for again while the server returns fewer than asked (some ignore `n`)."""
        per_request = self.endpoint.samples_per_request or k
        group: list[Completion] = []
        attempt = 0
        while len(group) < k:
            got = self._ask(prompt, min(per_request, k - len(group)), sampling, seed + attempt)
            if not got:
                raise RuntimeError(f"{self.endpoint.url} returned no choices for model {self.endpoint.model}")
            group += got
            attempt += 1
        return group[:k]

    def sample(self, prompts: Sequence[Messages], k: int, sampling: Sampling, seed: int,
               on_batch: Callable[[int], None] | None = None) -> list[list[Completion]]:
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="endpoint") as pool:
            futures = [pool.submit(self._group, p, k, sampling, seed * 1_000_003 + i) for i, p in enumerate(prompts)]
            out = []
            for future in futures:
                out.append(future.result())
                if on_batch:
                    on_batch(1)
        return out


def pick_engine(choice: str, device: torch.device, field: str = "engine") -> str:
    """`auto`: vLLM where it is installed and the processes have GPUs; else transformers (on CPU vLLM's import and
    start-up, half a minute to two, outweigh a small run's generation). `vllm` where it does not load: an error
    naming `field`."""
    if choice == "auto":
        return "vllm" if device.type == "cuda" and vllm_available() else "hf"
    if choice == "vllm" and not vllm_available():
        raise SourceError(f"{field} is vllm, but vLLM does not load in this trainer image; use engine: auto or hf, or an image with vLLM")
    return choice


@dataclass(frozen=True)
class Placement:
    """Where this process stands among the stage's engines: engine `replica` of `replicas` (data parallel);
    `writes` for the one process of each engine that writes its results (a vLLM engine spans
    tensorParallelSize processes, which all run it)."""

    replica: int
    replicas: int
    writes: bool


def open_engine(params: GenerationBudget, source: ResolvedSource, store: Any, rt: Runtime, seed: int,
                on_teacher_step: Any = None) -> tuple[HFEngine | VLLMEngine | EndpointEngine, Placement]:
    """The engine the stage's settings and this process's hardware call for, and this process's place among the
    stage's engines. An endpoint model is always the endpoint engine."""
    every_rank = Placement(rt.rank, rt.world_size, True)
    if source.endpoint is not None:
        per_process = max(1, source.endpoint.max_concurrency // rt.world_size)
        return EndpointEngine(source.endpoint, per_process, os.environ.get(ENDPOINT_API_KEY_ENV)), every_rank
    if pick_engine(params.engine, rt.device) == "vllm":
        tp = params.tensor_parallel_size
        if rt.world_size % tp:
            raise SourceError(f"tensorParallelSize {tp} does not divide the stage's {rt.world_size} processes (nodes x gpusPerNode)")
        from transformers import AutoTokenizer

        directory = model_dir(source, store, rt, seed, on_teacher_step)
        replica = rt.rank // tp
        engine = VLLMEngine(directory, AutoTokenizer.from_pretrained(directory), tensor_parallel_size=tp,
                            gpu_memory_utilization=params.gpu_memory_utilization, max_batch_tokens=params.max_batch_tokens,
                            seed=seed + replica, distributed=rt.world_size > 1)
        return engine, Placement(replica, rt.world_size // tp, rt.rank % tp == 0)
    model, tokenizer = load_model(source, store, rt, seed, on_teacher_step=on_teacher_step)
    return HFEngine(model, tokenizer, params.max_batch_tokens, rt.device), every_rank
