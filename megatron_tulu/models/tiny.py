"""The embedded tiny Llama: a ~5M-parameter Llama-3.1-shaped HF checkpoint with the embedded tokenizer.

It exercises every Llama 3.1 feature the real recipe depends on (GQA, ``head_dim`` set explicitly, SiLU
gated MLP, RMSNorm, llama3 RoPE scaling, untied embeddings by default) while training on a CPU in minutes.

``config.json`` is written by hand in the layout of the released Llama 3.1 checkpoints (``rope_theta`` +
``rope_scaling``, ``torch_dtype``) rather than via ``LlamaConfig.save_pretrained``, because newer
transformers releases serialize those fields differently (``rope_parameters``, ``dtype``) and converters
have to handle the Hub layout anyway. transformers reads both.

CLI: ``megatron-tulu build-tiny --out DIR [--seed N] [--tie-word-embeddings]`` (:mod:`megatron_tulu.commands.build_tiny`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from megatron_tulu.data import tokenizer as embedded_tokenizer
from megatron_tulu.dtypes import TORCH_NAMES, torch_dtype

TINY_ARCH: dict[str, Any] = {
    "vocab_size": embedded_tokenizer.VOCAB_SIZE,  # 3999: not a multiple of 128 on purpose
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "max_position_embeddings": 4096,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
}

DTYPES = TORCH_NAMES  # the stored weight dtypes: "float32", "bfloat16", "float16"


def _config_dict(
    tie_word_embeddings: bool, dtype: str, bos_id: int, eos_id: int, pad_id: int
) -> dict[str, Any]:
    arch = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_ARCH.items()}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **arch,
        "attention_dropout": 0.0,  # Tülu RL needs dropout 0 so rollout and learner log-probs agree
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "pretraining_tp": 1,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def _init_weights(seed: int, tie_word_embeddings: bool, dtype: str) -> dict[str, Any]:
    """Seeded N(0, 0.02) for every linear/embedding matrix and ones for every RMSNorm weight.

    Tensors are drawn in a fixed name order from one CPU generator, so the result depends only on the
    seed (not on module construction order or the global RNG). Nothing is instantiated, which keeps the
    build well under a second.
    """
    import torch

    a = TINY_ARCH
    h, ffn, v = a["hidden_size"], a["intermediate_size"], a["vocab_size"]
    q_out = a["num_attention_heads"] * a["head_dim"]
    kv_out = a["num_key_value_heads"] * a["head_dim"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for i in range(a["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes += [
            (f"{p}.input_layernorm.weight", (h,)),
            (f"{p}.self_attn.q_proj.weight", (q_out, h)),
            (f"{p}.self_attn.k_proj.weight", (kv_out, h)),
            (f"{p}.self_attn.v_proj.weight", (kv_out, h)),
            (f"{p}.self_attn.o_proj.weight", (h, q_out)),
            (f"{p}.post_attention_layernorm.weight", (h,)),
            (f"{p}.mlp.gate_proj.weight", (ffn, h)),
            (f"{p}.mlp.up_proj.weight", (ffn, h)),
            (f"{p}.mlp.down_proj.weight", (h, ffn)),
        ]
    shapes.append(("model.norm.weight", (h,)))
    if not tie_word_embeddings:
        shapes.append(("lm_head.weight", (v, h)))

    gen = torch.Generator(device="cpu").manual_seed(seed)
    dtype_t = torch_dtype(dtype)
    tensors: dict[str, Any] = {}
    for name, shape in shapes:
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=torch.float32)
        else:
            t = torch.empty(shape, dtype=torch.float32).normal_(0.0, a["initializer_range"], generator=gen)
        # Draw in float32 then cast, so a bf16 build holds the rounded float32 weights of the same seed.
        tensors[name] = t.to(dtype_t).contiguous()
    return tensors


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _apply_umask(root: Path) -> None:
    """mkdtemp creates 0700 and some writers 0600; give the finished build ordinary permissions."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` into place; an existing build at ``out`` is swapped out, then deleted."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    # Refuse to delete a directory that does not look like a model dir (a mistyped --out should not
    # wipe unrelated files).
    if any(out.iterdir()) and not (out / "config.json").exists():
        raise FileExistsError(f"{out} is not empty and holds no config.json; refusing to overwrite it")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def build_tiny_model(
    out_dir: str | Path, seed: int = 0, tie_word_embeddings: bool = False, dtype: str = "float32"
) -> Path:
    """Write an HF ``LlamaForCausalLM`` directory (config, weights, generation config, tokenizer) to ``out_dir``.

    The directory is assembled in a sibling temp dir and renamed into place, so readers never see a
    half-written model. The same ``seed`` gives byte-identical ``model.safetensors``.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tok = embedded_tokenizer.build_tokenizer()
        if len(tok) != TINY_ARCH["vocab_size"]:
            raise RuntimeError(f"tokenizer has {len(tok)} ids but TINY_ARCH says {TINY_ARCH['vocab_size']}")
        embedded_tokenizer.save_tokenizer(tmp)
        bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        _write_json(tmp / "config.json", _config_dict(tie_word_embeddings, dtype, bos, eos, pad))
        # Greedy by default: evaluation and the tests want deterministic generations; samplers opt in.
        _write_json(
            tmp / "generation_config.json",
            {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad, "do_sample": False},
        )
        save_file(
            _init_weights(seed, tie_word_embeddings, dtype), str(tmp / "model.safetensors"), {"format": "pt"}
        )
        _apply_umask(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
