"""Transformer Engine FP8 training config: precision.fp8* -> Megatron's TransformerConfig, on CPU.

TE cannot be installed here, so the mapping is pure (the TE version is an argument) and tested
end to end up to Megatron's own TransformerConfig validation, which runs without TE.
"""

from __future__ import annotations

import dataclasses

import pytest

from megatron_tulu.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from megatron_tulu.config.transformer import fp8_settings, installed_te_version, to_transformer_config

BF16 = dict(params_dtype="bf16", fp8="hybrid")


@pytest.mark.parametrize(
    ("recipe", "megatron_recipe"),
    [("delayed", "delayed"), ("current", "tensorwise"), ("blockwise", "blockwise"), ("mxfp8", "mxfp8")],
)
def test_recipes_reach_transformer_config(recipe, megatron_recipe):
    prec = PrecisionConfig(**BF16, fp8_recipe=recipe, fp8_amax_history_len=16)
    cfg = to_transformer_config(ModelConfig(), ParallelConfig(), prec, on_cuda=True, te_version="2.8.0")
    assert (cfg.fp8, cfg.fp8_recipe, cfg.bf16) == ("hybrid", megatron_recipe, True)
    # amax history belongs to delayed scaling only; the others keep Megatron's defaults
    default_len = next(f.default for f in dataclasses.fields(cfg) if f.name == "fp8_amax_history_len")
    assert cfg.fp8_amax_history_len == (16 if recipe == "delayed" else default_len)


@pytest.mark.parametrize(
    ("recipe", "too_old"), [("current", "2.1.0"), ("blockwise", "2.2.0"), ("mxfp8", "2.0.0")]
)
def test_recipe_needs_te_version(recipe, too_old):
    with pytest.raises(ValueError, match=rf"fp8_recipe={recipe} needs Transformer Engine >="):
        fp8_settings(PrecisionConfig(**BF16, fp8_recipe=recipe), too_old)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fp8": "e5m2"}, "precision.fp8 must be one of"),
        ({"fp8_recipe": "fancy"}, "precision.fp8_recipe must be one of"),
        ({"params_dtype": "fp32"}, "params_dtype=bf16"),
        ({"transformer_impl": "local"}, "Transformer Engine layer spec"),
        ({"fp8_amax_compute_algo": "mean"}, "fp8_amax_compute_algo"),
        ({"fp8_amax_history_len": 0}, "fp8_amax_history_len"),
    ],
)
def test_bad_fp8_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        fp8_settings(PrecisionConfig(**{**BF16, **fields}), "2.8.0")


def test_missing_te_and_cpu_are_refused():
    with pytest.raises(ValueError, match="not installed"):
        fp8_settings(PrecisionConfig(**BF16), None)
    with pytest.raises(ValueError, match="needs CUDA"):
        to_transformer_config(ModelConfig(), ParallelConfig(), PrecisionConfig(**BF16), on_cuda=False)
    # this machine has no TE wheel: the probe says so instead of failing
    assert installed_te_version() is None or isinstance(installed_te_version(), str)
