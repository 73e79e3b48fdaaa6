"""The lifecycle every trainer shares (algorithms/trainer.py): order of the calls, periodic and
final checkpoints, resume, and close on error. The trainers' own runs (exact resume, parity) are
tested end to end elsewhere; here the order itself, with the checkpoint I/O recorded."""

from __future__ import annotations

import json

import pytest

from megatron_tulu.algorithms.dpo import DPOTrainer
from megatron_tulu.algorithms.rlvr import RLTrainer
from megatron_tulu.algorithms.sft import SFTTrainer
from megatron_tulu.algorithms.trainer import SupervisedTrainer, Trainer
from megatron_tulu.config.schema import SFTRunConfig


class Recording(Trainer):
    name = "recording"

    def __init__(self, cfg, *, resume_at: int = 0, fail_at: int | None = None):
        super().__init__(cfg)
        self.calls: list[str] = []
        self.resume_at, self.fail_at = resume_at, fail_at

    def setup(self):
        self.calls.append("setup")
        self.total_steps = 5

    def resume(self):  # the checkpoint I/O is recorded, not performed
        self.calls.append("resume")
        return self.resume_at

    def before_steps(self, start):
        self.calls.append(f"before_steps({start})")

    def run_step(self, step):
        if step == self.fail_at:
            raise RuntimeError(f"step {step} failed")
        self.calls.append(f"step({step})")
        return {"loss": float(step)}

    def checkpoint(self, step):
        self.calls.append(f"checkpoint({step})")

    def finish(self, last):
        self.calls.append("finish")
        return {"last": last}

    def close(self):
        self.calls.append("close")


def _cfg(tmp_path, interval=2):
    cfg = SFTRunConfig()
    cfg.train.output_dir = str(tmp_path)
    cfg.checkpoint.save_interval = interval
    cfg.logging.tensorboard = False
    cfg.logging.progress_bar = False
    return cfg


def test_order_of_a_run(tmp_path):
    t = Recording(_cfg(tmp_path))
    assert t.run() == {"last": {"loss": 4.0}}
    assert t.calls == [
        "setup",
        "resume",
        "before_steps(0)",
        "step(0)",
        "step(1)",
        "checkpoint(2)",
        "step(2)",
        "step(3)",
        "checkpoint(4)",
        "step(4)",
        "checkpoint(5)",  # the final one (never twice for the last step)
        "finish",
        "close",
    ]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_log_interval_logs_every_nth_step_and_the_last(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.train.log_interval = 2
    Recording(cfg).run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 5]


def test_resume_runs_only_the_remaining_steps_and_keeps_logged_rows(tmp_path):
    Recording(_cfg(tmp_path)).run()
    t = Recording(_cfg(tmp_path), resume_at=3)
    t.run()
    assert t.calls[2:6] == ["before_steps(3)", "step(3)", "checkpoint(4)", "step(4)"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]


def test_an_error_closes_without_a_final_checkpoint(tmp_path):
    t = Recording(_cfg(tmp_path, interval=1), fail_at=2)
    with pytest.raises(RuntimeError, match="step 2 failed"):
        t.run()
    assert t.calls[-3:] == ["step(1)", "checkpoint(2)", "close"]
    assert "finish" not in t.calls


def test_an_error_in_setup_still_closes(tmp_path):
    class BrokenSetup(Recording):
        def setup(self):
            raise ValueError("bad layout")

    t = BrokenSetup(_cfg(tmp_path))
    with pytest.raises(ValueError, match="bad layout"):
        t.run()
    assert t.calls == ["close"]


@pytest.mark.parametrize("cls", [SFTTrainer, DPOTrainer, RLTrainer])
def test_every_trainer_uses_the_shared_lifecycle(cls):
    assert issubclass(cls, Trainer)
    for method in ("run", "steps", "resume", "checkpoint"):  # one implementation, not re-done per trainer
        assert getattr(cls, method) is getattr(Trainer, method), (
            f"{cls.__name__}.{method} overrides the lifecycle"
        )
    for method in ("setup", "run_step", "checkpoint_parts"):
        assert any(method in vars(k) for k in cls.__mro__ if k not in (Trainer,)), (
            f"{cls.__name__} lacks {method}"
        )
    if cls is not RLTrainer:
        assert issubclass(cls, SupervisedTrainer)
