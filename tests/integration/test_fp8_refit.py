"""FP8 refit on CPU: Megatron learner (fp32) TP2 and TP1xPP2 -> blockwise-FP8 vLLM CPU engine TP2
(bf16).

The tiny model's KV rows per TP2 rank (2 groups x head_dim 64 / 2 = 64) cut 128x128 blocks, so
this test builds its own small Llama with the tiny builder: hidden 256, 4 heads of head_dim 128,
2 KV groups, ffn 1024, 4 layers (every GEMM shard at TP2 a whole number of blocks).

vLLM CPU 0.32 refuses block-FP8 without AMX; the engine process runs with the test shim
``tests/shims/amx_check`` on ``PYTHONPATH`` (it reaches vLLM's spawned workers too). Runs with ``MEGATRON_TULU_FULL_FP8=1`` (CI time budget). Checked
(``workers/fp8_refit_driver.py``, once per learner layout: TP2, and TP1xPP2 where each pipeline
stage sends its own layers' slices straight to both engine ranks):

- each engine rank receives exactly its FP8 shard (e4m3 GEMM weights + fp32 block scales, bf16
  embeddings / lm_head / norms): bytes received == planned shard; the ratio to its bf16 shard is
  reported (GEMM weights alone: 0.5 + 2/16384); each learner rank sends exactly its planned
  slices;
- greedy output after the first refit equals an engine that loaded the same weights quantized
  offline (and differs from the engine's start weights), log-probs equal too;
- log-probs after each refit within ``FP8_LOGPROB_ATOL`` of the fp32 learner's; the optimizer
  step moves both;
- the RLVR CLI on FP8 engines with truncated importance sampling, learner PP1 and PP2.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest

from megatron_tulu.rollout.refit import max_abs_diff
from tests.helpers import REPO, VLLM_QUIET_ENV, full_set_only, quiet_env, run_logged, torchrun_cmd

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.distributed,
    full_set_only(
        "FP8",
        "~5 min on two cores; CI runs the FP8 planner/transport unit tests "
        "(tests/unit/bridge/test_fp8_plan_and_transport.py)",
    ),
]

FP8_ARCH = {
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 128,
}
# |log p_engine - log p_learner| over every token of the fixed sequences: weights in e4m3 with
# 128x128 block scales, activations and everything else in bf16, vs the fp32 learner
FP8_LOGPROB_ATOL = 0.1
SHIM = REPO / "tests/shims/amx_check"


@contextlib.contextmanager
def _arch(overrides: dict):
    from megatron_tulu.models import tiny

    saved = dict(tiny.TINY_ARCH)
    tiny.TINY_ARCH.update(overrides)
    try:
        yield
    finally:
        tiny.TINY_ARCH.clear()
        tiny.TINY_ARCH.update(saved)


def build_fp8_test_model(out, seed: int = 0):
    """The tiny builder with block-aligned dims (fp32 weights)."""
    from megatron_tulu.models.tiny import build_tiny_model

    with _arch(FP8_ARCH):
        return build_tiny_model(out, seed=seed)


# learner (TP, PP) -> the FP8 engine at TP2
LEARNER_LAYOUTS = {"learner_tp2": (2, 1), "learner_tp1pp2": (1, 2)}
ENGINE_TP = 2


@pytest.fixture(scope="module", params=list(LEARNER_LAYOUTS))
def fp8_run(request, tmp_path_factory):
    ltp, lpp = LEARNER_LAYOUTS[request.param]
    root = tmp_path_factory.mktemp(f"fp8_refit_{request.param}")
    hf = build_fp8_test_model(root / "learner", seed=0)
    start = build_fp8_test_model(root / "start", seed=1)
    cmd = [
        sys.executable,
        str(REPO / "tests/integration/workers/fp8_refit_driver.py"),
        "--hf",
        str(hf),
        "--start-hf",
        str(start),
        "--workdir",
        str(root),
        "--learner-tp",
        str(ltp),
        "--learner-pp",
        str(lpp),
        "--engine-tp",
        str(ENGINE_TP),
    ]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_LOGGING_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(SHIM), str(REPO)]),
        MEGATRON_TULU_TEST_RELAX_AMX="1",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads(lines[-1][len("RESULT ") :])
    assert (run["learner_tp"], run["learner_pp"], run["engine_tp"]) == (ltp, lpp, ENGINE_TP)
    assert len(run["learner_ranks"]) == ltp * lpp
    run["hf"] = str(hf)
    run["layout"] = request.param
    return run


def _learner_logprobs(run: dict, round_: int) -> list[list[float]]:
    found = [
        r["rounds"][round_]["logprobs"] for r in run["learner_ranks"] if "logprobs" in r["rounds"][round_]
    ]
    assert len(found) == 1
    return found[0]


def _plan(run):
    from megatron_tulu.models.hf_io import model_config_from_hf
    from megatron_tulu.rollout.bridge.layouts import EngineLayout, LearnerLayout
    from megatron_tulu.rollout.bridge.planner import plan_refit

    cfg = model_config_from_hf(run["hf"])
    learner = LearnerLayout(run["learner_tp"], run["learner_pp"], 1, cfg, 4)
    return plan_refit(learner, EngineLayout(run["engine_tp"], weight_dtype="fp8_block"))


def test_fp8_test_model_is_block_aligned_and_tiny_is_refused(tmp_path):
    from megatron_tulu.models.hf_io import model_config_from_hf
    from megatron_tulu.models.tiny import TINY_ARCH, build_tiny_model
    from megatron_tulu.rollout.bridge.layouts import EngineLayout, LearnerLayout, PlanError
    from megatron_tulu.rollout.bridge.planner import plan_refit

    cfg = model_config_from_hf(build_fp8_test_model(tmp_path / "fp8"))
    plan_refit(LearnerLayout(2, 1, 1, cfg, 4), EngineLayout(2, weight_dtype="fp8_block"))
    assert TINY_ARCH["head_dim"] == 64  # restored
    tiny = model_config_from_hf(build_tiny_model(tmp_path / "tiny"))
    with pytest.raises(PlanError, match="k_proj.*cuts a 128x128 FP8 block"):
        plan_refit(LearnerLayout(2, 1, 1, tiny, 4), EngineLayout(2, weight_dtype="fp8_block"))


def test_each_engine_rank_receives_exactly_its_fp8_shard(fp8_run):
    from megatron_tulu.rollout.bridge.layouts import box_numel, fp8_quantized

    plan = _plan(fp8_run)
    layout = fp8_run["layout"]
    for k, rnd in enumerate(fp8_run["rounds"]):
        workers = rnd["workers"]
        assert sorted(w["rank"] for w in workers) == list(range(fp8_run["engine_tp"]))
        for w in workers:
            assert w["weight_dtype"] == "fp8_block"
            assert w["bytes_received"] == w["shard_bytes"] == plan.shard_bytes[(0, w["rank"])], w
            ratio = w["bytes_received"] / w["bf16_shard_bytes"]
            gemm = [t for t in plan.for_receiver(0, w["rank"]) if fp8_quantized(t.hf_name)]
            gemm_ratio = sum(t.nbytes for t in gemm) / sum(2 * box_numel(t.dst_slice) for t in gemm)
            print(f"{layout} round {k} engine rank {w['rank']}: received / bf16 shard = {ratio:.6f} "
                  f"({w['bytes_received']} / {w['bf16_shard_bytes']} bytes, scales included); "
                  f"GEMM weights alone {gemm_ratio:.6f}")  # fmt: skip
            assert gemm_ratio == 0.5 + 2 / 16384
            assert 0.5 < ratio < 0.7  # this model's bf16 embeddings / lm_head are 30% of a shard
        sent = sum(r["rounds"][k]["send"][0]["bytes_sent"] for r in fp8_run["learner_ranks"])
        assert sent == sum(w["bytes_received"] for w in workers)
        # every learner rank (every pipeline stage) sends exactly its planned slices
        for r in fp8_run["learner_ranks"]:
            planned = sum(t.nbytes for t in plan.transfers if t.src_rank == r["rank"])
            assert planned > 0 and r["rounds"][k]["send"][0]["bytes_sent"] == planned, (r["rank"], k)


def test_greedy_after_refit_equals_offline_fp8_engine(fp8_run):
    offline = fp8_run["offline"]
    after = fp8_run["rounds"][0]
    same = max_abs_diff(after["logprobs"], offline["logprobs"])
    print(f"{fp8_run['layout']}: greedy after refit == offline FP8 engine: {after['greedy'] == offline['greedy']} "
          f"({sum(map(len, offline['greedy']))} tokens); max |dlogp| refit vs offline = {same:g}")  # fmt: skip
    assert after["greedy"] == offline["greedy"]
    assert fp8_run["greedy_before"] != offline["greedy"]  # the refit replaced other weights
    # the same e4m3 bytes and scales: the same numbers
    assert same < 1e-5


def test_logprobs_after_refit_within_fp8_tolerance_of_learner(fp8_run):
    diffs = []
    for k, rnd in enumerate(fp8_run["rounds"]):
        d = max_abs_diff(rnd["logprobs"], _learner_logprobs(fp8_run, k))
        diffs.append(d)
        print(f"{fp8_run['layout']} round {k}: max |logp_vllm_fp8 - logp_learner_fp32| = {d:.5f}")
        assert d < FP8_LOGPROB_ATOL, f"round {k}: {d}"
    # the optimizer step changed the weights; the FP8 engine follows
    moved = max_abs_diff(_learner_logprobs(fp8_run, 0), _learner_logprobs(fp8_run, 1))
    print(f"{fp8_run['layout']}: optimizer step moved the learner's log-probs by up to {moved:.4f}")
    assert moved > 2 * max(diffs)
    assert max_abs_diff(fp8_run["rounds"][0]["logprobs"], fp8_run["rounds"][1]["logprobs"]) > max(diffs)


@pytest.mark.parametrize("pp", [1, 2], ids=["learner_pp1", "learner_pp2"])
def test_rlvr_with_fp8_engines_and_importance_sampling(tmp_path, pp):
    """``rollout.weight_dtype=fp8_block`` end to end: the RL job starts its engine on the FP8
    export, refits FP8 shards after every update (bytes ÷ planned FP8 shard = 1.00), and corrects
    the bf16/FP8-rollout vs fp32-learner mismatch with truncated importance sampling. PP2: two
    learner ranks, each pipeline stage refits its own layers into the (colocated, TP1) engine."""
    hf = build_fp8_test_model(tmp_path / "model", seed=0)
    out = tmp_path / "run"
    env = quiet_env(
        **VLLM_QUIET_ENV,
        PYTHONPATH=os.pathsep.join([str(SHIM), str(REPO)]),
        MEGATRON_TULU_TEST_RELAX_AMX="1",
    )
    args = [
        f"train.output_dir={out}",
        f"model.hf_path={hf}",
        "rollout.weight_dtype=fp8_block",
        "rlvr.tis_cap=2.0",
        "rollout.check_logprobs=true",
        "rlvr.prompts_per_step=8",
        "train.micro_batch_size=4",
        "rollout.max_new_tokens=16",
        "rlvr.ppo_epochs=1",
        "rlvr.total_episodes=16",
        "rlvr.eval_every=0",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        f"parallel.pp={pp}",
    ]
    code = run_logged(
        [*torchrun_cmd(pp, "-m", "megatron_tulu.cli", "rlvr"), *args], tmp_path / "run.log", env, 1200
    )
    assert code == 0, (tmp_path / "run.log").read_text()[-5000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r["step"] > 0]
    assert len(steps) == 2
    assert (out / "engine_weights" / "fp8_block-rank0" / "config.json").is_file()
    for row in steps:
        print(f"rlvr learner pp{pp} step {row['step']}: refit bytes / planned FP8 shard = "
              f"{row['refit_bytes_over_shard_min']}..{row['refit_bytes_over_shard_max']}, engine log-prob "
              f"gap max {row['rollout/engine_logprob_gap_max']:.5f}, "
              f"tis weight mean {row['policy/tis_weight_mean']:.5f}")  # fmt: skip
        assert row["refit_bytes_over_shard_max"] == 1.0 and row["refit_bytes_over_shard_min"] == 1.0
        # the engine samples from FP8 weights: its log-probs differ from the learner's by the FP8
        # error, which the importance weights (ratio learner / engine, capped at 2) correct
        assert 0 < row["rollout/engine_logprob_gap_max"] < FP8_LOGPROB_ATOL, row
        assert 0.5 < row["policy/tis_weight_mean"] <= 2.0, row
