"""Fault-injection trials: kill trainers at random instants, resume, and compare with a clean run.

Why: "kill -9 then resume is exact" must hold at *every* instant (mid-step, mid-save, mid-commit,
mid-export), not only at the hand-picked crash points of the unit tests, and a kill must leave no
process behind. Each trial:

1. starts ``megatron-tulu <kind> ...`` in a new session (so every process it starts shares one
   session id), kills the *trainer process only* with SIGKILL or SIGTERM at a random instant or
   while a checkpoint save is in progress (a ``step_N.partial`` directory exists);
2. lists the processes of that session still alive a few seconds later (orphans: helpers that did
   not die with the trainer) and kills them;
3. resumes with ``checkpoint.resume=auto`` and checks: the run finishes, or refuses with one
   ``error:`` line; the metrics sequence (every non-timing field of every step) and the final HF
   weights equal the uninterrupted reference run bit for bit (CPU, fp32); no process is left.

Corruption trials truncate a random checkpoint file or flip one byte in it and check that
``megatron-tulu checkpoint verify`` fails naming that file.

The table of run kinds (``KINDS``) is data: add an entry to cover another trainer (``rlvr`` is
there; pass ``--kinds rlvr`` to include it). Usage::

    python scripts/fault_trials.py --kills 30 --corruptions 10 --out /tmp/fault_trials
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TIMING_WORDS = ("seconds", "per_s", "mfu", "rss", "time/")  # wall-clock fields differ run to run


@dataclass
class Kind:
    """One trainer command as a trial subject."""

    command: str
    args: list[str]
    needs_model: bool = False  # model.hf_path=<a tiny HF model built once per session>
    weights: str = "hf/model.safetensors"
    extra_env: dict[str, str] = field(default_factory=dict)
    # (shipped data file, rows, config key): the first rows only, so a trial costs seconds, not minutes
    data_subset: tuple[str, int, str] | None = None


COMMON = [
    "train.train_iters=6",
    "train.seq_length=128",
    "train.global_batch_size=8",
    "train.micro_batch_size=4",
    "checkpoint.save_interval=2",
    "checkpoint.keep_last=2",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]

KINDS: dict[str, Kind] = {
    "sft": Kind("sft", [*COMMON]),
    "dpo": Kind(
        "dpo",
        [*(a for a in COMMON if "train_iters" not in a), "train.train_iters=4", "data.max_seq_len=128"],
        needs_model=True,
        data_subset=(
            "dpo.jsonl",
            64,
            "data.train_files",
        ),  # the reference log-probs of all 1,000 pairs took 30 s a run
    ),
    "rlvr": Kind(
        "rlvr",
        [
            "rlvr.prompts_per_step=8",
            "train.micro_batch_size=4",
            "rollout.max_new_tokens=16",
            "rlvr.ppo_epochs=1",
            "rlvr.total_episodes=32",
            "rlvr.eval_every=0",
            "optimizer.lr=1e-4",
            "checkpoint.save_interval=1",
            "checkpoint.keep_last=2",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
        ],
        needs_model=True,
        extra_env={"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"},
        data_subset=("rlvr_heldout.jsonl", 8, "rlvr.heldout_files"),
    ),
}


def _env(kind: Kind) -> dict[str, str]:
    return dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", **kind.extra_env
    )


def command(kind: Kind, out: Path, cache: Path, model: Path | None, resume: str) -> list[str]:
    cmd = [sys.executable, "-m", "megatron_tulu.cli", kind.command, *kind.args]
    cmd += [f"train.output_dir={out}", f"checkpoint.resume={resume}"]
    if kind.command in ("sft", "dpo"):
        cmd.append(f"data.cache_dir={cache}")
    if kind.needs_model and model is not None:
        cmd.append(f"model.hf_path={model}")
    if kind.data_subset is not None:
        name, rows, key = kind.data_subset
        subset = cache.parent / f"subset_{rows}_{name}"
        if not subset.is_file():
            subset.parent.mkdir(parents=True, exist_ok=True)
            lines = (REPO / "megatron_tulu" / "assets" / "data" / name).read_text().splitlines(keepends=True)
            subset.write_text("".join(lines[:rows]))
        cmd.append(f"{key}=[{subset}]")
    return cmd


def session_processes(sid: int) -> list[int]:
    """Live processes whose session id is ``sid`` (zombies excluded: they hold no memory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) != sid:
                continue
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError, PermissionError, IndexError):
            continue
        if state != "Z":
            found.append(pid)
    return found


