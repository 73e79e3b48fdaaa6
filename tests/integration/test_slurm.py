"""The shipped sbatch (examples/slurm/rlvr.sbatch) on a real Slurm: Debian's slurm-wlm on this machine,
one slurmctld and two slurmd as nodes n0 and n1 (tests/slurm_cluster.py starts and stops them).

CI: a failure leaves its logs and fails the job -- a missing PYTHON, or a checkpoint.resume the
script sets itself, is refused in the batch log; a run whose ranks fail (a model path that does not
exist) ends FAILED with srun's non-zero exit, one log per node and an ``error:`` line in each.

``MEGATRON_TULU_FULL_SLURM=1`` (minutes each on two cores; vLLM CPU engines):
- the tiny two-node preset (learners TP2 on n0, a TP2 vLLM engine on n1; 6 steps) runs to
  COMPLETED, one log per node, refit_bytes_over_shard_max 1.00 after every step;
- the same job with ``scancel --signal=USR1 --batch`` mid-run: the batch shell asks for a stop, every
  learner saves the checkpoint of that step and the run exits; the job requeues itself, the next
  start resumes with checkpoint.resume=true, ends COMPLETED, and its metrics equal the uninterrupted
  job's. Slurm holds a requeued job ~2 minutes before it may start again (begin time); the test
  lifts that hold with ``scontrol update StartTime=now`` to save the wait.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import QUIET_ENV, REPO, VLLM_QUIET_ENV, full_set_only
from tests.multinode import comparable, metrics, tiny_sources
from tests.slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.slow]

SBATCH = REPO / "examples" / "slurm" / "rlvr.sbatch"
# 2 nodes x 2 ranks, no GPUs; the time-limit warning scaled to the 30-minute limit (the 405B
# default, 3600 s, exceeds it: Slurm would signal at once)
TINY_2NODE = ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=2", "--time=30", "--signal=B:USR1@60"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = SlurmCluster.start_or_skip(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()
    assert cluster.processes() == [], "processes of the Slurm cluster left running"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The embedded tiny model as an HF directory, and a short held-out set (a quick step-0 eval)."""
    return tiny_sources(tmp_path_factory.mktemp("sources"))


def _job_env(**extra: str) -> dict[str, str]:
    """What the submitting shell exports (sbatch passes it to the job): the test's venv, 2 ranks per
    node, the same quiet CPU settings as the simulated-node launches of tests/multinode.py."""
    env = dict(PYTHON=sys.executable, REPO=str(REPO), NPROC_PER_NODE="2", **QUIET_ENV, **VLLM_QUIET_ENV)
    env.update(extra)
    return env


def _submit(cluster, submit_dir: Path, name: str, overrides: list[str], env: dict[str, str]) -> int:
    submit_dir.mkdir(parents=True, exist_ok=True)
    return cluster.sbatch(
        [*TINY_2NODE, f"--job-name={name}", str(SBATCH), *overrides], cwd=submit_dir, env=env
    )


def _node_logs(submit_dir: Path, name: str, job: int) -> list[Path]:
    return sorted((submit_dir / "logs").glob(f"{name}-{job}-node*.out"))


def _explain(cluster, submit_dir: Path, job: int) -> str:
    parts = [
        f"--- {p.relative_to(submit_dir)}\n{p.read_text(errors='replace')[-4000:]}"
        for p in submit_dir.rglob("*.out")
    ]
    return f"job {job}: {cluster.job(job)}\n" + "\n".join(parts) + "\n" + cluster.logs_tail()


# ------------------------------------------------------------------------------------------- CI
@pytest.mark.parametrize(
    "env, args, error",
    [
        ({"PYTHON": ""}, [], "error: set PYTHON to the python of the environment"),
        (
            {},
            ["checkpoint.resume=false"],
            "error: checkpoint.resume=false: this script sets checkpoint.resume",
        ),
    ],
    ids=["no-python", "own-resume"],
)
def test_bad_submission_is_refused_in_the_batch_log(cluster, tmp_path, env, args, error):
    job = _submit(cluster, tmp_path, "refused", ["preset=rlvr_tiny_2node", *args], _job_env(**env))
    info = cluster.wait(job, 60)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", _explain(cluster, tmp_path, job)
    log = (tmp_path / f"refused-{job}.out").read_text()
    assert error in log, log


def test_failing_ranks_fail_the_job_with_a_log_per_node(cluster, tmp_path, sources):
    """The dry run passes (it reads the preset), every rank then refuses the missing model path:
    srun returns non-zero, the job is FAILED, each node's log holds the error line."""
    missing = tmp_path / "no-such-model"
    job = _submit(
        cluster, tmp_path, "badmodel", ["preset=rlvr_tiny_2node", f"model.hf_path={missing}"], _job_env()
    )
    info = cluster.wait(job, 240)
    explain = _explain(cluster, tmp_path, job)
    assert info["JobState"] == "FAILED", explain
    assert info["ExitCode"] != "0:0", explain
    logs = _node_logs(tmp_path, "badmodel", job)
    assert [p.name for p in logs] == [f"badmodel-{job}-node0.out", f"badmodel-{job}-node1.out"], explain
    for log in logs:
        assert "error:" in log.read_text(errors="replace"), explain
    batch = (tmp_path / f"badmodel-{job}.out").read_text()
    assert "dry run OK" in batch and "error: srun exited" in batch, explain
    assert "[sbatch] SIGUSR1" not in batch and "requeue" not in batch, explain
    assert [c["JobState"] for c in cluster.completions() if c["JobId"] == str(job)] == ["FAILED"]


