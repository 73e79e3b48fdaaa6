"""Worker: bf16 training through Megatron's mixed-precision optimizer (fp32 main copies) on CPU,
or (``--distributed-optimizer``) its DistributedOptimizer, the GPU default, over gloo.

Without ``--resume``: step 1, checkpoint (model + optimizer), step 2. With ``--resume``: a fresh
build loads that checkpoint, then step 2. Saves (rank 0) step 2's loss, the bf16 weights, the fp32
main copies and every parameter's dtype, so tests/distributed/test_bf16_training.py can compare the
two bit for bit. Run under torchrun.
"""

import argparse

import torch
import train_equivalence
from megatron.core import parallel_state
from train_equivalence import forward_step, make_global_batch

from megatron_tulu.config.schema import OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_tulu.engine.checkpoint import find_latest, load_checkpoint, save_checkpoint
from megatron_tulu.engine.model import build_model, unwrap
from megatron_tulu.engine.optimizer import build_optimizer
from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
from megatron_tulu.engine.train_step import prepare_model_for_training, train_step
from megatron_tulu.models.hf_io import collect_hf_state_on_rank0, load_hf_weights, model_config_from_hf

GLOBAL_BATCH, MICRO_BATCH, SEQ = 8, 2, 32


def one_step(chunks, optimizer, step: int, dp_rank: int, dp: int):
    batch = make_global_batch(train_equivalence.VOCAB, GLOBAL_BATCH, SEQ, seed=step)
    per_dp = GLOBAL_BATCH // dp
    local = {k: v[dp_rank * per_dp : (dp_rank + 1) * per_dp] for k, v in batch.items()}
    n_mb = per_dp // MICRO_BATCH
    micro = [{k: v[i * MICRO_BATCH : (i + 1) * MICRO_BATCH] for k, v in local.items()} for i in range(n_mb)]
    return train_step(
        forward_step, iter(micro), chunks, optimizer, None,
        num_microbatches=n_mb, seq_length=SEQ, micro_batch_size=MICRO_BATCH,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--distributed-optimizer", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    cfg = model_config_from_hf(args.hf)
    train_equivalence.VOCAB = cfg.vocab_size
    parallel = ParallelConfig(tp=args.tp, use_distributed_optimizer=args.distributed_optimizer)
    info = init_parallel(cfg, parallel, seed=1)
    precision = PrecisionConfig(params_dtype="bf16", transformer_impl="local")
    chunks = build_model(cfg, parallel, precision)
    load_hf_weights(chunks, cfg, args.hf)
    opt_cfg = OptimizerConfig(lr=1e-3, weight_decay=0.1, adam_eps=1e-6, clip_grad=1.0, warmup_ratio=0.0)
    optimizer = build_optimizer(chunks, opt_cfg, parallel, precision)
    prepare_model_for_training(chunks, optimizer)

    if args.resume:
        load_checkpoint(find_latest(args.ckpt), chunks, optimizer, None)
    else:
        one_step(chunks, optimizer, 1, info.dp_rank, info.dp)
        save_checkpoint(args.ckpt, 1, chunks, optimizer, None)
    result = one_step(chunks, optimizer, 2, info.dp_rank, info.dp)

    weights = collect_hf_state_on_rank0(chunks, cfg)
    # the plain mixed-precision optimizer keeps a whole fp32 copy per parameter; the distributed one
    # keeps DP shards of them, which step 2's loss and weights already depend on
    main_params = (
        None
        if args.distributed_optimizer
        else collect_hf_state_on_rank0(chunks, cfg, accessor=lambda prm: prm.main_param)
    )
    dtypes = sorted({str(prm.dtype) for chunk in chunks for prm in unwrap(chunk).parameters()})
    if parallel_state.get_data_parallel_rank() == 0 and info.rank == 0:
        torch.save(
            {
                "loss": result.metrics["loss_per_seq"],
                "grad_norm": result.grad_norm,
                "weights": weights,
                "main_params": main_params,
                "param_dtypes": dtypes,
                "optimizer": type(optimizer.chained_optimizers[0]).__name__,
            },
            args.out,
        )
    destroy_parallel()


if __name__ == "__main__":
    main()
