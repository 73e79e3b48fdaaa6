"""Offline blockwise-FP8 export of an HF Llama checkpoint: the checkpoint an ``fp8_block`` vLLM
engine starts from (``rollout.weight_dtype=fp8_block``).

The output is what vLLM's ``fp8`` quantization method loads with ``weight_block_size: [128, 128]``
(the DeepSeek-V3 layout):

- ``config.json``: the source config with ``quantization_config = {"quant_method": "fp8",
  "activation_scheme": "dynamic", "weight_block_size": [128, 128]}`` and ``torch_dtype
  "bfloat16"`` (vLLM refuses float32 with fp8);
- the GEMM weights vLLM's fp8 method quantizes (q/k/v/o, gate/up/down projections: the
  ``LinearBase`` layers; :func:`~megatron_tulu.models.hf_mapping.fp8_quantized`) as
  ``float8_e4m3fn`` plus ``<name>_scale_inv`` (fp32, ``[ceil(out/128), ceil(in/128)]``), quantized
  by :func:`megatron_tulu.kernels.fp8.blockwise_fp8_quantize` from the stored dtype (so a refit
  that quantizes the learner's block-aligned slices of the same weights writes the same bytes);
- every other tensor (embeddings, lm_head, norms) in bf16;
- the other files (tokenizer, generation config) copied.

Usage::

    from megatron_tulu.models.fp8_export import engine_model_dir
    path = engine_model_dir(hf_dir, cfg.rollout.weight_dtype, out_dir)   # hf_dir itself for "auto"
    engine = RolloutEngine(path, tp=N, dtype="bfloat16")
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_tulu.kernels.fp8 import blockwise_fp8_quantize
from megatron_tulu.models.hf_mapping import fp8_quantized, fp8_scale_name

FP8_QUANTIZATION_CONFIG = {
    "quant_method": "fp8",
    "activation_scheme": "dynamic",
    "weight_block_size": [128, 128],
}

__all__ = ["FP8_QUANTIZATION_CONFIG", "engine_model_dir", "export_fp8_block", "is_fp8_block_checkpoint"]


def is_fp8_block_checkpoint(hf_dir: str | os.PathLike) -> bool:
    """Whether ``hf_dir``'s config declares vLLM's blockwise fp8 method with 128x128 blocks."""
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    q = cfg.get("quantization_config") or {}
    return q.get("quant_method") == "fp8" and list(q.get("weight_block_size") or []) == [128, 128]


def _weight_files(src: Path) -> dict[str, list[str] | None]:
    """Safetensors file name -> tensor names (None: all), following an index when present."""
    index = src / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files: dict[str, list[str] | None] = {}
        for name, fname in weight_map.items():
            files.setdefault(fname, []).append(name)
        return files
    singles = sorted(p.name for p in src.glob("*.safetensors"))
    if not singles:
        raise FileNotFoundError(f"{src}: no *.safetensors weights to export")
    return {f: None for f in singles}


def export_fp8_block(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the blockwise-FP8 checkpoint of HF directory ``src_dir`` to ``out_dir`` (replaced
    atomically if it exists); returns ``out_dir``."""
    src, out = Path(src_dir).resolve(), Path(out_dir).resolve()
    if src == out:
        raise ValueError("export_fp8_block: out_dir must differ from src_dir")
    config = json.loads((src / "config.json").read_text())
    if config.get("quantization_config"):
        raise ValueError(f"{src} is already quantized ({config['quantization_config']})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for item in src.iterdir():
            if item.suffix == ".safetensors" or item.name in ("config.json", "model.safetensors.index.json"):
                continue
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        weight_map: dict[str, str] = {}
        quantized = 0
        for fname, names in _weight_files(src).items():
            tensors: dict[str, torch.Tensor] = {}
            with safe_open(str(src / fname), framework="pt") as f:
                for name in names if names is not None else list(f.keys()):
                    t = f.get_tensor(name)
                    if fp8_quantized(name):
                        if t.dim() != 2:
                            raise ValueError(f"{name}: expected a 2-D weight, got {tuple(t.shape)}")
                        q, s = blockwise_fp8_quantize(t)
                        tensors[name], tensors[fp8_scale_name(name)] = q, s
                        quantized += 1
                    else:
                        tensors[name] = t.to(torch.bfloat16).contiguous()
            for name in tensors:
                weight_map[name] = fname
            save_file(tensors, str(tmp / fname), {"format": "pt"})
        if quantized == 0:
            raise ValueError(f"{src}: no q/k/v/o or gate/up/down projection weights found to quantize")
        if (src / "model.safetensors.index.json").exists():
            index = json.loads((src / "model.safetensors.index.json").read_text())
            index["weight_map"] = weight_map
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        config["quantization_config"] = dict(FP8_QUANTIZATION_CONFIG)
        config["torch_dtype"] = "bfloat16"
        config.pop("dtype", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def engine_model_dir(
    hf_dir: str | os.PathLike, weight_dtype: str, out_dir: str | os.PathLike | None = None
) -> Path:
    """The directory an engine with ``rollout.weight_dtype`` starts from: ``hf_dir`` for ``auto``;
    for ``fp8_block`` its FP8 export (``out_dir``, default ``<hf_dir>-fp8_block``, rewritten on
    every call so it never holds stale weights), or ``hf_dir`` itself if it already is one."""
    if weight_dtype == "auto":
        return Path(hf_dir)
    if weight_dtype != "fp8_block":
        raise ValueError(f"weight_dtype must be auto or fp8_block, got {weight_dtype!r}")
    if is_fp8_block_checkpoint(hf_dir):
        return Path(hf_dir)
    out = Path(out_dir) if out_dir is not None else Path(str(Path(hf_dir).resolve()) + "-fp8_block")
    return export_fp8_block(hf_dir, out)
