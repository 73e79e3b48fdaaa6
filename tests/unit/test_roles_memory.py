"""RLVR launch surface: role assignment, per-GPU memory estimate and the 405B dry run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from megatron_tulu.algorithms.memory import (
    GB,
    activation_bytes_per_layer,
    count_params,
    estimate_engine_memory,
    estimate_learner_memory,
    format_memory_table,
    stage_params,
)
from megatron_tulu.algorithms.roles import (
    LayoutError,
    assign_roles,
    check_rollout_batch,
    world_from_env,
)
from megatron_tulu.config.load import config_dir, load_config, to_dataclass
from megatron_tulu.config.schema import ModelConfig, ParallelConfig, RLVRRunConfig, RolloutConfig

REPO = Path(__file__).resolve().parents[2]


def model(name: str) -> ModelConfig:
    return to_dataclass(OmegaConf.load(config_dir() / "model" / f"{name}.yaml"), ModelConfig)


M405, M70, M8 = model("llama3.1_405b"), model("llama3.1_70b"), model("llama3.1_8b")

TP8_PP6 = ParallelConfig(tp=8, pp=6)


def dedicated(engine_tp: int, num_engines: int = 1) -> RolloutConfig:
    return RolloutConfig(placement="dedicated", engine_tp=engine_tp, num_engines=num_engines)


# ------------------------------------------------------------------------------------- roles
def test_405b_tulu3_split_240_learners_plus_one_tp16_engine():
    roles = assign_roles(
        M405,
        TP8_PP6,
        dedicated(16),
        nodes=32,
        gpus_per_node=8,
    )
    assert (roles.world_size, roles.learner_world_size, roles.engine_world_size) == (256, 240, 16)
    assert (roles.tp, roles.pp, roles.dp) == (8, 6, 5)
    assert roles.learner_ranks() == list(range(240))
    assert roles.engine_ranks() == list(range(240, 256))
    assert roles.nodes_of(roles.engine_ranks()) == [30, 31]
    # every learner coordinate exactly once, Megatron order (TP fastest, then DP, then PP)
    coords = {roles.role_of(r).learner for r in roles.learner_ranks()}
    assert len(coords) == 240
    for r in (0, 7, 8, 39, 40, 239):
        c = roles.role_of(r).learner
        assert roles.learner_rank(c.tp, c.pp, c.dp) == r
    assert roles.role_of(41).learner.__dict__ == {"tp": 1, "pp": 1, "dp": 0}
    # a TP group never leaves its node
    for r in roles.learner_ranks():
        c = roles.role_of(r).learner
        assert roles.learner_rank(0, c.pp, c.dp) // 8 == r // 8
    e = roles.role_of(247)
    assert (e.kind, e.engine.engine, e.engine.tp_rank, e.node, e.local_rank) == ("engine", 0, 7, 30, 7)
    assert roles.engine_rank(0, 15) == 255
    text = roles.describe()
    assert "ranks 0-39" in text and "learner pp0" in text and "ranks 240-255" in text and "engine 0" in text


def test_rank_formula_matches_the_refit_planner():
    from megatron_tulu.rollout.bridge.layouts import EngineLayout, LearnerLayout, learner_coords
    from megatron_tulu.rollout.bridge.planner import engine_global_rank

    roles = assign_roles(
        M405,
        ParallelConfig(tp=8, pp=14),
        dedicated(16, num_engines=2),
        nodes=32,
    )
    assert (roles.dp, roles.learner_world_size) == (2, 224)
    for r in range(0, 224, 13):
        c = roles.role_of(r).learner
        assert learner_coords(r, 8, 2) == (c.tp, c.pp, c.dp)
    ll, el = LearnerLayout(8, 14, 2, M405), EngineLayout(16, 2)
    assert [engine_global_rank(ll, el, e, n) for e in (0, 1) for n in range(16)] == roles.engine_ranks()


def test_colocated_engines_share_learner_gpus():
    roles = assign_roles(
        M8, ParallelConfig(tp=2), RolloutConfig(engine_tp=2, num_engines=4, placement="colocated"), nodes=1
    )
    assert roles.dp == 4 and roles.learner_world_size == 8 and roles.engine_world_size == 8
    assert all(r.kind == "learner+engine" for r in roles.ranks)
    assert roles.engine_rank(3, 1) == 7 and roles.role_of(7).engine.__dict__ == {"engine": 3, "tp_rank": 1}
    part = assign_roles(
        M8, ParallelConfig(tp=2), RolloutConfig(engine_tp=4, num_engines=1, placement="colocated"), nodes=1
    )
    assert [r.kind for r in part.ranks] == ["learner+engine"] * 4 + ["learner"] * 4
    assert "learner+engine" not in part.describe() and "engine 0" in part.describe()


def test_small_engines_share_a_node_with_learners():
    # Tülu 3 8B: learners and a TP1 engine on one node (here TP1 x DP7 + 1 engine)
    roles = assign_roles(M8, ParallelConfig(tp=1), dedicated(1), nodes=1)
    assert roles.dp == 7 and roles.engine_ranks() == [7]


@pytest.mark.parametrize(
    "parallel,rollout,nodes,needle",
    [
        (TP8_PP6, dedicated(16, num_engines=16), 32, "not enough GPUs"),
        (TP8_PP6, dedicated(16, num_engines=2), 32, "are not divisible by TP8"),
        (TP8_PP6, dedicated(12), 32, "must cover whole nodes"),
        (TP8_PP6, dedicated(3), 32, "does not divide gpus_per_node=8"),
        (ParallelConfig(tp=8, pp=5), dedicated(16), 32, "num_layers=126 is not divisible by pp"),
        (ParallelConfig(tp=8, pp=6, dp=4), dedicated(16), 32, "parallel.dp=4 needs 192"),
        (TP8_PP6, RolloutConfig(engine_tp=16, placement="x"), 32, "placement must be"),
        (ParallelConfig(tp=16, pp=4), dedicated(16), 10, "num_query_groups=8 is not divisible"),
        (
            TP8_PP6,
            RolloutConfig(engine_tp=16, num_engines=17, placement="colocated"),
            32,
            "colocated engines need",
        ),
    ],
)
def test_bad_layouts_fail_with_a_clear_message(parallel, rollout, nodes, needle):
    with pytest.raises(LayoutError) as err:
        assign_roles(M405, parallel, rollout, nodes=nodes, gpus_per_node=8)
    assert needle in str(err.value)


def test_divisibility_error_suggests_engine_counts():
    with pytest.raises(LayoutError, match=r"num_engines=2 \(learner DP2\)"):
        assign_roles(M405, ParallelConfig(tp=8, pp=14), dedicated(16), nodes=32)


def test_multinode_engine_can_be_forbidden():
    with pytest.raises(LayoutError, match="multi-node engines are disabled"):
        assign_roles(
            M405,
            TP8_PP6,
            dedicated(16),
            nodes=32,
            allow_multinode_engine=False,
        )


def test_engine_tp_must_shard_the_model():
    with pytest.raises(LayoutError) as err:
        assign_roles(M8, ParallelConfig(tp=8), dedicated(64), nodes=16)
    assert "num_attention_heads=32 is not divisible by rollout.engine_tp=64" in str(err.value)
    assert "valid rollout.engine_tp values: [1, 2, 4, 8, 16, 32]" in str(err.value)


def test_rollout_batch_and_env():
    assert check_rollout_batch(1856, 2) == 928
    with pytest.raises(LayoutError, match="do not split over learner DP5"):
        check_rollout_batch(1856, 5)
    assert world_from_env({"SLURM_NNODES": "32", "SLURM_GPUS_ON_NODE": "8"}) == (32, 8)
    assert world_from_env({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}) == (2, 8)
    assert world_from_env({}) == (None, None)


# ------------------------------------------------------------------------------------ memory
def test_stage_params_sum_to_the_model():
    from megatron_tulu.config.transformer import padded_vocab_size

    for m, tp, pp in ((M405, 8, 6), (M8, 2, 4), (M70, 8, 5)):
        total = sum(stage_params(m, tp, pp, s) for s in range(pp))
        # count_params has no vocab padding; norms are replicated on every TP rank
        pad = 2 * (padded_vocab_size(m, tp) - m.vocab_size) * m.hidden_size // tp
        norms = m.num_layers * 2 * m.hidden_size * (tp - 1) / tp
        assert total * tp == pytest.approx(count_params(m) + pad * tp + norms * tp, rel=1e-6)


def test_memory_is_monotonic_in_tp_pp_dp_and_recompute():
    kw = dict(seq_len=3072, num_microbatches=64)

    def total(tp, pp, dp, rc="selective"):
        return estimate_learner_memory(M405, tp, pp, dp, recompute=rc, value_model=M8, **kw).total

    assert total(8, 14, 2) < total(8, 6, 2) < total(8, 3, 2)
    assert total(8, 6, 5) < total(8, 6, 2) < total(8, 6, 1)
    assert total(8, 6, 2) < total(4, 6, 2)
    assert total(8, 6, 5, "full") < total(8, 6, 5, "selective") < total(8, 6, 5, "none")
    a = [activation_bytes_per_layer(M405, 2048, 1, 8, True, rc) for rc in ("full", "selective", "none")]
    assert a[0] < a[1] < a[2]
    # without sequence parallelism the 8sbh outside the TP region is replicated
    assert activation_bytes_per_layer(M405, 2048, 1, 8, False) > a[1]


def test_memory_parts_sum_and_formulas():
    est = estimate_learner_memory(M405, 8, 6, 5, seq_len=3072, recompute="selective", value_model=M8)
    p = est.policy
    assert est.stage == 0
    assert (
        p.weights == 2 * p.params
        and p.grads == 4 * p.params
        and p.optimizer == pytest.approx(12 * p.params / 5)
    )
    assert est.reference.weights == p.weights and est.reference.grads == 0 and est.reference.activations == 0
    parts = p.states + est.value.states + est.reference.states + max(p.activations, est.value.activations)
    assert est.total == pytest.approx(parts + est.overhead)
    # the Llama count: (8sbh + sb(4h + 4gd + 6f) + 2as^2b) / t with sequence parallelism
    m = ModelConfig(hidden_size=1024, ffn_hidden_size=2816, num_attention_heads=16, num_query_groups=4)
    s, h, f, gd, a, t = 512, 1024, 2816, 4 * 64, 16, 2
    none = (8 * s * h + s * (4 * h + 4 * gd + 6 * f) + 2 * a * s * s) / t
    assert activation_bytes_per_layer(m, s, 1, t, True, "none") == pytest.approx(none)
    assert activation_bytes_per_layer(m, s, 1, t, True, "selective") == pytest.approx(
        none - 2 * a * s * s / t
    )
    assert activation_bytes_per_layer(m, s, 1, t, True, "full") == 2 * s * h / t
    # fp32 (CPU): 4 B weights, no main-param copy
    cpu = estimate_learner_memory(model("tiny"), 1, 1, 1, seq_len=160, params_dtype="fp32", reference=False)
    assert cpu.policy.weights == 4 * cpu.policy.params and cpu.policy.optimizer == 8 * cpu.policy.params
    assert cpu.reference is None and cpu.value is None


def test_405b_recommended_layout_fits_in_80gb_and_tulu3_split_does_not():
    kw = dict(seq_len=2048 + 1024, micro_batch=1, num_microbatches=928, value_model=M8)
    ours = estimate_learner_memory(M405, 8, 14, 2, recompute="full", **kw)
    assert ours.total < 80 * GB  # ~60.5 GB: the preset's TP8 x PP14 x DP2
    assert 55 * GB < ours.total
    # Tülu 3's 240 learner GPUs as Megatron TP8 x PP6 x DP5 (ZeRO-1, fp32 grads): ~97 GB, too much
    assert estimate_learner_memory(M405, 8, 6, 5, recompute="full", **kw).total > 80 * GB
    eng = estimate_engine_memory(M405, 16, seq_len=3072, gpu_memory_utilization=0.9)
    assert eng.weights == pytest.approx(405.9e9 * 2 / 16, rel=0.01)
    assert eng.kv_bytes_per_token == 2 * 126 * 1 * 128 * 2  # 8 KV heads replicated over TP16
    assert eng.max_sequences > 50
    table = format_memory_table(ours, eng)
    assert "fits in 80 GB" in table and "KV cache" in table and "reference weights" in table


# ------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize(
    "preset,name,tp,pp,etp,lr,beta,batch,k",
    [
        ("rlvr_tulu3_8b", "llama3.1_8b", 4, 1, 1, 3e-7, 0.05, 224, 4),
        ("rlvr_tulu3_70b", "llama3.1_70b", 8, 5, 4, 1e-7, 0.07, 640, 4),
        ("rlvr_tulu3_405b", "llama3.1_405b", 8, 14, 16, 1e-7, 0.05, 1856, 1),
    ],
)
def test_presets_compose(preset, name, tp, pp, etp, lr, beta, batch, k):
    cfg = load_config([f"preset={preset}"], config_name="rlvr", schema=RLVRRunConfig)
    assert (cfg.model.name, cfg.parallel.tp, cfg.parallel.pp, cfg.rollout.engine_tp) == (name, tp, pp, etp)
    assert (cfg.optimizer.lr, cfg.rlvr.beta, cfg.rlvr.prompts_per_step, cfg.rlvr.ppo_epochs) == (
        lr,
        beta,
        batch,
        k,
    )
    # Tülu's sampling and value optimizer, not the embedded default's tiny-model tuning
    assert (cfg.rollout.temperature, cfg.rlvr.value_lr, cfg.rlvr.dataset_weights) == (1.0, None, None)
    nodes = {"rlvr_tulu3_8b": 2, "rlvr_tulu3_70b": 6, "rlvr_tulu3_405b": 32}[preset]
    roles = assign_roles(cfg.model, cfg.parallel, cfg.rollout, nodes=nodes)
    check_rollout_batch(cfg.rlvr.prompts_per_step, roles.dp)


def test_embedded_default_is_tiny():
    cfg = load_config([], config_name="rlvr", schema=RLVRRunConfig)
    assert cfg.model.name == "tiny" and cfg.rollout.engine_tp == 1 and cfg.train.output_dir == "outputs/rlvr"
    over = load_config(["parallel.tp=2", "rollout.num_engines=2"], config_name="rlvr", schema=RLVRRunConfig)
    assert over.parallel.tp == 2 and over.rollout.num_engines == 2


# ------------------------------------------------------------------------------------ dry run
@pytest.fixture(scope="module")
def rm_8b(tmp_path_factory) -> str:
    """A local Tülu 3 8B RM directory as the sbatch would pass it (rlvr.value_model=DIR; config.json
    only: the plan reads no weights). The runs below inherit conftest's HF_HUB_OFFLINE=1, under which
    the preset's Hub id is refused (tests/unit/test_launch_plan.py)."""
    from tests.unit.test_launch_plan import hf_dir

    return str(hf_dir(tmp_path_factory.mktemp("rm") / "tulu3-8b-rm"))


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for key in ("SLURM_NNODES", "SLURM_GPUS_ON_NODE", "SLURM_JOB_NUM_NODES", "SLURM_JOB_ID"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / "rlvr_405b.py"), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )


