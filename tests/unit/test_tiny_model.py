"""The embedded tiny Llama directory: determinism, offline loading, exact architecture, tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Loading must never touch the network; set before transformers/huggingface_hub read it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from megatron_tulu.commands.build_tiny import main
from megatron_tulu.models.tiny import TINY_ARCH, build_tiny_model

FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def test_files_written(tiny_dir):
    assert sorted(p.name for p in tiny_dir.iterdir()) == sorted(FILES)
    # No temp or swapped-out directories are left next to the build.
    assert [p.name for p in tiny_dir.parent.iterdir()] == ["model"]


def test_same_seed_gives_identical_bytes_across_processes(tiny_dir, tmp_path):
    """Rebuild in a fresh interpreter (different hash seed): weights and tokenizer training are deterministic."""
    other = tmp_path / "again"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    code = f"from megatron_tulu.commands.build_tiny import main; raise SystemExit(main(['--out', {str(other)!r}]))"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, timeout=120)
    for name in FILES:
        assert (tiny_dir / name).read_bytes() == (other / name).read_bytes(), name


def test_different_seed_gives_different_weights(tiny_dir, tmp_path):
    other = build_tiny_model(tmp_path / "seed1", seed=1)
    assert (tiny_dir / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (tiny_dir / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_config_json_fields(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    expected = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 3999,
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
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    for key, value in expected.items():
        assert cfg[key] == value, key
    for key, value in TINY_ARCH.items():
        assert cfg[key] == value, key


def test_loads_with_auto_classes(tiny_dir):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_dir)
    assert config.head_dim == 64
    assert config.num_key_value_heads == 2
    rope = getattr(config, "rope_parameters", None) or config.rope_scaling
    assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0
    assert float(rope.get("rope_theta", getattr(config, "rope_theta", None))) == 500000.0

    model, info = AutoModelForCausalLM.from_pretrained(tiny_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (4 * 64, 256) and attn.k_proj.weight.shape == (2 * 64, 256)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    n_params = sum(p.numel() for p in model.parameters())
    assert 5_000_000 < n_params < 5_400_000

    # Seeded init: N(0, 0.02) matrices, unit norms.
    w = model.model.layers[1].mlp.up_proj.weight
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    assert torch.equal(model.model.norm.weight, torch.ones(256))

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert len(tok) == 3999 == model.config.vocab_size
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 1)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, return_dict=False
    )
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 3999)
    assert torch.isfinite(logits).all()


def test_tokenizer_round_trips_text(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    texts = [
        "Sam has 12 apples and buys 7 more, then gives away 5.\n#### 14",
        "  leading spaces, tabs\tand\nnewlines\n\n",
        "Unicode: café, naïve, 日本語, emoji 🙂, math ∑ x² ≤ 10.",
        "<|user|>\nhi\n<|assistant|>\nhello<|end_of_text|>",
        "",
    ]
    for text in texts:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # Role markers are single tokens; BOS/EOS are special and dropped by skip_special_tokens, roles are not.
    for marker in ("<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_text|>", "<|end_of_text|>"):
        assert len(tok.encode(marker, add_special_tokens=False)) == 1
    ids = tok.encode("<|begin_of_text|><|user|>\nhi<|end_of_text|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "<|user|>\nhi"
    assert tok.encode("hello", add_special_tokens=True) == tok.encode("hello", add_special_tokens=False)


def test_tied_variant(tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = build_tiny_model(tmp_path / "tied", tie_word_embeddings=True)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_cli_main_and_overwrite(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--seed", "3"]) == 0
    first = (out / "model.safetensors").read_bytes()
    # Re-running over an earlier build replaces it atomically.
    assert main(["--out", str(out), "--seed", "4"]) == 0
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]
    assert "vocab 3999" in capsys.readouterr().out


def test_refuses_to_overwrite_unrelated_directory(tmp_path):
    victim = tmp_path / "notes"
    victim.mkdir()
    (victim / "important.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_tiny_model(victim)
    assert (victim / "important.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
