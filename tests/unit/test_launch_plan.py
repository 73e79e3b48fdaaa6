"""The launch plan the dry run and RLTrainer.setup share (algorithms/launch_plan.py): time and
requeues, the batch checks, the value model's source, the memory plan; the dry run's report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from megatron_tulu.algorithms.dry_run import dry_run, split_argv
from megatron_tulu.algorithms.launch_plan import (
    TimePlan,
    check_rl_batch,
    job_signal_lead,
    job_time_limit,
    locate_value_model,
    parse_signal_lead,
    parse_slurm_time,
    plan_memory,
    plan_time,
    total_rl_steps,
)
from megatron_tulu.algorithms.memory import GB
from megatron_tulu.config.load import config_dir, load_config, to_dataclass
from megatron_tulu.config.schema import ModelConfig, RLVRRunConfig
from megatron_tulu.config.validate import LayoutError

REPO = Path(__file__).resolve().parents[2]
RM_ID = "allenai/Llama-3.1-Tulu-3-8B-RM"  # the 405B preset's value model


def preset_405b(*overrides: str) -> RLVRRunConfig:
    return load_config(["preset=rlvr_tulu3_405b", *overrides], config_name="rlvr", schema=RLVRRunConfig)


def hf_dir(path: Path, model: str = "llama3.1_8b") -> Path:
    """A local HF directory with the config.json of a hydra_conf/model architecture (no weights:
    the plan reads only the config)."""
    import torch

    from megatron_tulu.models.hf_io import hf_config_dict

    cfg = to_dataclass(OmegaConf.load(config_dir() / "model" / f"{model}.yaml"), ModelConfig)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(hf_config_dict(cfg, torch.bfloat16)))
    return path


def hub_cache(root: Path, repo_id: str) -> Path:
    """A Hugging Face hub cache holding ``repo_id``'s config.json, in huggingface_hub's layout."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    hf_dir(repo / "snapshots" / commit)
    return root


# ------------------------------------------------------------------------------------------- time
def test_slurm_times_and_signals() -> None:
    assert parse_slurm_time("48:00:00") == 48 * 3600
    assert parse_slurm_time("2-00:00:00") == parse_slurm_time("2-0") == 48 * 3600
    assert parse_slurm_time("1-02:03") == (26 * 60 + 3) * 60
    assert parse_slurm_time("90") == 90 * 60 and parse_slurm_time("90:30") == 90 * 60 + 30
    assert parse_slurm_time("UNLIMITED") is None and parse_slurm_time("infinite") is None
    with pytest.raises(ValueError, match="not a Slurm time"):
        parse_slurm_time("48h")
    assert parse_signal_lead("B:USR1@600") == 600 and parse_signal_lead("USR1") == 60  # Slurm's default
    assert parse_signal_lead("R:TERM@120") == 120
    with pytest.raises(ValueError, match="--signal"):
        parse_signal_lead("USR1@ten")


def test_time_limit_comes_from_the_job_else_the_sbatch(tmp_path: Path) -> None:
    sbatch = tmp_path / "job.sbatch"
    sbatch.write_text(
        "#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --time=12:00:00\n#SBATCH --signal=B:USR1@900\n"
    )
    assert job_time_limit({}, sbatch) == ("12:00:00", str(sbatch))
    assert job_signal_lead(sbatch) == (900.0, f"{sbatch} --signal=B:USR1@900")
    env = {"SLURM_JOB_START_TIME": "1000", "SLURM_JOB_END_TIME": str(1000 + 6 * 3600 + 30 * 60)}
    assert job_time_limit(env, sbatch) == ("6:30:00", "this Slurm job")
    missing = tmp_path / "none.sbatch"
    assert job_time_limit({}, missing) == ("48:00:00", "default")
    assert job_signal_lead(missing)[0] == 0.0
    # the shipped sbatch is what a dry run outside Slurm plans against
    limit, source = job_time_limit({})
    assert parse_slurm_time(limit) and source == "examples/slurm/rlvr.sbatch"


