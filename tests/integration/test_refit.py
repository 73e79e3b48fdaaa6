"""Megatron learner (TP2, PP2) -> real vLLM CPU engines (TP1, TP2) refit, end to end.

One driver process starts both engines once and runs two torchrun learners against them
(``workers/refit_driver.py``, ``workers/refit_learner.py``). Per learner layout and engine:

- after the first refit (the HF weights, sent with per-slice checksums) vLLM's log-probs of
  fixed sequences equal the learner's (fp32: 1e-4 absolute);
- after one optimizer step and a second refit they equal the learner's new log-probs and
  differ from the first round's;
- every vLLM rank received exactly its shard (bytes received / shard bytes == 1.00) and the
  learner ranks together sent exactly the plan's bytes;
- with a receive-buffer bound of 8 MiB (just above the tiny model's largest bucket: its fp32
  embedding full-size plus a rank's rows) the engines load in several ``reload_weights`` calls and
  never hold more refit buffers than planned (measured on the buffers' storages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from megatron_tulu.rollout.refit import max_abs_diff
from tests.helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.distributed]

LEARNERS = ["2x1", "1x2"]  # TP2, PP2
ENGINE_TPS = [1, 2]
ATOL = 1e-4
RECEIVE_BUFFER_BYTES = 8 << 20


@pytest.fixture(scope="module")
def refit_run(tmp_path_factory):
    from megatron_tulu.models.tiny import build_tiny_model

    hf = build_tiny_model(tmp_path_factory.mktemp("refit") / "tiny")
    cmd = [sys.executable, str(REPO / "tests/integration/workers/refit_driver.py"), "--hf", str(hf)]
    for etp in ENGINE_TPS:
        cmd += ["--engine-tp", str(etp)]
    for layout in LEARNERS:
        cmd += ["--learner", layout]
    cmd += ["--receive-buffer-bytes", str(RECEIVE_BUFFER_BYTES)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_LOGGING_LEVEL="WARNING", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _learner_logprobs(run: dict, round_: int) -> list[list[float]]:
    found = [
        r["rounds"][round_]["logprobs"] for r in run["learner_ranks"] if "logprobs" in r["rounds"][round_]
    ]
    assert len(found) == 1, "exactly one learner rank (last stage, TP0) reports log-probs"
    return found[0]


def _cases():
    return [(layout, etp) for layout in LEARNERS for etp in ENGINE_TPS]


@pytest.mark.parametrize("layout,etp", _cases())
def test_vllm_logprobs_equal_learner_after_each_refit(refit_run, layout, etp):
    run = next(r for r in refit_run["runs"] if r["learner"] == layout)
    rounds = run["engines"][str(etp)]["rounds"]
    assert len(rounds) == 2
    for k in range(2):
        diff = max_abs_diff(rounds[k]["logprobs"], _learner_logprobs(run, k))
        assert diff < ATOL, f"learner {layout} -> vLLM TP{etp}, round {k}: max |dlogp| = {diff:g}"
    # the optimizer step changed the weights and vLLM follows
    assert max_abs_diff(rounds[0]["logprobs"], rounds[1]["logprobs"]) > 100 * ATOL
    assert max_abs_diff(_learner_logprobs(run, 0), _learner_logprobs(run, 1)) > 100 * ATOL


@pytest.mark.parametrize("layout,etp", _cases())
def test_each_vllm_rank_receives_exactly_its_shard(refit_run, layout, etp):
    run = next(r for r in refit_run["runs"] if r["learner"] == layout)
    engine_idx = ENGINE_TPS.index(etp)
    for k, rnd in enumerate(run["engines"][str(etp)]["rounds"]):
        workers = rnd["workers"]
        assert sorted(w["rank"] for w in workers) == list(range(etp))
        for w in workers:
            assert w["bytes_received"] / w["shard_bytes"] == 1.0, w
        received = sum(w["bytes_received"] for w in workers)
        sent = sum(r["rounds"][k]["send"][engine_idx]["bytes_sent"] for r in run["learner_ranks"])
        assert sent == received
        # every learner rank takes part in sending (TP shards / PP stages all at once)
        assert all(r["rounds"][k]["send"][engine_idx]["bytes_sent"] > 0 for r in run["learner_ranks"])


@pytest.mark.parametrize("etp", ENGINE_TPS)
def test_receive_buffers_within_the_bound_over_several_reload_calls(refit_run, etp):
    workers = [
        w for run in refit_run["runs"] for rnd in run["engines"][str(etp)]["rounds"] for w in rnd["workers"]
    ]
    for w in workers:
        assert w["receive_buffer_bytes"] == RECEIVE_BUFFER_BYTES
        assert (
            0 < w["live_buffer_bytes_max"] <= w["planned_peak_receive_buffer_bytes"] <= RECEIVE_BUFFER_BYTES
        )
    assert max(w["reload_calls"] for w in workers) > 1  # the split path ran inside vLLM


def test_engine_starts_once_per_tp(refit_run):
    assert sorted(refit_run["engine_start_seconds"]) == [str(t) for t in ENGINE_TPS]
    assert len(refit_run["runs"]) == len(LEARNERS)


@pytest.mark.parametrize("etp", ENGINE_TPS)
def test_generate_returns_tokens_logprobs_and_finish_reasons(refit_run, etp):
    gen = refit_run["generate"][str(etp)]
    greedy, sampled = gen["greedy"], gen["sampled"]
    assert [r["prompt_index"] for r in greedy] == [0, 1, 2]
    assert [(r["prompt_index"], r["sample_index"]) for r in sampled] == [
        (i, j) for i in range(3) for j in range(2)
    ]
    for name in ("greedy", "sampled"):
        for r, rescored in zip(gen[name], gen[name + "_rescored"]):
            assert len(r["token_ids"]) == len(r["logprobs"]) == 6 and r["finish_reason"] == "length"
            # the sampled token's log-prob equals re-scoring the continuation (raw log-probs)
            assert max_abs_diff([r["logprobs"]], [rescored]) < ATOL
    assert gen["stopped"]["finish_reason"] == "stop"
    assert gen["big_batch"]  # every seeded sample of a batch larger than one prefill step came back
    first = greedy[0]["token_ids"]
    assert gen["stopped"]["token_ids"] == first[: first.index(gen["stop_token"]) + 1]
    # engines of different TP hold the same weights: same greedy continuation
    other = refit_run["generate"][str(ENGINE_TPS[0])]["greedy"]
    assert [r["token_ids"] for r in greedy] == [r["token_ids"] for r in other]
