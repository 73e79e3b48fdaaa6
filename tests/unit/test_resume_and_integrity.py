"""Issue 14, cases 1, 2 and 5: resume modes, override keys, checksums and damaged-file diagnoses.

Checkpoint directories here are built by hand (files + checksums written by the same helper the
save path uses), so the resume decision logic runs without building a model.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from megatron_tulu.algorithms.loop import MetricsLogger
from megatron_tulu.commands.checkpoint import verify_main
from megatron_tulu.config.load import load_config
from megatron_tulu.config.schema import LoggingConfig, RLVRRunConfig, SFTRunConfig
from megatron_tulu.engine.checkpoint_format import (
    CHECKSUMS,
    META,
    checkpoint_problems,
    checksum_files,
    checksummed_files,
    find_latest,
)
from megatron_tulu.engine.checkpoint_resume import resolve_resume
from megatron_tulu.errors import CheckpointError, ConfigError, UserError


def _ckpt(root: Path, step: int, payload: bytes = b"weights", latest: bool = True) -> Path:
    d = root / f"step_{step:07d}"
    (d / "value").mkdir(parents=True)
    (d / "__0_0.distcp").write_bytes(payload * 50)
    (d / "value" / "__0_0.distcp").write_bytes(payload[::-1] * 30)
    (d / CHECKSUMS).write_text(json.dumps(checksum_files(d, sorted(checksummed_files(d)))))
    (d / META).write_text(json.dumps({"step": step}))
    if latest:
        (root / "latest").write_text(d.name + "\n")
    return d


def _cfg(resume, load_dir=None, verify=True):
    return types.SimpleNamespace(resume=resume, load_dir=load_dir, verify_on_load=verify)


def test_resume_false_never_looks(tmp_path):
    _ckpt(tmp_path, 2)
    assert resolve_resume(_cfg(False), tmp_path) is None


def test_resume_true_with_nothing_is_an_error_naming_the_directory(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    with pytest.raises(CheckpointError, match=str(missing)):
        resolve_resume(_cfg(True, load_dir=str(missing)), tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint in .*empty"):
        resolve_resume(_cfg(True), empty)


def test_resume_true_with_a_pointer_to_a_missing_step_is_an_error(tmp_path):
    (tmp_path / "latest").write_text("step_0000009\n")
    (tmp_path / "step_0000009.partial").mkdir()
    for mode in (True, "auto"):  # the directory once held a checkpoint: never a silent fresh start
        with pytest.raises(CheckpointError, match="step_0000009"):
            resolve_resume(_cfg(mode), tmp_path)


def test_auto_starts_fresh_only_where_nothing_was_ever_committed(tmp_path, capsys):
    assert resolve_resume(_cfg("auto"), tmp_path / "new") is None
    assert "never held a complete checkpoint" in capsys.readouterr().out
    (tmp_path / "run" / "step_0000002.partial").mkdir(parents=True)  # killed during its first save
    assert resolve_resume(_cfg("auto"), tmp_path / "run") is None
    assert "step_0000002.partial" in capsys.readouterr().out
    done = _ckpt(tmp_path / "run", 4)
    assert resolve_resume(_cfg("auto"), tmp_path / "run") == done


def test_flipped_byte_and_truncation_are_named_and_auto_falls_back(tmp_path, capsys):
    old = _ckpt(tmp_path, 2, b"old")
    new = _ckpt(tmp_path, 4, b"new")
    assert checkpoint_problems(new) == []
    shard = new / "value" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[7] ^= 0x10
    shard.write_bytes(bytes(data))
    assert any(str(shard) in p and "checksum" in p for p in checkpoint_problems(new))
    with pytest.raises(CheckpointError, match=str(shard)):
        resolve_resume(_cfg(True), tmp_path)
    assert resolve_resume(_cfg("auto"), tmp_path) == old
    out = capsys.readouterr().out
    assert "falling back to" in out and str(shard) in out
    assert resolve_resume(_cfg(True, verify=False), tmp_path) == new  # checks skipped on request

    (old / "__0_0.distcp").write_bytes(b"ol")  # truncated
    with pytest.raises(CheckpointError, match="every checkpoint .* is damaged"):
        resolve_resume(_cfg("auto"), tmp_path)
    assert "truncated" in " ".join(checkpoint_problems(old))


def test_checkpoint_verify_command(tmp_path, capsys):
    good = _ckpt(tmp_path, 2)
    assert verify_main([str(tmp_path)]) == 0
    assert f"ok: {good}" in capsys.readouterr().out
    victim = good / "__0_0.distcp"
    victim.write_bytes(victim.read_bytes()[:-1])
    assert verify_main([str(good)]) == 2
    assert str(victim) in capsys.readouterr().err
    assert verify_main([str(tmp_path / "nothing")]) == 2


def test_find_latest_survives_every_instant_of_a_recommit(tmp_path):
    """Re-saving an existing step moves the old copy aside first: some complete copy is always found."""
    _ckpt(tmp_path, 6)
    (tmp_path / "step_0000006").rename(tmp_path / "step_0000006.replaced")  # kill right after the move
    assert find_latest(tmp_path) == tmp_path / "step_0000006.replaced"


@pytest.mark.parametrize(
    "override",
    ["+train.max_stepz=3", "train.max_stepz=3", "++train.max_stepz=3", "+trainn.seed=1", "+sft.epochz=2"],
)
def test_unknown_override_keys_are_errors_with_or_without_plus(override):
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config([override], config_name="sft", schema=SFTRunConfig)


def test_typo_error_suggests_the_real_key():
    with pytest.raises(ConfigError, match="did you mean train.train_iters"):
        load_config(["+train.train_iter=3"], config_name="sft", schema=SFTRunConfig)


def test_free_form_dict_fields_still_take_new_keys():
    cfg = load_config(["+rlvr.dataset_weights.math=0.5"], config_name="rlvr", schema=RLVRRunConfig)
    assert cfg.rlvr.dataset_weights["math"] == 0.5


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False), ("auto", "auto")])
def test_resume_values(value, expected):
    cfg = load_config([f"checkpoint.resume={value}"], config_name="sft", schema=SFTRunConfig)
    assert cfg.checkpoint.resume == expected


def test_bad_resume_value_is_refused():
    with pytest.raises(ConfigError, match="checkpoint.resume"):
        load_config(["checkpoint.resume=sometimes"], config_name="sft", schema=SFTRunConfig)


def test_torn_last_metrics_line_is_dropped_and_a_bad_middle_line_is_named(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    MetricsLogger(tmp_path, LoggingConfig(tensorboard=False), resume_step=2).close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert "torn last line" in capsys.readouterr().out
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a JSON metrics row"):
        MetricsLogger(tmp_path, LoggingConfig(tensorboard=False), resume_step=2)


def test_damaged_hf_files_are_named(tmp_path):
    import torch
    from safetensors.torch import save_file

    from megatron_tulu.models.hf_io import HFCheckpointError, SafetensorsReader, model_config_from_hf

    (tmp_path / "config.json").write_text('{"model_type": "llama",\n "hidden_size": 64,,}')
    with pytest.raises(
        HFCheckpointError, match=rf"{tmp_path}/config.json:2:\d+: HF config is not valid JSON"
    ):
        model_config_from_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(HFCheckpointError, match="missing field"):
        model_config_from_hf(tmp_path)

    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(1000, dtype=torch.float32)}, str(weights))
    assert SafetensorsReader(tmp_path).get("w", (1000,)).shape == (1000,)
    weights.write_bytes(weights.read_bytes()[:20])  # header cut
    with pytest.raises(HFCheckpointError, match=str(weights)):
        SafetensorsReader(tmp_path)