def wait_session_empty(sid: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = session_processes(sid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def kill_session(sid: int) -> None:
    for pid in session_processes(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_to_end(
    cmd: list[str], env: dict[str, str], log: Path, timeout: float = 900
) -> tuple[int, float, list[int]]:
    """Run in a new session; returns (rc, seconds, processes of the session left behind)."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_session(proc.pid)
            rc = proc.wait()
    left = wait_session_empty(proc.pid, 10)
    kill_session(proc.pid)
    return rc, time.monotonic() - t0, left


def metrics(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not any(w in k for w in TIMING_WORDS)} for r in rows]


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    if not a.is_file() or not b.is_file():
        return False
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def kill_trial(
    kind: Kind,
    ref_out: Path,
    ref_seconds: float,
    work: Path,
    cache: Path,
    model: Path | None,
    rng: random.Random,
    during_save: bool | None = None,
    sig: int | None = None,
) -> dict[str, Any]:
    """One kill + resume; returns the row of the result table. ``during_save``/``sig`` default to
    random choices: 40% of kills wait for a checkpoint save in progress (the first, second, ...
    save of the run, at random), the others land at a uniform instant of the run; 2 in 3 are
    SIGKILL, the rest SIGTERM."""
    out = work / "out"
    sig = sig if sig is not None else rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM])
    during_save = during_save if during_save is not None else rng.random() < 0.4
    target_save = rng.randint(1, 3)  # which save to hit (the last one is the final save)
    saves_seen: set[str] = set()
    delay = rng.uniform(0.25 * ref_seconds, ref_seconds * 1.05)
    row: dict[str, Any] = {"kind": kind.command, "signal": signal.Signals(sig).name}
    env = _env(kind)
    with open(work / "killed.log", "w") as f:
        proc = subprocess.Popen(
            command(kind, out, cache, model, "auto"),
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        t0 = time.monotonic()
        ckpts = out / "checkpoints"
        instant = "random"
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            if during_save:
                partials = list(ckpts.glob("*.partial")) if ckpts.is_dir() else []
                saves_seen.update(p.name for p in partials)
                if partials and len(saves_seen) >= target_save:
                    time.sleep(rng.uniform(0, 0.4))
                    instant = f"during save of {partials[0].name}"
                    break
                if elapsed > ref_seconds * 1.5:
                    break
            elif elapsed >= delay:
                instant = f"t={delay:.1f}s"
                break
            time.sleep(0.005)
        finished_first = proc.poll() is not None
        if not finished_first:
            proc.send_signal(sig)
        proc.wait()
    row["instant"] = "finished before the kill" if finished_first else instant
    row["killed_rc"] = proc.returncode
    orphans = wait_session_empty(proc.pid, 10)
    row["orphans_after_kill"] = len(orphans)
    if orphans:
        row["orphan_cmds"] = [
            Path(f"/proc/{p}/cmdline").read_bytes()[:120].decode(errors="replace") for p in orphans
        ]
    kill_session(proc.pid)
    steps_before = [r["step"] for r in metrics(out)]
    row["steps_logged_before_kill"] = max(steps_before, default=0)

    rc, _, left = run_to_end(command(kind, out, cache, model, "auto"), env, work / "resumed.log")
    row["resume_rc"] = rc
    row["orphans_after_resume"] = len(left)
    text = (work / "resumed.log").read_text(errors="replace")
    row["resume_note"] = next(
        (line.strip() for line in text.splitlines() if line.startswith(("[resume]", "error:"))), ""
    )
    if rc == 0:
        row["metrics_equal"] = metrics(out) == metrics(ref_out)
        row["weights_equal"] = same_weights(out / kind.weights, ref_out / kind.weights)
        row["outcome"] = "resumed exactly" if row["metrics_equal"] and row["weights_equal"] else "DATA LOST"
    elif rc == 2 and "error:" in text and "Traceback" not in text:
        row["outcome"] = "refused with a clear reason"
    else:
        row["outcome"] = "FAILED"
        row["log_tail"] = text[-1500:]
    return row


def corruption_trial(ref_out: Path, work: Path, rng: random.Random) -> dict[str, Any]:
    """Copy the reference checkpoints, damage one random file, check `checkpoint verify` names it."""
    import shutil

    root = work / "checkpoints"
    shutil.copytree(ref_out / "checkpoints", root)
    ckpt = sorted(p for p in root.glob("step_*") if p.is_dir())[rng.randrange(2)]
    files = sorted(json.loads((ckpt / "checksums.json").read_text()))
    victim = ckpt / rng.choice(files)
    data = bytearray(victim.read_bytes())
    how = rng.choice(["truncate", "flip"])
    if how == "truncate" and len(data) > 1:
        data = data[: rng.randrange(len(data))]
    else:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    victim.write_bytes(bytes(data))
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_tulu.cli", "checkpoint", "verify", str(ckpt)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    named = proc.returncode == 2 and str(victim) in proc.stderr
    return {
        "kind": "corruption",
        "damage": how,
        "file": str(victim.relative_to(root)),
        "verify_rc": proc.returncode,
        "outcome": "detected and named" if named else "MISSED",
    }


@contextlib.contextmanager
def heavy_lock(path: str | None) -> Iterator[None]:
    """Hold ``path`` (flock) for one trial, so trials never overlap other heavy jobs on a shared
    machine (their timing would change the instants) yet do not block them for the whole run."""
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_model(dest: Path) -> Path:
    if not (dest / "config.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "megatron_tulu.cli", "build-tiny", "--out", str(dest), "--seed", "0"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    return dest


def run_trials(
    out: Path, kinds: list[str], kills: int, corruptions: int, seed: int, log=print, lock: str | None = None
) -> list[dict[str, Any]]:
    """Reference run per kind, then ``kills`` kill trials spread over ``kinds`` and
    ``corruptions`` corruption trials. Returns every row (also written to ``out/trials.jsonl``)."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    model = build_model(out / "tiny_model") if any(KINDS[k].needs_model for k in kinds) else None
    refs: dict[str, tuple[Path, float]] = {}
    rows: list[dict[str, Any]] = []
    for name in kinds:
        ref = out / f"ref_{name}"
        with heavy_lock(lock):
            rc, seconds, left = run_to_end(
                command(KINDS[name], ref, cache, model, "false"), _env(KINDS[name]), out / f"ref_{name}.log"
            )
        if rc != 0:
            raise SystemExit(f"reference {name} run failed (rc {rc}); see {out}/ref_{name}.log")
        refs[name] = (ref, seconds)
        log(f"reference {name}: {seconds:.1f}s, {len(metrics(ref))} metric rows, {len(left)} processes left")
    with open(out / "trials.jsonl", "a") as table:
        for i in range(kills):
            name = kinds[i % len(kinds)]
            work = out / f"trial_{name}_{i:03d}"
            if work.exists():
                import shutil

                shutil.rmtree(work)
            work.mkdir()
            with heavy_lock(lock):
                row = kill_trial(KINDS[name], *refs[name], work, cache, model, rng)
            rows.append(row)
            table.write(json.dumps(row) + "\n")
            table.flush()
            log(json.dumps({k: v for k, v in row.items() if k != "log_tail"}))
        for i in range(corruptions):
            name = [k for k in kinds if KINDS[k].command in ("sft", "dpo")][i % 2 if len(kinds) > 1 else 0]
            work = out / f"corrupt_{i:03d}"
            if work.exists():
                import shutil

                shutil.rmtree(work)
            work.mkdir()
            row = corruption_trial(refs[name][0], work, rng)
            rows.append(row)
            table.write(json.dumps(row) + "\n")
            log(json.dumps(row))
    return rows


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The README table: per kind, trials / resumed exactly / refused / orphans / data lost."""
    lines = [
        "| runs | trials | killed (not finished first) | during a save | resumed exactly | "
        "refused with a clear reason | orphans left | data lost | failed |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for kind in sorted({r["kind"] for r in rows if r["kind"] != "corruption"}):
        rs = [r for r in rows if r["kind"] == kind]
        lines.append(
            f"| {kind} | {len(rs)} | {sum(r['instant'] != 'finished before the kill' for r in rs)} | "
            f"{sum(r['instant'].startswith('during save') for r in rs)} | "
            f"{sum(r['outcome'] == 'resumed exactly' for r in rs)} | "
            f"{sum(r['outcome'] == 'refused with a clear reason' for r in rs)} | "
            f"{sum(r['orphans_after_kill'] + r['orphans_after_resume'] for r in rs)} | "
            f"{sum(r['outcome'] == 'DATA LOST' for r in rs)} | {sum(r['outcome'] == 'FAILED' for r in rs)} |"
        )
    corrupt = [r for r in rows if r["kind"] == "corruption"]
    if corrupt:
        lines.append(
            f"\ncorruption trials: {len(corrupt)}, detected and named: "
            f"{sum(r['outcome'] == 'detected and named' for r in corrupt)}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/fault_trials"))
    parser.add_argument("--kinds", default="sft,dpo", help="comma-separated keys of KINDS")
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--corruptions", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lock", default=None, help="flock file held during each run (shared machines)")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        print(f"error: unknown kind(s) {unknown}; known: {sorted(KINDS)}", file=sys.stderr)
        return 2
    rows = run_trials(args.out, kinds, args.kills, args.corruptions, args.seed, lock=args.lock)
    table = summary_table(rows)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)
    bad = [
        r for r in rows if r["outcome"] in ("DATA LOST", "FAILED", "MISSED") or r.get("orphans_after_kill")
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
