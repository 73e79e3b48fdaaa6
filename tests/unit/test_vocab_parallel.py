"""Log-probs and entropy from (padded) logits equal the unpadded softmax (single process)."""

import torch

from megatron_tulu.losses.vocab_parallel import vocab_parallel_entropy, vocab_parallel_log_probs


def test_padded_columns_are_excluded():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 13, generator=g)
    padded = torch.cat([logits, torch.randn(2, 5, 3, generator=g) * 10], dim=-1)  # junk in padding
    targets = torch.randint(0, 13, (2, 5), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(vocab_parallel_log_probs(padded, targets, 13), ref, atol=1e-6)
    ent_ref = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(vocab_parallel_entropy(padded, 13), ent_ref, atol=1e-5)


def test_temperature_and_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 11, generator=g, requires_grad=True)
    targets = torch.tensor([0, 5, 10])
    lp = vocab_parallel_log_probs(logits, targets, 11, temperature=0.7)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = torch.log_softmax(ref_logits / 0.7, -1)[torch.arange(3), targets]
    assert torch.allclose(lp, ref, atol=1e-6)
    lp.sum().backward()
    ref.sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)