def test_405b_preset_needs_one_requeue_at_48_hours() -> None:
    cfg = preset_405b()
    assert cfg.rlvr.expected_step_seconds == 2100  # the sbatch's ~35 min per step
    assert total_rl_steps(cfg) == 300_000 // 1856 == 161
    plan = plan_time(cfg, 2100, "48:00:00", startup_s=900, signal_s=600)
    # (48 h - 15 min start-up - 10 min warning) // 35 min = 81 steps; 161 steps need two allocations
    assert (plan.steps_per_allocation, plan.allocations, plan.requeues) == (81, 2, 1)
    assert plan.steps_s / 3600 == pytest.approx(93.9, abs=0.05)
    assert plan.wall_s == 161 * 2100 + 2 * 900
    assert plan.redo_after_missed_signal == 20 and plan.problems() == []
    text = plan.describe("rlvr.expected_step_seconds", "48:00:00", "sbatch", "sbatch --signal")
    assert "161 steps x 35.0 min" in text and "93.9 h of steps" in text
    assert "81 steps per allocation -> 2 allocation(s), 1 requeue(s)" in text
    assert "the step in progress at the signal (35.0 min) + a start-up (15.0 min)" in text
    assert "up to 20 steps (11.7 h; checkpoint.save_interval=20)" in text
    # train.train_iters caps the run
    assert total_rl_steps(preset_405b("train.train_iters=100")) == 100


def test_time_plan_arithmetic() -> None:
    # 10 steps of 100 s in 350 s allocations with 50 s start-up: 3 steps fit per allocation
    signal = TimePlan(steps=10, step_s=100, limit_s=350, startup_s=50, save_interval=2, signal_s=0.1)
    assert (signal.steps_per_allocation, signal.kept_per_allocation) == (2, 2)  # the signal's lead costs one
    assert signal.allocations == 5
    periodic = TimePlan(steps=10, step_s=100, limit_s=350, startup_s=50, save_interval=2)
    # without a signal an allocation keeps what its last periodic checkpoint saved: 2 of its 3 steps;
    # the last allocation finishes with 3: 3 + 2 + 2 + 2 = 9 < 10 -> 1 + ceil(7 / 2) = 5 allocations
    assert (periodic.steps_per_allocation, periodic.kept_per_allocation, periodic.allocations) == (3, 2, 5)
    assert periodic.requeues == 4 and periodic.redo_after_missed_signal == 2
    assert TimePlan(steps=3, step_s=100, limit_s=350, startup_s=50, save_interval=0).allocations == 1
    unlimited = TimePlan(steps=161, step_s=2100, limit_s=None, startup_s=900, save_interval=20)
    assert (unlimited.allocations, unlimited.requeues, unlimited.steps_per_allocation) == (1, 0, None)
    # a step that cannot fit, and allocations that keep nothing: the run never finishes
    too_long = TimePlan(steps=5, step_s=3600, limit_s=3000, startup_s=60, save_interval=1)
    assert too_long.allocations is None and "does not fit in the time limit 0:50:00" in too_long.problems()[0]
    never = TimePlan(steps=10, step_s=100, limit_s=350, startup_s=50, save_interval=0)
    assert never.allocations is None and "nothing keeps them" in never.problems()[0]
    assert TimePlan(steps=10, step_s=100, limit_s=350, startup_s=50, save_interval=5).allocations is None
    with pytest.raises(ValueError, match="> 0"):
        plan_time(preset_405b(), 0, "48:00:00")


# ------------------------------------------------------------------------------------------ batch
def test_batch_checks_are_setups() -> None:
    cfg = preset_405b()
    assert check_rl_batch(cfg, 2) == 928
    with pytest.raises(LayoutError, match="do not split over learner DP5"):
        check_rl_batch(cfg, 5)
    with pytest.raises(LayoutError, match=r"num_mini_batches = 2 x 1 x 3"):
        check_rl_batch(preset_405b("rlvr.num_mini_batches=3"), 2)
    # 8 prompts x 4 samples split over DP16 by rows, but a replica would get half a group
    grpo = preset_405b("rlvr.prompts_per_step=8", "rollout.samples_per_prompt=4")
    with pytest.raises(LayoutError, match="whole groups of samples"):
        check_rl_batch(grpo, 16)


