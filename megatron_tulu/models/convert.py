"""HF Llama <-> Megatron distributed checkpoint, at any TP x PP (``megatron-tulu convert``,
:mod:`megatron_tulu.commands.convert`).

Run under ``torchrun --nproc_per_node=tp*pp*dp`` for a multi-rank layout; each rank reads or
writes only its own shards. The checkpoint is reshardable: it loads at any other layout.
``overrides`` are Hydra overrides of the run config (``parallel.tp=2``), which give the layout.
"""

from __future__ import annotations

import dataclasses

from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import ModelConfig
from megatron_tulu.dtypes import torch_dtype


def _build(model_cfg: ModelConfig, overrides: list[str]):
    from megatron_tulu.engine.model import build_model
    from megatron_tulu.engine.parallel import init_parallel

    cfg = load_config(overrides)
    init_parallel(model_cfg, cfg.parallel, seed=cfg.train.seed)
    return cfg, build_model(model_cfg, cfg.parallel, cfg.precision, wrap_ddp=False)


def hf_to_mcore(hf: str, out: str, overrides: list[str]) -> str:
    from megatron_tulu.engine.checkpoint import save_checkpoint
    from megatron_tulu.engine.parallel import destroy_parallel
    from megatron_tulu.models.hf_io import load_hf_weights, model_config_from_hf

    model_cfg = model_config_from_hf(hf)
    _, chunks = _build(model_cfg, overrides)
    load_hf_weights(chunks, model_cfg, hf)
    path = save_checkpoint(out, 0, chunks, meta={"model": dataclasses.asdict(model_cfg), "source_hf": hf})
    destroy_parallel()
    return str(path)


def mcore_to_hf(
    ckpt: str, out: str, tokenizer: str | None, overrides: list[str], dtype: str | None = None
) -> str:
    """``dtype`` (``fp32`` / ``bf16``, :mod:`megatron_tulu.dtypes`) of the exported tensors; None
    keeps the model's."""
    from megatron_tulu.engine.checkpoint import load_checkpoint, read_meta
    from megatron_tulu.engine.parallel import destroy_parallel
    from megatron_tulu.models.hf_io import export_hf

    meta = read_meta(ckpt)
    if "model" not in meta:
        raise SystemExit(f"{meta['path']}: checkpoint metadata has no model config; cannot export")
    model_cfg = ModelConfig(**meta["model"])
    _, chunks = _build(model_cfg, overrides)
    load_checkpoint(meta["path"], chunks)
    tok = tokenizer or meta.get("source_hf") or model_cfg.hf_path
    path = export_hf(
        chunks, model_cfg, out, tokenizer_dir=tok, dtype=None if dtype is None else torch_dtype(dtype)
    )
    destroy_parallel()
    return str(path)
