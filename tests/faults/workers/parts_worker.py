"""Worker: a two-model (policy + value) checkpoint saved in one commit, loaded back exactly.

save ROOT STEP OUT   one optimizer step on both models, save both as parts of step STEP (with an
                     extra dict), write every parameter and optimizer tensor to OUT
load ROOT OUT        fresh models and optimizers, load the latest checkpoint's parts, write the same
loop ROOT            save steps 1, 2, 3, ... one after another (keep_last 2) until killed: the RL
                     trainer's checkpoint shape (policy + value + optimizers + pending batch), for
                     kill-at-random-instants trials (scripts/rl_checkpoint_kills.py)
"""

import sys

import torch

from megatron_tulu.config.schema import ModelConfig, OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_tulu.engine.checkpoint import find_latest, load_checkpoint, save_checkpoint
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.optimizer import build_optimizer, build_scheduler
from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
from tests.distributed.workers.logits_worker import one_step

CFG = ModelConfig(
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=128,
    num_attention_heads=2,
    num_query_groups=1,
    kv_channels=32,
    vocab_size=101,
    max_position_embeddings=64,
)


def tensors(chunks, optimizer, scheduler) -> dict[str, torch.Tensor]:
    out = {f"param/{k}": v.detach().clone() for k, v in chunks[0].named_parameters()}
    state = optimizer.state_dict()["state"]
    for pid, s in state.items():
        for k, v in s.items():
            if torch.is_tensor(v):
                out[f"opt/{pid}/{k}"] = v.clone()
    out["lr"] = torch.tensor(scheduler.optimizer.param_groups[0]["lr"])
    return out


def main() -> None:
    mode, root = sys.argv[1], sys.argv[2]
    parallel, precision = ParallelConfig(), PrecisionConfig()
    init_parallel(CFG, parallel, seed=5)
    policy = build_model(CFG, parallel, precision, wrap_ddp=True)
    value = build_model(CFG, parallel, precision, wrap_ddp=True)
    if mode == "loop":
        popt, psched = one_step(policy, CFG, parallel, precision)
        vopt, vsched = one_step(value, CFG, parallel, precision)
        step = 0
        while True:
            step += 1
            print(f"saving {step}", flush=True)
            save_checkpoint(
                root,
                step,
                parts={"policy": (policy, popt, psched), "value": (value, vopt, vsched)},
                extra={"pending_rollouts": {"rollouts": [[step] * 64] * 16, "version": step}},
                keep_last=2,
            )
    elif mode == "save":
        step, out = int(sys.argv[3]), sys.argv[4]
        popt, psched = one_step(policy, CFG, parallel, precision)
        vopt, vsched = one_step(value, CFG, parallel, precision)
        torch.save({"policy": tensors(policy, popt, psched), "value": tensors(value, vopt, vsched)}, out)
        save_checkpoint(
            root,
            step,
            parts={"policy": (policy, popt, psched), "value": (value, vopt, vsched)},
            extra={"pending": [step, "rollouts"]},
            keep_last=2,
        )
    else:
        out = sys.argv[3]
        opt_cfg = OptimizerConfig(lr=1e-3, adam_eps=1e-4)
        sched_cfg = OptimizerConfig(lr=1e-3, warmup_ratio=0.0)
        popt, vopt = (build_optimizer(m, opt_cfg, parallel, precision) for m in (policy, value))
        psched, vsched = (build_scheduler(o, sched_cfg, total_steps=10) for o in (popt, vopt))
        extra = load_checkpoint(
            find_latest(root), parts={"policy": (policy, popt, psched), "value": (value, vopt, vsched)}
        )
        torch.save(
            {"policy": tensors(policy, popt, psched), "value": tensors(value, vopt, vsched), "extra": extra},
            out,
        )
    destroy_parallel()


if __name__ == "__main__":
    main()
