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
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# the launch plan's checks: the same functions `examples/rlvr_405b.py --dry-run` calls
from megatron_tulu.algorithms.launch_plan import (
    check_rl_plan,
    plan_memory,
    prepare_value_model,
    total_rl_steps,
)
from megatron_tulu.algorithms.loop import BatchOrder, barrier, ensure_model_source, is_rank0, save_config
from megatron_tulu.algorithms.memory import GB
from megatron_tulu.algorithms.rl_job import RLJob, start_rl_job, stop_rollouts
from megatron_tulu.algorithms.trainer import Phases, TrainedModel, Trainer, build_trainable
from megatron_tulu.algorithms.value_model import build_critic_model, value_model_config
from megatron_tulu.config.schema import RLVRRunConfig
from megatron_tulu.config.validate import LayoutError
from megatron_tulu.config.validate_rl import check_rl_config
from megatron_tulu.data.mixing import apply_dataset_weights
from megatron_tulu.data.rlvr_prompts import load_rlvr_prompts
from megatron_tulu.data.tokenizer import load_tokenizer
from megatron_tulu.engine.collectives import share_from_driver, tokens_everywhere
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.parallel import init_parallel
from megatron_tulu.engine.train_step import forward_batch, forward_only_collect
from megatron_tulu.evaluation.rl import HeldOut, plot_curves, rollout_metrics, score_outputs, scoring_options
from megatron_tulu.losses.estimators import get_estimator
from megatron_tulu.losses.ppo import aggregate_loss, kl_penalty, masked_mean, policy_loss, value_loss
from megatron_tulu.losses.rl_options import (
    kl_loss_per_token,
    place_scores,
    policy_loss_mask,
    tis_weights,
    token_rewards_placed,
)
from megatron_tulu.losses.vocab_parallel import TokenHead
from megatron_tulu.models.hf_io import load_hf_weights, model_config_from_hf
from megatron_tulu.rewards.gsm8k import RULES as GSM8K_RULES
from megatron_tulu.rollout.batch import build_rollout_tensors, engine_logprob_gap, row_length, split_micro
from megatron_tulu.rollout.queue import RolloutQueue, sampling
from megatron_tulu.rollout.refitter import Refitter

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"


