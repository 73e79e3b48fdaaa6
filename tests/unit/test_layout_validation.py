"""Impossible layouts fail before any process group exists, with a message saying what to change."""

import pytest

from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import ModelConfig, ParallelConfig
from megatron_tulu.config.transformer import padded_vocab_size, to_transformer_config
from megatron_tulu.config.validate import LayoutError, validate_layout


def test_valid_layout_returns_dp():
    assert validate_layout(ModelConfig(), ParallelConfig(tp=2, pp=2), world_size=8) == 2


@pytest.mark.parametrize(
    "parallel,world,needle",
    [
        (ParallelConfig(tp=3), 3, "num_attention_heads=4 is not divisible by parallel.tp=3"),
        (ParallelConfig(tp=4), 4, "num_query_groups=2 is not divisible"),
        (ParallelConfig(pp=3), 3, "num_layers=4 is not divisible by pp*vpp=3"),
        (ParallelConfig(tp=2), 3, "world size 3 is not divisible by tp*pp*cp"),
        (ParallelConfig(tp=2, dp=4), 4, "parallel.dp=4 but world size 4"),
        (ParallelConfig(pp=1, vpp=2), 1, "needs parallel.pp >= 2"),
        (ParallelConfig(sequence_parallel=True), 1, "sequence_parallel=true needs parallel.tp >= 2"),
    ],
)
def test_bad_layouts_are_rejected(parallel, world, needle):
    with pytest.raises(LayoutError) as err:
        validate_layout(ModelConfig(), parallel, world_size=world)
    assert needle in str(err.value)


def test_unsupported_rope_scaling_is_refused():
    with pytest.raises(LayoutError, match="high_freq_factor=4"):
        validate_layout(ModelConfig(rope_high_freq_factor=2.0), ParallelConfig(), 1)


def test_init_parallel_rejects_before_creating_groups(monkeypatch):
    import torch.distributed as dist

    from megatron_tulu.engine.parallel import init_parallel

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(LayoutError):
        init_parallel(ModelConfig(), ParallelConfig(tp=2))
    assert not dist.is_initialized()


def test_hydra_overrides_and_presets():
    cfg = load_config(["model=llama3.1_405b", "parallel=405b_learner", "parallel.pp=7"])
    assert cfg.model.num_layers == 126 and cfg.model.hidden_size == 16384
    assert (cfg.parallel.tp, cfg.parallel.pp) == (8, 7)
    with pytest.raises(LayoutError, match="num_layers=126 is not divisible by pp"):
        validate_layout(cfg.model, ParallelConfig(tp=8, pp=4), world_size=32)


def test_hydra_rejects_unknown_keys():
    with pytest.raises(Exception, match="parallel.tpp"):
        load_config(["parallel.tpp=2"])


def test_transformer_config_mapping_is_llama():
    tc = to_transformer_config(ModelConfig(), ParallelConfig(tp=2), load_config([]).precision, on_cuda=False)
    assert tc.normalization == "RMSNorm" and tc.gated_linear_unit and not tc.add_bias_linear
    assert tc.num_query_groups == 2 and tc.kv_channels == 64 and tc.tensor_model_parallel_size == 2
    assert tc.use_cpu_initialization and tc.calculate_per_token_loss
    assert tc.hidden_dropout == 0.0 and tc.attention_dropout == 0.0


def test_recompute_maps_to_megatron_fields():
    precision = load_config([]).precision
    full = to_transformer_config(ModelConfig(), ParallelConfig(recompute="full"), precision, on_cuda=False)
    assert (full.recompute_granularity, full.recompute_method, full.recompute_num_layers) == (
        "full",
        "uniform",
        1,
    )
    sel = to_transformer_config(
        ModelConfig(), ParallelConfig(recompute="selective"), precision, on_cuda=False
    )
    assert sel.recompute_granularity == "selective" and sel.recompute_method is None
    none = to_transformer_config(ModelConfig(), ParallelConfig(), precision, on_cuda=False)
    assert none.recompute_granularity is None
    with pytest.raises(ValueError, match="parallel.recompute must be one of"):
        to_transformer_config(ModelConfig(), ParallelConfig(recompute="ful"), precision, on_cuda=False)


def test_padded_vocab():
    assert padded_vocab_size(ModelConfig(vocab_size=3999), 1) == 4096
    assert padded_vocab_size(ModelConfig(vocab_size=301), 2) == 512
    assert padded_vocab_size(ModelConfig(vocab_size=128256), 8) == 129024
