"""Helpers shared by the benchmark scripts: worker subprocesses, thread pinning, memory, tables, JSON.

Each side of a comparison runs in its own subprocess (``run_worker``) so that its peak memory is its own
and imports of one framework do not inflate the other. A worker reports through a JSON file whose path it
gets on the command line; ``run_worker`` returns that dict.

Memory on Linux comes from ``/proc/self/status`` (``VmRSS``, ``VmHWM``); ``reset_peak_rss`` writes ``5`` to
``/proc/self/clear_refs``, which resets ``VmHWM`` to the current RSS, so a worker can report the peak of its
training loop separately from the peak of its whole life (``ru_maxrss``, which cannot be reset).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int) -> dict[str, str]:
    """Environment for a worker pinned to ``threads`` intra-op threads (set before torch is imported)."""
    env = dict(os.environ)
    for key in THREAD_ENV:
        env[key] = str(threads)
    return env


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once parallel work started
        pass


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """Current resident set size of this process."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """Peak RSS since the last ``reset_peak_rss`` (or process start): ``VmHWM``."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def lifetime_peak_rss_bytes() -> int:
    """Peak RSS over the whole life of this process (``ru_maxrss``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux). Returns whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by the tensors in a (nested) container, each storage counted once."""
    import torch

    seen: set[int] = set()
    total = 0

    def visit(obj: Any) -> None:
        nonlocal total
        if torch.is_tensor(obj):
            ptr = obj.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += obj.untyped_storage().nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, list | tuple | set):
            for v in obj:
                visit(v)

    visit(tensors)
    return total


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(
    cmd: Sequence[str],
    result_path: str | os.PathLike,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    log_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run ``cmd`` (which must write JSON to ``result_path``) and return the parsed result.

    The worker's stdout/stderr go to ``log_path`` (if given); on failure the log tail is raised with the
    exit code. ``wall_seconds`` (process start to exit, imports included) is added to the result.
    """
    result_path = Path(result_path)
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log_path or os.devnull, "w") as log:
        proc = subprocess.run(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.is_file():
        tail = Path(log_path).read_text()[-4000:] if log_path else ""
        raise RuntimeError(f"worker {' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(result_path.read_text())
    result["wall_seconds"] = wall
    return result


@contextlib.contextmanager
def torchrun_beside(
    script: str | os.PathLike,
    nproc: int,
    args: Sequence[str],
    log_path: str | os.PathLike,
    *,
    name: str,
    timeout: float,
    drop_env: Sequence[str] = ("VLLM_CPU_OMP_THREADS_BIND",),
) -> Iterator[subprocess.Popen]:
    """Run ``script`` under ``torchrun`` (``nproc`` ranks of one intra-op thread, the repository on
    ``PYTHONPATH``, ``drop_env`` unset, its output in ``log_path``) while the block drives it: a
    learner that refits the vLLM engines of this process. Leaving the block waits ``timeout`` s for it;
    a block that raised (or a wait that timed out) kills it; a non-zero exit raises ``RuntimeError``
    naming ``name``, with the log's tail."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        str(Path(script).resolve()),
        *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO))
    for key in drop_env:
        env.pop(key, None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
            rc = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc != 0:
        raise RuntimeError(f"{name} failed:\n" + Path(log_path).read_text()[-6000:])


def optimizer_states(optimizer: Any) -> list[Any]:
    """The torch optimizers' ``state`` dicts under Megatron / accelerate wrappers."""
    stack, states = [optimizer], []
    while stack:
        opt = stack.pop()
        if hasattr(opt, "chained_optimizers"):
            stack.extend(opt.chained_optimizers)
        elif hasattr(opt, "optimizer") and opt.optimizer is not opt:
            stack.append(opt.optimizer)
        elif hasattr(opt, "state"):
            states.append(dict(opt.state))
    return states


def environment() -> dict[str, Any]:
    """Versions and machine facts worth keeping next to any number."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "trl", "accelerate", "megatron-core", "datasets"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table, first column left-aligned and the rest right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return path
