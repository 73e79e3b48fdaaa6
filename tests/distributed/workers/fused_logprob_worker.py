"""Worker: fused vs unfused token log-probs through the real GPTModel at a TP x PP layout.

Runs one forward+backward through Megatron's schedule twice on the same weights and batch, with
``forward_head(fused=False)`` (full vocab-parallel logits) and ``fused=True`` (hidden
states + output weight into megatron_tulu.kernels), temperature 0.7, and saves per-rank values
and every local parameter gradient of both. Also runs the kernel alone on the TP group with a
differentiable entropy term against the unfused kernel reference.
"""

import torch
from megatron.core import parallel_state
from megatron_tulu.kernels import fused_vocab_parallel_log_probs, unfused_vocab_parallel_log_probs
from step_common import init_layout, layout_parser

from megatron_tulu.config.schema import PrecisionConfig
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.parallel import destroy_parallel
from megatron_tulu.engine.train_step import forward_backward
from megatron_tulu.losses.vocab_parallel import (
    TokenHead,
    forward_head,
    gpt_hidden_states,
    output_weight,
)
from megatron_tulu.models.hf_io import load_hf_weights

TEMP = 0.7


def batch(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 17), generator=torch.Generator().manual_seed(11))


def run(chunks, vocab: int, fused: bool) -> dict:
    ids = batch(vocab)
    x, y = ids[:, :-1], ids[:, 1:]
    pos = torch.arange(x.shape[1]).unsqueeze(0).expand(x.shape[0], -1)
    coef = torch.linspace(-1.0, 1.5, y.numel()).reshape(y.shape)
    seen: dict = {}

    def step(it, model):
        next(it)
        out = forward_head(
            model, vocab_size=vocab, fused=fused, input_ids=x, position_ids=pos, attention_mask=None
        )

        def loss_func(head: TokenHead):
            assert head.fused == fused
            logp, entropy = head.log_probs(y, TEMP, with_entropy=True)
            seen["logp"], seen["entropy"] = logp.detach().clone(), entropy.detach().clone()
            loss = (logp * coef).sum()
            return loss, torch.tensor(1, dtype=torch.int), {"loss": loss.detach().reshape(1)}

        return out, loss_func

    for c in chunks:
        c.zero_grad(set_to_none=True)
    forward_backward(step, iter([0]), chunks, num_microbatches=1, seq_length=x.shape[1], micro_batch_size=2)
    grads = {
        f"{i}.{n}": p.grad.detach().clone() for i, c in enumerate(chunks) for n, p in c.named_parameters()
    }
    return {**seen, "grads": grads}


def kernel_on_tp_group(chunks, vocab: int) -> dict:
    """Kernel alone with the real TP group: hidden states of the model, entropy with gradient."""
    gpt = chunks[-1]
    if not gpt.post_process:
        return {}
    ids = batch(vocab)
    x, y = ids[:, :-1], ids[:, 1:]
    pos = torch.arange(x.shape[1]).unsqueeze(0).expand(x.shape[0], -1)
    with torch.no_grad():
        h = gpt_hidden_states(gpt, input_ids=x, position_ids=pos, attention_mask=None).transpose(0, 1)
    w = output_weight(gpt).detach()
    out = {}
    for name, fn in (
        ("fused", fused_vocab_parallel_log_probs),
        ("unfused", unfused_vocab_parallel_log_probs),
    ):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        kw = {"chunk_tokens": 5} if name == "fused" else {}
        lp, ent = fn(hh, ww, y, vocab, temperature=TEMP, with_entropy=True, **kw)
        (lp.sum() * 0.3 + (ent * torch.arange(ent.numel()).reshape(ent.shape)).sum()).backward()
        out[name] = {"logp": lp.detach(), "entropy": ent.detach(), "gh": hh.grad, "gw": ww.grad}
    return out


def main() -> None:
    p = layout_parser(batches=False)
    args = p.parse_args()
    cfg, parallel, _ = init_layout(args, seed=5)
    chunks = build_model(cfg, parallel, PrecisionConfig(), wrap_ddp=False)
    load_hf_weights(chunks, cfg, args.hf)
    res = {"unfused": run(chunks, cfg.vocab_size, False), "fused": run(chunks, cfg.vocab_size, True)}
    res["kernel"] = kernel_on_tp_group(chunks, cfg.vocab_size)
    res["last_stage"] = parallel_state.is_pipeline_last_stage()
    torch.save(res, f"{args.out}.rank{torch.distributed.get_rank()}")
    destroy_parallel()


if __name__ == "__main__":
    main()
