"""Worker: what loading a DistributedOptimizer checkpoint does without each engine/mcore_compat.py
workaround, on the installed megatron-core with torch's AdamW (no Apex/TE).

Two optimizer steps of a tiny fp32 model with the DistributedOptimizer (over gloo), a checkpoint,
then for each workaround a fresh model and optimizer loading that checkpoint with the workaround
turned off (and once with all of them on), followed by one more step. Saves (JSON) per case: the
error the load raised and where, or the AdamW ``step`` of every parameter after the load and after the extra
step and how many distinct ``step`` tensors there are. Read by tests/unit/test_mcore_compat.py. Run
under torchrun.
"""

import argparse
import json
import traceback

import torch
import train_equivalence
from train_equivalence import forward_step, make_global_batch

from megatron_tulu.config.schema import ModelConfig, OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_tulu.engine import mcore_compat
from megatron_tulu.engine.checkpoint import find_latest, load_checkpoint, save_checkpoint
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.optimizer import build_optimizer
from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
from megatron_tulu.engine.train_step import prepare_model_for_training, train_step

BATCH, SEQ = 2, 8
MODEL = ModelConfig(
    num_layers=1,
    hidden_size=32,
    ffn_hidden_size=64,
    num_attention_heads=2,
    num_query_groups=1,
    kv_channels=16,
    vocab_size=96,
    max_position_embeddings=64,
    rope_scaling=False,
)
# workaround turned off -> the mcore_compat function replaced by a no-op
CASES = {
    "all_on": None,
    "without_materialize": ("materialize_optimizer_state", lambda optimizer: None),
    "without_step_kept_aside": ("torch_adam_step_kept_aside", lambda optimizer: _nothing()),
    "without_unshare": ("unshare_adam_steps", lambda optimizer: None),
}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def build(parallel):
    chunks = build_model(MODEL, parallel, PrecisionConfig(params_dtype="fp32", transformer_impl="local"))
    optimizer = build_optimizer(
        chunks, OptimizerConfig(lr=1e-3, weight_decay=0.1, warmup_ratio=0.0), parallel, PrecisionConfig()
    )
    prepare_model_for_training(chunks, optimizer)
    return chunks, optimizer


def one_step(chunks, optimizer, seed):
    batch = make_global_batch(MODEL.vocab_size, BATCH, SEQ, seed=seed)
    train_step(
        forward_step, iter([batch]), chunks, optimizer, None,
        num_microbatches=1, seq_length=SEQ, micro_batch_size=BATCH,
    )  # fmt: skip


def adam_steps(optimizer):
    """(step of every parameter holding AdamW state, number of distinct step tensors)."""
    states = [s for opt in optimizer.chained_optimizers for s in opt.optimizer.state.values()]
    steps = [s["step"] for s in states if "step" in s]
    return [float(s) for s in steps], len({id(s) for s in steps})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    train_equivalence.VOCAB = MODEL.vocab_size
    parallel = ParallelConfig(use_distributed_optimizer=True)
    init_parallel(MODEL, parallel, seed=1)
    chunks, optimizer = build(parallel)
    for seed in (1, 2):
        one_step(chunks, optimizer, seed)
    save_checkpoint(args.ckpt, 2, chunks, optimizer, None)
    result = {"optimizer": type(optimizer.chained_optimizers[0]).__name__, "saved": adam_steps(optimizer)}

    for case, off in CASES.items():
        chunks, optimizer = build(parallel)
        original = None
        if off is not None:
            original = getattr(mcore_compat, off[0])
            setattr(mcore_compat, off[0], off[1])
        try:
            load_checkpoint(find_latest(args.ckpt), chunks, optimizer, None)
        except Exception as exc:  # the failure is what the test reads
            frame = traceback.extract_tb(exc.__traceback__)[-1]  # where it was raised
            where = f"{frame.filename.rpartition('site-packages/')[2]}:{frame.name}"
            result[case] = {"error": f"{type(exc).__name__}: {exc}"[:500], "raised_in": where}
            continue
        finally:
            if off is not None:
                setattr(mcore_compat, off[0], original)
        loaded = adam_steps(optimizer)
        one_step(chunks, optimizer, 3)
        result[case] = {"loaded": loaded, "after_one_step": adam_steps(optimizer)}

    if torch.distributed.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    destroy_parallel()


if __name__ == "__main__":
    main()
