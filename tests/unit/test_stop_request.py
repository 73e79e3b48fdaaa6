"""Stop requests in the trainer lifecycle (engine/stop_request.py, algorithms/trainer.py): the stop
file, SIGUSR1 and a first SIGTERM during the steps each end the run after the current step with a
checkpoint of that step and the ``stopped_for_requeue`` marker; a second SIGTERM, or one outside the
step loop, still unwinds at once; a request during the last step changes nothing. Real signals to
this process, real handlers (the CLI's SIGTERM handler); the checkpoint I/O is recorded (the
multi-rank runs with real checkpoints are tests/integration/test_stop_and_resume.py)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from megatron_tulu.algorithms.trainer import Trainer
from megatron_tulu.cli import exit_on_sigterm
from megatron_tulu.config.schema import SFTRunConfig
from megatron_tulu.engine import stop_request
from megatron_tulu.engine.stop_request import STOP_FILE, STOPPED_FILE


class Steps(Trainer):
    """Six steps; ``act(step)`` runs inside step ``step`` (0-based), as a signal landing mid-step."""

    name = "steps"

    def __init__(self, cfg, act=None, on_setup=None):
        super().__init__(cfg)
        self.calls: list[str] = []
        self.act, self.on_setup = act or (lambda step: None), on_setup

    def setup(self):
        self.total_steps = 6
        if self.on_setup:
            self.on_setup()

    def resume(self):
        return 0

    def run_step(self, step):
        self.act(step)
        self.calls.append(f"step({step})")
        return {"loss": float(step)}

    def checkpoint(self, step):
        self.calls.append(f"checkpoint({step})")
        return self.ckpt_root / f"step_{step:07d}"

    def finish(self, last):
        self.calls.append("finish")
        return {"finished": True}

    def close(self):
        self.calls.append("close")


@pytest.fixture
def cfg(tmp_path):
    cfg = SFTRunConfig()
    cfg.train.output_dir = str(tmp_path)
    cfg.checkpoint.save_interval = 0
    cfg.logging.tensorboard = False
    cfg.logging.progress_bar = False
    return cfg


@pytest.fixture(autouse=True)
def handlers():
    """The CLI's SIGTERM handler for the test; this process's handlers and stop state restored."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    stop_request.reset_for_tests()
    exit_on_sigterm()
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    stop_request.reset_for_tests()


def _steps(calls):
    return [c for c in calls if c.startswith("step(")]


def _marker(tmp_path: Path) -> dict:
    return json.loads((tmp_path / STOPPED_FILE).read_text())


def test_stop_file_stops_after_the_first_step_and_is_consumed(cfg, tmp_path):
    (tmp_path / STOP_FILE).touch()
    (tmp_path / STOPPED_FILE).write_text("{}")  # a stale marker of an earlier start: not this outcome
    t = Steps(cfg)
    summary = t.run()
    assert t.calls == ["step(0)", "checkpoint(1)", "close"]
    assert summary == {"stopped_for_requeue": _marker(tmp_path)}
    assert _marker(tmp_path)["step"] == 1 and _marker(tmp_path)["reason"] == f"{STOP_FILE} file"
    assert _marker(tmp_path)["checkpoint"].endswith("step_0000001")
    assert not (tmp_path / STOP_FILE).exists()  # consumed: a restart does not stop on it again
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]


def test_sigusr1_mid_step_stops_at_that_step_boundary(cfg, tmp_path):
    t = Steps(cfg, act=lambda step: step == 2 and os.kill(os.getpid(), signal.SIGUSR1))
    summary = t.run()
    assert _steps(t.calls) == ["step(0)", "step(1)", "step(2)"]
    assert t.calls[-2:] == ["checkpoint(3)", "close"] and "finish" not in t.calls
    assert summary["stopped_for_requeue"]["reason"] == "SIGUSR1"
    assert _marker(tmp_path)["step"] == 3


def test_first_sigterm_in_the_steps_becomes_a_stop_request(cfg, tmp_path):
    t = Steps(cfg, act=lambda step: step == 1 and os.kill(os.getpid(), signal.SIGTERM))
    summary = t.run()
    assert _steps(t.calls) == ["step(0)", "step(1)"] and t.calls[-2:] == ["checkpoint(2)", "close"]
    assert summary["stopped_for_requeue"]["reason"] == "SIGTERM"


def test_second_sigterm_exits_at_once(cfg, tmp_path):
    def twice(step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

    t = Steps(cfg, act=twice)
    with pytest.raises(SystemExit) as exc:
        t.run()
    assert exc.value.code == 128 + signal.SIGTERM
    assert not any(c.startswith("checkpoint") for c in t.calls) and t.calls[-1] == "close"
    assert not (tmp_path / STOPPED_FILE).exists()


def test_sigterm_outside_the_step_loop_unwinds_as_before(cfg, tmp_path):
    t = Steps(cfg, on_setup=lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit) as exc:
        t.run()
    assert exc.value.code == 128 + signal.SIGTERM and t.calls == ["close"]


def test_request_in_the_last_step_finishes_the_run(cfg, tmp_path):
    t = Steps(cfg, act=lambda step: step == 5 and os.kill(os.getpid(), signal.SIGUSR1))
    assert t.run() == {"finished": True}
    assert t.calls[-3:] == ["checkpoint(6)", "finish", "close"]
    assert not (tmp_path / STOPPED_FILE).exists()


def test_periodic_checkpoint_of_the_stop_step_is_not_saved_twice(cfg, tmp_path):
    cfg.checkpoint.save_interval = 2
    t = Steps(cfg, act=lambda step: step == 3 and os.kill(os.getpid(), signal.SIGUSR1))
    t.run()
    assert [c for c in t.calls if c.startswith("checkpoint")] == ["checkpoint(2)", "checkpoint(4)"]
    assert _marker(tmp_path)["step"] == 4


def test_sigusr1_during_setup_stops_after_the_first_step(cfg, tmp_path):
    """By default SIGUSR1 ends a process; a trainer takes it as a stop request from the start."""
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    t = Steps(cfg, on_setup=lambda: os.kill(os.getpid(), signal.SIGUSR1))
    assert t.run()["stopped_for_requeue"]["step"] == 1
    assert t.calls == ["step(0)", "checkpoint(1)", "close"]
