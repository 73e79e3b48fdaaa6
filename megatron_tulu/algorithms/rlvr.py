"""RLVR (Tülu 3 §6): PPO (GAE + value model) or GRPO against verifiable rewards, vLLM rollouts.

Every rank of the ``torchrun`` world runs :func:`train_rlvr`; its role comes from
:func:`~megatron_tulu.algorithms.roles.assign_roles` (:mod:`megatron_tulu.algorithms.rl_job`):
engine-only ranks host vLLM until told to stop, learner ranks run :class:`RLTrainer`. One step, as
named and timed phases (``time/<phase>`` in the metrics):

  generate      wait for this step's batch from the engines (started earlier; see RolloutQueue)
  score         verifiers score the responses on learner rank 0 (alpha if correct, no-EOS penalty)
  log_probs     forward-only passes: old policy and reference log-probs (logits / temperature),
                values (PPO)
  advantages    per-token rewards (score at the last token, -beta*KL for PPO) -> GAE or GRPO
  update        K epochs x mini-batches: clipped policy update, then clipped value update
  generate_wait batches in flight finish before the weights change
  refit         every learner rank streams exactly its planned shards into every engine rank
  evaluate      greedy held-out reward (every ``rlvr.eval_every`` steps)
then the metrics row, then the checkpoint. Synchronous and asynchronous (Tülu 3's "train on the
second-latest batch") runs differ only in how far ahead batches are started (``RolloutQueue.lag``);
the batch pending at a checkpoint is saved with it, so resume is exact.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_tulu.algorithms.loop import (
    BatchOrder,
    barrier,
    ensure_model_source,
    is_rank0,
    save_config,
)
from megatron_tulu.algorithms.rl_job import RLJob, start_rl_job
from megatron_tulu.algorithms.rollout_batch import RolloutSample, build_rollout_tensors, row_length
from megatron_tulu.algorithms.trainer import Trainer
from megatron_tulu.algorithms.value_model import build_value_model
from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import RLVRRunConfig
from megatron_tulu.config.validate import validate_layout
from megatron_tulu.data.mixing import apply_dataset_weights
from megatron_tulu.data.rlvr_prompts import load_rlvr_prompts
from megatron_tulu.data.tokenizer import load_tokenizer
from megatron_tulu.engine.faults import crash_point
from megatron_tulu.engine.job import DriverGate
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.optimizer import build_optimizer, build_scheduler
from megatron_tulu.engine.parallel import init_parallel
from megatron_tulu.engine.train_step import (
    collective_device,
    forward_batch,
    forward_only_collect,
    prepare_model_for_training,
    train_step,
)
from megatron_tulu.losses.ppo import (
    aggregate_loss,
    get_advantage_estimator,
    kl_penalty,
    masked_mean,
    policy_loss,
    value_loss,
)
from megatron_tulu.losses.rl_options import (
    k3_kl_loss,
    mask_truncated,
    nonconstant_group_mask,
    place_scores,
    token_rewards_placed,
    truncated_importance_weights,
)
from megatron_tulu.losses.vocab_parallel import TokenHead
from megatron_tulu.models.hf_io import export_hf, load_hf_weights, model_config_from_hf
from megatron_tulu.rewards import compute_rewards
from megatron_tulu.rollout.engine import Rollout, SamplingSettings
from megatron_tulu.rollout.fleet import EngineFleet

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"


# ----------------------------------------------------------------------------------------- data
def load_prompts(
    files: Sequence[str], tokenizer, max_prompt_len: int, skip_bad: bool = False
) -> list[dict[str, Any]]:
    """RLVR rows (Tülu 3's released format) -> prompt dicts (see :func:`load_rlvr_prompts`)."""
    return load_rlvr_prompts(files, tokenizer, max_prompt_len, skip_bad=skip_bad)


# ----------------------------------------------------------------------------- rollouts, scoring
def score_outputs(
    outs,
    prompts,
    tokenizer,
    alpha: float,
    no_eos_penalty: float,
    workers: int = 2,
    *,
    strip_thinking: bool = False,
    gsm8k_rule: str = "numeric",
) -> list[RolloutSample]:
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
        workers=workers,
        strip_thinking=strip_thinking,
        verifier_options={"gsm8k": {"rule": gsm8k_rule}},
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
            list(o.logprobs),
        )
        for o, r in zip(outs, rewards)
    ]