# ------------------------------------------------------------------------------------- full set
SIX_STEPS = ["preset=rlvr_tiny_2node", "rlvr.total_episodes=48", "checkpoint.save_interval=0"]


@pytest.fixture(scope="module")
def completed(cluster, sources, tmp_path_factory):
    """The uninterrupted job: 6 steps of the tiny two-node preset."""
    submit = tmp_path_factory.mktemp("completed")
    tiny, heldout = sources
    overrides = [*SIX_STEPS, f"model.hf_path={tiny}", f"rlvr.heldout_files=[{heldout}]"]
    t0 = time.monotonic()
    job = _submit(cluster, submit, "tiny2node", overrides, _job_env())
    info = cluster.wait(job, 1200)
    seconds = time.monotonic() - t0
    return submit, job, info, overrides, seconds


@full_set_only("SLURM", "two Slurm jobs of the tiny two-node RLVR preset (vLLM CPU engines)")
def test_tiny_two_node_job_completes(cluster, completed):
    submit, job, info, _, seconds = completed
    explain = _explain(cluster, submit, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", explain
    assert [c["JobState"] for c in cluster.completions() if c["JobId"] == str(job)] == ["COMPLETED"]
    logs = _node_logs(submit, "tiny2node", job)
    assert [p.name for p in logs] == [f"tiny2node-{job}-node0.out", f"tiny2node-{job}-node1.out"], explain
    out = submit / "outputs" / f"tiny2node-{job}"
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(7)), explain
    for r in rows[1:]:
        assert r["refit_bytes_over_shard_max"] == 1.0 and r["refit_bytes_over_shard_min"] == 1.0, r
    assert not (out / "stopped_for_requeue").exists()
    print(f"\n[slurm] job {job}: {info['JobState']} in {seconds:.0f} s on {info['NodeList']}")


@full_set_only("SLURM", "two Slurm jobs of the tiny two-node RLVR preset (vLLM CPU engines)")
def test_usr1_checkpoints_requeues_and_resumes_exactly(cluster, completed, tmp_path):
    ref_submit, ref_job, ref_info, overrides, _ = completed
    assert ref_info["JobState"] == "COMPLETED", _explain(cluster, ref_submit, ref_job)
    reference = metrics(ref_submit / "outputs" / f"tiny2node-{ref_job}")

    job = _submit(cluster, tmp_path, "tiny2node", overrides, _job_env())
    out = tmp_path / "outputs" / f"tiny2node-{job}"
    deadline = time.monotonic() + 900
    while len(metrics(out)) < 3:  # steps 0-2 logged: mid-run
        state = cluster.job(job).get("JobState")
        assert time.monotonic() < deadline and state in ("PENDING", "RUNNING"), _explain(
            cluster, tmp_path, job
        )
        time.sleep(1)
    cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
    signalled_at = time.monotonic()

    while (info := cluster.job(job)).get("Restarts") != "1":  # stopped, requeued
        assert time.monotonic() < deadline and info.get("JobState") in ("RUNNING", "COMPLETING"), _explain(
            cluster, tmp_path, job
        )
        time.sleep(1)
    stopped_s = time.monotonic() - signalled_at
    cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)  # Slurm's requeue hold
    info = cluster.wait(job, 900)
    explain = _explain(cluster, tmp_path, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", explain

    batch = (tmp_path / f"tiny2node-{job}.out").read_text()
    assert "[sbatch] SIGUSR1 (the time limit is near)" in batch, explain
    stop_line = next(line for line in batch.splitlines() if "the run stopped for requeue" in line)
    stop = json.loads(stop_line.split("(", 1)[1].rsplit("); srun exit", 1)[0])
    assert 2 <= stop["step"] < 6 and stop["reason"] == "stop_request file", stop
    assert f"job {job} start 1 " in batch and "checkpoint.resume=true" in batch, explain
    assert [c["JobState"] for c in cluster.completions() if c["JobId"] == str(job)][-1] == "COMPLETED"
    node_logs = _node_logs(tmp_path, "tiny2node", job)
    assert len(node_logs) == 2, explain
    node0 = node_logs[0].read_text(errors="replace")
    resumed_from = out / "checkpoints" / f"step_{stop['step']:07d}"
    assert f"resuming from {resumed_from}" in node0, explain

    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(7)), explain
    assert comparable(rows) == comparable(reference)
    print(
        f"\n[slurm] job {job}: USR1 -> stopped after step {stop['step']} and requeued in {stopped_s:.0f} s; "
        f"restart resumed and COMPLETED; metrics equal the uninterrupted job {ref_job}'s"
    )
