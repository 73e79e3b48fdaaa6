"""Issue 14 case 6: a user error is one ``error:`` line on stderr, exit 2, printed once, no traceback
(unless MEGATRON_TULU_DEBUG=1), and no "Apex / Transformer Engine not installed" noise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, free_port


def _cli(*args: str, debug: bool = False, torchrun: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("PYTHONWARNINGS", None)  # the noise filter must work without help from the environment
    env.pop("MEGATRON_TULU_DEBUG", None)
    if debug:
        env["MEGATRON_TULU_DEBUG"] = "1"
    launcher = [sys.executable]
    if torchrun:
        launcher += [
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={torchrun}",
            f"--master_port={free_port()}",
        ]
    cmd = [*launcher, "-m", "megatron_tulu.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error: " in line]


def test_unknown_key_is_one_error_line_without_traceback_or_import_noise():
    proc = _cli("sft", "+train.max_stepz=3")
    assert proc.returncode == 2
    assert _error_lines(proc.stderr) == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("error: unknown config key train.max_stepz")
    assert "Traceback" not in proc.stderr and "Apex" not in proc.stderr + proc.stdout


def test_debug_env_shows_the_traceback():
    proc = _cli("sft", "+train.max_stepz=3", debug=True)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and proc.stderr.rstrip().endswith(_error_lines(proc.stderr)[-1])


def test_bad_data_row_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n'
    )
    proc = _cli(
        "sft",
        f"train.output_dir={tmp_path / 'out'}",
        f"data.train_files=[{bad}]",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.train_iters=1",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and f"{bad}:2" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.distributed
def test_layout_error_under_torchrun_is_printed_once(tmp_path):
    proc = _cli("sft", "parallel.tp=3", f"train.output_dir={tmp_path}", torchrun=2)
    assert proc.returncode != 0
    ours = _error_lines(proc.stderr + proc.stdout)
    assert len(ours) == 1 and "tp=3" in ours[0], proc.stderr[-3000:]
    # Our ranks print no traceback; torchrun's agent still reports the failed child with its own.
    assert "megatron_tulu/" not in proc.stderr.split("ChildFailedError")[0]
