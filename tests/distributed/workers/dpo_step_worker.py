"""Worker: reference log-probs + one DPO step on shipped preference pairs at a given layout."""

import head_spy  # noqa: F401 (records the log-prob path taken; save_step reports it)
from step_common import init_layout, layout_parser, save_step, step_optimizer

from megatron_tulu.algorithms.dpo import (
    EMBEDDED_DPO,
    forward_pairs,
    make_batch_builder,
    make_forward_step,
    reference_stats,
)
from megatron_tulu.algorithms.ref_cache import compute_reference_logps
from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import DPORunConfig, PrecisionConfig
from megatron_tulu.data.preference import load_preference_examples
from megatron_tulu.data.tokenizer import load_tokenizer
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.parallel import destroy_parallel
from megatron_tulu.engine.train_step import train_step
from megatron_tulu.models.hf_io import load_hf_weights


def main() -> None:
    p = layout_parser()
    p.add_argument("--mode", default="concatenated")
    p.add_argument("--loss", default="dpo_norm")
    p.add_argument("--unfused", action="store_true", help="train.fused_log_probs=false")
    args = p.parse_args()

    model_cfg, parallel, info = init_layout(args)
    cfg = load_config(
        [
            f"dpo.loss={args.loss}",
            f"dpo.forward_mode={args.mode}",
            f"train.fused_log_probs={not args.unfused}",
        ],
        config_name="dpo",
        schema=DPORunConfig,
    )
    tok = load_tokenizer(args.hf)
    pairs, _ = load_preference_examples([str(EMBEDDED_DPO)], tok, max_seq_len=256)
    pairs = pairs[: args.global_batch]
    fixed = 256 if args.pp > 1 else None
    chunks = build_model(model_cfg, parallel, PrecisionConfig())
    load_hf_weights(chunks, model_cfg, args.hf)
    ref = compute_reference_logps(
        chunks,
        len(pairs),
        make_batch_builder(pairs, args.mode, 1, fixed, None),
        args.micro_batch,
        forward=forward_pairs(args.mode, model_cfg.vocab_size, cfg.train.fused_log_probs),
        sequence_stats=reference_stats(args.mode),
        rows_per_pair=2 if args.mode == "concatenated" else 1,
    )
    # perturb the reference so the loss is not at its trivial starting point (policy == reference)
    ref = {**ref, "chosen": ref["chosen"] + 0.5, "rejected": ref["rejected"] - 0.25}
    optimizer = step_optimizer(chunks, parallel)
    build = make_batch_builder(pairs, args.mode, 1, fixed, ref)
    per = args.global_batch // info.dp
    mine = list(range(info.dp_rank * per, (info.dp_rank + 1) * per))
    micro = [build(mine[i : i + args.micro_batch]) for i in range(0, per, args.micro_batch)]
    res = train_step(
        make_forward_step(cfg, model_cfg.vocab_size),
        iter(micro),
        chunks,
        optimizer,
        None,
        num_microbatches=len(micro),
        seq_length=fixed or 0,
        micro_batch_size=args.micro_batch * (2 if args.mode == "concatenated" else 1),
    )
    save_step(chunks, model_cfg, info.rank, args.out, ref=ref, metrics=res.metrics)
    destroy_parallel()


if __name__ == "__main__":
    main()
