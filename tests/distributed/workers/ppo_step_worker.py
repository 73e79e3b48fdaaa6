"""Worker: one PPO (or GRPO) update at a given layout from fixed rollouts: synthetic ones, or a
batch a real vLLM engine sampled (``--rollouts``, written by ``vllm_rollouts.py``)."""

import argparse
import json
import random

import head_spy  # records the log-prob path taken
import torch

from megatron_tulu.algorithms.rlvr import (
    PolicyActor,
    ValueCritic,
    advantages,
    log_probs_and_values,
    ppo_updates,
)
from megatron_tulu.algorithms.value_model import build_value_model
from megatron_tulu.config.schema import ParallelConfig, RLVRRunConfig
from megatron_tulu.config.validate_rl import check_rl_options
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.optimizer import build_optimizer, build_scheduler
from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
from megatron_tulu.engine.train_step import prepare_model_for_training
from megatron_tulu.models.hf_io import collect_hf_state_on_rank0, load_hf_weights, model_config_from_hf
from megatron_tulu.rollout.batch import RolloutSample


def prepare_batch(cfg, samples, actor: PolicyActor, critic: ValueCritic | None, pad_id: int, info):
    """Log-probs, values and advantages of a batch (the two phases before the update)."""
    data = log_probs_and_values(cfg, samples, actor, critic, pad_id, info)
    return data, advantages(cfg, data)


def rollouts(vocab: int, n: int, group: int) -> list[RolloutSample]:
    rng = random.Random(5)
    out = []
    for i in range(n):
        prompt = [rng.randrange(5, vocab) for _ in range(rng.randint(4, 10))]
        resp = [rng.randrange(5, vocab) for _ in range(rng.randint(3, 12))]
        correct = float(rng.random() < 0.5)
        out.append(
            RolloutSample(
                prompt,
                resp,
                rng.choice(["stop", "stop", "length"]),
                10.0 * correct,
                correct,
                "gsm8k",
                i // group,
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--estimator", default="gae")
    p.add_argument("--out", required=True)
    p.add_argument("--rollouts", help="JSON list of RolloutSample fields (default: synthetic rollouts)")
    p.add_argument("--unfused", action="store_true", help="train.fused_log_probs=false")
    p.add_argument("--temperature", type=float, default=1.0)
    args = p.parse_args()
    cfg = RLVRRunConfig()
    cfg.model = model_config_from_hf(args.hf)
    cfg.parallel = ParallelConfig(tp=args.tp, pp=args.pp)
    cfg.rlvr.estimator, cfg.rlvr.ppo_epochs, cfg.rlvr.num_mini_batches = args.estimator, 2, 2
    cfg.rollout.samples_per_prompt = 2 if args.estimator == "grpo" else 1
    cfg.rollout.max_prompt_len, cfg.rollout.max_new_tokens = 12, 12
    cfg.train.micro_batch_size = 2
    cfg.train.fused_log_probs = not args.unfused
    cfg.rollout.temperature = args.temperature
    cfg.optimizer.lr, cfg.optimizer.warmup_ratio, cfg.optimizer.adam_eps = 1e-3, 0.0, 1e-4
    check_rl_options(cfg)  # the KL placement and kind the trainer reads, as its config check decides them
    info = init_parallel(cfg.model, cfg.parallel, seed=3)
    policy = build_model(cfg.model, cfg.parallel, cfg.precision)
    load_hf_weights(policy, cfg.model, args.hf)
    reference = build_model(cfg.model, cfg.parallel, cfg.precision, wrap_ddp=False)
    load_hf_weights(reference, cfg.model, args.hf)
    popt = build_optimizer(policy, cfg.optimizer, cfg.parallel, cfg.precision)
    psched = build_scheduler(popt, cfg.optimizer, 4)
    prepare_model_for_training(policy, popt)
    value = vopt = vsched = None
    if args.estimator == "gae":
        torch.manual_seed(0)  # same fresh head on every layout
        value = build_value_model(cfg.model, cfg.parallel, cfg.precision, backbone_hf=args.hf)
        vopt = build_optimizer(value, cfg.optimizer, cfg.parallel, cfg.precision)
        vsched = build_scheduler(vopt, cfg.optimizer, 4)
        prepare_model_for_training(value, vopt)
    if args.rollouts:
        with open(args.rollouts) as f:
            samples = [RolloutSample(**s) for s in json.load(f)]
    else:
        samples = rollouts(cfg.model.vocab_size, 8, cfg.rollout.samples_per_prompt)
    actor = PolicyActor(policy, popt, psched, cfg=cfg, reference=reference)
    critic = ValueCritic(value, vopt, vsched, cfg=cfg) if value is not None else None
    data, stats = prepare_batch(cfg, samples, actor, critic, 1, info)
    upd = ppo_updates(cfg, data, actor, critic, 0)
    weights = collect_hf_state_on_rank0(policy, cfg.model)
    if info.rank == 0:
        torch.save(
            {
                "stats": stats,
                "updates": upd,
                "advantages": data["advantages"],
                "weights": weights,
                "paths": head_spy.paths(),
            },
            args.out,
        )
    destroy_parallel()


if __name__ == "__main__":
    main()
