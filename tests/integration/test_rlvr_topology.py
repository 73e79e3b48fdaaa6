"""The production RLVR topology on simulated nodes: one ``torchrun --nnodes N --node_rank R`` launch per
node on this machine, roles from ``assign_roles``, real vLLM CPU engines on engine-only ranks.

- learners TP2 on node 0, one TP2 engine on node 1: metrics equal the colocated single-node run's;
- two TP1 engines on node 1: prompts split across engines, same tokens (the engine's log-prob
  numerics differ at ~1e-7..1e-6 from one TP2 engine's, the documented difference);
- one TP2 engine whose two ranks sit on two different nodes (vLLM's multi-node executor, a headless
  node host): same metrics again;
- every refit: bytes received / planned shard = 1.00 at every engine rank, and the engine's
  log-probs of the sampled tokens equal the learner's to 1e-5 (fp32).

CI runs the first (with its colocated reference); the two variants run with
``MEGATRON_TULU_FULL_TOPOLOGY=1`` (CI time budget).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, full_set_only
from tests.multinode import comparable, launch_nodes, metrics, role_table

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.distributed]

TIMEOUT = 600
PRESET = ["preset=rlvr_tiny_2node"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "tiny"
    subprocess.run(
        [sys.executable, "-m", "megatron_tulu.cli", "build-tiny", "--out", str(out)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """The first 32 shipped held-out prompts (the step-0 evaluation of every run, kept short)."""
    path = tmp_path_factory.mktemp("heldout") / "heldout.jsonl"
    rows = (
        (REPO / "megatron_tulu" / "assets" / "data" / "rlvr_heldout.jsonl")
        .read_text()
        .splitlines(keepends=True)
    )
    path.write_text("".join(rows[:32]))
    return path


def _run(tmp_path, name, sources, nnodes, nproc, *overrides):
    """``sources``: (tiny model dir, held-out file)."""
    out = tmp_path / name
    job = launch_nodes(
        out,
        nnodes,
        nproc,
        [*PRESET, f"model.hf_path={sources[0]}", f"rlvr.heldout_files=[{sources[1]}]", *overrides],
    )
    codes = job.wait(TIMEOUT)
    left = job.leftovers()
    assert codes == [0] * nnodes, f"return codes {codes}\n{job.log_text()[-6000:]}"
    assert left == [], f"processes of the job still alive: {left}"
    return job, metrics(out)


def _check_refits(rows, engine_ranks):
    steps = [r for r in rows if r["step"] > 0]
    assert len(steps) == 3
    for r in steps:
        assert r["refit_bytes_over_shard_max"] == 1.0 and r["refit_bytes_over_shard_min"] == 1.0, r
        assert r["refit_engine_ranks"] == engine_ranks
        assert r["rollout/staleness"] == 0
        assert r["rollout/engine_logprob_gap_max"] < 1e-5, r["rollout/engine_logprob_gap_max"]


@pytest.fixture(scope="module")
def colocated(tiny, heldout, tmp_path_factory):
    """The reference: one node, learners TP2, the TP2 engine inside learner rank 0's process."""
    _, rows = _run(
        tmp_path_factory.mktemp("colocated"), "run", (tiny, heldout), 1, 2, "rollout.placement=colocated"
    )
    _check_refits(rows, 2)
    return rows


def test_learners_on_node0_tp2_engine_on_node1_equal_colocated(colocated, tiny, heldout, tmp_path):
    job, rows = _run(tmp_path, "dedicated", (tiny, heldout), 2, 2)
    _check_refits(rows, 2)
    assert comparable(rows) == comparable(colocated)
    # the real run prints the same role table as the dry run
    dry = subprocess.run(
        [
            sys.executable,
            "examples/rlvr_405b.py",
            "--dry-run",
            "--nodes",
            "2",
            "--gpus-per-node",
            "2",
            *PRESET,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    table = role_table(dry.stdout)
    assert "ranks 2-3  engine 0  tp-rank 0-1      nodes 1" in table
    assert role_table(job.logs[0].read_text()) == table


FULL = full_set_only("TOPOLOGY", "~2 min each on two cores")


@FULL
def test_two_tp1_engines_on_node1(colocated, tiny, heldout, tmp_path):
    _, rows = _run(
        tmp_path, "two_engines", (tiny, heldout), 2, 2, "rollout.engine_tp=1", "rollout.num_engines=2"
    )
    _check_refits(rows, 2)
    # Same prompts, seeds and sampled tokens as one TP2 engine; only the engines' own log-prob
    # numerics (TP1 vs TP2 reductions) differ, at the 1e-7..1e-6 level: the gap between the engine's
    # and the learner's log-probs, mean and max alike, is a measurement of those numerics (seen: max
    # 9.5e-7 here vs 1.9e-6 for the TP2 engine), so it is left out of the exact comparison;
    # _check_refits bounds it by 1e-5 in both runs.
    gaps = ("rollout/engine_logprob_gap_mean", "rollout/engine_logprob_gap_max")
    assert [{k: v for k, v in r.items() if k not in gaps} for r in comparable(rows)] == [
        {k: v for k, v in r.items() if k not in gaps} for r in comparable(colocated)
    ]


@FULL
def test_tp2_engine_split_over_two_nodes(colocated, tiny, heldout, tmp_path):
    """Three nodes of one rank: the learner (TP1) on node 0, engine TP ranks 0 and 1 on nodes 1 and 2
    (node 2 runs vLLM's headless workers)."""
    _, rows = _run(tmp_path, "split_engine", (tiny, heldout), 3, 1, "parallel.tp=1", "rollout.engine_tp=2")
    _check_refits(rows, 2)
    # the same TP2 engine samples the same tokens; the learner is TP1 here (TP2 in the reference), so
    # its losses and norms agree to float rounding only
    exact = (
        "reward/",
        "accuracy/",
        "eval/",
        "response_length",
        "no_eos_share",
        "rollout/policy_version",
        "refit_",
    )
    for got, ref in zip(comparable(rows), comparable(colocated), strict=True):
        assert got.keys() == ref.keys()
        for key, value in got.items():
            if key.startswith(exact) or key == "step":
                assert value == ref[key], key
            elif key != "rollout/engine_logprob_gap_mean":
                assert value == pytest.approx(ref[key], rel=1e-4, abs=1e-5), key
