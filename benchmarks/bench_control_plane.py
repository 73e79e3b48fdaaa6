"""The job's control plane at scale, on one machine: N rank processes, one SIGKILLed mid-run.

Each rank process runs only what every rank of an RL job runs besides its model and vLLM: a client
of the launcher's store (hosted here by this script, as torchrun's agent hosts it), its own session
with the process-group guard, the heartbeat watchdog (a monitor on the first rank of each node of
``--per-node`` ranks), and the control channel to the driver (rank 0), which pings every rank every
``--ping-s`` seconds while the others serve. After a steady period one rank is SIGKILLed.

Measured (JSON keys):

- ``store_requests_per_rank_per_s`` -- every store request a rank makes in steady state (mean over
  ranks; ``..._max`` the busiest, a monitor), and per heartbeat interval;
- ``detect_s`` -- from the kill until every survivor has named the dead rank (its watchdog verdict);
- ``cleanup_s`` -- from the kill until no process of the job is left (ranks, guards; this script
  reaps its children as a launcher would).

    python benchmarks/bench_control_plane.py --ranks 256 --out benchmarks/results/control_plane_256.json

Ranks are forked from this process after ``import torch`` (copy-on-write), so 256 of them fit in a
few GB; they share two cores here, so the timings are upper bounds of a real cluster's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, format_table, write_json


class CountingStore:
    """The job store, counting this process's requests."""

    def __init__(self, store):
        self._store, self.requests = store, 0

    def __getattr__(self, name):
        method = getattr(self._store, name)

        def counted(*args, **kwargs):
            self.requests += 1
            return method(*args, **kwargs)

        return counted


def rank_main(rank: int, args: argparse.Namespace, port: int, work: Path) -> None:
    """One rank (a forked child): runs until the watchdog's verdict ends it."""
    os.setsid()  # torchrun gives every rank a session of its own
    from megatron_tulu.engine import liveness
    from megatron_tulu.engine.control import DRIVER, ChannelClosed, ControlChannel
    from megatron_tulu.engine.job import JobEnv, connect_store

    liveness.guard_process_group()
    job = JobEnv(
        rank=rank,
        world_size=args.ranks,
        local_rank=rank % args.per_node,
        local_world_size=args.per_node,
        node_rank=rank // args.per_node,
        master_addr="127.0.0.1",
        master_port=port,
        agent_store=True,
        restart_count=0,
    )
    store = CountingStore(connect_store(job, timeout_s=600))
    steady: dict[str, float] = {}

    def on_failure(message: str) -> None:
        now = time.time()
        record = {
            "rank": rank,
            "detected_at": now,
            "message": message[:300],
            "requests": store.requests - steady.get("requests", 0),
            "seconds": now - steady.get("at", now),
        }
        (work / f"detect-{rank}.json").write_text(json.dumps(record))
        liveness._fail_process(message)

    dog = liveness.Watchdog(
        store,
        rank,
        list(range(args.ranks)),
        describe=lambda r: f"node {r // args.per_node} local rank {r % args.per_node}",
        timeout_s=args.heartbeat_timeout,
        interval_s=args.interval,
        on_failure=on_failure,
        monitor=rank in liveness.monitor_ranks(args.ranks, args.per_node),
    )
    channel = ControlChannel(store, rank, args.ranks, "127.0.0.1", alive=dog.check)
    store.add("bench/ready", 1)
    while store.add("bench/ready", 0) < args.ranks:  # everyone connected: steady state begins
        time.sleep(0.2)
    steady.update(requests=store.requests, at=time.time())
    try:
        if rank == DRIVER:
            alive = set(range(1, args.ranks))
            while True:
                for r in sorted(alive):
                    try:
                        channel.send(("ping", time.time()), r)
                        channel.recv(r)
                    except ChannelClosed:  # the connection of a dead rank: its name comes from the watchdog
                        alive.discard(r)
                time.sleep(args.ping_s)
        else:
            while True:
                command = channel.recv(DRIVER)
                channel.send(("pong", command[1]), DRIVER)
    except RuntimeError:  # the watchdog's verdict ended the wait: it ends the process itself
        time.sleep(60)
    os._exit(3)


def job_processes(sessions: set[int]) -> list[int]:
    """Live processes in the ranks' sessions (ranks, their guards), zombies excluded."""
    import psutil

    left = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(proc.pid) in sessions and proc.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return left