class Phases:
    """Named, timed phases of one RL step; their seconds land in the step's metrics as
    ``time/<phase>``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}": v for k, v in self.seconds.items()}


class RolloutQueue:
    """Batches of rollouts generated by the engine fleet, in order, on the driver.

    Batch ``k`` is started once the engines hold the weights it must be sampled with and is
    collected when step ``k`` needs it. ``lag`` is how many updates older than the batch's step
    those weights are: 0 is on-policy (batch ``k`` after update ``k - 1``); 1 is Tülu 3's
    asynchronous mode (batch ``k + 1`` is generated while update ``k`` trains). Sync and async are
    this one mechanism with a different lag. On other ranks every method is a no-op."""

    def __init__(self, fleet: EngineFleet | None, lag: int):
        self.fleet, self.lag = fleet, lag
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollouts") if fleet else None
        self._batches: dict[int, Future] = {}

    def start(self, key: int, prompt_ids: list[list[int]], settings: SamplingSettings, version: int) -> None:
        if self._pool is not None:
            self._batches[key] = self._pool.submit(
                lambda: (self.fleet.generate(prompt_ids, settings), version)
            )

    def put(self, key: int, rollouts: list[Rollout], version: int) -> None:
        """A batch generated before a checkpoint (async resume)."""
        if self._pool is not None:
            done: Future = Future()
            done.set_result((rollouts, version))
            self._batches[key] = done

    def collect(self, key: int) -> tuple[list[Rollout], int] | None:
        return self._batches.pop(key).result() if self._pool is not None else None

    def peek(self, key: int) -> tuple[list[Rollout], int] | None:
        """Wait for batch ``key`` without taking it (it is saved with a checkpoint)."""
        return self._batches[key].result() if self._pool is not None else None

    def wait_idle(self) -> None:
        """Every started batch finished (before a refit changes the engines' weights)."""
        for future in list(self._batches.values()):
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def sampling(cfg: RLVRRunConfig, eos_id: int, seed: int, n: int = 1) -> SamplingSettings:
    """The training batches' sampling (held-out evaluation is greedy: see :func:`evaluate`)."""
    ro = cfg.rollout
    return SamplingSettings(
        temperature=ro.temperature,
        top_p=ro.top_p,
        max_new_tokens=ro.max_new_tokens,
        n=n,
        seed=seed,
        stop_token_ids=(eos_id,),
    )


def share_from_driver(value: Any, gate: DriverGate | None = None) -> Any:
    """Broadcast a driver-side Python object to every learner rank. ``gate``: the other ranks wait
    for the driver in short slices first, so the broadcast (a collective bounded by
    ``parallel.distributed_timeout_minutes``) never includes the driver's work -- a generation or an
    evaluation can take longer than that timeout."""
    holder = [value]
    if dist.is_initialized() and dist.get_world_size() > 1:
        if gate is not None:
            gate.passage()
        dist.broadcast_object_list(holder, src=0)
    return holder[0]


class Refitter:
    """Streams every learner rank's planned shards into every engine after each update."""

    def __init__(self, cfg: RLVRRunConfig, chunks, job: RLJob, fleet: EngineFleet | None):
        from megatron_tulu.rollout.refit import LearnerRefit, refit_spec_for

        self.cfg, self.fleet, self.gate = cfg, fleet, job.driver_gate()
        ro = cfg.rollout
        # the engines' receive-buffer bound travels in the spec: both sides plan the reload calls
        spec = refit_spec_for(
            chunks,
            cfg.model,
            ro.engine_tp,
            ro.num_engines,
            weight_dtype=ro.weight_dtype,
            receive_buffer_bytes=ro.refit_receive_buffer_mb << 20,
        )
        # Engines may still be loading (minutes at 405B): the driver waits for every engine to
        # answer, polling, and the other learners wait at the gate, so the refit group forms only
        # once all members are there and its timeout bounds the formation alone.
        if fleet is not None:
            fleet.wait_ready()
        self.gate.passage()
        host, port = job.refit_address()
        self.learner: LearnerRefit | None = None

        def join_learner() -> None:
            self.learner = LearnerRefit(spec, host, port, timeout_s=ro.refit_timeout_s)

        if fleet is not None:
            fleet.join_refit(spec, host, port, ro.refit_timeout_s, join_learner)
        else:
            join_learner()
        self.bucket = ro.refit_bucket_mb << 20

    def refit(self, chunks, step: int | None = None) -> dict[str, float]:
        """Returns ``refit_bytes_over_shard_max`` (the largest bytes received / planned shard bytes
        over every engine rank; 1.00 is shard-exact) on the driver, {} elsewhere. ``step``: the
        update the weights include (fault injection aims at it)."""
        timeout = self.cfg.rollout.refit_timeout_s
        # the driver comes here once the batch in flight is generated (generate_wait, as long as
        # it takes); the other learners wait for it at the gate, not in the transfer's timeout
        self.gate.passage()

        def send() -> None:
            crash_point("kill_in_refit", step)
            self.learner.send(chunks, bucket_bytes=self.bucket, timeout_s=timeout)

        if self.fleet is None:
            send()
            return {}
        stats = self.fleet.refit(send, bucket_bytes=self.bucket, checksums=False, timeout_s=timeout)
        ratios = [s["bytes_received"] / s["shard_bytes"] for s in stats if s["shard_bytes"]]
        return {
            "refit_bytes_over_shard_max": max(ratios),
            "refit_bytes_over_shard_min": min(ratios),
            "refit_engine_ranks": float(len(stats)),
        }

    def close(self) -> None:
        if self.learner is not None:
            self.learner.close()


# ------------------------------------------------------------------------------ actor and critic
def split_micro(data: dict[str, torch.Tensor], idx: Sequence[int], mbs: int) -> list[dict[str, torch.Tensor]]:
    index = torch.tensor(list(idx))
    return [{k: v[index[i : i + mbs]] for k, v in data.items()} for i in range(0, len(index), mbs)]


def _mean_metric(value: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.stack([value.detach().float() * count.float(), count.float()])


@dataclass
class PolicyActor:
    """The policy being trained, its frozen reference, optimizer and scheduler."""

    cfg: RLVRRunConfig
    chunks: list[torch.nn.Module]
    reference: list[torch.nn.Module]
    optimizer: Any
    scheduler: Any

    def log_probs(self, micro: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``logp`` / ``entropy`` of the current policy and ``ref_logp`` of the reference, per token
        (logits / rollout temperature, as the engine sampled)."""
        temp, mbs = self.cfg.rollout.temperature, self.cfg.train.micro_batch_size

        # the engine reports raw (temperature 1) log-probs, unless TIS asked for the sampled
        # distribution's (then they compare with ``logp`` itself)
        raw = self.cfg.rollout.check_logprobs and self.cfg.rlvr.tis_cap is None

        def policy_fn(head: TokenHead, b):
            logp, entropy = head.log_probs(b["labels"], temp, with_entropy=True)
            res = {"logp": logp, "entropy": entropy}
            if raw:
                res["logp_raw"] = head.log_probs(b["labels"], 1.0)
            return res

        forward = self._forward
        old = forward_only_collect(self.chunks, micro, policy_fn, mbs, forward=forward)
        ref = forward_only_collect(
            self.reference,
            micro,
            lambda head, b: {"logp": head.log_probs(b["labels"], temp)},
            mbs,
            forward=forward,
        )
        return {**old, "ref_logp": ref["logp"]}

    def _forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The policy's (and reference's) forward: a TokenHead on the last stage."""
        fused = self.cfg.train.fused_log_probs
        return forward_batch(model, batch, vocab_size=self.cfg.model.vocab_size, fused=fused)

    def update(self, micro: list[dict[str, torch.Tensor]], seq: int) -> dict[str, float]:
        """One optimizer step of the clipped surrogate on ``loss_mask`` (the response tokens the
        RL options keep), TIS-weighted when ``tis_weight`` is in the batch, aggregated by
        ``rlvr.loss_aggregation``, plus ``β·KL`` when the KL is a loss term."""
        rl, temp = self.cfg.rlvr, self.cfg.rollout.temperature
        kl_loss_kind = kl_kind_of(rl) if kl_placement_of(rl) == "loss" else None
        constant = loss_constant_of(self.cfg)

        def step(data_iterator, model):
            out, batch = self._forward(model, next(data_iterator))

            def loss_func(head: TokenHead):
                logp = head.log_probs(batch["labels"], temp)
                mask = batch["loss_mask"]
                loss, m = policy_loss(
                    logp,
                    batch["old_logp"],
                    batch["advantages"],
                    mask,
                    rl.clip_eps,
                    clip_eps_high=rl.clip_eps_high,
                    weights=batch.get("tis_weight"),
                    aggregation=rl.loss_aggregation,
                    constant=constant,
                )
                total = loss.loss_sum
                if kl_loss_kind is not None:  # the KL keeps the policy near the reference as a loss term
                    kl_numerator, _ = aggregate_loss(
                        kl_loss_per_token(logp, batch["ref_logp"], mask, kl_loss_kind),
                        mask,
                        rl.loss_aggregation,
                        constant,
                    )
                    total = total + rl.beta * kl_numerator
                n = loss.num_tokens.round().to(torch.int)  # tokens, sequences or sequences x constant
                tokens = mask.sum().to(torch.int)
                metrics = {f"policy/{k}": _mean_metric(v, tokens) for k, v in m.items()}
                metrics["policy/loss"] = torch.stack([loss.loss_sum.detach().float(), n.float()])
                return total, n, metrics

            return out, loss_func

        return _train(step, micro, self.chunks, self.optimizer, self.scheduler, seq, "policy", self.cfg)


@dataclass
class ValueCritic:
    """The PPO value model (a GPTModel with a scalar head), its optimizer and scheduler."""

    cfg: RLVRRunConfig
    chunks: list[torch.nn.Module]
    optimizer: Any
    scheduler: Any

    def values(self, micro: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        out = forward_only_collect(
            self.chunks, micro, lambda out, b: {"v": out.squeeze(-1).float()}, self.cfg.train.micro_batch_size
        )
        return out["v"]

    def update(self, micro: list[dict[str, torch.Tensor]], seq: int) -> dict[str, float]:
        rl = self.cfg.rlvr

        def step(data_iterator, model):
            out, batch = forward_batch(model, next(data_iterator))

            def loss_func(output):
                values = output.squeeze(-1).float()
                loss, m = value_loss(
                    values, batch["old_values"], batch["returns"], batch["gae_mask"], rl.value_clip
                )
                n = loss.num_tokens.to(torch.int)
                metrics = {f"value/{k}": _mean_metric(v, n) for k, v in m.items()}
                metrics["value/loss"] = torch.stack([loss.loss_sum.detach().float(), n.float()])
                return loss.scale(rl.vf_coef).loss_sum, n, metrics

            return out, loss_func

        return _train(step, micro, self.chunks, self.optimizer, self.scheduler, seq, "value", self.cfg)


def _train(step, micro, chunks, optimizer, scheduler, seq: int, prefix: str, cfg) -> dict[str, float]:
    res = train_step(
        step,
        iter(micro),
        chunks,
        optimizer,
        scheduler,
        num_microbatches=len(micro),
        seq_length=seq,
        micro_batch_size=cfg.train.micro_batch_size,
    )
    return {**res.metrics, f"{prefix}/grad_norm": res.grad_norm or 0.0}


def scoring_options(rl) -> dict[str, Any]:
    """The reward settings of ``rlvr.*`` as :func:`score_outputs` keywords."""
    return dict(
        alpha=rl.alpha,
        no_eos_penalty=rl.no_eos_penalty,
        workers=rl.reward_workers,
        strip_thinking=rl.strip_thinking,
        gsm8k_rule=rl.gsm8k_rule,
    )


def kl_kind_of(rl) -> str:
    """``rlvr.kl_kind``, or by where the KL goes when unset: k1 in a reward penalty (Tülu 3's PPO),
    k3 in a KL loss (DeepSeekMath's GRPO)."""
    return rl.kl_kind or ("k3" if kl_placement_of(rl) == "loss" else "k1")


def kl_placement_of(rl) -> str:
    """``rlvr.kl_placement``, or by estimator when unset: the reward for gae, the loss for grpo
    (GRPO's advantages come from the scores alone, so a reward penalty would not reach them)."""
    return rl.kl_placement or ("loss" if rl.estimator == "grpo" else "reward")


def loss_constant_of(cfg: RLVRRunConfig) -> int | None:
    """The denominator's per-sequence constant of ``loss_aggregation=constant`` (default: the
    generation budget, as Dr. GRPO)."""
    if cfg.rlvr.loss_aggregation != "constant":
        return None
    return cfg.rlvr.loss_constant or cfg.rollout.max_new_tokens


def kl_loss_per_token(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kind: str
) -> torch.Tensor:
    """The per-token KL loss term: k3 clamped (:func:`k3_kl_loss`, verl's low_var_kl), else the
    plain estimator."""
    if kind == "k3":
        return k3_kl_loss(logp, ref_logp, mask)
    return kl_penalty(logp, ref_logp.detach(), kind) * mask


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


@dataclass
class HeldOut:
    """The held-out RLVR prompts, read and encoded once by the one evaluation implementation."""

    items: list
    prompt_ids: list[list[int]]

    @classmethod
    def load(cls, cfg: RLVRRunConfig, tokenizer) -> HeldOut:
        from megatron_tulu.evaluation import encode_items, read_task_files

        files = cfg.rlvr.heldout_files or [str(ASSETS / "rlvr_heldout.jsonl")]
        items = read_task_files(files, "heldout", "rlvr")
        ids = encode_items(items, tokenizer, chat_template="tulu", max_prompt_len=cfg.rollout.max_prompt_len)
        return cls(items, ids)


def evaluate(cfg: RLVRRunConfig, fleet: EngineFleet | None, heldout: HeldOut, tokenizer) -> dict[str, float]:
    """Greedy held-out verifiable reward/accuracy with the engines' current weights (driver only),
    through ``megatron-tulu eval``'s evaluation loop."""
    if fleet is None:
        return {}
    from megatron_tulu.evaluation import EvalSettings
    from megatron_tulu.evaluation import evaluate as run_eval

    rl = cfg.rlvr
    run = run_eval(
        fleet,
        heldout.items,
        heldout.prompt_ids,
        tokenizer,
        EvalSettings(max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.train.seed),
        alpha=rl.alpha,
        no_eos_penalty=rl.no_eos_penalty,
        workers=rl.reward_workers,
        strip_thinking=rl.strip_thinking,
        verifier_options={"gsm8k": {"rule": rl.gsm8k_rule}},
    )
    return run.rlvr_metrics("eval/")


# ------------------------------------------------------------------------------ the step's phases
def log_probs_and_values(
    cfg: RLVRRunConfig, samples, actor: PolicyActor, critic: ValueCritic | None, pad_id: int, info
) -> dict[str, torch.Tensor]:
    """This DP rank's share of the batch as tensors, with old and reference log-probs (and values)."""
    ro = cfg.rollout
    # computed from the whole batch, so every rank agrees; 16*TP keeps sequence parallelism legal
    length = row_length(samples, 16 * info.tp, ro.max_prompt_len + ro.max_new_tokens)
    share = len(samples) // info.dp
    mine = samples[info.dp_rank * share : (info.dp_rank + 1) * share]
    data = build_rollout_tensors(mine, length, pad_id)
    micro = split_micro(data, range(len(mine)), cfg.train.micro_batch_size)
    lp = actor.log_probs(micro)
    data["old_logp"], data["ref_logp"], data["entropy"] = lp["logp"], lp["ref_logp"], lp["entropy"]
    if ro.check_logprobs:  # the learner's log-probs of the distribution the engine reports
        data["logp_as_engine"] = lp.get("logp_raw", lp["logp"])
    # the span GAE and the value loss run on: the response, plus the position after it where the
    # score is placed there (rlvr.score_placement=after_last, TRL PPOv2 / Tülu 3's script)
    data["gae_mask"] = place_scores(data["scores"], data["mask"], cfg.rlvr.score_placement)[1]
    if critic is not None:
        data["old_values"] = critic.values(micro) * data["gae_mask"]
    return data


def advantages(cfg: RLVRRunConfig, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-token rewards -> advantages (+ returns), and the policy loss's mask and weights, written
    into ``data``; returns the batch's KL, entropy and what the RL options did.

    Rewards: the score at the last token (or after it: ``score_placement``), minus ``β·KL`` when
    the KL is a reward penalty. ``loss_mask``: the response tokens, less truncated completions
    (``mask_truncated``) and groups of equal rewards (``drop_constant_groups``). ``tis_weight``:
    truncated importance weights of the learner's old log-probs against the engine's (``tis_cap``).
    """
    rl, mask = cfg.rlvr, data["mask"]
    group = cfg.rollout.samples_per_prompt
    kind = kl_kind_of(rl)
    penalty = rl.beta if kl_placement_of(rl) == "reward" else 0.0
    rewards, gae_mask = token_rewards_placed(
        data["scores"], data["old_logp"], data["ref_logp"], mask, penalty, kind, rl.score_placement
    )
    adv, returns = get_advantage_estimator(rl.estimator)(
        rewards=rewards,
        values=data.get("old_values"),
        scores=data["scores"],
        mask=gae_mask,
        gamma=rl.gamma,
        lam=rl.lam,
        group_size=group,
        std=rl.grpo_std,
        whiten_mask=mask,
    )
    data["advantages"] = adv * mask  # the policy acts on response tokens only
    if returns is not None:
        data["returns"] = returns
    kl = masked_mean(kl_penalty(data["old_logp"], data["ref_logp"], kind), mask)
    stats = {"kl": float(kl), "entropy": float(masked_mean(data["entropy"], mask))}

    loss_mask = mask
    if rl.mask_truncated:
        loss_mask = mask_truncated(loss_mask, data["stopped"])
        stats["rollout/truncated_share"] = float(1.0 - data["stopped"].float().mean())
    if rl.drop_constant_groups:
        varied = nonconstant_group_mask(data["scores"], group)
        loss_mask = loss_mask * varied.to(loss_mask.dtype).unsqueeze(1)
        stats["rollout/constant_group_share"] = float(1.0 - varied.float().mean())
    data["loss_mask"] = loss_mask
    if rl.tis_cap is not None:
        if "engine_logp" not in data:
            raise RuntimeError(
                "rlvr.tis_cap needs the engine's log-probs of every sampled token; none came back"
            )
        weights = truncated_importance_weights(data["old_logp"], data["engine_logp"], mask, rl.tis_cap)
        data["tis_weight"] = weights
        stats["policy/tis_weight_mean"] = float(masked_mean(weights, mask))
        capped = (data["old_logp"] - data["engine_logp"]) >= torch.log(torch.tensor(rl.tis_cap))
        stats["policy/tis_capped_share"] = float(masked_mean(capped.float(), mask))
    return stats


def engine_logprob_gap(data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest and mean |engine log-prob - learner log-prob| over the batch's response tokens (all
    learner ranks). With on-policy batches both sides hold the same weights, so this measures the
    refit and the two implementations (fp32 CPU: ~1e-6); a stale (async) batch adds the update."""
    if "logp_as_engine" not in data or "engine_logp" not in data:
        return {}
    mask = data["mask"]
    gap = (data["engine_logp"] - data["logp_as_engine"]).abs() * mask
    stats = torch.tensor([float(gap.max()) if gap.numel() else 0.0, float(gap.sum()), float(mask.sum())])
    stats = torch.cat([_all_reduce(stats[:1], dist.ReduceOp.MAX), _all_reduce(stats[1:])])
    return {
        "rollout/engine_logprob_gap_max": float(stats[0]),
        "rollout/engine_logprob_gap_mean": float(stats[1] / stats[2].clamp(min=1)),
    }


def prepare_batch(cfg, samples, actor: PolicyActor, critic: ValueCritic | None, pad_id: int, info):
    """Log-probs, values and advantages of a batch (the two phases before the update)."""
    data = log_probs_and_values(cfg, samples, actor, critic, pad_id, info)
    return data, advantages(cfg, data)


def _all_reduce(values: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce over the learner ranks (the default group); NCCL reduces device tensors only."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    device = collective_device()
    reduced = values.to(device) if device is not None else values.clone()
    dist.all_reduce(reduced, op=op)
    return reduced.cpu()


def _tokens_everywhere(mask: torch.Tensor) -> float:
    """Sum of ``mask`` over every learner rank (each holds its share of the batch)."""
    return float(_all_reduce(mask.sum().reshape(1).double()))


def ppo_updates(cfg, data, actor: PolicyActor, critic: ValueCritic | None, step: int) -> dict[str, float]:
    """K epochs x mini-batches of clipped policy updates, each followed by the value update."""
    rl, mbs = cfg.rlvr, cfg.train.micro_batch_size
    n = data["tokens"].shape[0]
    per_mini = n // rl.num_mini_batches
    seq = data["tokens"].shape[1]
    totals: dict[str, list[float]] = defaultdict(list)
    for epoch in range(rl.ppo_epochs):
        perm = torch.randperm(
            n, generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + step * 10 + epoch)
        ).tolist()
        for k in range(rl.num_mini_batches):
            rows = perm[k * per_mini : (k + 1) * per_mini]
            micro = split_micro(data, rows, mbs)
            # the RL options' masks can leave a mini-batch without a token to train on (every group
            # constant, every completion truncated): a zero denominator would turn the gradient
            # into NaN, so that policy update is skipped (and counted)
            if _tokens_everywhere(data["loss_mask"][rows]) > 0:
                for key, v in actor.update(micro, seq).items():
                    totals[key].append(v)
                totals["policy/skipped_updates"].append(0.0)
            else:
                totals["policy/skipped_updates"].append(1.0)
            if critic is not None:
                for key, v in critic.update(micro, seq).items():
                    totals[key].append(v)
    return {k: sum(v) / len(v) for k, v in totals.items()}


# --------------------------------------------------------------------------------------- trainer
def check_rl_config(cfg: RLVRRunConfig) -> None:
    """Refuse RL settings that cannot apply, before anything starts."""
    rl, ro, tr = cfg.rlvr, cfg.rollout, cfg.train
    if rl.estimator == "grpo" and ro.samples_per_prompt < 2:
        raise ValueError(
            "rlvr.estimator=grpo needs rollout.samples_per_prompt >= 2 (group-normalised rewards)"
        )
    rollouts = rl.prompts_per_step * ro.samples_per_prompt
    if tr.global_batch_size not in (0, rollouts):
        raise ValueError(
            f"train.global_batch_size={tr.global_batch_size}, but an RLVR step trains on rlvr.prompts_per_step x "
            f"rollout.samples_per_prompt = {rl.prompts_per_step} x {ro.samples_per_prompt} = {rollouts} rollouts; "
            f"set train.global_batch_size={rollouts} (or 0)"
        )
    seq = ro.max_prompt_len + ro.max_new_tokens
    for name, value in (("train.seq_length", tr.seq_length), ("data.max_seq_len", cfg.data.max_seq_len)):
        if value not in (0, seq):
            raise ValueError(
                f"{name}={value}, but RLVR rows are rollout.max_prompt_len + rollout.max_new_tokens = {seq} tokens; "
                f"set {name}={seq} (or 0)"
            )
    if rl.reward_workers < 1:
        raise ValueError(f"rlvr.reward_workers must be >= 1, got {rl.reward_workers}")
    from megatron_tulu.rewards.gsm8k import RULES

    if rl.gsm8k_rule not in RULES:
        raise ValueError(f"rlvr.gsm8k_rule must be one of {list(RULES)}, got {rl.gsm8k_rule!r}")
    if rl.kl_kind is not None and rl.kl_kind not in ("k1", "k2", "k3"):
        raise ValueError(f"rlvr.kl_kind must be k1, k2, k3 or null, got {rl.kl_kind!r}")
    check_rl_options(cfg)


def check_rl_options(cfg: RLVRRunConfig) -> None:
    """The RL options (README "RL options"): known values, and only where they can apply."""
    from megatron_tulu.losses.ppo import GROUP_STDS, LOSS_AGGREGATIONS
    from megatron_tulu.losses.rl_options import SCORE_PLACEMENTS

    rl, ro = cfg.rlvr, cfg.rollout
    choices = (
        ("kl_placement", rl.kl_placement, ("reward", "loss", None)),
        ("loss_aggregation", rl.loss_aggregation, LOSS_AGGREGATIONS),
        ("score_placement", rl.score_placement, SCORE_PLACEMENTS),
        ("grpo_std", rl.grpo_std, GROUP_STDS),
    )
    for name, value, allowed in choices:
        if value not in allowed:
            shown = ", ".join("null" if a is None else a for a in allowed)
            raise ValueError(f"rlvr.{name} must be one of {shown}; got {value!r}")
    if rl.estimator == "grpo" and rl.kl_placement == "reward":
        raise ValueError(
            "rlvr.kl_placement=reward cannot apply under rlvr.estimator=grpo (its advantages come from "
            "the scores alone); use kl_placement=loss (or null)"
        )
    if rl.estimator != "gae" and rl.score_placement != "last_token":
        raise ValueError(
            "rlvr.score_placement=after_last places the score for GAE; it needs rlvr.estimator=gae"
        )
    if rl.estimator != "grpo" and rl.grpo_std != "unbiased":
        raise ValueError(f"rlvr.grpo_std={rl.grpo_std} applies to rlvr.estimator=grpo only")
    if rl.clip_eps_high is not None and rl.clip_eps_high < 0:
        raise ValueError(f"rlvr.clip_eps_high must be >= 0 (or null), got {rl.clip_eps_high}")
    if not 0 <= rl.clip_eps < 1:
        raise ValueError(f"rlvr.clip_eps must be in [0, 1), got {rl.clip_eps}")
    if rl.tis_cap is not None and rl.tis_cap <= 0:
        raise ValueError(f"rlvr.tis_cap must be > 0 (or null: off), got {rl.tis_cap}")
    if rl.drop_constant_groups and ro.samples_per_prompt < 2:
        raise ValueError(
            "rlvr.drop_constant_groups needs rollout.samples_per_prompt >= 2 (groups of samples)"
        )
    if rl.loss_constant is not None and rl.loss_aggregation != "constant":
        raise ValueError("rlvr.loss_constant applies to rlvr.loss_aggregation=constant only")
    if rl.loss_constant is not None and rl.loss_constant < 1:
        raise ValueError(f"rlvr.loss_constant must be a positive number of tokens, got {rl.loss_constant}")


def train_rlvr(cfg: RLVRRunConfig) -> dict[str, Any]:
    """Every rank of the job calls this; it returns the run summary on learner rank 0."""
    check_rl_config(cfg)
    hf_source = ensure_model_source(cfg)
    cfg.model = dataclasses.replace(model_config_from_hf(hf_source), name=cfg.model.name)
    job = start_rl_job(cfg)
    options = job.engine_options(cfg, hf_source, "bfloat16" if torch.cuda.is_available() else "float32")
    try:
        if not job.role.is_learner:
            job.run_engine_rank(options)
            summary: dict[str, Any] = {}
        else:
            summary = RLTrainer(cfg, job, hf_source, options).run()
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code == 128 + 15:
            job.fail("stopped by SIGTERM (a launcher stops its node's ranks when one of them dies)")
        else:
            job.fail(f"{type(exc).__name__}: {exc}")
        raise
    job.finish()
    return summary


class RLTrainer(Trainer):
    """One learner rank's RL run on the shared lifecycle (:mod:`megatron_tulu.algorithms.trainer`):
    setup, resume, steps of named phases, checkpoints, close."""

    name = "rlvr"

    def __init__(self, cfg: RLVRRunConfig, job: RLJob, hf_source: str, options):
        super().__init__(cfg)
        self.job, self.hf_source, self.options = job, hf_source, options
        self.pending: dict | None = None  # the async batch saved with the checkpoint resumed from
        self.gate = job.driver_gate()  # learners wait for the driver's work in slices, not in a collective
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        # the launch plan's checks: the same functions `examples/rlvr_405b.py --dry-run` calls
        from megatron_tulu.algorithms.launch_plan import check_rl_plan, prepare_value_model, total_rl_steps

        cfg, rl, ro = self.cfg, self.cfg.rlvr, self.cfg.rollout
        if rl.estimator == "gae":
            # a value model that cannot load here (HF_HUB_OFFLINE and not on disk) is refused before
            # the engines start and the policy loads; a Hub id becomes its local snapshot
            rl.value_model = prepare_value_model(rl.value_model)
        self.info = info = init_parallel(
            cfg.model, cfg.parallel, seed=cfg.train.seed, world=self.job.learner_world()
        )
        save_config(cfg, self.out_dir)
        self.tokenizer = load_tokenizer(cfg.data.tokenizer or self.hf_source)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        prompts = load_prompts(
            cfg.data.train_files or [str(ASSETS / "rlvr.jsonl")], tok, ro.max_prompt_len, cfg.data.skip_bad
        )
        self.prompts, mix = apply_dataset_weights(prompts, rl.dataset_weights)
        if is_rank0():
            print(
                "[rlvr] training prompts per dataset (in data -> used): "
                + ", ".join(f"{name} {have} -> {used}" for name, (have, used) in mix.items())
            )
        self.heldout = HeldOut.load(cfg, tok)
        check_rl_plan(cfg, info.dp)  # RL config; the batch over DP, micro- and mini-batches
        self._check_memory()
        self.order = BatchOrder(len(self.prompts), rl.prompts_per_step, cfg.train.seed)
        self.total_steps = total_rl_steps(cfg)

        # engines start first: they load in their own processes while the learner models build
        self.fleet, self.engine_service = self.job.start_fleet(self.options)
        self.actor = self._build_actor()
        self.critic = self._build_critic() if rl.estimator == "gae" else None
        self.queue = RolloutQueue(self.fleet, lag=1 if rl.async_mode else 0)

    def _check_memory(self) -> None:
        """The dry run's memory plan for this GPU (its own memory, or ``rlvr.memory_limit_gb``):
        a layout the plan refuses is refused here before a model loads. CPU runs have no plan."""
        from megatron_tulu.algorithms.launch_plan import plan_memory
        from megatron_tulu.algorithms.memory import GB
        from megatron_tulu.config.validate import LayoutError

        cfg, rl, info = self.cfg, self.cfg.rlvr, self.info
        if not torch.cuda.is_available():
            return
        gpu_gb = torch.cuda.get_device_properties(info.device).total_memory / GB
        limit = gpu_gb if rl.memory_limit_gb is None else rl.memory_limit_gb
        value = None
        if rl.estimator == "gae":
            value = model_config_from_hf(rl.value_model) if rl.value_model else cfg.model
        plan = plan_memory(cfg, info.tp, info.pp, info.dp, value, gpu_memory_gb=gpu_gb, limit_gb=limit)
        if plan.problems:
            raise LayoutError("memory plan: " + "; ".join(plan.problems))

    def _build_actor(self) -> PolicyActor:
        cfg, updates = self.cfg, self._updates()
        policy = build_model(cfg.model, cfg.parallel, cfg.precision)
        load_hf_weights(policy, cfg.model, self.hf_source)
        reference = build_model(cfg.model, cfg.parallel, cfg.precision, wrap_ddp=False)
        load_hf_weights(reference, cfg.model, self.hf_source)
        for p in (p for c in reference for p in c.parameters()):
            p.requires_grad_(False)
        opt = build_optimizer(policy, cfg.optimizer, cfg.parallel, cfg.precision)
        sched = build_scheduler(opt, cfg.optimizer, updates)
        prepare_model_for_training(policy, opt)
        return PolicyActor(cfg, policy, reference, opt, sched)

    def _build_critic(self) -> ValueCritic:
        cfg, rl = self.cfg, self.cfg.rlvr
        # the value model's own architecture (Tülu 3 405B: an 8B reward model), in the learners'
        # layout; a layer count PP does not divide gets Megatron's uneven first/last stages
        vmodel = (
            dataclasses.replace(model_config_from_hf(rl.value_model), name="value")
            if rl.value_model
            else cfg.model
        )
        validate_layout(vmodel, cfg.parallel, self.info.world_size, uneven_stages=True)
        value = build_value_model(
            vmodel,
            cfg.parallel,
            cfg.precision,
            backbone_hf=self.hf_source,
            reward_model_hf=rl.value_model,
            seed=cfg.train.seed,
        )
        vcfg = dataclasses.replace(cfg.optimizer, lr=rl.value_lr or cfg.optimizer.lr)
        opt = build_optimizer(value, vcfg, cfg.parallel, cfg.precision)
        sched = build_scheduler(opt, vcfg, self._updates())
        prepare_model_for_training(value, opt)
        return ValueCritic(cfg, value, opt, sched)

    def _updates(self) -> int:
        return self.total_steps * self.cfg.rlvr.ppo_epochs * self.cfg.rlvr.num_mini_batches

    # ------------------------------------------------------------------------------ checkpoint
    def checkpoint_parts(self) -> dict[str, tuple]:
        """The models of one RL checkpoint, saved and committed together."""
        a = self.actor
        parts = {"policy": (a.chunks, a.optimizer, a.scheduler)}
        if self.critic is not None:
            c = self.critic
            parts["value"] = (c.chunks, c.optimizer, c.scheduler)
        return parts

    def checkpoint_extra(self, step: int) -> dict[str, Any]:
        """The batch generated before this checkpoint's update (async mode), for an exact resume."""
        pending = self.queue.peek(step) if self.queue.lag and step < self.total_steps else None
        pending = share_from_driver(pending, self.gate)
        if pending is None:
            return {"pending_rollouts": None}
        return {
            "pending_rollouts": {
                "rollouts": [dataclasses.asdict(r) for r in pending[0]],
                "version": pending[1],
            }
        }

    def restore(self, extra: dict[str, Any]) -> None:
        self.pending = extra.get("pending_rollouts")

    # ------------------------------------------------------------------------------- batches
    def start_batch(self, step: int, version: int) -> None:
        """Start generating batch ``step`` with the engines' current weights (policy ``version``)."""
        rows = self.order.rows(step)
        seed = self.cfg.train.seed + 7919 * step
        settings = sampling(
            self.cfg, self.tokenizer.eos_token_id, seed, n=self.cfg.rollout.samples_per_prompt
        )
        self.queue.start(step, [self.prompts[i]["ids"] for i in rows], settings, version)

    def score(self, step: int, rollouts: list[Rollout] | None) -> list[RolloutSample] | None:
        if rollouts is None:
            return None
        rl = self.cfg.rlvr
        rows = [self.prompts[i] for i in self.order.rows(step)]
        return score_outputs(rollouts, rows, self.tokenizer, **scoring_options(rl))

    # ----------------------------------------------------------------------------------- steps
    def before_steps(self, start: int) -> None:
        """Join the refit group, bring resumed weights to the engines, evaluate step 0, start the
        first batches (``lag`` of them ahead in async mode)."""
        cfg = self.cfg
        self.refitter = Refitter(cfg, self.actor.chunks, self.job, self.fleet)
        if start > 0:
            self.refitter.refit(self.actor.chunks)  # the engines start from the HF weights
        if start == 0:
            row = {
                "step": 0,
                **share_from_driver(evaluate(cfg, self.fleet, self.heldout, self.tokenizer), self.gate),
            }
            self.logger.log(0, row)
            self.history.append(row)
        lag, total = self.queue.lag, self.total_steps
        if self.pending is not None:  # async resume: the batch generated before the checkpoint
            self.queue.put(start, [Rollout(**r) for r in self.pending["rollouts"]], self.pending["version"])
        else:
            self.start_batch(start, version=start)
        for k in range(start + 1, min(start + 1 + lag, total)):
            self.start_batch(k, version=start)

    def run_step(self, step: int) -> dict[str, Any]:
        """generate -> score -> log-probs (and values) -> advantages -> update -> refit -> evaluate."""
        cfg, rl = self.cfg, self.cfg.rlvr
        lag, total = self.queue.lag, self.total_steps
        phases = Phases()
        with phases("generate"):  # waiting for this step's batch (0 when it overlapped training)
            batch = self.queue.collect(step)
        with phases("score"):
            samples = share_from_driver(self.score(step, batch[0] if batch else None), self.gate)
            version = share_from_driver(batch[1] if batch else None)
        with phases("log_probs"):
            data = log_probs_and_values(cfg, samples, self.actor, self.critic, self.pad_id, self.info)
        with phases("advantages"):
            stats = {**advantages(cfg, data), **engine_logprob_gap(data)}
        with phases("update"):
            upd = ppo_updates(cfg, data, self.actor, self.critic, step)
        with phases("generate_wait"):  # the next batch must not see the weights change mid-way
            self.queue.wait_idle()
        with phases("refit"):
            refit_stats = self.refitter.refit(self.actor.chunks, step + 1)
        if step + 1 + lag < total:
            self.start_batch(step + 1 + lag, version=step + 1)
        row = {
            **rollout_metrics(samples),
            **stats,
            **upd,
            **refit_stats,
            "lr": self.actor.optimizer.param_groups[0]["lr"],
            "rollout/policy_version": version,  # updates included in the weights that sampled it
            "rollout/staleness": step - version,
        }
        if rl.eval_every and ((step + 1) % rl.eval_every == 0 or step + 1 == total):
            with phases("evaluate"):
                row.update(
                    share_from_driver(evaluate(cfg, self.fleet, self.heldout, self.tokenizer), self.gate)
                )
        row.update(phases.metrics())
        self.history.append({"step": step + 1, **row})
        return row

    def progress(self, row: dict[str, Any]) -> dict[str, str]:
        return {"reward": f"{row['reward/all']:.2f}", "kl": f"{row['kl']:.3f}"}

    def finish(self, last: dict[str, Any]) -> dict[str, Any]:
        summary = super().finish(last)
        evals = [h for h in self.history if "eval/reward/all" in h]
        if evals:
            summary["eval_first"] = {k: v for k, v in evals[0].items() if k.startswith("eval/")}
            summary["eval_last"] = {k: v for k, v in evals[-1].items() if k.startswith("eval/")}
        if self.cfg.rlvr.export_hf:
            summary["hf_export"] = str(
                export_hf(
                    self.actor.chunks, self.cfg.model, self.out_dir / "hf", tokenizer_dir=self.hf_source
                )
            )
        if is_rank0():
            _plot(self.out_dir)
        barrier()
        return summary

    # ---------------------------------------------------------------------------------- close
    def close(self) -> None:
        """Stop generation, leave the refit group, stop every engine, tear the process group down."""
        for name in ("queue", "refitter", "fleet"):
            part = getattr(self, name, None)
            if part is not None:
                try:
                    part.close()
                except Exception as exc:  # keep closing the rest; the first error is already raised
                    print(f"[rlvr] closing {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        service = getattr(self, "engine_service", None)
        if service is not None:  # a colocated engine on this rank: its service ends on the driver's stop
            service.join(60)
            service.engine.close()
        super().close()


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
    if summary:
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    from megatron_tulu.engine.gpu_stack import exit_on_cpu_stack

    exit_on_cpu_stack()  # as `megatron-tulu` does: no CPU venv on a GPU node
    sys.exit(main(sys.argv[1:]))