@pytest.mark.slow
def test_dry_run_405b_on_32_nodes(rm_8b):
    out = _dry_run(
        "--nodes", "32", "--gpus-per-node", "8", "--time-limit", "48:00:00", "--signal-seconds", "600",
        f"rlvr.value_model={rm_8b}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "learners TP8 x PP14 x DP2 = 224 GPUs" in text
    assert "ranks 0-15" in text and "ranks 224-239  engine 0" in text and "ranks 240-255  engine 1" in text
    assert "fits in 80 GB" in text and "policy fp32 main params + Adam m,v (/DP2)" in text
    assert "refit plan" in text and "GB per receiver min/mean/max" in text and "51.27/51.27/51.27" in text
    assert "predicted seconds" in text and "dry run OK: 256 ranks" in text
    # the 8B value model's 32 layers on PP14 (its config.json): Megatron-Core's uneven first/last stages
    assert "value model tulu3-8b-rm: 32 layers on the learners' TP8 x PP14: 4 + 12 x 2 + 4" in text
    # hours and requeues: 161 steps x ~35 min against 48 h allocations
    assert "161 steps x 35.0 min (rlvr.expected_step_seconds) = 93.9 h of steps" in text
    assert "2 allocation(s), 1 requeue(s)" in text


@pytest.mark.slow
def test_dry_run_wrong_layouts_exit_nonzero(rm_8b):
    out = _dry_run("--nodes", "32", "--no-refit-plan", "parallel.pp=5")
    assert out.returncode == 2 and "num_layers=126 is not divisible by pp*vpp=5" in out.stderr
    out = _dry_run("--nodes", "32", "--no-refit-plan", "rollout.num_engines=1")
    assert out.returncode == 2 and "num_engines=2 (learner DP2)" in out.stderr
    # Tülu 3's split as Megatron ZeRO-1: the batch does not split over DP5, and the memory does not fit
    out = _dry_run("--nodes", "32", "--no-refit-plan", "parallel.pp=6", "rollout.num_engines=1")
    assert out.returncode == 2 and "do not split over learner DP5" in out.stderr
    out = _dry_run(
        "--nodes",
        "32",
        "--no-refit-plan",
        "parallel.pp=6",
        "rollout.num_engines=1",
        "rlvr.prompts_per_step=1920",
        "train.global_batch_size=1920",  # check_rl_config, as setup makes it
        f"rlvr.value_model={rm_8b}",
    )
    assert out.returncode == 2 and "DOES NOT FIT" in out.stdout and "> 80 GB" in out.stderr
    # the checks RLTrainer.setup makes are the dry run's: the preset's global batch is 1,856
    out = _dry_run(
        "--nodes", "32", "--no-refit-plan", "rlvr.prompts_per_step=1920", "rlvr.num_mini_batches=2"
    )
    assert out.returncode == 2 and "set train.global_batch_size=1920" in out.stderr
    assert _dry_run("--no-refit-plan").returncode == 2  # no node count
