"""SFT gradients do not depend on micro-batching, DP split, padding or layout; packing is exact."""

from collections import defaultdict

import pytest
import torch

from tests.helpers import WORKERS, rel_diff, worker_result

pytestmark = pytest.mark.distributed


def _run(tiny, tmp_path, name, nproc, *args):
    return worker_result(
        WORKERS / "sft_step_worker.py", nproc, ["--hf", str(tiny), *args], tmp_path / f"{name}.pt"
    )


def _assert_same(got, ref, key="loss_per_sequence"):
    assert got["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-5)
    for name in ref["grads"]:
        assert rel_diff(got["grads"][name], ref["grads"][name]) < 1e-5, name


def test_packed_gradient_invariant_to_split_and_layout(tiny, tmp_path):
    ref = _run(tiny, tmp_path, "mb1x8", 1, "--micro-batch", "1")
    for name, nproc, args in [
        ("mb2x4", 1, ["--micro-batch", "2"]),
        ("mb8x1", 1, ["--micro-batch", "8"]),
        ("dp2", 2, ["--micro-batch", "2"]),
        ("tp2", 2, ["--tp", "2", "--micro-batch", "4"]),
        ("pp2", 2, ["--pp", "2", "--micro-batch", "2"]),
    ]:
        _assert_same(_run(tiny, tmp_path, name, nproc, *args), ref)


def test_fused_log_probs_equal_the_output_layer_path(tiny, tmp_path):
    """train.fused_log_probs (default) vs false on packed rows: same loss and gradients, at TP1
    (one rank, every vocabulary column) and TP2 (the vocabulary split, the hidden-state
    gradient summed over TP) and PP2 (the head on the last stage)."""
    for name, nproc, args in [
        ("tp1", 1, ["--micro-batch", "2"]),
        ("tp2", 2, ["--tp", "2", "--micro-batch", "4"]),
        ("pp2", 2, ["--pp", "2", "--micro-batch", "2"]),
    ]:
        fused = _run(tiny, tmp_path, f"fused_{name}", nproc, *args)
        unfused = _run(tiny, tmp_path, f"unfused_{name}", nproc, *args, "--unfused")
        if name != "pp2":  # rank 0 (which saves) holds the head
            assert (fused["paths"], unfused["paths"]) == (["fused"], ["logits"])
        _assert_same(fused, unfused)
        _assert_same(fused, unfused, "loss_per_token")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_padded_gradient_invariant_to_padding_and_split(tiny, tmp_path, reduction):
    key = "loss_per_sequence" if reduction == "sum" else "loss_per_token"
    ref = _run(
        tiny, tmp_path, "pad_longest", 1, "--mode", "padded", "--micro-batch", "8", "--reduction", reduction
    )
    fixed = _run(
        tiny,
        tmp_path,
        "pad_fixed",
        1,
        "--mode",
        "padded_fixed",
        "--micro-batch",
        "1",
        "--reduction",
        reduction,
    )
    dp2 = _run(
        tiny, tmp_path, "pad_dp2", 2, "--mode", "padded", "--micro-batch", "1", "--reduction", reduction
    )
    _assert_same(fixed, ref, key)
    _assert_same(dp2, ref, key)


def test_sum_and_mean_reductions_differ(tiny, tmp_path):
    s = _run(tiny, tmp_path, "sum", 1, "--mode", "padded", "--micro-batch", "8", "--reduction", "sum")
    m = _run(tiny, tmp_path, "mean", 1, "--mode", "padded", "--micro-batch", "8", "--reduction", "mean")
    name = "model.layers.0.mlp.up_proj.weight"
    ratio = (s["grads"][name] / m["grads"][name].clamp(min=1e-12)).flatten()
    # same direction, different scale: tokens per sequence, not 1
    assert (
        rel_diff(s["grads"][name] / s["grads"][name].norm(), m["grads"][name] / m["grads"][name].norm())
        < 1e-4
    )
    assert abs(float(s["grads"][name].norm() / m["grads"][name].norm()) - 1) > 0.5, ratio[:3]


def test_packed_and_unpacked_per_token_losses_match(tiny, tmp_path):
    res = _run(tiny, tmp_path, "per_token", 1, "--mode", "per_token")
    bins = res["packed_rows"]
    by_example = {"packed": defaultdict(list), "unpacked": defaultdict(list)}
    for row, doc, lp in zip(res["packed"]["rows"], res["packed"]["docs"], res["packed"]["lp"]):
        by_example["packed"][bins[int(row)][int(doc)]].append(lp)
    for row, lp in zip(res["unpacked"]["rows"], res["unpacked"]["lp"]):
        by_example["unpacked"][int(row)].append(lp)
    assert sorted(by_example["packed"]) == sorted(by_example["unpacked"]) == list(range(12))
    assert any(len(b) > 1 for b in bins)  # really packed several documents into a row
    for ex in range(12):
        a, b = torch.stack(by_example["packed"][ex]), torch.stack(by_example["unpacked"][ex])
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), ex