# ------------------------------------------------------------------------------------ value model
def test_value_model_sources(tmp_path: Path) -> None:
    offline, online = {"HF_HUB_OFFLINE": "1"}, {}
    empty = tmp_path / "empty-cache"
    assert locate_value_model(None, offline).kind == "policy"
    local = hf_dir(tmp_path / "rm-8b")
    assert locate_value_model(str(local), offline, empty).path == str(local)
    with pytest.raises(LayoutError, match="no config.json there"):
        locate_value_model(str(tmp_path), offline, empty)
    with pytest.raises(LayoutError, match="no such directory"):
        locate_value_model(str(tmp_path / "missing"), online, empty)
    # a Hub id: from the local cache, in either mode
    cache = hub_cache(tmp_path / "hub", RM_ID)
    found = locate_value_model(RM_ID, offline, cache)
    assert found.kind == "cache" and Path(found.path, "config.json").is_file()
    # not cached: offline it cannot load (one line naming the fix); online setup downloads it
    with pytest.raises(LayoutError) as err:
        locate_value_model(RM_ID, offline, empty)
    text = str(err.value)
    assert "\n" not in text and "HF_HUB_OFFLINE is set" in text and f"hf download {RM_ID}" in text
    assert locate_value_model(RM_ID, online, empty).kind == "hub"


# ----------------------------------------------------------------------------------------- memory
def test_memory_plan_refuses_tulu3_split_and_fits_the_preset() -> None:
    from megatron_tulu.algorithms.dry_run import _model_yaml

    cfg, value = preset_405b(), _model_yaml("llama3.1_8b")
    plan = plan_memory(cfg, 8, 14, 2, value, gpu_memory_gb=80, limit_gb=80)
    assert plan.recompute == "full" and plan.problems == []
    assert 55 * GB < plan.learner_rank_total < 80 * GB and plan.engine.kv_cache > 0
    tulu3 = plan_memory(cfg, 8, 6, 5, value, gpu_memory_gb=80, limit_gb=80)
    assert tulu3.learner.total > 90 * GB and "> 80 GB" in tulu3.problems[0]
    assert plan_memory(cfg, 8, 6, 5, value, gpu_memory_gb=80, limit_gb=0).problems == []  # check off
    auto = plan_memory(cfg, 8, 14, 2, value, gpu_memory_gb=80, limit_gb=80, recompute="auto")
    assert auto.recompute == "full"  # selective needs ~84 GB


def test_405b_learner_yaml_is_the_layout_that_fits() -> None:
    """hydra_conf/parallel/405b_learner.yaml is the preset's layout (TP8 x PP14, full recompute,
    distributed optimizer), not Tülu 3's TP8 x PP6 that needs ~97 GB per GPU."""
    from megatron_tulu.algorithms.roles import assign_roles

    alone = load_config(
        ["model=llama3.1_405b", "parallel=405b_learner"], config_name="rlvr", schema=RLVRRunConfig
    )
    cfg = preset_405b()
    fields = ("name", "tp", "pp", "sequence_parallel", "recompute", "use_distributed_optimizer")
    assert [getattr(alone.parallel, f) for f in fields] == [getattr(cfg.parallel, f) for f in fields]
    assert (cfg.parallel.name, cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.recompute) == (
        "405b_learner",
        8,
        14,
        "full",
    )
    from megatron_tulu.algorithms.dry_run import _model_yaml

    roles = assign_roles(cfg.model, cfg.parallel, cfg.rollout, nodes=32)
    value = _model_yaml("llama3.1_8b")  # the preset's 8B value model
    plan = plan_memory(cfg, roles.tp, roles.pp, roles.dp, value, gpu_memory_gb=80, limit_gb=80)
    assert roles.dp == 2 and plan.problems == []


