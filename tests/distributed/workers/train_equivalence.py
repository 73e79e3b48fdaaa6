"""Worker: one optimizer step of the real Megatron-Core model at a given layout; saves results.

Run under torchrun by tests/distributed/test_engine_equivalence.py. Everything it saves is in HF
naming on rank 0 so layouts can be compared tensor by tensor.
"""

import torch
from megatron.core import parallel_state
from step_common import init_layout, layout_parser

from megatron_tulu.config.schema import OptimizerConfig, PrecisionConfig
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.optimizer import build_optimizer
from megatron_tulu.engine.parallel import destroy_parallel
from megatron_tulu.engine.train_step import prepare_model_for_training, train_step
from megatron_tulu.losses.lm import masked_token_loss
from megatron_tulu.losses.vocab_parallel import vocab_parallel_log_probs
from megatron_tulu.models.hf_io import collect_hf_state_on_rank0, load_hf_weights

VOCAB = 0  # set in main()


def make_global_batch(vocab: int, batch: int, seq: int, seed: int = 7) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
    mask = (torch.rand(batch, seq, generator=gen) > 0.3).long()
    mask[:, -1] = 1
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": mask}


def forward_step(data_iterator, model):
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in next(data_iterator).items()}
    b, s = batch["tokens"].shape
    position_ids = torch.arange(s, device=device).unsqueeze(0).expand(b, -1)
    logits = model(input_ids=batch["tokens"], position_ids=position_ids, attention_mask=None)

    def loss_func(output):
        per_token = -vocab_parallel_log_probs(output, batch["labels"], VOCAB)
        loss_sum, tokens = masked_token_loss(per_token, batch["loss_mask"])
        # SFT sum loss: normalise by the number of sequences in the global batch
        sequences = torch.tensor(b, dtype=torch.int, device=device)
        return loss_sum, sequences, {"loss_per_seq": torch.stack([loss_sum.detach(), sequences.float()])}

    return logits, loss_func


def main() -> None:
    p = layout_parser()
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    args = p.parse_args()

    global VOCAB
    cfg, parallel, info = init_layout(args, recompute=args.recompute)
    VOCAB = cfg.vocab_size
    precision = PrecisionConfig(params_dtype="bf16" if args.bf16 else "fp32")
    chunks = build_model(cfg, parallel, precision)
    load_hf_weights(chunks, cfg, args.hf)
    # adam_eps well above fp32 round-off: Adam's first step is ~lr*sign(g), which would amplify
    # 1e-9 summation-order noise on near-zero gradients into lr-sized weight differences.
    opt_cfg = OptimizerConfig(
        lr=1e-2, weight_decay=0.1, adam_eps=1e-4, clip_grad=args.clip_grad, warmup_ratio=0.0
    )
    optimizer = build_optimizer(chunks, opt_cfg, parallel, precision)
    prepare_model_for_training(chunks, optimizer)

    batch = make_global_batch(cfg.vocab_size, args.global_batch, 32)
    per_dp = args.global_batch // info.dp
    lo = info.dp_rank * per_dp
    local = {k: v[lo : lo + per_dp] for k, v in batch.items()}
    n_mb = per_dp // args.micro_batch
    micro = [
        {k: v[i * args.micro_batch : (i + 1) * args.micro_batch] for k, v in local.items()}
        for i in range(n_mb)
    ]

    result = train_step(
        forward_step,
        iter(micro),
        chunks,
        optimizer,
        None,
        num_microbatches=n_mb,
        seq_length=32,
        micro_batch_size=args.micro_batch,
    )
    grads = collect_hf_state_on_rank0(chunks, cfg, accessor=lambda prm: prm.main_grad)
    weights = collect_hf_state_on_rank0(chunks, cfg)
    if parallel_state.get_data_parallel_rank() == 0 and info.rank == 0:
        torch.save(
            {"metrics": result.metrics, "grad_norm": result.grad_norm, "grads": grads, "weights": weights},
            args.out,
        )
    destroy_parallel()


if __name__ == "__main__":
    main()