# ------------------------------------------------------------------------------ actor and critic
def _mean_metric(value: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.stack([value.detach().float() * count.float(), count.float()])


@dataclass
class PolicyActor(TrainedModel):
    """The policy being trained (its optimizer and scheduler) and its frozen reference."""

    cfg: RLVRRunConfig
    reference: list[torch.nn.Module]

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

        def reference_fn(head: TokenHead, b):
            return {"logp": head.log_probs(b["labels"], temp)}

        old = forward_only_collect(self.chunks, micro, policy_fn, mbs, forward=self._forward)
        ref = forward_only_collect(self.reference, micro, reference_fn, mbs, forward=self._forward)
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
        kl_loss_kind = rl.kl_kind if rl.kl_placement == "loss" else None  # resolved by check_rl_config
        constant = rl.loss_constant

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

        return self.optimizer_step(step, micro, seq, self.cfg.train.micro_batch_size, "policy")


@dataclass
class ValueCritic(TrainedModel):
    """The PPO value model (a GPTModel with a scalar head), its optimizer and scheduler."""

    cfg: RLVRRunConfig

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

        return self.optimizer_step(step, micro, seq, self.cfg.train.micro_batch_size, "value")


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
    kind = rl.kl_kind  # where the KL goes and its kind: decided once, by check_rl_config
    if kind is None or rl.kl_placement is None:
        raise RuntimeError("rlvr.kl_placement and rlvr.kl_kind are resolved by check_rl_config; run it first")
    penalty = rl.beta if rl.kl_placement == "reward" else 0.0
    rewards, gae_mask = token_rewards_placed(
        data["scores"], data["old_logp"], data["ref_logp"], mask, penalty, kind, rl.score_placement
    )
    batch = {"rewards": rewards, "values": data.get("old_values"), "scores": data["scores"]}
    batch.update(mask=gae_mask, whiten_mask=mask)  # the estimator's span, and the response tokens
    adv, returns = get_estimator(rl.estimator).estimate(batch, cfg)
    data["advantages"] = adv * mask  # the policy acts on response tokens only
    if returns is not None:
        data["returns"] = returns
    kl = masked_mean(kl_penalty(data["old_logp"], data["ref_logp"], kind), mask)
    stats = {"kl": float(kl), "entropy": float(masked_mean(data["entropy"], mask))}

    data["loss_mask"], dropped = policy_loss_mask(
        mask,
        data["stopped"],
        data["scores"],
        cfg.rollout.samples_per_prompt,
        drop_truncated=rl.mask_truncated,
        drop_constant_groups=rl.drop_constant_groups,
    )
    stats.update(dropped)
    if rl.tis_cap is not None:
        if "engine_logp" not in data:
            raise RuntimeError(
                "rlvr.tis_cap needs the engine's log-probs of every sampled token; none came back"
            )
        data["tis_weight"], tis = tis_weights(data["old_logp"], data["engine_logp"], mask, rl.tis_cap)
        stats.update(tis)
    return stats


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
            if tokens_everywhere(data["loss_mask"][rows]) > 0:
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
def train_rlvr(cfg: RLVRRunConfig) -> dict[str, Any]:
    """Every rank of the job calls this; it returns the run summary on learner rank 0."""
    check_rl_config(cfg, GSM8K_RULES)
    hf_source = ensure_model_source(cfg)
    cfg.model = dataclasses.replace(model_config_from_hf(hf_source), name=cfg.model.name)
    job = start_rl_job(cfg)
    options = job.engine_options(cfg, hf_source, "bfloat16" if torch.cuda.is_available() else "float32")
    return job.run(options, lambda: RLTrainer(cfg, job, hf_source, options).run())


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
        cfg, rl, ro = self.cfg, self.cfg.rlvr, self.cfg.rollout
        self.estimator = get_estimator(rl.estimator)  # what it needs: a critic, groups of samples
        if self.estimator.needs_critic:
            # a value model that cannot load here (HF_HUB_OFFLINE and not on disk) is refused before
            # the engines start and the policy loads; a Hub id becomes its local snapshot
            rl.value_model = prepare_value_model(rl.value_model)
        self.info = info = init_parallel(
            cfg.model, cfg.parallel, seed=cfg.train.seed, world=self.job.learner_world()
        )
        save_config(cfg, self.out_dir)
        self.tokenizer = tok = load_tokenizer(cfg.data.tokenizer or self.hf_source)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        files = cfg.data.train_files or [str(ASSETS / "rlvr.jsonl")]
        prompts = load_rlvr_prompts(files, tok, ro.max_prompt_len, skip_bad=cfg.data.skip_bad)
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
        self.critic = self._build_critic() if self.estimator.needs_critic else None
        self.queue = RolloutQueue(self.fleet, lag=1 if rl.async_mode else 0)

    def _check_memory(self) -> None:
        """The dry run's memory plan for this GPU (its own memory, or ``rlvr.memory_limit_gb``):
        a layout the plan refuses is refused here before a model loads. CPU runs have no plan."""
        cfg, rl, info = self.cfg, self.cfg.rlvr, self.info
        if not torch.cuda.is_available():
            return
        gpu_gb = torch.cuda.get_device_properties(info.device).total_memory / GB
        limit = gpu_gb if rl.memory_limit_gb is None else rl.memory_limit_gb
        value = value_model_config(cfg) if self.estimator.needs_critic else None
        plan = plan_memory(cfg, info.tp, info.pp, info.dp, value, gpu_memory_gb=gpu_gb, limit_gb=limit)
        if plan.problems:
            raise LayoutError("memory plan: " + "; ".join(plan.problems))

    def _build_actor(self) -> PolicyActor:
        cfg, frozen = self.cfg, []

        def reference(_) -> None:  # the frozen reference, loaded before the policy's optimizer exists
            ref = build_model(cfg.model, cfg.parallel, cfg.precision, wrap_ddp=False)
            load_hf_weights(ref, cfg.model, self.hf_source)
            for p in (p for c in ref for p in c.parameters()):
                p.requires_grad_(False)
            frozen.append(ref)

        policy, opt, sched = build_trainable(
            cfg, self._updates(), hf_source=self.hf_source, before_optimizer=reference
        )
        return PolicyActor(policy, opt, sched, cfg=cfg, reference=frozen[0])

    def _build_critic(self) -> ValueCritic:
        cfg, rl = self.cfg, self.cfg.rlvr
        value = build_critic_model(cfg, self.info.world_size, self.hf_source)
        vcfg = dataclasses.replace(cfg.optimizer, lr=rl.value_lr or cfg.optimizer.lr)
        value, opt, sched = build_trainable(cfg, self._updates(), chunks=value, optimizer_cfg=vcfg)
        return ValueCritic(value, opt, sched, cfg=cfg)

    def _updates(self) -> int:
        return self.total_steps * self.cfg.rlvr.ppo_epochs * self.cfg.rlvr.num_mini_batches

    # ------------------------------------------------------------------------------ checkpoint
    def checkpoint_parts(self) -> dict[str, tuple]:
        """The models of one RL checkpoint, saved and committed together."""
        parts = {"policy": self.actor.part}
        if self.critic is not None:
            parts["value"] = self.critic.part
        return parts

    def checkpoint_extra(self, step: int) -> dict[str, Any]:
        """The batch generated before this checkpoint's update (async mode), for an exact resume."""
        saved = self.queue.saved(step) if self.queue.lag and step < self.total_steps else None
        return {"pending_rollouts": share_from_driver(saved, self.gate)}

    def restore(self, extra: dict[str, Any]) -> None:
        self.pending = extra.get("pending_rollouts")

    # ------------------------------------------------------------------------------- batches
    def start_batch(self, step: int, version: int) -> None:
        """Start generating batch ``step`` with the engines' current weights (policy ``version``)."""
        seed, n = self.cfg.train.seed + 7919 * step, self.cfg.rollout.samples_per_prompt
        settings = sampling(self.cfg, self.tokenizer.eos_token_id, seed, n=n)
        self.queue.start(step, [self.prompts[i]["ids"] for i in self.order.rows(step)], settings, version)

    # ----------------------------------------------------------------------------------- steps
    def before_steps(self, start: int) -> None:
        """Join the refit group, bring resumed weights to the engines, evaluate step 0, start the
        first batches (``lag`` of them ahead in async mode)."""
        self.refitter = Refitter(self.cfg, self.actor.chunks, self.gate, self.job.refit_address, self.fleet)
        if start > 0:
            self.refitter.refit(self.actor.chunks)  # the engines start from the HF weights
        if start == 0:
            row = {"step": 0, **self.evaluate()}
            self.logger.log(0, row)
            self.history.append(row)
        lag, total = self.queue.lag, self.total_steps
        if self.pending is not None:  # async resume: the batch generated before the checkpoint
            self.queue.put_saved(start, self.pending)
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
        with phases("score"):  # on the driver, shared with the other learners
            rows = [self.prompts[i] for i in self.order.rows(step)]
            scored = score_outputs(batch[0], rows, self.tokenizer, **scoring_options(rl)) if batch else None
            samples = share_from_driver(scored, self.gate)
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
                row.update(self.evaluate())
        row.update(phases.metrics())
        self.history.append({"step": step + 1, **row})
        return row

    def evaluate(self) -> dict[str, float]:
        """The held-out evaluation (driver), shared with every learner rank."""
        return share_from_driver(self.heldout.evaluate(self.cfg, self.fleet, self.tokenizer), self.gate)

    def progress(self, row: dict[str, Any]) -> dict[str, str]:
        return {"reward": f"{row['reward/all']:.2f}", "kl": f"{row['kl']:.3f}"}

    def finish(self, last: dict[str, Any]) -> dict[str, Any]:
        summary = super().finish(last)
        evals = [h for h in self.history if "eval/reward/all" in h]
        if evals:
            summary["eval_first"] = {k: v for k, v in evals[0].items() if k.startswith("eval/")}
            summary["eval_last"] = {k: v for k, v in evals[-1].items() if k.startswith("eval/")}
        if self.cfg.rlvr.export_hf:
            summary["hf_export"] = self.export(self.actor.chunks)
        if is_rank0():
            plot_curves(self.out_dir)
        barrier()
        return summary

    # ---------------------------------------------------------------------------------- close
    def close(self) -> None:
        """Stop generation, leave the refit group, stop every engine, tear the process group down."""
        parts = {name: getattr(self, name, None) for name in ("queue", "refitter", "fleet")}
        stop_rollouts(parts, getattr(self, "engine_service", None))
        super().close()
