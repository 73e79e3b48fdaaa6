"""Read HF Llama directories into Megatron model chunks and write them back (sharded safetensors).

Each rank touches only the tensors of its own pipeline stage and cuts its own TP shard, so the
same code imports a tiny model in one process or 405B under torchrun.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_tulu.config.schema import ModelConfig
from megatron_tulu.config.transformer import padded_vocab_size
from megatron_tulu.models.hf_mapping import (
    Shapes,
    expected_hf_shape,
    hf_from_shards,
    hf_sources,
    shard_from_hf,
    tp_split_dim,
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


class HFCheckpointError(ValueError):
    """An HF directory that does not match the model it is loaded into."""


def shapes_for(cfg: ModelConfig, tp: int, padded_vocab: int | None = None) -> Shapes:
    """The tensor shapes of ``cfg``; the vocabulary padded for ``tp`` unless ``padded_vocab`` says."""
    return Shapes(
        hidden=cfg.hidden_size,
        ffn=cfg.ffn_hidden_size,
        heads=cfg.num_attention_heads,
        groups=cfg.num_query_groups,
        head_dim=cfg.kv_channels,
        vocab=cfg.vocab_size,
        padded_vocab=padded_vocab_size(cfg, tp) if padded_vocab is None else padded_vocab,
    )


_REQUIRED_HF_KEYS = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "intermediate_size",
    "vocab_size",
)


def read_json(path: Path, what: str) -> Any:
    """``json.loads`` of a file, with damage reported as an error naming the file, line and column."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise HFCheckpointError(
            f"{path}: {what} is not UTF-8 text (byte {exc.start}); the file is damaged"
        ) from exc
    except json.JSONDecodeError as exc:
        raise HFCheckpointError(
            f"{path}:{exc.lineno}:{exc.colno}: {what} is not valid JSON ({exc.msg}); fix or replace the file"
        ) from exc


@contextlib.contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """``safe_open`` that names the file when its header is truncated or corrupt (safetensors' own
    error says only "incomplete metadata")."""
    try:
        handle = safe_open(path, framework="pt")
    except Exception as exc:  # SafetensorError / OSError: damaged or truncated file
        size = path.stat().st_size if path.exists() else 0
        raise HFCheckpointError(
            f"{path}: not a readable safetensors file ({exc}; {size} bytes), probably truncated or "
            "corrupted; re-export or re-download it"
        ) from exc
    with handle as f:
        yield f