def run(args: argparse.Namespace) -> dict:
    import tempfile

    import torch.distributed as dist

    work = Path(tempfile.mkdtemp(prefix="control-plane-"))
    log = open(work / "ranks.log", "w")  # the ranks' error lines
    # Ranks are forked before the store starts: a fork taken while the store's server thread runs
    # could copy a lock it holds. They dial the port (the client retries) as ranks dial their agent.
    from megatron_tulu.engine.network import port_for_foreign_server

    port = port_for_foreign_server("127.0.0.1")
    pids: list[int] = []
    t_start = time.time()
    for rank in range(args.ranks):
        pid = os.fork()
        if pid == 0:
            os.dup2(log.fileno(), 2)
            os.dup2(log.fileno(), 1)
            try:
                rank_main(rank, args, port, work)
            finally:
                os._exit(4)
        pids.append(pid)
    server = dist.TCPStore(
        "127.0.0.1", port, None, True, timeout=datetime.timedelta(seconds=600), wait_for_workers=False
    )
    sessions = set(pids)

    def reap() -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    client = dist.PrefixStore("megatron_tulu/attempt_0/", server)
    deadline = time.time() + 600
    while int(client.add("bench/ready", 0)) < args.ranks:
        reap()
        if time.time() > deadline:
            raise SystemExit(f"error: only {int(client.add('bench/ready', 0))} of {args.ranks} ranks started")
        time.sleep(0.5)
    start_s = time.time() - t_start
    time.sleep(args.steady_s)
    monitors = liveness_monitors(args)
    victim = (
        args.victim
        if args.victim is not None
        else next(r for r in range(args.ranks // 2, args.ranks) if r not in monitors)
    )
    t_kill = time.time()
    os.kill(pids[victim], signal.SIGKILL)
    survivors = [r for r in range(args.ranks) if r != victim]
    detect_at: dict[int, float] = {}
    records: dict[int, dict] = {}
    cleanup_s = None
    while time.time() - t_kill < args.max_wait_s:
        reap()
        for r in survivors:
            if r not in records and (work / f"detect-{r}.json").exists():
                try:
                    records[r] = json.loads((work / f"detect-{r}.json").read_text())
                except json.JSONDecodeError:  # being written
                    continue
                detect_at[r] = records[r]["detected_at"]
        if not job_processes(sessions):
            cleanup_s = time.time() - t_kill
            break
        time.sleep(0.1)
    reap()
    missing = [r for r in survivors if r not in records]
    rates = [rec["requests"] / rec["seconds"] for rec in records.values() if rec["seconds"] > 0]
    named = sum(f"rank {victim} " in rec["message"] for rec in records.values())
    left = job_processes(sessions)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return {
        "ranks": args.ranks,
        "ranks_per_node": args.per_node,
        "monitors": len(monitors),
        "heartbeat_interval_s": args.interval,
        "heartbeat_timeout_s": args.heartbeat_timeout,
        "store_requests_per_rank_per_s": sum(rates) / len(rates) if rates else None,
        "store_requests_per_rank_per_s_max": max(rates) if rates else None,
        "store_requests_per_rank_per_interval": sum(rates) / len(rates) * args.interval if rates else None,
        "detect_s": max(detect_at.values()) - t_kill if detect_at and not missing else None,
        "detect_s_first": min(detect_at.values()) - t_kill if detect_at else None,
        "cleanup_s": cleanup_s,
        "victim": victim,
        "survivors_naming_victim": named,
        "survivors_not_reporting": missing[:20],
        "processes_left": len(left),
        "start_s": start_s,
        "steady_s": args.steady_s,
        "log": str(work / "ranks.log"),
        "environment": environment(),
    }


def liveness_monitors(args: argparse.Namespace) -> list[int]:
    from megatron_tulu.engine.liveness import monitor_ranks

    return monitor_ranks(args.ranks, args.per_node)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, required=True)
    p.add_argument("--per-node", type=int, default=8, help="ranks per simulated node (one monitor each)")
    p.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, s")
    p.add_argument("--heartbeat-timeout", type=float, default=10.0, help="silence that makes a rank dead, s")
    p.add_argument("--steady-s", type=float, default=15.0, help="steady state before the kill, s")
    p.add_argument("--ping-s", type=float, default=2.0, help="driver's control-channel round of pings, s")
    p.add_argument(
        "--victim", type=int, default=None, help="rank to SIGKILL (default: a non-monitor mid-world)"
    )
    p.add_argument("--max-wait-s", type=float, default=120.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.ranks < 2 or args.ranks % args.per_node and args.ranks > args.per_node:
        p.error("--ranks must be >= 2 and a multiple of --per-node")
    args.per_node = min(args.per_node, args.ranks)
    import torch  # noqa: F401  (imported once here; forked ranks share its pages)

    result = run(args)
    write_json(args.out, result)
    goal = 2.0
    rows = [
        [
            result["ranks"],
            result["monitors"],
            f"{result['store_requests_per_rank_per_interval']:.2f}"
            if result["store_requests_per_rank_per_interval"]
            else "n/a",
            f"{result['store_requests_per_rank_per_s_max']:.2f}"
            if result["store_requests_per_rank_per_s_max"]
            else "n/a",
            f"{result['detect_s']:.1f}" if result["detect_s"] is not None else "not all",
            f"{result['cleanup_s']:.1f}" if result["cleanup_s"] is not None else "left",
        ]
    ]
    print(
        format_table(
            rows, ["ranks", "monitors", "requests/rank/interval", "max/rank/s", "detect_s", "cleanup_s"]
        )
    )
    ok = (
        result["store_requests_per_rank_per_interval"] is not None
        and result["store_requests_per_rank_per_interval"] <= goal
        and result["detect_s"] is not None
        and result["detect_s"] <= 2 * args.heartbeat_timeout
        and result["cleanup_s"] is not None
        and result["cleanup_s"] <= 30
        and result["survivors_naming_victim"] == args.ranks - 1
    )
    print(
        f"goal (<= {goal:g} requests per rank per interval, detect <= {2 * args.heartbeat_timeout:g} s, "
        f"cleanup <= 30 s, every survivor names rank {result['victim']}): {'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
