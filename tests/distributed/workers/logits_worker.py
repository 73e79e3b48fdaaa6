"""Worker: full logits of the Megatron model at a layout, from an HF dir or a checkpoint.

Modes:
  --hf DIR                 import HF weights, write logits
  --hf DIR --save CKPT     import, take one optimizer step (so optimizer state exists), save, write logits
  --ckpt CKPT              load a checkpoint (any layout), write logits
"""

import argparse
import dataclasses

import torch
from megatron.core import parallel_state

from megatron_tulu.config.schema import ModelConfig, OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_tulu.engine.checkpoint import load_checkpoint, read_meta, save_checkpoint
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.optimizer import build_optimizer, build_scheduler
from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
from megatron_tulu.engine.train_step import forward_backward, prepare_model_for_training, train_step
from megatron_tulu.losses.lm import masked_token_loss
from megatron_tulu.losses.vocab_parallel import gather_vocab_logits, vocab_parallel_log_probs
from megatron_tulu.models.hf_io import collect_hf_state_on_rank0, load_hf_weights, model_config_from_hf


def tokens_for(cfg: ModelConfig) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))


def full_logits(chunks, cfg: ModelConfig) -> torch.Tensor | None:
    ids = tokens_for(cfg)
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)

    def step(it, model):
        batch = next(it)
        return model(input_ids=batch[0], position_ids=batch[1], attention_mask=None), None

    for c in chunks:
        c.eval()
    with torch.no_grad():
        out = forward_backward(
            step,
            iter([(ids, pos)]),
            chunks,
            num_microbatches=1,
            seq_length=ids.shape[1],
            micro_batch_size=ids.shape[0],
            forward_only=True,
        )
    if not parallel_state.is_pipeline_last_stage():
        return None
    return gather_vocab_logits(out[0], cfg.vocab_size)


def one_step(chunks, cfg, parallel, precision, opt_cfg=None, ids=None):
    """One Adam step of next-token loss on ``ids`` (default :func:`tokens_for`); returns the optimizer
    and its scheduler (``opt_cfg``'s LR, constant: no warmup in 10 steps)."""
    opt_cfg = opt_cfg or OptimizerConfig(lr=1e-3, adam_eps=1e-4, warmup_ratio=0.0)
    optimizer = build_optimizer(chunks, opt_cfg, parallel, precision)
    scheduler = build_scheduler(optimizer, opt_cfg, total_steps=10)
    prepare_model_for_training(chunks, optimizer)
    ids = tokens_for(cfg) if ids is None else ids

    def step(it, model):
        x = next(it)
        pos = torch.arange(x.shape[1] - 1).unsqueeze(0).expand(x.shape[0], -1)
        logits = model(input_ids=x[:, :-1], position_ids=pos, attention_mask=None)

        def loss_func(output):
            loss, n = masked_token_loss(
                -vocab_parallel_log_probs(output, x[:, 1:], cfg.vocab_size), torch.ones_like(x[:, 1:])
            )
            return loss, n, {"loss": torch.stack([loss.detach(), n.float()])}

        return logits, loss_func

    train_step(
        step,
        iter([ids]),
        chunks,
        optimizer,
        scheduler,
        num_microbatches=1,
        seq_length=ids.shape[1] - 1,
        micro_batch_size=ids.shape[0],
    )
    return optimizer, scheduler


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hf")
    p.add_argument("--ckpt")
    p.add_argument("--save")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cfg = model_config_from_hf(args.hf) if args.hf else ModelConfig(**read_meta(args.ckpt)["model"])
    parallel, precision = ParallelConfig(tp=args.tp, pp=args.pp), PrecisionConfig()
    init_parallel(cfg, parallel, seed=5)
    chunks = build_model(cfg, parallel, precision, wrap_ddp=bool(args.save or args.ckpt))
    if args.hf:
        load_hf_weights(chunks, cfg, args.hf)
    if args.save:
        optimizer, scheduler = one_step(chunks, cfg, parallel, precision)
        save_checkpoint(args.save, 1, chunks, optimizer, scheduler, meta={"model": dataclasses.asdict(cfg)})
    if args.ckpt:
        optimizer = build_optimizer(chunks, OptimizerConfig(lr=1e-3, adam_eps=1e-4), parallel, precision)
        scheduler = build_scheduler(optimizer, OptimizerConfig(lr=1e-3, warmup_ratio=0.0), total_steps=10)
        extra = load_checkpoint(read_meta(args.ckpt)["path"], chunks, optimizer, scheduler)
        assert extra["step"] == 1, extra
    weights = collect_hf_state_on_rank0(chunks, cfg)
    logits = full_logits(chunks, cfg)
    if (
        logits is not None
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_data_parallel_rank() == 0
    ):
        torch.save({"logits": logits, "tokens": tokens_for(cfg)}, args.out)
    if torch.distributed.get_rank() == 0:
        torch.save(weights, args.out + ".weights")
    destroy_parallel()


if __name__ == "__main__":
    main()
