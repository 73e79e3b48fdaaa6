"""Fused log-prob head on the real GPTModel: equals the unfused path at TP1, TP2 and PP2.

Each layout runs the same weights and batch twice through Megatron's schedule (unfused: full
vocab-parallel logits; fused: hidden states + output weight into the kernel) and compares the
log-probs, entropies and every parameter gradient on every rank (fp32, rel 1e-5; also with tied
input/output embeddings at TP2, where the head reads the embedding weight), and the
log-probs across layouts against TP1. The TP2 run also exercises the kernel's all-reduces with a
differentiable entropy term against the unfused reference on the real TP group.
"""

import pytest
import torch

from tests.helpers import WORKERS, rel_diff, run_torchrun

pytestmark = pytest.mark.distributed
REL = 1e-5
# name -> (processes, TP, PP, tied embeddings); the tied model has other weights (no TP1 twin)
LAYOUTS = {
    "tp1": (1, 1, 1, False),
    "tp2": (2, 2, 1, False),
    "pp2": (2, 1, 2, False),
    "tp2_tied": (2, 2, 1, True),
}


@pytest.fixture(scope="module")
def runs(hf_llama, hf_llama_tied, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused")
    res = {}
    for name, (nproc, tp, pp, tied) in LAYOUTS.items():
        path = out / name
        hf = hf_llama_tied if tied else hf_llama
        run_torchrun(
            WORKERS / "fused_logprob_worker.py",
            nproc,
            ["--hf", str(hf), "--tp", str(tp), "--pp", str(pp), "--out", str(path)],
        )
        res[name] = [torch.load(f"{path}.rank{r}") for r in range(nproc)]
    return res


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_fused_equals_unfused_values_and_grads(runs, name):
    for rank in runs[name]:
        fused, unfused = rank["fused"], rank["unfused"]
        if rank["last_stage"]:
            assert rel_diff(fused["logp"], unfused["logp"]) < REL
            assert rel_diff(fused["entropy"], unfused["entropy"]) < REL
        assert fused["grads"].keys() == unfused["grads"].keys() and fused["grads"]
        for key, g in unfused["grads"].items():
            assert g.abs().sum() > 0, key
            assert rel_diff(fused["grads"][key], g) < REL, key


@pytest.mark.parametrize("name", ["tp2", "pp2"])
def test_layouts_match_tp1(runs, name):
    ref = runs["tp1"][0]["fused"]
    last = [r for r in runs[name] if r["last_stage"]]
    assert last
    for r in last:
        assert rel_diff(r["fused"]["logp"], ref["logp"]) < REL
        assert rel_diff(r["fused"]["entropy"], ref["entropy"]) < REL


@pytest.mark.parametrize("name", ["tp1", "tp2"])
def test_kernel_on_tp_group_with_entropy_gradient(runs, name):
    for rank in runs[name]:
        k = rank["kernel"]
        for key in ("logp", "entropy", "gh", "gw"):
            assert rel_diff(k["fused"][key], k["unfused"][key]) < REL, key
    if name == "tp2":  # both ranks see the same (TP-summed) hidden-state gradient
        a, b = (r["kernel"]["fused"]["gh"] for r in runs[name])
        assert torch.equal(a, b)
