"""RLVR (Tülu 3 §6): PPO (GAE + value model) or GRPO against verifiable rewards, vLLM rollouts.

One step, in order:
  1. prompts of the step -> vLLM engine (rank 0 drives it; the engine runs in its own processes)
     -> responses; verifiers score them (alpha=10 if correct, -10 without EOS); broadcast.
  2. forward-only passes: old policy log-probs (logits / temperature), reference log-probs,
     values (PPO) -> per-token rewards (-beta*KL + score at the last token) -> advantages.
  3. K epochs x mini-batches of clipped policy updates (+ clipped value updates).
  4. refit: every learner rank streams exactly the planned shards into the engine.
Asynchronous mode (Tülu 3's "train on the second-latest batch"): batch k+1 is generated with the
weights before update k while update k runs, so every batch is exactly one update stale; the
generated batch that is pending at a checkpoint is saved with it, so resume is exact.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_tulu.algorithms.loop import (
    BatchOrder,
    MetricsLogger,
    barrier,
    ensure_model_source,
    is_rank0,
    save_config,
)
from megatron_tulu.algorithms.rollout_batch import RolloutSample, build_rollout_tensors, row_length
from megatron_tulu.algorithms.value_model import build_value_model
from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import RLVRRunConfig
from megatron_tulu.data.chat_template import render_tulu
from megatron_tulu.data.io import read_rows
from megatron_tulu.data.mixing import apply_dataset_weights
from megatron_tulu.data.tokenizer import load_tokenizer
from megatron_tulu.engine.checkpoint import find_latest, load_checkpoint, save_checkpoint
from megatron_tulu.engine.faults import crash_point
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.optimizer import build_optimizer, build_scheduler
from megatron_tulu.engine.parallel import destroy_parallel, free_port, init_parallel
from megatron_tulu.engine.train_step import forward_backward, prepare_model_for_training, train_step
from megatron_tulu.losses.ppo import (
    get_advantage_estimator,
    kl_penalty,
    masked_mean,
    masked_sum_and_count,
    policy_loss,
    token_rewards,
    value_loss,
)
from megatron_tulu.losses.vocab_parallel import vocab_parallel_entropy, vocab_parallel_log_probs
from megatron_tulu.models.hf_io import export_hf, load_hf_weights, model_config_from_hf
from megatron_tulu.rewards import compute_rewards

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"


# ----------------------------------------------------------------------------------------- data
def load_prompts(files: Sequence[str], tokenizer, max_prompt_len: int) -> list[dict[str, Any]]:
    """RLVR rows {messages (user turn[s]), ground_truth, dataset} -> prompt ids (left-truncated)."""
    prompts = []
    for path in files:
        for location, row in read_rows(path):
            for key in ("messages", "ground_truth", "dataset"):
                if key not in row:
                    raise ValueError(f"{location}: RLVR row has no {key!r} field")
            text = render_tulu(row["messages"], add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][-max_prompt_len:]
            user = next((m["content"] for m in reversed(row["messages"]) if m["role"] == "user"), "")
            prompts.append(
                {"ids": ids, "ground_truth": row["ground_truth"], "dataset": row["dataset"], "prompt": user}
            )
    return prompts


# ------------------------------------------------------------------------------------- rollouts
def score_outputs(outs, prompts, tokenizer, alpha: float, no_eos_penalty: float) -> list[RolloutSample]:
    """Decode engine outputs and score them with the verifier registry (alpha, no-EOS penalty)."""
    texts = [tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outs]
    rewards = compute_rewards(
        [
            {
                "response": t,
                "ground_truth": prompts[o.prompt_index]["ground_truth"],
                "dataset": prompts[o.prompt_index]["dataset"],
                "prompt": prompts[o.prompt_index]["prompt"],
                "finish_reason": o.finish_reason,
            }
            for o, t in zip(outs, texts)
        ],
        alpha=alpha,
        no_eos_penalty=no_eos_penalty,
        workers=2,
    )
    return [
        RolloutSample(
            list(o.prompt_ids),
            list(o.token_ids),
            o.finish_reason,
            r.reward,
            r.score,
            r.dataset,
            o.prompt_index,
        )
        for o, r in zip(outs, rewards)
    ]


class Rollouts:
    """Rank 0 owns the vLLM engine client; the engine's work runs in vLLM's own processes."""

    def __init__(self, cfg: RLVRRunConfig, hf_source: str, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.engine = None
        self.version = 0  # policy updates the engine's weights include (advanced by Refitter)
        self.pending_version = 0
        self.pending: threading.Thread | None = None
        self._result: list[RolloutSample] | None = None
        if is_rank0():
            from megatron_tulu.rollout.engine import RolloutEngine

            self.engine = RolloutEngine(
                hf_source,
                tp=cfg.rollout.engine_tp,
                seed=cfg.train.seed,
                dtype="float32" if not torch.cuda.is_available() else "bfloat16",
                memory_fraction=cfg.rollout.gpu_memory_utilization,
                enforce_eager=cfg.rollout.enforce_eager,
                max_model_len=cfg.rollout.max_prompt_len + cfg.rollout.max_new_tokens + 8,
            )

    def _generate(
        self, prompts: list[dict[str, Any]], seed: int, greedy: bool, n: int
    ) -> list[RolloutSample]:
        from megatron_tulu.rollout.engine import SamplingSettings

        ro = self.cfg.rollout
        settings = SamplingSettings(
            temperature=0.0 if greedy else ro.temperature,
            top_p=1.0 if greedy else ro.top_p,
            max_new_tokens=ro.max_new_tokens,
            n=n,
            seed=seed,
            stop_token_ids=(self.tokenizer.eos_token_id,),
        )
        outs = self.engine.generate([p["ids"] for p in prompts], settings)
        return score_outputs(outs, prompts, self.tokenizer, self.cfg.rlvr.alpha, self.cfg.rlvr.no_eos_penalty)

    def start(self, prompts: list[dict[str, Any]], seed: int, greedy: bool = False, n: int = 1) -> None:
        """Begin generating (rank 0, in a background thread so training can overlap)."""
        if self.engine is None:
            return

        self.pending_version = self.version

        def run() -> None:
            self._result = self._generate(prompts, seed, greedy, n)

        self.pending = threading.Thread(target=run, name="rollouts")
        self.pending.start()

    def collect(self) -> tuple[list[RolloutSample], int]:
        """Wait for the batch started last; share it (and the policy version that generated it)."""
        holder: list[Any] = [None]
        if self.engine is not None:
            self.pending.join()
            holder[0] = (self._result, self.pending_version)
        dist.broadcast_object_list(holder, src=0)
        return holder[0]


class Refitter:
    """Joins the learner ranks and the engine's workers in the refit group; streams shards after updates."""

    def __init__(self, cfg: RLVRRunConfig, chunks, rollouts: Rollouts):
        from megatron_tulu.rollout.refit import LearnerRefit, refit_spec_for

        self.rollouts, self.cfg = rollouts, cfg
        spec = refit_spec_for(chunks, cfg.model, cfg.rollout.engine_tp)
        port = [free_port() if is_rank0() else 0]
        dist.broadcast_object_list(port, src=0)
        joiner = None
        if rollouts.engine is not None:
            joiner = threading.Thread(
                target=rollouts.engine.join_refit_group,
                args=("127.0.0.1", port[0], spec),
                kwargs={"timeout_s": cfg.rollout.refit_timeout_s},
            )
            joiner.start()
        self.learner = LearnerRefit(spec, "127.0.0.1", port[0], timeout_s=cfg.rollout.refit_timeout_s)
        if joiner is not None:
            joiner.join()
        self.bucket = cfg.rollout.refit_bucket_mb << 20

    def refit(self, chunks) -> float:
        t0 = time.perf_counter()
        future = None
        if self.rollouts.engine is not None:
            future = self.rollouts.engine.refit(
                bucket_bytes=self.bucket, timeout_s=self.cfg.rollout.refit_timeout_s, wait=False
            )
        self.learner.send(chunks, bucket_bytes=self.bucket)
        if future is not None:
            future.result()
        self.rollouts.version += 1
        return time.perf_counter() - t0

    def close(self) -> None:
        self.learner.close()


