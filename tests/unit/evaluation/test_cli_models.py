"""Which directories `eval --model` accepts, how `--all-steps` expands a run's checkpoints, and the
one-line errors for user mistakes (no engine is started: every case fails or resolves before)."""

from __future__ import annotations

import json

import pytest

from megatron_tulu.commands.eval import main
from megatron_tulu.engine.checkpoint import META
from megatron_tulu.evaluation.models import EvalUsageError, resolve_models


def _step(root, n):
    step = root / f"step_{n:07d}"
    step.mkdir(parents=True)
    (step / META).write_text(json.dumps({"step": n}))
    return step


def test_hf_dirs_checkpoint_roots_and_steps(tmp_path):
    hf = tmp_path / "sft_hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    run = tmp_path / "rlvr" / "checkpoints"
    steps = [_step(run, n) for n in (20, 40, 60)]
    (run / "step_0000080.partial").mkdir()  # an interrupted save is never picked
    assert resolve_models([str(hf), str(run)], all_steps=False) == [
        ("sft_hf", hf, False),
        ("checkpoints", run, True),
    ]
    expanded = resolve_models([str(run)], all_steps=True)
    assert [(label, path) for label, path, _ in expanded] == [(f"checkpoints@{s.name}", s) for s in steps]
    assert resolve_models([str(steps[1])], all_steps=False) == [("checkpoints@step_0000040", steps[1], True)]
    twice = resolve_models([str(hf), str(hf)], all_steps=False)
    assert [label for label, _, _ in twice] == ["sft_hf", "sft_hf_2"]
    stages = []  # the demo's stages all export to <stage>/hf
    for stage in ("sft", "dpo", "rlvr"):
        (tmp_path / stage / "hf").mkdir(parents=True, exist_ok=True)
        (tmp_path / stage / "hf" / "config.json").write_text("{}")
        stages.append(str(tmp_path / stage / "hf"))
    assert [label for label, _, _ in resolve_models(stages, all_steps=False)] == [
        "sft-hf",
        "dpo-hf",
        "rlvr-hf",
    ]
    with pytest.raises(EvalUsageError, match="neither an HF model directory"):
        resolve_models([str(tmp_path)], all_steps=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/dir"], "--model /no/such/dir: no such directory"),
        (["--model", "x", "--n", "2", "--temperature", "0"], "--n > 1 needs --temperature > 0"),
        (["--model", "x", "--tasks", "gsm8k,hellaswag"], "'hellaswag' has no shipped fixture"),
        (["--model", "x", "--tasks", "mine=/no/such.jsonl"], "/no/such.jsonl: no such task file"),
    ],
)
def test_user_errors_are_one_error_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