def model_config_from_hf(hf_dir: str | os.PathLike, name: str | None = None) -> ModelConfig:
    """A ModelConfig matching an HF Llama ``config.json``; refuses what Megatron cannot express."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise HFCheckpointError(f"{path}: no config.json in the HF directory")
    hf = read_json(path, "HF config")
    if not isinstance(hf, dict):
        raise HFCheckpointError(f"{path}: expected a JSON object, got {type(hf).__name__}")
    missing = [k for k in _REQUIRED_HF_KEYS if k not in hf]
    if missing:
        raise HFCheckpointError(f"{path}: missing field(s) {', '.join(missing)} of an HF Llama config")
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "llama" and "LlamaForCausalLM" not in arch:
        raise HFCheckpointError(f"{path}: model_type={hf.get('model_type')!r} is not a Llama model")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise HFCheckpointError(f"{path}: {flag}=true is not a Llama-3 layout this library supports")
    heads = hf["num_attention_heads"]
    # transformers 5 writes ``rope_parameters`` (theta inside); 4.x wrote rope_theta + rope_scaling.
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope and rope_type not in ("llama3", "default"):
        raise HFCheckpointError(f"{path}: rope_scaling type {rope_type!r} is not supported (llama3 only)")
    scaled = rope_type == "llama3"
    return ModelConfig(
        name=name or Path(hf_dir).name,
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=hf.get("num_key_value_heads", heads),
        kv_channels=hf.get("head_dim") or hf["hidden_size"] // heads,
        vocab_size=hf["vocab_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        rotary_base=float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0),
        rope_scaling=scaled,
        rope_scaling_factor=float(rope.get("factor", 8.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_position_embeddings=int(rope.get("original_max_position_embeddings", 8192)),
        norm_epsilon=float(hf.get("rms_norm_eps", 1e-5)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        hf_path=str(hf_dir),
    )


def hf_config_dict(cfg: ModelConfig, dtype: torch.dtype, extra: dict | None = None) -> dict:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_query_groups,
        "head_dim": cfg.kv_channels,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_epsilon,
        "rope_theta": cfg.rotary_base,
        # transformers 5 format (rope_theta inside), read by transformers and vLLM alike
        "rope_parameters": (
            {
                "rope_type": "llama3",
                "rope_theta": cfg.rotary_base,
                "factor": cfg.rope_scaling_factor,
                "low_freq_factor": cfg.rope_low_freq_factor,
                "high_freq_factor": cfg.rope_high_freq_factor,
                "original_max_position_embeddings": cfg.rope_original_max_position_embeddings,
            }
            if cfg.rope_scaling
            else {"rope_type": "default", "rope_theta": cfg.rotary_base}
        ),
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    config.update(extra or {})
    return config


class SafetensorsReader:
    """Lazy access to the tensors of an HF directory (single file or sharded with an index)."""

    def __init__(self, hf_dir: str | os.PathLike):
        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index, "safetensors index")
            if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
                raise HFCheckpointError(f"{index}: no 'weight_map' object (not a safetensors index)")
            self.files = {name: self.dir / f for name, f in weight_map["weight_map"].items()}
            for f in sorted(set(self.files.values())):
                if not f.is_file():
                    raise HFCheckpointError(f"{f}: listed in {index.name} but missing")
        else:
            single = self.dir / "model.safetensors"
            if not single.is_file():
                raise HFCheckpointError(f"{self.dir}: neither model.safetensors nor an index file found")
            with open_safetensors(single) as f:
                self.files = {name: single for name in f.keys()}

    def get(self, name: str, expected_shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.files:
            raise HFCheckpointError(
                f"{self.dir}: tensor {name!r} is missing (expected shape {list(expected_shape)})"
            )
        with open_safetensors(self.files[name]) as f:
            try:
                tensor = f.get_tensor(name)
            except Exception as exc:  # SafetensorError is not importable by name in every release
                raise HFCheckpointError(
                    f"{self.files[name]}: tensor {name!r} cannot be read ({exc}); the file is damaged, "
                    "re-export or re-download it"
                ) from exc
        if tuple(tensor.shape) != tuple(expected_shape):
            raise HFCheckpointError(
                f"{self.files[name]}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"expected {list(expected_shape)}"
            )
        return tensor


def iter_global_params(chunks: list[torch.nn.Module]) -> Iterator[tuple[str, int | None, torch.nn.Parameter]]:
    """(chunk-local name, global layer index or None, parameter) for every parameter of the chunks."""
    from megatron_tulu.engine.model import unwrap

    for chunk in chunks:
        gpt = unwrap(chunk)
        layers = {i: layer.layer_number - 1 for i, layer in enumerate(gpt.decoder.layers)}
        for name, param in gpt.named_parameters():
            layer = None
            if name.startswith("decoder.layers."):
                layer = layers[int(name.split(".")[2])]
            yield name, layer, param


@torch.no_grad()
def load_hf_weights(
    chunks: list[torch.nn.Module],
    cfg: ModelConfig,
    hf_dir: str | os.PathLike,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Copy this rank's shards of every parameter (except chunk-local names in ``skip``) out of an HF dir."""
    reader = SafetensorsReader(hf_dir)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    shapes = shapes_for(cfg, tp)
    for name, layer, param in iter_global_params(chunks):
        if name in skip:
            continue
        kind, sources = hf_sources(name, layer, cfg.tie_word_embeddings)
        tensors = [reader.get(src, expected_hf_shape(src, shapes)) for src in sources]
        shard = shard_from_hf(kind, tensors, shapes, tp, tp_rank)
        if shard.shape != param.shape:
            raise HFCheckpointError(
                f"{name}: built shard {list(shard.shape)} != parameter {list(param.shape)}"
            )
        param.copy_(shard.to(param.dtype))


