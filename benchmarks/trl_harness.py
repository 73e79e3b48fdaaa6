"""The machinery every "ours vs TRL" benchmark shares: bench_sft.py, bench_dpo.py, and an RL one alike.

A comparison script holds only what is its own -- a :class:`Benchmark` (report name, sides, notes, unit,
option defaults), how it prepares the data, its two workers and its table rows -- and this module does
the rest the same way for all of them:

* **parent**: :func:`parser` (the common options and the hidden worker flags), :func:`begin` (checks,
  scratch dir, start time), :func:`tiny_model` and :func:`make_spec` (the embedded tiny Llama and the
  data, written once, that every side reads), :func:`launch` (one subprocess per side, optionally under
  ``torchrun``, re-running the script with ``--worker SIDE``), :func:`run_rounds` (interleaved rounds,
  each side keeps its least disturbed run), :func:`summarize` (throughput in the benchmark's unit over
  the timed steps);
* **the same settings on both sides**: :func:`ours_overrides` (our config) and :func:`trl_matched_args`
  (TRL trainer arguments) describe one optimizer, LR schedule, clipping and batch split;
* **workers**: :func:`serve_worker` (dispatch, result file), :func:`worker_threads`; ours:
  :func:`build_ours`, :func:`ours_optimizer`, :func:`train_ours` (the timed loop); TRL's:
  :func:`trl_model`, :func:`trl_clock_callback`; both: a :class:`StepClock` (step end times, CPU times,
  RSS before and over the training loop) and :func:`footprint` (parameter / optimizer-state bytes);
* **report**: :data:`ROWS`, :func:`rows`, :func:`speed_rows`, :func:`loss_rows`, :func:`max_abs_diff`,
  :func:`settings_of`, and :func:`finish` (the JSON file and the printed table).

An RL comparison (ours vs TRL's ``GRPOTrainer``) fits the same way: its ``Benchmark`` counts e.g.
"prompts", ``prepare`` writes the prompts of every step with :func:`make_spec`, ``worker_trl`` passes
``trl_matched_args`` plus its GRPO arguments and the :func:`trl_clock_callback`, and ``worker_ours``
ticks a :class:`StepClock` around our RL steps (:func:`train_ours` is for a plain ``train_step`` loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from common import (
    environment,
    fmt_bytes,
    format_table,
    free_port,
    lifetime_peak_rss_bytes,
    optimizer_states,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    run_worker,
    set_torch_threads,
    tensor_bytes,
    thread_env,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
OPTIMIZER_NOTE = "AdamW betas=(0.9,0.999) eps=1e-8 wd=0, constant LR, clip 1.0, fp32"


@dataclass(frozen=True)
class Benchmark:
    """One comparison: the report's ``benchmark`` name, the script (re-run as each side's worker), its
    sides (name -> label; ``ours*`` sides run our worker, the others TRL's), the notes that go with its
    numbers, what a batch counts (``unit``, e.g. "pairs") and the defaults of the common options
    (steps, warmup, global_batch, micro_batch, lr, sides, out: a file name under benchmarks/results)."""

    name: str
    script: str
    labels: dict[str, str]
    notes: list[str]
    unit: str
    defaults: dict[str, Any]

    @property
    def stem(self) -> str:
        return Path(self.script).stem


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parser(doc: str | None, bench: Benchmark) -> argparse.ArgumentParser:
    """A parser with the options every comparison has (the benchmark adds its own)."""
    d, unit = bench.defaults, bench.unit
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=d["steps"], help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=d["warmup"], help="untimed optimizer steps before them")
    p.add_argument("--global-batch", type=int, default=d["global_batch"], help=f"{unit} per optimizer step")
    p.add_argument("--micro-batch", type=int, default=d["micro_batch"], help=f"{unit} per forward/backward")
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of each worker")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--sides", default=d["sides"], help=f"comma-separated subset of: {','.join(bench.labels)}")
    p.add_argument("--work-dir", default=None, help="scratch dir (default: a temp dir)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / d["out"]))
    p.add_argument("--worker", choices=list(bench.labels), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def serve_worker(
    args: argparse.Namespace,
    worker_ours: Callable[[dict[str, Any]], dict[str, Any] | None],
    worker_trl: Callable[[dict[str, Any]], dict[str, Any] | None],
) -> int:
    """Worker mode (``--worker SIDE``): run the side named ``ours*`` or the TRL one, write its result
    (a worker of a multi-rank side returns None on every rank but the one that reports)."""
    spec = json.loads(Path(args.spec).read_text())
    result = worker_ours(spec) if args.worker.startswith("ours") else worker_trl(spec)
    if result is not None:
        write_json(args.result, result)
    return 0


def begin(
    p: argparse.ArgumentParser, args: argparse.Namespace, bench: Benchmark
) -> tuple[list[str], Path, float]:
    """The parent's start, after the batch-geometry and side-name checks: ``--sides`` as a list, the
    scratch directory (``--work-dir`` or a new temp dir) and the start time of the whole run."""
    if args.global_batch % args.micro_batch:
        p.error("--global-batch must be a multiple of --micro-batch")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in bench.labels]
    if unknown:
        p.error(f"unknown sides {unknown}; choose from {list(bench.labels)}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix=f"{bench.stem}_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    return sides, work, time.perf_counter()


def load_data(spec: dict[str, Any]) -> Any:
    """The prepared data every worker reads (``spec["data_path"]``, written once by the parent)."""
    return json.loads(Path(spec["data_path"]).read_text())


# --------------------------------------------------------------------------------------------------
# Parent: the model and data every side gets
# --------------------------------------------------------------------------------------------------


def tiny_model(args: argparse.Namespace, work: Path) -> tuple[Path, Any, int]:
    """The embedded tiny Llama (fp32, built once under ``work/tiny`` with ``--seed``), our tokenizer of it
    and its pad id (EOS when it has none)."""
    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.models.tiny import build_tiny_model

    model_dir = work / "tiny"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, seed=args.seed)
    tokenizer = load_tokenizer(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model_dir, tokenizer, pad_id


def make_spec(
    args: argparse.Namespace,
    work: Path,
    model_dir: Path,
    pad_id: int,
    data: Any,
    facts: dict[str, Any],
    **settings: Any,
) -> dict[str, Any]:
    """Write ``data`` (what every worker trains on, in step order) to one file; return the spec the
    workers read: where things are, the common settings, the benchmark's own ``settings`` and the
    data ``facts`` the report shows."""
    data_path = work / "data.json"
    data_path.write_text(json.dumps(data))
    return {
        "model_dir": str(model_dir),
        "data_path": str(data_path),
        "pad_id": pad_id,
        **settings,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "work_dir": str(work),
        "data": facts,
    }


# --------------------------------------------------------------------------------------------------
# Parent: one subprocess per side, interleaved rounds
# --------------------------------------------------------------------------------------------------


def launch(
    bench: Benchmark,
    side: str,
    spec: dict[str, Any],
    work: Path,
    *,
    nproc: int = 1,
    record_load: bool = False,
) -> dict[str, Any]:
    """Run ``bench.script --worker side`` in its own process (``nproc > 1``: under ``torchrun --standalone``,
    the threads split over the ranks), offline, and return its result. ``record_load`` adds the 1-min
    load average before and after the worker (``loadavg_1min``)."""
    script = Path(bench.script).resolve()
    spec_path = work / f"spec_{side}.json"
    spec_path.write_text(json.dumps({**spec, "side": side}))
    result = work / f"result_{side}.json"
    env = thread_env(spec["threads"] if nproc == 1 else max(1, spec["threads"] // nproc))
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = env["HF_DATASETS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["TQDM_DISABLE"] = "1"
    env["HF_DATASETS_CACHE"] = str(work / f"hf_datasets_{side}")  # no cross-run cache hits (TRL's reference)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    worker = ["--worker", side, "--spec", str(spec_path), "--result", str(result)]
    if nproc == 1:
        cmd = [sys.executable, str(script), *worker]
    else:
        # --standalone picks its own rendezvous port; MASTER_PORT is for our gloo world
        env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(free_port())
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            str(script),
            *worker,
        ]
    print(f"[{script.stem}] running {side} ...", flush=True)
    load_before = os.getloadavg()[0]
    out = run_worker(cmd, result, env=env, timeout=900, log_path=work / f"log_{side}.txt")
    if record_load:
        out["loadavg_1min"] = [load_before, os.getloadavg()[0]]  # machine load around the worker
    return out


def run_rounds(
    sides: Sequence[str],
    repeats: int,
    run: Callable[[str], dict[str, Any]],
    all_runs_keys: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """``run(side)`` for every side, ``repeats`` rounds interleaving the sides (so load drift hits each side
    alike); each side keeps its run with the least CPU time per step (the least disturbed one). With
    ``repeats > 1`` the kept result lists every run's ``all_runs_keys`` under ``all_runs``."""
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
    for _ in range(repeats):
        for s in sides:
            runs[s].append(run(s))
    results = {s: min(runs[s], key=lambda r: r["cpu_seconds_per_step"]) for s in sides}
    if repeats > 1:
        for s in sides:
            results[s]["all_runs"] = [{k: r[k] for k in all_runs_keys} for r in runs[s]]
    return results


def summarize(res: dict[str, Any], warmup: int, steps: int, unit: str, count: float) -> dict[str, Any]:
    """``count`` ``unit`` over the timed steps (from the end of the last warm-up step to the end of the last
    step) per wall and per CPU second, per-step times and the first / final loss."""

    def span(ends: list[float], start: float) -> tuple[float, list[float]]:
        first = ends[warmup - 1] if warmup > 0 else start
        return ends[warmup + steps - 1] - first, [b - a for a, b in zip([start, *ends[:-1]], ends)]

    elapsed, per_step = span(res["step_end_times"], res["loop_start"])
    cpu, cpu_per_step = span(res["step_end_cpu_times"], res["cpu_start"])
    return {
        f"{unit}_per_s": count / elapsed,
        f"{unit}_per_cpu_s": count / cpu,
        "seconds_per_step": elapsed / steps,
        "cpu_seconds_per_step": cpu / steps,
        "timed_seconds": elapsed,
        "step_seconds": per_step,
        "step_cpu_seconds": cpu_per_step,
        "first_loss": res["losses"][0],
        "final_loss": res["losses"][-1],
    }


# --------------------------------------------------------------------------------------------------
# Workers: the same settings and model on both sides
# --------------------------------------------------------------------------------------------------


def ours_overrides(spec: dict[str, Any], steps: int, run_name: str) -> list[str]:
    """Config overrides for our trainer matching :func:`trl_matched_args`: the same steps, batch split,
    constant LR, AdamW without decay and clipping at 1.0, from the tiny model of ``spec``."""
    return [
        f"train.output_dir={spec['work_dir']}/{run_name}",
        f"model.hf_path={spec['model_dir']}",
        f"train.global_batch_size={spec['global_batch']}",
        f"train.micro_batch_size={spec['micro_batch']}",
        f"train.train_iters={steps}",
        f"train.seed={spec['seed']}",
        f"optimizer.lr={spec['lr']}",
        "optimizer.min_lr=0.0",
        "optimizer.warmup_ratio=0.0",
        "optimizer.lr_decay_style=constant",
        "optimizer.weight_decay=0.0",
        "optimizer.clip_grad=1.0",
    ]


def trl_matched_args(spec: dict[str, Any], steps: int, micro_batch: int, global_batch: int) -> dict[str, Any]:
    """TRL trainer arguments that match our side: same steps and batch split, constant LR, AdamW
    (0.9, 0.999, 1e-8, no decay), clip 1.0, fp32 on CPU, rows fed in order, per-step logs, no saves."""
    return dict(
        output_dir=f"{spec['work_dir']}/trl",
        max_steps=steps,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=global_batch // micro_batch,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        optim="adamw_torch",
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=spec["seed"],
        train_sampling_strategy="sequential",  # rows are already in step order
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )


def worker_threads(spec: dict[str, Any]) -> None:
    """Pin this worker's intra-op threads (``OMP_NUM_THREADS`` from :func:`launch`)."""
    set_torch_threads(int(os.environ.get("OMP_NUM_THREADS", spec["threads"])))


def trl_model(spec: dict[str, Any]) -> tuple[Any, Any]:
    """TRL's side of the same weights: the HF tokenizer (pad id as ours) and the fp32 model with SDPA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"], local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = spec["pad_id"]
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    )
    model.config.use_cache = False
    return tokenizer, model


def build_ours(
    spec: dict[str, Any], overrides: list[str], config_name: str, schema: type
) -> tuple[Any, Any, Any]:
    """Our side up to the optimizer: the config (model shapes from the HF directory), the parallel state
    and the model chunks with the tiny model's weights. Returns ``(cfg, parallel info, chunks)``."""
    from megatron_tulu.config.load import load_config
    from megatron_tulu.engine.model import build_model
    from megatron_tulu.engine.parallel import init_parallel
    from megatron_tulu.models.hf_io import load_hf_weights, model_config_from_hf

    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    cfg = load_config(overrides, config_name=config_name, schema=schema)
    cfg.model = dataclasses.replace(model_config_from_hf(spec["model_dir"]), name=cfg.model.name)
    info = init_parallel(cfg.model, cfg.parallel, seed=cfg.train.seed)
    chunks = build_model(cfg.model, cfg.parallel, cfg.precision)
    load_hf_weights(chunks, cfg.model, spec["model_dir"])
    return cfg, info, chunks


class OursModel(NamedTuple):
    chunks: Any
    optimizer: Any
    scheduler: Any


def ours_optimizer(chunks: Any, cfg: Any, steps: int) -> OursModel:
    """Our optimizer and LR scheduler, the model made ready to train."""
    from megatron_tulu.engine.optimizer import build_optimizer, build_scheduler
    from megatron_tulu.engine.train_step import prepare_model_for_training

    optimizer = build_optimizer(chunks, cfg.optimizer, cfg.parallel, cfg.precision)
    scheduler = build_scheduler(optimizer, cfg.optimizer, steps)
    prepare_model_for_training(chunks, optimizer)
    return OursModel(chunks, optimizer, scheduler)


# --------------------------------------------------------------------------------------------------
# Workers: measurement
# --------------------------------------------------------------------------------------------------


class StepClock:
    """One worker's training-loop measurements: :meth:`start` before the first step (RSS so far, then the
    peak reset), :meth:`tick` at the end of every optimizer step, :meth:`stop` after the loop; :meth:`times`
    and :meth:`memory` are the result entries. ``losses`` / ``grad_norms`` / ``lrs`` collect per-step
    metrics where the worker has no better source."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.lrs: list[float] = []
        self.rss_before: int | None = None
        self.peak_train: int | None = None
        self.loop_start = self.cpu_start = 0.0

    def start(self) -> None:
        self.rss_before = rss_bytes()
        reset_peak_rss()
        self.loop_start, self.cpu_start = time.perf_counter(), time.process_time()

    def tick(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def stop(self) -> None:
        self.peak_train = peak_rss_bytes()

    def times(self) -> dict[str, Any]:
        return {
            "loop_start": self.loop_start,
            "step_end_times": self.ends,
            "cpu_start": self.cpu_start,
            "step_end_cpu_times": self.cpu_ends,
        }

    def memory(self) -> dict[str, Any]:
        return {
            "rss_before_train": self.rss_before,
            "peak_rss_train": self.peak_train,
            "peak_rss_lifetime": lifetime_peak_rss_bytes(),
        }


def train_ours(
    clock: StepClock,
    model: OursModel,
    forward_step: Callable,
    steps: int,
    batches: Callable[[int], tuple[list[Any], int]],
    num_microbatches: int,
    micro_batch_size: int,
) -> Iterator[Any]:
    """Our timed training loop: ``batches(step)`` gives this rank's micro-batches of the step and their
    sequence length; yields each step's ``train_step`` result once ``clock`` ticked and took its grad
    norm. ``clock`` runs from the first step to the end of the last."""
    from megatron_tulu.engine.train_step import train_step

    clock.start()
    for step in range(steps):
        micro, seq_len = batches(step)
        result = train_step(
            forward_step,
            iter(micro),
            *model,
            num_microbatches=num_microbatches,
            seq_length=seq_len,
            micro_batch_size=micro_batch_size,
        )
        clock.tick()
        clock.grad_norms.append(result.grad_norm)
        yield result
    clock.stop()


def trl_clock_callback(clock: StepClock, *, log_losses: bool = True) -> Any:
    """A ``TrainerCallback`` that runs ``clock`` over TRL's training loop and records the logged grad norm
    and LR of every step (and the logged loss, with ``log_losses``)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                if log_losses:
                    clock.losses.append(float(logs["loss"]))
                clock.grad_norms.append(float(logs.get("grad_norm", float("nan"))))
                clock.lrs.append(float(logs.get("learning_rate", float("nan"))))

    return Clock()


def footprint(params: list[Any], optimizer: Any, **more: Any) -> dict[str, Any]:
    """Parameter count and bytes, ``more`` entries (e.g. ``grad_bytes``), optimizer-state bytes."""
    return {
        "param_count": sum(q.numel() for q in params),
        "param_bytes": tensor_bytes(params),
        **more,
        "optimizer_state_bytes": tensor_bytes(optimizer_states(optimizer)),
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

Row = tuple[str, Callable[[dict[str, Any]], str]]


def _entry(key: str, spec: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: format(r[key], spec)


def _bytes(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: fmt_bytes(r[key])


# The rows every comparison may show, by the result entry they show.
ROWS: dict[str, Row] = {
    "seconds_per_step": ("s/step (wall, mean)", _entry("seconds_per_step", ".2f")),
    "cpu_seconds_per_step": ("CPU-s/step (mean)", _entry("cpu_seconds_per_step", ".2f")),
    "peak_rss_lifetime": ("peak RSS, whole worker", _bytes("peak_rss_lifetime")),
    "peak_rss_train": ("peak RSS, training loop", _bytes("peak_rss_train")),
    "rss_before_train": ("RSS before training", _bytes("rss_before_train")),
    "param_count": ("params (count)", _entry("param_count", ",")),
    "param_bytes": ("param bytes", _bytes("param_bytes")),
    "grad_bytes": ("grad bytes", _bytes("grad_bytes")),
    "optimizer_state_bytes": ("optimizer state bytes", _bytes("optimizer_state_bytes")),
    "wall_seconds": ("worker wall s (incl. imports)", _entry("wall_seconds", ".1f")),
}


def rows(*keys: str) -> list[Row]:
    """The :data:`ROWS` of ``keys``, in that order."""
    return [ROWS[k] for k in keys]


def speed_rows(name: str, unit: str, spec: str) -> list[Row]:
    """Throughput in ``unit`` (as :func:`summarize` names it; ``name`` in the labels) per wall second, then
    seconds per step, per CPU second, CPU seconds per step."""
    return [
        (f"{name}/s (wall)", _entry(f"{unit}_per_s", spec)),
        ROWS["seconds_per_step"],
        (f"{name}/CPU-s", _entry(f"{unit}_per_cpu_s", spec)),
        ROWS["cpu_seconds_per_step"],
    ]


def loss_rows(steps: int, spec: str) -> list[Row]:
    """The loss of the first and of the last (``steps``-th) step."""
    return [("loss step 1", _entry("first_loss", spec)), (f"loss step {steps}", _entry("final_loss", spec))]


def table(results: dict[str, dict[str, Any]], sides: Sequence[str], rows: Sequence[Row]) -> str:
    """One column per side, one row per ``(label, cell(result))``."""
    return format_table([[label, *(cell(results[s]) for s in sides)] for label, cell in rows], ["", *sides])


def max_abs_diff(
    results: dict[str, dict[str, Any]], base: str, key: str, values: Callable[[dict[str, Any]], list[float]]
) -> None:
    """Set ``results[s][key]`` on every side: the largest ``|a - b|`` of ``values(results[s])`` against
    ``values(results[base])``, element by element."""
    ref = values(results[base])
    for res in results.values():
        res[key] = max(abs(a - b) for a, b in zip(values(res), ref))


def settings_of(spec: dict[str, Any], keys: Sequence[str], **more: Any) -> dict[str, Any]:
    """The report's settings: ``keys`` of the spec, then ``more``."""
    return {**{k: spec[k] for k in keys}, **more}


def finish(
    bench: Benchmark,
    args: argparse.Namespace,
    sides: Sequence[str],
    results: dict[str, dict[str, Any]],
    rows: Sequence[Row],
    spec: dict[str, Any],
    settings: dict[str, Any],
    headline: str,
    t0: float,
) -> int:
    """Write the JSON report to ``args.out`` (``settings`` plus the optimizer both sides run, the data
    facts of ``spec``) and print the headline, the sides and the table of ``rows``."""
    text = table(results, sides, rows)
    out = {
        "benchmark": bench.name,
        "sides": {s: bench.labels[s] for s in sides},
        "settings": {**settings, "optimizer": OPTIMIZER_NOTE},
        "data": spec["data"],
        "results": results,
        "table": text,
        "notes": bench.notes,
        "environment": environment(),
        "total_seconds": time.perf_counter() - t0,
    }
    write_json(args.out, out)
    print(f"\n{headline}\n")
    for s in sides:
        print(f"  {s}: {bench.labels[s]}")
    print()
    print(text)
    print(f"\nwrote {args.out}  (total {out['total_seconds']:.0f}s)")
    return 0
