import json

from megatron_tulu.algorithms.loop import MetricsLogger
from megatron_tulu.config.schema import LoggingConfig


def _steps(path):
    return [json.loads(line)["step"] for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_resume_keeps_rows_up_to_the_checkpoint_and_a_fresh_run_starts_empty(tmp_path):
    cfg = LoggingConfig(tensorboard=False)
    first = MetricsLogger(tmp_path, cfg)
    for step in range(4):
        first.log(step, {"loss": float(step)})
    first.close()
    resumed = MetricsLogger(tmp_path, cfg, resume_step=2)  # rows after the checkpoint are redone
    resumed.log(3, {"loss": 3.5})
    resumed.close()
    assert _steps(tmp_path) == [0, 1, 2, 3]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["loss"] == 3.5
    fresh = MetricsLogger(tmp_path, cfg)  # not resuming: an old run's step-0 row must not linger
    fresh.log(0, {"loss": 9.0})
    fresh.close()
    assert _steps(tmp_path) == [0]
