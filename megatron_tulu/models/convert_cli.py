"""`megatron-tulu convert`: HF Llama <-> Megatron distributed checkpoint, at any TP x PP.

    megatron-tulu convert hf-to-mcore --hf DIR --out CKPT_ROOT [parallel.tp=2 parallel.pp=2]
    megatron-tulu convert mcore-to-hf --ckpt CKPT --out DIR [--tokenizer DIR] [parallel.pp=2]

Run under ``torchrun --nproc_per_node=tp*pp*dp`` for a multi-rank layout; each rank reads or
writes only its own shards. The checkpoint is reshardable: it loads at any other layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from megatron_tulu.cli_args import parse_flags_and_overrides, run_config
from megatron_tulu.config.schema import ModelConfig


def _build(model_cfg: ModelConfig, overrides: list[str]):
    from megatron_tulu.engine.model import build_model
    from megatron_tulu.engine.parallel import init_parallel

    cfg = run_config(overrides)
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
    from megatron_tulu.engine.checkpoint import load_checkpoint, read_meta
    from megatron_tulu.engine.parallel import destroy_parallel
    from megatron_tulu.models.hf_io import export_hf

    meta = read_meta(ckpt)
    if "model" not in meta:
        raise SystemExit(f"{meta['path']}: checkpoint metadata has no model config; cannot export")
    model_cfg = ModelConfig(**meta["model"])
    _, chunks = _build(model_cfg, overrides)
    load_checkpoint(meta["path"], chunks)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, None: None}[dtype]
    tok = tokenizer or meta.get("source_hf") or model_cfg.hf_path
    path = export_hf(chunks, model_cfg, out, tokenizer_dir=tok, dtype=torch_dtype)
    destroy_parallel()
    return str(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="megatron-tulu convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", choices=["hf-to-mcore", "mcore-to-hf"])
    parser.add_argument("--hf", help="HF Llama directory (hf-to-mcore)")
    parser.add_argument("--ckpt", help="checkpoint root or step directory (mcore-to-hf)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer", help="directory whose tokenizer files to copy (mcore-to-hf)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="dtype of exported tensors")
    args, overrides = parse_flags_and_overrides(parser, argv)
    if args.direction == "hf-to-mcore":
        if not args.hf:
            parser.error("hf-to-mcore needs --hf")
        print(hf_to_mcore(args.hf, args.out, overrides))
    else:
        if not args.ckpt:
            parser.error("mcore-to-hf needs --ckpt")
        print(mcore_to_hf(args.ckpt, args.out, args.tokenizer, overrides, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
