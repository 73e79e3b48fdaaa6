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

A trainer defines ``setup``, ``checkpoint_parts`` and ``run_step``; the rest has defaults. Every
trainer's ``setup`` builds its models with :func:`build_trainable` (model, weights, optimizer,
scheduler, in that order); RL's actor and critic are :class:`TrainedModel` s and its steps time their
:class:`Phases`. One checkpoint holds every part (SFT/DPO: the model; RL: policy and value) plus
``checkpoint_extra`` (RL: the pending asynchronous batch), committed together by ``save_checkpoint``.

A stop request (the run's ``stop_request`` file, SIGUSR1, or a first SIGTERM during the steps;
:mod:`megatron_tulu.engine.stop_request`) is decided collectively at each step boundary: every rank
saves the checkpoint of that step, rank 0 writes ``stopped_for_requeue`` in the output directory,
and ``run`` returns ``{"stopped_for_requeue": {...}}`` without the final checkpoint or ``finish``
(the run is not over: a restart resumes from that checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_tulu.algorithms.loop import (
    BatchOrder,
    MetricsLogger,
    Throughput,
    check_batch_geometry,
    is_rank0,
    save_config,
    split_for_rank,
)
from megatron_tulu.engine.checkpoint import (
    Part,
    find_latest,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from megatron_tulu.engine.faults import crash_point, signal_point
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.optimizer import build_optimizer, build_scheduler
from megatron_tulu.engine.parallel import init_parallel
from megatron_tulu.engine.stop_request import StopRequest, catch_usr1
from megatron_tulu.engine.train_step import (
    StepResult,
    batch_seq_length,
    prepare_model_for_training,
    train_step,
)
from megatron_tulu.models.hf_io import export_hf, load_hf_weights, model_config_from_hf


def build_trainable(
    cfg: Any,
    total_steps: int,
    *,
    hf_source: str | None = None,
    chunks: list[torch.nn.Module] | None = None,
    optimizer_cfg: Any = None,
    before_optimizer: Callable[[list[torch.nn.Module]], None] | None = None,
) -> tuple[list[torch.nn.Module], Any, Any]:
    """The one model set-up of every trainer: the model (``cfg.model`` in ``cfg.parallel``, or the
    given ``chunks``) with the weights of ``hf_source`` when one is given, then
    ``before_optimizer(chunks)`` (what must run on the loaded weights before the optimizer exists:
    DPO's reference cache, RL's frozen reference), the optimizer (``optimizer_cfg``, default
    ``cfg.optimizer``) and its scheduler over ``total_steps``, and the model prepared for training.
    Returns ``(chunks, optimizer, scheduler)``."""
    if chunks is None:
        chunks = build_model(cfg.model, cfg.parallel, cfg.precision)
    if hf_source:
        load_hf_weights(chunks, cfg.model, hf_source)
    if before_optimizer is not None:
        before_optimizer(chunks)
    optimizer_cfg = cfg.optimizer if optimizer_cfg is None else optimizer_cfg
    optimizer = build_optimizer(chunks, optimizer_cfg, cfg.parallel, cfg.precision)
    scheduler = build_scheduler(optimizer, optimizer_cfg, total_steps)
    prepare_model_for_training(chunks, optimizer)
    return chunks, optimizer, scheduler


@dataclass
class TrainedModel:
    """A model in training: its chunks, optimizer and scheduler (one checkpoint part, :attr:`part`)."""

    chunks: list[torch.nn.Module]
    optimizer: Any
    scheduler: Any

    @property
    def part(self) -> Part:
        return self.chunks, self.optimizer, self.scheduler

    def optimizer_step(
        self, forward_step: Any, micro: list[dict[str, Any]], seq: int, micro_batch_size: int, prefix: str
    ) -> dict[str, float]:
        """One optimizer step over the micro-batches ``micro``: their metrics and ``<prefix>/grad_norm``."""
        res = train_step(
            forward_step,
            iter(micro),
            self.chunks,
            self.optimizer,
            self.scheduler,
            num_microbatches=len(micro),
            seq_length=seq,
            micro_batch_size=micro_batch_size,
        )
        return {**res.metrics, f"{prefix}/grad_norm": res.grad_norm or 0.0}


class Phases:
    """Named, timed phases of one step; their seconds land in the step's metrics as
    ``time/<phase>``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}": v for k, v in self.seconds.items()}


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
        self.hf_source: str | None = None  # the HF directory the model starts from (and exports with)

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

    def export(self, chunks: list[torch.nn.Module]) -> str:
        """The trained model as an HF directory (``<output_dir>/hf``, the tokenizer of ``hf_source``)."""
        return str(export_hf(chunks, self.cfg.model, self.out_dir / "hf", tokenizer_dir=self.hf_source))

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

    ``setup`` calls :meth:`start` (parallel state, config), :meth:`plan_steps` (batch geometry, order,
    ``total_steps``) and :func:`build_trainable` (``chunks``, ``optimizer``, ``scheduler``), and sets
    ``forward_step`` (Megatron's ``forward_step(data_iterator, model) -> (output, loss_func)``);
    ``collate(rows)`` makes one micro-batch of dataset rows. ``micro_batch_rows`` is the batch rows of
    the activation a pipeline stage sends (DPO's concatenated mode sends two rows per pair). The
    config section named like the trainer (``cfg.sft``, ``cfg.dpo``) holds ``epochs`` and ``export_hf``."""

    chunks: list[torch.nn.Module]
    optimizer: Any
    scheduler: Any
    forward_step: Any
    num_microbatches: int
    micro_batch_rows: int

    def start(self, hf_source: str | None) -> None:
        """The model's architecture from ``hf_source`` (when given), parallel state, the saved config."""
        cfg = self.cfg
        self.hf_source = hf_source
        if hf_source:
            cfg.model = dataclasses.replace(model_config_from_hf(hf_source), name=cfg.model.name)
        self.info = init_parallel(cfg.model, cfg.parallel, seed=cfg.train.seed)
        save_config(cfg, self.out_dir)

    def plan_steps(self, rows: int, micro_batch_rows: int) -> None:
        """Micro-batches per step, the seeded batch order over ``rows`` dataset rows and the steps:
        ``<section>.epochs`` of them, at most ``train.train_iters`` when that is set."""
        tr = self.cfg.train
        self.num_microbatches = check_batch_geometry(tr.global_batch_size, tr.micro_batch_size, self.info.dp)
        self.micro_batch_rows = micro_batch_rows
        self.order = BatchOrder(rows, tr.global_batch_size, tr.seed)
        per_run = self.order.steps_per_epoch * getattr(self.cfg, self.name).epochs
        self.total_steps = min(tr.train_iters, per_run) if tr.train_iters > 0 else per_run

    def collate(self, rows: list[int]) -> dict[str, Any]:
        """One micro-batch of the dataset rows ``rows``."""
        raise NotImplementedError

    def micro_batches(self, step: int) -> list[dict[str, Any]]:
        """This rank's micro-batches of global batch ``step``."""
        shares = split_for_rank(
            self.order.rows(step), self.info.dp, self.info.dp_rank, self.cfg.train.micro_batch_size
        )
        return [self.collate(idx) for idx in shares]

    def before_steps(self, start: int) -> None:
        cfg = self.cfg
        self.meter = Throughput(
            cfg.model, cfg.train.seq_length, self.info.world_size, cfg.logging.peak_tflops
        )
        if is_rank0():
            print(f"[{self.name}] {self.describe(start)}")

    def describe(self, start: int) -> str:
        """The data, settings and steps of the run (from step ``start``), printed once before them."""
        return f"steps={self.total_steps} start={start}"

    def summary(self) -> dict[str, Any]:
        """What the run summary adds to the steps and the final checkpoint."""
        return {}

    def finish(self, last: dict[str, Any]) -> dict[str, Any]:
        summary = {**super().finish(last), **self.summary()}
        if getattr(self.cfg, self.name).export_hf:
            summary["hf_export"] = self.export(self.chunks)
        summary["last_metrics"] = last
        return summary

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
