"""Simulated nodes on one machine: one ``torchrun --nnodes N --node_rank R`` launch per node.

Every process a launch starts (torchrun agents, ranks, vLLM engine cores and workers) inherits a
marker in its environment, so what a trial left behind is found by scanning ``/proc`` whatever
session or process group it moved to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import REPO, VLLM_QUIET_ENV, free_port, quiet_env

MARKER = "MEGATRON_TULU_TRIAL"


@dataclass
class Launch:
    """N node launches of one job (Popen per node) and where their logs go."""

    out: Path
    procs: list[subprocess.Popen]
    logs: list[Path]
    marker: str
    started: float = field(default_factory=time.monotonic)
    sessions: set[int] = field(default_factory=set)

    def wait(self, timeout: float) -> list[int | None]:
        """Return codes (None for a launch still running at the deadline, which is then killed).
        While waiting, remembers the sessions of the job's processes (see :meth:`leftovers`)."""
        deadline = self.started + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            self.track()
            time.sleep(0.5)
        codes = [p.poll() for p in self.procs]
        if any(c is None for c in codes):
            self.kill()
        return codes

    def track(self) -> None:
        """Record the sessions of the job's live processes. torchrun gives each rank a session of its
        own, and vLLM's engine processes overwrite their environment (process titles), so a
        leftover is found by its session as well as by the marker."""
        ours = os.getsid(0)  # the launches' own session is the caller's: never a leftover
        for pid in trial_processes(self.marker):
            try:
                sid = os.getsid(pid)
            except OSError:
                continue
            if sid != ours:
                self.sessions.add(sid)

    def leftovers(self, grace_s: float = 10.0) -> list[int]:
        """Live processes of the job once it ended (allowing ``grace_s`` for exits in progress)."""
        deadline = time.monotonic() + grace_s
        while True:
            left = sorted(set(trial_processes(self.marker)) | set(in_sessions(self.sessions)))
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def kill(self) -> None:
        for pid in set(trial_processes(self.marker)) | set(in_sessions(self.sessions)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_text(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.read_text(errors='replace')}" for p in self.logs if p.exists())

    def rank_pid(self, rank: int, entry: str = "rlvr_405b.py") -> int | None:
        """PID of global ``rank``'s training process (not its agent, not vLLM's children, which
        inherit RANK but run other command lines)."""
        for pid in trial_processes(self.marker):
            cmd = _cmdline(pid)
            if _environ(pid).get("RANK") == str(rank) and entry in cmd and "torch.distributed.run" not in cmd:
                return pid
        return None


def launch_nodes(
    out: Path,
    nnodes: int,
    nproc: int,
    overrides: list[str],
    entry: str = "examples/rlvr_405b.py",
    env: dict[str, str] | None = None,
) -> Launch:
    """Start ``nnodes`` torchrun agents (node ranks 0..N-1) on this machine for one job."""
    port = free_port()
    marker = uuid.uuid4().hex
    base = quiet_env(**VLLM_QUIET_ENV, **{MARKER: marker}, **(env or {}))
    procs, logs = [], []
    for node in range(nnodes):
        log = out.parent / f"{out.name}.node{node}.log"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={nnodes}",
            f"--node_rank={node}",
            f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            entry,
            f"train.output_dir={out}",
            *overrides,
        ]
        with open(log, "w") as f:  # a file, not a pipe: a lingering child must not block the test
            procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=base))
        logs.append(log)
    return Launch(out, procs, logs, marker)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def trial_processes(marker: str) -> list[int]:
    """Live processes (not zombies) carrying ``marker`` in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and _environ(pid).get(MARKER) == marker:
            found.append(pid)
    return found


def in_sessions(sessions: set[int]) -> list[int]:
    """Live (non-zombie) processes whose session id is in ``sessions``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[3]) in sessions:  # state, ppid, pgrp, session
                found.append(int(entry.name))
    return found


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def comparable(rows: list[dict]) -> list[dict]:
    """Metrics rows without wall-clock fields."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def role_table(text: str) -> str:
    """The ``roles:`` block a dry run or a real run prints (headline and rank rows)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "roles:")
    block = [lines[start + 1]]
    for line in lines[start + 2 :]:
        if not line.startswith("  ranks "):
            break
        block.append(line)
    return "\n".join(block)


def tiny_sources(root: Path, heldout_rows: int = 32) -> tuple[Path, Path]:
    """The embedded tiny model as an HF directory and a short held-out set (a quick step-0
    evaluation) under ``root``, for two-node RLVR runs."""
    tiny = root / "tiny"
    subprocess.run(
        [sys.executable, "-m", "megatron_tulu.cli", "build-tiny", "--out", str(tiny)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    rows = (REPO / "megatron_tulu" / "assets" / "data" / "rlvr_heldout.jsonl").read_text().splitlines(True)
    heldout = root / "heldout.jsonl"
    heldout.write_text("".join(rows[:heldout_rows]))
    return tiny, heldout
