"""Worker: one SFT step (real packed or padded batches of the shipped data) at a given layout.

Saves the loss, the HF-named gradients (main_grad) and, with --per-token, the per-token losses of
the packed and the unpacked forward of the same examples.
"""

import head_spy  # noqa: F401 (records the log-prob path taken; save_step reports it)
import torch
from step_common import init_layout, layout_parser, save_step, step_optimizer

from megatron_tulu.algorithms.sft import EMBEDDED_SFT, make_forward_step
from megatron_tulu.config.schema import PrecisionConfig
from megatron_tulu.data.packing import block_causal_mask, collate_rows, pack_examples, pad_batch
from megatron_tulu.data.sft import load_sft_examples
from megatron_tulu.data.tokenizer import load_tokenizer
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.parallel import destroy_parallel
from megatron_tulu.engine.train_step import train_step
from megatron_tulu.losses.vocab_parallel import vocab_parallel_log_probs
from megatron_tulu.models.hf_io import load_hf_weights

SEQ = 128


def main() -> None:
    p = layout_parser()
    p.add_argument("--mode", choices=["packed", "padded", "padded_fixed", "per_token"], default="packed")
    p.add_argument("--reduction", default="sum")
    p.add_argument("--unfused", action="store_true", help="log-probs from the output layer's logits")
    args = p.parse_args()

    cfg, parallel, info = init_layout(args)
    tok = load_tokenizer(args.hf)
    examples, _ = load_sft_examples([str(EMBEDDED_SFT)], tok, max_seq_len=SEQ)
    chunks = build_model(cfg, parallel, PrecisionConfig())
    load_hf_weights(chunks, cfg, args.hf)

    if args.mode == "per_token":
        # same 12 examples: packed into rows vs one padded row each -> identical per-token losses
        subset = examples[:12]
        packed = pack_examples(subset, SEQ, pad_id=1)
        out = {}
        for name, batch in (
            ("packed", collate_rows([packed[i] for i in range(len(packed))])),
            ("unpacked", pad_batch(subset, pad_id=1)),
        ):
            mask = block_causal_mask(batch["document_ids"]) if name == "packed" else None
            with torch.no_grad():
                logits = chunks[0](
                    input_ids=batch["tokens"], position_ids=batch["position_ids"], attention_mask=mask
                )
                lp = vocab_parallel_log_probs(logits, batch["labels"].clamp(min=0), cfg.vocab_size)
            sel = batch["loss_mask"] > 0
            # per-token losses in document order: (document, target position) keys
            keys = [(int(r), int(d)) for r, d in zip(*torch.nonzero(sel, as_tuple=True))]
            out[name] = {
                "lp": lp[sel],
                "docs": batch["document_ids"][sel],
                "rows": torch.tensor([k[0] for k in keys]),
            }
        out["packed_rows"] = packed.bins
        torch.save(out, args.out)
        destroy_parallel()
        return

    optimizer = step_optimizer(chunks, parallel)
    if args.mode == "packed":
        rows = pack_examples(examples, SEQ, pad_id=1)
        glob = [rows[i] for i in range(args.global_batch)]
    else:
        glob = examples[: args.global_batch]
    per = args.global_batch // info.dp
    mine = glob[info.dp_rank * per : (info.dp_rank + 1) * per]
    mbs = [mine[i : i + args.micro_batch] for i in range(0, per, args.micro_batch)]
    if args.mode == "packed":
        micro = [collate_rows(m) for m in mbs]
    else:
        micro = [
            pad_batch(m, pad_to=SEQ if args.mode == "padded_fixed" or args.pp > 1 else None, pad_id=1)
            for m in mbs
        ]
    step = make_forward_step(
        cfg.vocab_size, args.reduction, packing=args.mode == "packed", use_thd=False, fused=not args.unfused
    )
    res = train_step(
        step,
        iter(micro),
        chunks,
        optimizer,
        None,
        num_microbatches=len(micro),
        seq_length=micro[0]["tokens"].shape[1],
        micro_batch_size=args.micro_batch,
    )
    save_step(chunks, cfg, info.rank, args.out, metrics=res.metrics, grad_norm=res.grad_norm)
    destroy_parallel()


if __name__ == "__main__":
    main()
