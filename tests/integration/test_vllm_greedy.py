"""The exported tiny model loads in real vLLM (CPU) and its greedy continuation equals Megatron's."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, run_torchrun

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PROMPTS = [[5, 6, 7, 8, 9], [100, 2000, 31, 7, 7, 3998]]  # 3998: the last real token of the odd vocab


def _result_line(output: str) -> list:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_megatron_export_greedy_matches_vllm(tmp_path):
    tiny, ckpt, exported = tmp_path / "tiny", tmp_path / "mcore", tmp_path / "exported"
    subprocess.run(
        [sys.executable, "-m", "megatron_tulu.cli", "build-tiny", "--out", str(tiny)], check=True, cwd=REPO
    )
    run_torchrun(
        "-m megatron_tulu.cli",
        2,
        ["convert", "hf-to-mcore", "--hf", str(tiny), "--out", str(ckpt), "parallel.tp=2"],
    )
    run_torchrun(
        "-m megatron_tulu.cli", 1, ["convert", "mcore-to-hf", "--ckpt", str(ckpt), "--out", str(exported)]
    )
    assert (exported / "tokenizer.json").is_file()  # tokenizer travels with the export

    megatron = []
    for ids in PROMPTS:  # Megatron greedy at TP2 from the distributed checkpoint
        out = run_torchrun(
            "-m megatron_tulu.cli",
            2,
            [
                "generate",
                "--ckpt",
                str(ckpt),
                "--prompt-ids",
                ",".join(map(str, ids)),
                "--max-new-tokens",
                "16",
                "parallel.tp=2",
            ],
        )
        line = next(x for x in reversed(out.splitlines()) if x.startswith('{"prompt_ids"'))
        megatron.append(json.loads(line)["new_token_ids"])

    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_LOGGING_LEVEL="WARNING")
    cmd = [sys.executable, str(REPO / "tests/integration/workers/vllm_greedy.py"), "--model", str(exported)]
    for ids in PROMPTS:
        cmd += ["--prompt-ids", ",".join(map(str, ids))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    vllm = _result_line(proc.stdout)

    assert all(len(m) == 16 for m in megatron)
    assert vllm == megatron