@torch.no_grad()
def gather_hf_state(
    chunks: list[torch.nn.Module],
    cfg: ModelConfig,
    accessor: Callable[[torch.nn.Parameter], torch.Tensor] = lambda p: p,
) -> dict[str, torch.Tensor]:
    """Full HF tensors of this rank's pipeline stage (meaningful on TP rank 0; collective over TP).

    ``accessor`` picks what to gather per parameter (the weight by default; e.g. ``main_grad``).
    """
    tp = parallel_state.get_tensor_model_parallel_world_size()
    group = parallel_state.get_tensor_model_parallel_group()
    shapes = shapes_for(cfg, tp)
    out: dict[str, torch.Tensor] = {}
    for name, layer, param in iter_global_params(chunks):
        kind, sources = hf_sources(name, layer, cfg.tie_word_embeddings)
        if name == "output_layer.weight" and cfg.tie_word_embeddings:
            continue  # the embedding on the first stage is the tensor HF stores
        local = accessor(param).detach()
        if tp > 1 and tp_split_dim(kind) is not None:
            shards = [torch.empty_like(local) for _ in range(tp)]
            dist.all_gather(shards, local.contiguous(), group=group)
        else:
            shards = [local]
        for src, tensor in zip(sources, hf_from_shards(kind, shards, shapes)):
            out[src] = tensor.cpu().contiguous()
    return out


def collect_hf_state_on_rank0(
    chunks: list[torch.nn.Module],
    cfg: ModelConfig,
    accessor: Callable[[torch.nn.Parameter], torch.Tensor] = lambda p: p,
) -> dict[str, torch.Tensor] | None:
    """The whole model in HF naming on global rank 0 (None elsewhere). For checks and small models."""
    parts = gather_hf_state(chunks, cfg, accessor) if parallel_state.get_data_parallel_rank() == 0 else {}
    if parallel_state.get_tensor_model_parallel_rank() != 0:
        parts = {}
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return parts
    gathered: list[dict[str, torch.Tensor]] | None = (
        [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    )
    dist.gather_object(parts, gathered, dst=0)
    if gathered is None:
        return None
    merged: dict[str, torch.Tensor] = {}
    for part in gathered:
        merged.update(part)
    return merged


def export_hf(
    chunks: list[torch.nn.Module],
    cfg: ModelConfig,
    out_dir: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an HF Llama directory: one safetensors file per pipeline stage plus an index.

    Written into a temporary sibling directory and renamed into place at the end, so a crash never
    leaves a directory that looks complete.
    """
    out = Path(out_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    writer = parallel_state.get_data_parallel_rank() == 0
    staging = out.with_name(out.name + ".partial")
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    if dist.is_initialized():
        dist.barrier()
    if writer:
        state = gather_hf_state(chunks, cfg)
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        if parallel_state.get_tensor_model_parallel_rank() == 0:
            fname = "model.safetensors" if pp == 1 else f"model-{pp_rank + 1:05d}-of-{pp:05d}.safetensors"
            save_file(state, str(staging / fname), metadata={"format": "pt"})
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        first = next(iter(iter_global_params(chunks)))[2]
        config = hf_config_dict(cfg, dtype or first.dtype)
        if tokenizer_dir is not None:
            tok_cfg = Path(tokenizer_dir) / "config.json"
            if tok_cfg.is_file():
                src = json.loads(tok_cfg.read_text())
                config.update(
                    {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in src}
                )
            for fname in TOKENIZER_FILES:
                if (Path(tokenizer_dir) / fname).is_file():
                    shutil.copy2(Path(tokenizer_dir) / fname, staging / fname)
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        if pp > 1:
            weight_map = {}
            for f in sorted(staging.glob("model-*.safetensors")):
                with safe_open(f, framework="pt") as handle:
                    weight_map.update({k: f.name for k in handle.keys()})
            index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
            (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        if out.exists():
            trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".old."))
            out.rename(trash / out.name)
            shutil.rmtree(trash)
        staging.rename(out)
    if dist.is_initialized():
        dist.barrier()
    return out
