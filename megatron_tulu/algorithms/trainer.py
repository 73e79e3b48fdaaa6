"""The lifecycle every trainer shares (SFT, DPO and RL), in the order it runs::

    run():
        setup()                   data, models, optimizers                      (each trainer)
        start = resume()          checkpoint.resume false | true | auto -> the parts of checkpoint_parts()
        before_steps(start)       print the plan; RL: refit the engines, step-0 evaluation, first batches
        for step in start..total:
            row = run_step(step)  one update (SFT/DPO: one optimizer step; RL: the named phases)
            log(step + 1, row)    metrics.jsonl, TensorBoard (every train.log_interval steps), progress bar
            checkpoint(step + 1)  every checkpoint.save_interval steps
            stop requested?       (collective) checkpoint(step + 1), stopped_for_requeue, return
        checkpoint(total)         the final one, always
        return finish(row)        the run summary (HF export, plots)
    close()                       always, error or not: trainer resources, then the process groups

A trainer defines ``setup``, ``checkpoint_parts`` and ``run_step``; the rest has defaults. One
checkpoint holds every part (SFT/DPO: the model; RL: policy and value) plus ``checkpoint_extra``
(RL: the pending asynchronous batch), committed together by ``save_checkpoint``.

A stop request (the run's ``stop_request`` file, SIGUSR1, or a first SIGTERM during the steps;
:mod:`megatron_tulu.engine.stop_request`) is decided collectively at each step boundary: every rank
saves the checkpoint of that step, rank 0 writes ``stopped_for_requeue`` in the output directory,
and ``run`` returns ``{"stopped_for_requeue": {...}}`` without the final checkpoint or ``finish``
(the run is not over: a restart resumes from that checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from megatron_tulu.algorithms.loop import MetricsLogger, is_rank0
from megatron_tulu.engine.checkpoint import (
    Part,
    find_latest,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from megatron_tulu.engine.faults import crash_point, signal_point
from megatron_tulu.engine.stop_request import StopRequest, catch_usr1
from megatron_tulu.engine.train_step import StepResult, batch_seq_length, train_step


class Trainer:
    """Base of every trainer; see the module docstring for the order of the calls."""

    name = "train"

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.out_dir = Path(cfg.train.output_dir)
        self.ckpt_root = Path(cfg.checkpoint.save_dir or self.out_dir / "checkpoints")
        self.total_steps = 0
        self.logger: MetricsLogger | None = None
        self.stop = StopRequest(self.out_dir)
        self.stopped: dict[str, Any] | None = None  # set when a stop request ended the steps

    # ---------------------------------------------------------------- defined by each trainer
    def setup(self) -> None:
        raise NotImplementedError

    def checkpoint_parts(self) -> dict[str, Part]:
        """The models a checkpoint holds: ``{name: (chunks, optimizer, scheduler)}`` ("" = unnamed)."""
        raise NotImplementedError

    def run_step(self, step: int) -> dict[str, Any]:
        """Train global step ``step`` (0-based); returns the row logged as step ``step + 1``."""
        raise NotImplementedError

    def checkpoint_extra(self, step: int) -> dict[str, Any]:
        """Picklable state saved with the checkpoint of ``step`` besides models, data position and RNG."""
        return {}

    def restore(self, extra: dict[str, Any]) -> None:
        """Take back what ``checkpoint_extra`` saved (called by ``resume``)."""

    def before_steps(self, start: int) -> None:
        """After the resume, before the first step."""

    def progress(self, row: dict[str, Any]) -> dict[str, str]:
        """Progress-bar fields of a logged row."""
        return {}

    def finish(self, last: dict[str, Any]) -> dict[str, Any]:
        """The run summary, after the final checkpoint."""
        return {"steps": self.total_steps, "final_checkpoint": str(find_latest(self.ckpt_root))}

    def close(self) -> None:
        """Release what ``setup`` started; runs after an error too."""
        from megatron_tulu.engine.parallel import destroy_parallel

        destroy_parallel()

    # --------------------------------------------------------------------------- lifecycle
    def run(self) -> dict[str, Any]:
        try:
            catch_usr1()  # a SIGUSR1 during setup is a stop request too (by default it ends the process)
            self.setup()
            start = self.resume()
            self.stop.clear_marker()
            self.logger = MetricsLogger(self.out_dir, self.cfg.logging, resume_step=start)
            self.before_steps(start)
            self.stop.arm()  # from here a first SIGTERM waits for the step boundary
            try:
                last = self.steps(start)
            finally:
                self.stop.disarm()
            self.logger.close()
            if self.stopped is not None:
                return {"stopped_for_requeue": self.stopped}
            self.checkpoint(self.total_steps)
            return self.finish(last)
        finally:
            if self.logger is not None:
                self.logger.close()
            self.close()

    def resume(self) -> int:
        """The first step: 0, or the step of the checkpoint ``checkpoint.resume`` selects (see
        :func:`megatron_tulu.engine.checkpoint.resolve_resume`; its checksums were verified there,
        so the load does not read every file twice)."""
        chosen = resolve_resume(self.cfg.checkpoint, self.ckpt_root)
        if chosen is None:
            return 0
        extra = load_checkpoint(chosen, parts=self.checkpoint_parts(), verify=False)
        self.restore(extra)
        return int(extra["step"])

    def steps(self, start: int) -> dict[str, Any]:
        """Steps ``start..total_steps``: step, log, periodic checkpoint. Returns the last row."""
        bar = None
        if is_rank0() and self.cfg.logging.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=start, desc=self.name, dynamic_ncols=True)
        interval = self.cfg.checkpoint.save_interval
        log_every = max(1, self.cfg.train.log_interval)
        last: dict[str, Any] = {}
        for step in range(start, self.total_steps):
            last = self.run_step(step)
            if (step + 1) % log_every == 0 or step + 1 == self.total_steps:
                self.logger.log(step + 1, last)  # before the checkpoint: a resume never lacks a logged step
            if bar is not None:
                bar.update(1)
                bar.set_postfix(self.progress(last))
            saved = None
            if interval and (step + 1) % interval == 0 and step + 1 < self.total_steps:
                saved = self.checkpoint(step + 1)
            crash_point("kill_after_step", step + 1)
            signal_point(step + 1)
            # the last step ends the run anyway: its final checkpoint follows, nothing to requeue
            if step + 1 < self.total_steps and (reason := self.stop.agreed()) is not None:
                saved = saved or self.checkpoint(step + 1)
                self.stopped = self.stop.record(step + 1, reason, saved)
                break
        if bar is not None:
            bar.close()
        return last

    def checkpoint(self, step: int) -> Path:
        """One atomic checkpoint of every part (``latest`` moves only once all of it is written)."""
        return save_checkpoint(
            self.ckpt_root,
            step,
            parts=self.checkpoint_parts(),
            extra=self.checkpoint_extra(step),
            keep_last=self.cfg.checkpoint.keep_last,
            meta={"model": dataclasses.asdict(self.cfg.model), "algorithm": self.name},
        )


class SupervisedTrainer(Trainer):
    """SFT and DPO: one model; each step is one optimizer step over ``micro_batches(step)``.

    ``setup`` sets ``chunks``, ``optimizer``, ``scheduler``, ``forward_step`` (Megatron's
    ``forward_step(data_iterator, model) -> (output, loss_func)``), ``num_microbatches`` and
    ``total_steps``; ``micro_batch_rows`` is the batch rows of the activation a pipeline stage
    sends (DPO's concatenated mode sends two rows per pair)."""

    chunks: list[torch.nn.Module]
    optimizer: Any
    scheduler: Any
    forward_step: Any
    num_microbatches: int
    micro_batch_rows: int

    def micro_batches(self, step: int) -> list[dict[str, Any]]:
        """This rank's micro-batches of global batch ``step``."""
        raise NotImplementedError

    def step_metrics(self, result: StepResult, micro: list[dict[str, Any]]) -> dict[str, Any]:
        """The logged row of a step (loss, throughput) from its result and micro-batches."""
        return dict(result.metrics)

    def checkpoint_parts(self) -> dict[str, Part]:
        return {"": (self.chunks, self.optimizer, self.scheduler)}

    def run_step(self, step: int) -> dict[str, Any]:
        micro = self.micro_batches(step)
        result = train_step(
            self.forward_step,
            iter(micro),
            self.chunks,
            self.optimizer,
            self.scheduler,
            num_microbatches=self.num_microbatches,
            seq_length=batch_seq_length(micro[0]),
            micro_batch_size=self.micro_batch_rows,
        )
        return {**self.step_metrics(result, micro), "lr": result.lr, "grad_norm": result.grad_norm}

    def progress(self, row: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{row.get('loss', math.nan):.3f}", "lr": f"{row['lr']:.2e}"}
