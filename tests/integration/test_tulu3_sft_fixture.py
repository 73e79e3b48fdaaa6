"""`megatron-tulu sft` trains on the Tülu 3 SFT-mixture fixture as the hub stores it (parquet).

The DPO counterpart (every registered loss on the preference-mixture fixture) is in
`test_dpo_cli.py`; the loaders' layouts are unit-tested in `tests/unit/data/test_tulu3_formats.py`.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.slow]

SFT_FIXTURE = REPO / "megatron_tulu" / "assets" / "data" / "tulu3" / "sft_mixture.jsonl"


def test_sft_trains_two_steps_on_the_hub_parquet_layout(tmp_path):
    import datasets

    rows = [json.loads(line) for line in SFT_FIXTURE.read_text().splitlines()]
    hub = tmp_path / "tulu-3-sft-mixture"
    (hub / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "megatron_tulu.cli",
        "sft",
        f"train.output_dir={out}",
        f"data.train_files=[{hub}]",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.train_iters=2",
        "train.seq_length=256",
        "train.global_batch_size=2",
        "train.micro_batch_size=2",
        "data.packing=false",
        "sft.export_hf=false",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["loss"] > 0 for m in metrics)
    assert f"{len(rows)} SFT examples from {len(rows)} valid rows" in proc.stdout + proc.stderr