# ------------------------------------------------------------------------------ forward passes
def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def per_token_pass(chunks, micro: list[dict[str, Any]], fn: Callable[[torch.Tensor, dict], dict], mbs: int):
    """Forward-only over micro-batches; ``fn(output, batch) -> {name: [b, T]}`` on the last stage.
    Returns the concatenated tensors on every rank (broadcast over the pipeline)."""

    def step(data_iterator, model):
        batch = _batch_to(next(data_iterator), _device(model))
        out = model(input_ids=batch["tokens"], position_ids=batch["position_ids"], attention_mask=None)

        def loss_func(output):
            return (
                torch.zeros((), device=output.device),
                torch.tensor(1, dtype=torch.int),
                {k: v.detach().cpu() for k, v in fn(output, batch).items()},
            )

        return out, loss_func

    for c in chunks:
        c.eval()
    with torch.no_grad():
        outs = forward_backward(
            step,
            iter(micro),
            chunks,
            num_microbatches=len(micro),
            seq_length=micro[0]["tokens"].shape[1],
            micro_batch_size=mbs,
            forward_only=True,
        )
    for c in chunks:
        c.train()
    result = {k: torch.cat([o[k] for o in outs]) for k in outs[0]} if outs else None
    holder = [result]
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast_object_list(
            holder,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
    return holder[0]


def split_micro(data: dict[str, torch.Tensor], idx: Sequence[int], mbs: int) -> list[dict[str, torch.Tensor]]:
    index = torch.tensor(list(idx))
    return [{k: v[index[i : i + mbs]] for k, v in data.items()} for i in range(0, len(index), mbs)]


def _mean_metric(value: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.stack([value.detach().float() * count.float(), count.float()])


def make_policy_step(cfg: RLVRRunConfig, vocab: int) -> Callable:
    temp, rl = cfg.rollout.temperature, cfg.rlvr

    def step(data_iterator, model):
        batch = _batch_to(next(data_iterator), _device(model))
        out = model(input_ids=batch["tokens"], position_ids=batch["position_ids"], attention_mask=None)

        def loss_func(output):
            logp = vocab_parallel_log_probs(output, batch["labels"], vocab, temp)
            loss, m = policy_loss(logp, batch["old_logp"], batch["advantages"], batch["mask"], rl.clip_eps)
            total = loss.loss_sum
            if rl.estimator == "grpo":  # GRPO keeps the policy near the reference with a k3 KL loss
                kl = masked_sum_and_count(kl_penalty(logp, batch["ref_logp"], "k3"), batch["mask"])
                total = total + rl.beta * kl.loss_sum
            n = loss.num_tokens.to(torch.int)
            metrics = {f"policy/{k}": _mean_metric(v, n) for k, v in m.items()}
            metrics["policy/loss"] = torch.stack([loss.loss_sum.detach().float(), n.float()])
            return total, n, metrics

        return out, loss_func

    return step


def make_value_step(cfg: RLVRRunConfig) -> Callable:
    rl = cfg.rlvr

    def step(data_iterator, model):
        batch = _batch_to(next(data_iterator), _device(model))
        out = model(input_ids=batch["tokens"], position_ids=batch["position_ids"], attention_mask=None)

        def loss_func(output):
            values = output.squeeze(-1).float()
            loss, m = value_loss(values, batch["old_values"], batch["returns"], batch["mask"], rl.value_clip)
            n = loss.num_tokens.to(torch.int)
            metrics = {f"value/{k}": _mean_metric(v, n) for k, v in m.items()}
            metrics["value/loss"] = torch.stack([loss.loss_sum.detach().float(), n.float()])
            return loss.scale(rl.vf_coef).loss_sum, n, metrics

        return out, loss_func

    return step


# ------------------------------------------------------------------------------------- metrics
def rollout_metrics(samples: Sequence[RolloutSample], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    by_ds: dict[str, list[RolloutSample]] = defaultdict(list)
    for s in samples:
        by_ds[s.dataset].append(s)
    for name, group in [("all", list(samples)), *sorted(by_ds.items())]:
        out[f"{prefix}reward/{name}"] = sum(s.score for s in group) / len(group)
        out[f"{prefix}accuracy/{name}"] = sum(s.correct >= 1.0 for s in group) / len(group)
    out[f"{prefix}response_length"] = sum(len(s.response_ids) for s in samples) / len(samples)
    out[f"{prefix}no_eos_share"] = sum(s.finish_reason != "stop" for s in samples) / len(samples)
    return out


def evaluate(rollouts: Rollouts, heldout: list[dict[str, Any]], seed: int) -> dict[str, float]:
    """Greedy held-out verifiable reward/accuracy with the engine's current weights."""
    rollouts.start(heldout, seed=seed, greedy=True)
    return rollout_metrics(rollouts.collect()[0], prefix="eval/")


# --------------------------------------------------------------------------------------- train
def prepare_batch(
    cfg, samples, policy, reference, value, pad_id, info
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Tensors of this DP rank's share of the batch, with old/ref log-probs, values, advantages."""
    ro, rl = cfg.rollout, cfg.rlvr
    # computed from the whole batch, so every rank agrees; 16*TP keeps sequence parallelism legal
    length = row_length(samples, 16 * info.tp, ro.max_prompt_len + ro.max_new_tokens)
    share = len(samples) // info.dp
    mine = samples[info.dp_rank * share : (info.dp_rank + 1) * share]
    data = build_rollout_tensors(mine, length, pad_id)
    mbs = cfg.train.micro_batch_size
    micro = split_micro(data, range(len(mine)), mbs)
    vocab = cfg.model.vocab_size

    def logp_fn(out, b):
        return {
            "logp": vocab_parallel_log_probs(out, b["labels"], vocab, ro.temperature),
            "entropy": vocab_parallel_entropy(out, vocab, ro.temperature),
        }

    old = per_token_pass(policy, micro, logp_fn, mbs)
    ref = per_token_pass(
        reference,
        micro,
        lambda out, b: {"logp": vocab_parallel_log_probs(out, b["labels"], vocab, ro.temperature)},
        mbs,
    )
    data["old_logp"], data["ref_logp"] = old["logp"], ref["logp"]
    mask = data["mask"]
    values = None
    if rl.estimator == "gae":
        values = per_token_pass(value, micro, lambda out, b: {"v": out.squeeze(-1).float()}, mbs)["v"] * mask
        data["old_values"] = values
    rewards = token_rewards(data["scores"], data["old_logp"], data["ref_logp"], mask, rl.beta, rl.kl_kind)
    adv, returns = get_advantage_estimator(rl.estimator)(
        rewards=rewards,
        values=values,
        scores=data["scores"],
        mask=mask,
        gamma=rl.gamma,
        lam=rl.lam,
        group_size=ro.samples_per_prompt,
    )
    data["advantages"] = adv
    if returns is not None:
        data["returns"] = returns
    kl = masked_mean(kl_penalty(data["old_logp"], data["ref_logp"], rl.kl_kind), mask)
    stats = {"kl": float(kl), "entropy": float(masked_mean(old["entropy"], mask))}
    return data, stats


def ppo_updates(cfg, data, policy, value, popt, vopt, psched, vsched, step: int, info) -> dict[str, float]:
    rl, mbs = cfg.rlvr, cfg.train.micro_batch_size
    n = data["tokens"].shape[0]
    per_mini = n // rl.num_mini_batches
    totals: dict[str, list[float]] = defaultdict(list)
    pstep, vstep = make_policy_step(cfg, cfg.model.vocab_size), make_value_step(cfg)
    for epoch in range(rl.ppo_epochs):
        perm = torch.randperm(
            n, generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + step * 10 + epoch)
        ).tolist()
        for k in range(rl.num_mini_batches):
            idx = perm[k * per_mini : (k + 1) * per_mini]
            micro = split_micro(data, idx, mbs)
            seq = data["tokens"].shape[1]
            res = train_step(
                pstep,
                iter(micro),
                policy,
                popt,
                psched,
                num_microbatches=len(micro),
                seq_length=seq,
                micro_batch_size=mbs,
            )
            for key, v in {**res.metrics, "policy/grad_norm": res.grad_norm or 0.0}.items():
                totals[key].append(v)
            if rl.estimator == "gae":
                res = train_step(
                    vstep,
                    iter(micro),
                    value,
                    vopt,
                    vsched,
                    num_microbatches=len(micro),
                    seq_length=seq,
                    micro_batch_size=mbs,
                )
                for key, v in {**res.metrics, "value/grad_norm": res.grad_norm or 0.0}.items():
                    totals[key].append(v)
    return {k: sum(v) / len(v) for k, v in totals.items()}


def train_rlvr(cfg: RLVRRunConfig) -> dict[str, Any]:
    rl, ro = cfg.rlvr, cfg.rollout
    if rl.estimator == "grpo" and ro.samples_per_prompt < 2:
        raise ValueError(
            "rlvr.estimator=grpo needs rollout.samples_per_prompt >= 2 (group-normalised rewards)"
        )
    out_dir = Path(cfg.train.output_dir)
    hf_source = ensure_model_source(cfg)
    cfg.model = dataclasses.replace(model_config_from_hf(hf_source), name=cfg.model.name)
    info = init_parallel(cfg.model, cfg.parallel, seed=cfg.train.seed)
    save_config(cfg, out_dir)
    tokenizer = load_tokenizer(cfg.data.tokenizer or hf_source)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = load_prompts(cfg.data.train_files or [str(ASSETS / "rlvr.jsonl")], tokenizer, ro.max_prompt_len)
    prompts, mix = apply_dataset_weights(prompts, rl.dataset_weights)
    if is_rank0():
        print(
            "[rlvr] training prompts per dataset (in data -> used): "
            + ", ".join(f"{name} {have} -> {used}" for name, (have, used) in mix.items())
        )
    heldout = load_prompts(
        rl.heldout_files or [str(ASSETS / "rlvr_heldout.jsonl")], tokenizer, ro.max_prompt_len
    )
    episodes_per_step = rl.prompts_per_step * ro.samples_per_prompt
    if episodes_per_step % (info.dp * cfg.train.micro_batch_size * rl.num_mini_batches):
        raise ValueError(
            f"prompts_per_step*samples_per_prompt={episodes_per_step} must divide by dp*micro_batch*num_mini_batches "
            f"= {info.dp}*{cfg.train.micro_batch_size}*{rl.num_mini_batches}"
        )
    order = BatchOrder(len(prompts), rl.prompts_per_step, cfg.train.seed)
    total_steps = max(1, rl.total_episodes // episodes_per_step)
    if cfg.train.train_iters > 0:
        total_steps = min(total_steps, cfg.train.train_iters)

    policy = build_model(cfg.model, cfg.parallel, cfg.precision)
    load_hf_weights(policy, cfg.model, hf_source)
    reference = build_model(cfg.model, cfg.parallel, cfg.precision, wrap_ddp=False)
    load_hf_weights(reference, cfg.model, hf_source)
    for p in (p for c in reference for p in c.parameters()):
        p.requires_grad_(False)
    updates = total_steps * rl.ppo_epochs * rl.num_mini_batches
    popt = build_optimizer(policy, cfg.optimizer, cfg.parallel, cfg.precision)
    psched = build_scheduler(popt, cfg.optimizer, updates)
    prepare_model_for_training(policy, popt)
    value = vopt = vsched = None
    if rl.estimator == "gae":
        value = build_value_model(
            cfg.model,
            cfg.parallel,
            cfg.precision,
            backbone_hf=hf_source,
            reward_model_hf=rl.value_model,
            seed=cfg.train.seed,
        )
        vcfg = dataclasses.replace(cfg.optimizer, lr=rl.value_lr or cfg.optimizer.lr)
        vopt = build_optimizer(value, vcfg, cfg.parallel, cfg.precision)
        vsched = build_scheduler(vopt, vcfg, updates)
        prepare_model_for_training(value, vopt)

    ckpt_root = Path(cfg.checkpoint.save_dir or out_dir / "checkpoints")
    start, pending = 0, None
    if cfg.checkpoint.resume and (latest := find_latest(ckpt_root)) is not None:
        extra = load_checkpoint(latest, policy, popt, psched)
        if value is not None:
            load_checkpoint(latest / "value", value, vopt, vsched)
        start, pending = int(extra["step"]), extra.get("pending_rollouts")

    rollouts = Rollouts(cfg, hf_source, tokenizer)
    refitter = Refitter(cfg, policy, rollouts)
    if start > 0:
        refitter.refit(policy)  # the engine starts from the HF weights; bring it to the checkpoint
        rollouts.version = start
    logger = MetricsLogger(out_dir, cfg.logging, resume_step=start)
    history: list[dict[str, Any]] = []
    if start == 0:
        row = {"step": 0, **evaluate(rollouts, heldout, cfg.train.seed)}
        logger.log(0, row)
        history.append(row)

    def prompts_of(step: int) -> list[dict[str, Any]]:
        return [prompts[i] for i in order.rows(step)]

    def begin(step: int) -> None:
        rollouts.start(prompts_of(step), seed=cfg.train.seed + 7919 * step, n=ro.samples_per_prompt)

    bar = None
    if is_rank0() and cfg.logging.progress_bar:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start, desc="rlvr", dynamic_ncols=True)
    if pending is None:
        begin(start)
        samples, version = rollouts.collect()
    else:  # async resume: the batch generated before the checkpoint, with its policy version
        samples, version = [RolloutSample(**s) for s in pending["samples"]], pending["version"]
    for step in range(start, total_steps):
        t0 = time.perf_counter()
        gen_seconds = 0.0
        if rl.async_mode and step + 1 < total_steps:
            begin(step + 1)  # generated with the weights before this update: one step stale
        data, stats = prepare_batch(cfg, samples, policy, reference, value, pad_id, info)
        upd = ppo_updates(cfg, data, policy, value, popt, vopt, psched, vsched, step, info)
        train_seconds = time.perf_counter() - t0
        if rl.async_mode and step + 1 < total_steps:
            t1 = time.perf_counter()
            next_samples, next_version = rollouts.collect()
            gen_seconds = time.perf_counter() - t1
        refit_seconds = refitter.refit(policy)
        if not rl.async_mode and step + 1 < total_steps:
            t1 = time.perf_counter()
            begin(step + 1)  # on-policy: generated with the weights after this update
            next_samples, next_version = rollouts.collect()
            gen_seconds = time.perf_counter() - t1
        row = {
            **rollout_metrics(samples),
            **stats,
            **upd,
            "lr": popt.param_groups[0]["lr"],
            "seconds/train": train_seconds,
            "seconds/refit": refit_seconds,
            "seconds/generate_wait": gen_seconds,
            "rollout/policy_version": version,  # updates included in the weights that generated the batch
            "rollout/staleness": step - version,
        }
        if rl.eval_every and ((step + 1) % rl.eval_every == 0 or step + 1 == total_steps):
            row.update(evaluate(rollouts, heldout, cfg.train.seed))
        logger.log(step + 1, row)
        history.append({"step": step + 1, **row})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward/all']:.2f}", kl=f"{row['kl']:.3f}")
        if step + 1 < total_steps:
            samples, version = next_samples, next_version
        interval = cfg.checkpoint.save_interval
        if interval and (step + 1) % interval == 0 and step + 1 < total_steps:
            _save(cfg, ckpt_root, step + 1, policy, popt, psched, value, vopt, vsched, (samples, version))
        crash_point("kill_after_step", step + 1)
    if bar is not None:
        bar.close()
    logger.close()
    _save(cfg, ckpt_root, total_steps, policy, popt, psched, value, vopt, vsched, None)
    summary: dict[str, Any] = {"steps": total_steps, "final_checkpoint": str(find_latest(ckpt_root))}
    evals = [h for h in history if "eval/reward/all" in h]
    if evals:
        summary["eval_first"] = {k: v for k, v in evals[0].items() if k.startswith("eval/")}
        summary["eval_last"] = {k: v for k, v in evals[-1].items() if k.startswith("eval/")}
    if rl.export_hf:
        summary["hf_export"] = str(export_hf(policy, cfg.model, out_dir / "hf", tokenizer_dir=hf_source))
    if is_rank0():
        _plot(out_dir)
    refitter.close()
    if rollouts.engine is not None:
        rollouts.engine.close()
    barrier()
    destroy_parallel()
    return summary


def _save(cfg, root, step, policy, popt, psched, value, vopt, vsched, pending) -> None:
    """Policy (+ its optimizer/scheduler, data position, RNG, pending async batch), then the value model."""
    meta = {"model": dataclasses.asdict(cfg.model), "algorithm": "rlvr"}
    extra = {"pending_rollouts": None}
    if pending is not None and cfg.rlvr.async_mode:  # generated before this checkpoint's update: keep it
        extra["pending_rollouts"] = {
            "samples": [dataclasses.asdict(s) for s in pending[0]],
            "version": pending[1],
        }
    path = save_checkpoint(
        root, step, policy, popt, psched, extra=extra, keep_last=cfg.checkpoint.keep_last, meta=meta
    )
    if value is not None:
        save_checkpoint(path, 0, value, vopt, vsched, meta=meta)
        if is_rank0():
            (path / "step_0000000").rename(path / "value")
        barrier()


def _plot(out_dir: Path) -> None:
    """PNG of the curves from metrics.jsonl (reward, accuracy, KL, held-out reward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = ["reward/all", "eval/reward/all", "kl", "policy/loss", "response_length", "no_eos_share"]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """`megatron-tulu rlvr [hydra overrides]` (run under torchrun for several learner ranks)."""
    if any(a in ("-h", "--help") for a in argv):
        print(main.__doc__)
        return 0
    summary = train_rlvr(load_config(argv, config_name="rlvr", schema=RLVRRunConfig))
    if is_rank0():
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