# ---------------------------------------------------------------------------------------- dry run
def _dry(capsys, *argv: str) -> tuple[int, str, str]:
    rc = dry_run(*split_argv(["--dry-run", "--no-refit-plan", *argv]))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def no_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache for this test (whatever this machine's own cache holds)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_dry_run_refuses_a_hub_value_model_offline(capsys, no_hub_cache, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as the sbatch sets it
    rc, out, err = _dry(capsys, "--nodes", "32")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"error: rlvr.value_model={RM_ID}"), err
    assert "per-GPU memory" not in out  # refused before the plan is printed
    # the same id from the local cache, offline: the architecture comes from its config.json
    hub_cache(no_hub_cache, RM_ID)
    rc, out, err = _dry(capsys, "--nodes", "32")
    assert rc == 0, err
    assert f"value model source: {RM_ID} from the local Hugging Face cache" in out
    assert "0123456789abcdef0123456789abcdef01234567/config.json" in out
    # online, not cached: setup would download it; the plan sizes it from its name and says so
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(no_hub_cache / "other"))
    rc, out, err = _dry(capsys, "--nodes", "32")
    assert rc == 0 and "setup downloads it" in out and "a guess: not downloaded yet" in out, err


def test_dry_run_time_plan_and_its_refusal(capsys, tmp_path: Path) -> None:
    rm = str(hf_dir(tmp_path / "rm-8b"))
    rc, out, err = _dry(
        capsys,
        "--nodes",
        "32",
        "--time-limit",
        "2-00:00:00",
        "--signal-seconds",
        "600",
        f"rlvr.value_model={rm}",
    )
    assert rc == 0, err
    assert "time plan: 161 steps x 35.0 min (rlvr.expected_step_seconds) = 93.9 h of steps" in out
    assert "time limit 2-00:00:00 (--time-limit), warning signal 10.0 min before it (--signal-seconds)" in out
    assert "81 steps per allocation -> 2 allocation(s), 1 requeue(s)" in out
    assert f"architecture from {rm}/config.json" in out
    # a step longer than the allocation: the plan cannot run
    rc, out, err = _dry(
        capsys, "--nodes", "32", "--step-seconds", "7200", "--time-limit", "1:00:00", f"rlvr.value_model={rm}"
    )
    assert rc == 2 and "does not fit in the time limit 1:00:00" in err
    # no step time known: no estimate, and no refusal
    rc, out, err = _dry(capsys, "--nodes", "32", "rlvr.expected_step_seconds=null", f"rlvr.value_model={rm}")
    assert rc == 0 and "time plan: no estimate (pass --step-seconds" in out, err


def test_setup_refuses_the_value_model_before_loading_anything(tmp_path: Path) -> None:
    """The real run (`megatron-tulu rlvr`, the embedded tiny default): RLTrainer.setup refuses a
    value model that cannot load offline before the engine starts or a model loads."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "megatron_tulu.cli",
            "rlvr",
            f"train.output_dir={tmp_path / 'run'}",
            "rlvr.value_model=example-org/missing-rm",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2, out.stderr[-3000:]
    assert lines[-1].startswith("error: rlvr.value_model=example-org/missing-rm is neither"), out.stderr[
        -3000:
    ]
    assert "[rlvr] training prompts" not in out.stdout  # setup stopped at its first line
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_online_hub_download_failure_is_one_line(tmp_path: Path) -> None:
    """Online, a Hub id that is not cached is fetched at setup; a failed fetch is a user error naming
    the fix, not a traceback (a Hub endpoint that refuses connections stands for an unreachable one)."""
    code = (
        "from megatron_tulu.algorithms.launch_plan import prepare_value_model\n"
        "from megatron_tulu.errors import report\n"
        "try:\n"
        "    prepare_value_model('example-org/missing-rm')\n"
        "except Exception as exc:\n"
        "    raise SystemExit(report(exc))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "downloading it from the Hub failed" in lines[0] and "local HF reward-model directory" in lines[0]
