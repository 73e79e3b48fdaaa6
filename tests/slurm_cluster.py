"""A real Slurm on this machine for tests: munged, slurmctld and two slurmd (nodes ``n0`` and ``n1``).

Debian's ``slurm-wlm`` runs several slurmd on one host when each has its own port and spool
(``slurmd -f CONF -N n0``). Everything the cluster writes (config, state, spool, logs, pid files,
munge key and socket) lives under one temporary directory; its ports are picked free at start. The
node names resolve through two lines added to ``/etc/hosts`` (``127.0.0.2 n0``, ``127.0.0.3 n1``:
distinct loopback addresses stand for distinct hosts) and removed again at :meth:`stop`, which also
ends every process the cluster started (daemons by their pid files, then anything still carrying the
cluster's marker in its environment: slurmstepd and job processes) and checks that none is left.

``SlurmCluster.start_or_skip(root)`` installs ``slurm-wlm`` and ``munge`` with apt when they are
missing (root only, bounded to a few minutes) and skips the calling test with the exact reason when
Slurm cannot run here. Outside pytest: ``python -m tests.slurm_cluster DIR`` starts one and waits
for Ctrl-C (``SLURM_CONF=DIR/slurm.conf sbatch ...`` in another shell).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "MEGATRON_TULU_SLURM_CLUSTER"  # in the environment of every process the cluster starts
NODES = {"n0": "127.0.0.2", "n1": "127.0.0.3"}
HOSTS = Path("/etc/hosts")
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "sinfo", "squeue", "scancel")
INSTALL_TIMEOUT_S = 150  # apt-get install slurm-wlm munge takes ~1 min here
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run on this machine; the text says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def missing_programs() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]


def ensure_installed(timeout_s: float = INSTALL_TIMEOUT_S) -> None:
    """Install Debian's slurm-wlm and munge when a program is missing (needs root and apt)."""
    missing = missing_programs()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"{', '.join(missing)} not installed and not root (apt-get install slurm-wlm munge)"
        )
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(
            f"{', '.join(missing)} not installed and no apt-get to install slurm-wlm munge"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    deadline = time.monotonic() + timeout_s
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
    log = ""
    for cmd in (install, ["apt-get", "update", "-q"], install):  # the package lists may be stale or absent
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` did not finish within {timeout_s:.0f} s") from None
        log = (proc.stdout + proc.stderr).strip()
        if cmd is install and proc.returncode == 0 and not missing_programs():
            return
    tail = " | ".join(log.splitlines()[-3:])
    raise SlurmUnavailable(f"apt-get install slurm-wlm munge failed: {tail or 'no output'}")


def _which(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class SlurmCluster:
    """One controller and two compute nodes on this host (see the module docstring)."""

    root: Path
    cpus_per_node: int = 2
    conf: Path = field(init=False)
    env: dict[str, str] = field(init=False)
    ports: dict[str, int] = field(init=False, default_factory=dict)
    _hosts_lines: list[str] = field(init=False, default_factory=list)
    _hosts_newline: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), **{MARKER: str(self.root)})

    # ------------------------------------------------------------------------------ start / stop
    @classmethod
    def start_or_skip(cls, root: Path):
        """A started cluster, or ``pytest.skip`` with the reason Slurm cannot run here."""
        import pytest

        try:
            ensure_installed()
        except SlurmUnavailable as exc:
            pytest.skip(f"real Slurm unavailable: {exc}")
        if os.geteuid() != 0:
            pytest.skip("real Slurm needs root here (slurmd launches jobs, the test edits /etc/hosts)")
        cluster = cls(root)
        try:
            cluster.start()
        except SlurmUnavailable as exc:
            cluster.stop()
            pytest.skip(f"real Slurm did not start: {exc}")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def start(self, timeout_s: float = 60.0) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        self._add_hosts()
        self._start_munge()
        self.ports = {"ctld": _free_port(), **{n: _free_port() for n in NODES}}
        self.conf.write_text(self._config())
        self._daemon([_which("slurmctld"), "-f", str(self.conf)], self.root / "slurmctld.pid")
        for node in NODES:
            self._daemon(
                [_which("slurmd"), "-f", str(self.conf), "-N", node], self.root / f"slurmd-{node}.pid"
            )
        deadline = time.monotonic() + timeout_s
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
            states = dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)
            if all(states.get(n) == "idle" for n in NODES):
                return
            time.sleep(0.5)
        raise SlurmUnavailable(
            f"nodes not idle after {timeout_s:.0f} s ({states or 'no answer'}):\n{self.logs_tail()}"
        )

    def _add_hosts(self) -> None:
        tag = f"# {MARKER} {self.root}"
        lines = [f"{addr} {name} {tag}" for name, addr in NODES.items()]
        try:
            text = HOSTS.read_text()
            HOSTS.open("a").close()
        except OSError as exc:
            raise SlurmUnavailable(f"cannot map the node names in {HOSTS}: {exc}") from exc
        self._hosts_newline = bool(text) and not text.endswith("\n")  # added to end the last line
        if self._hosts_newline:
            text += "\n"
        HOSTS.write_text(text + "".join(line + "\n" for line in lines))  # in place (a bind mount)
        self._hosts_lines = lines

    def _remove_hosts(self) -> None:
        if not self._hosts_lines:
            return
        lines = HOSTS.read_text().splitlines(keepends=True)
        text = "".join(line for line in lines if line.rstrip("\n") not in self._hosts_lines)
        if self._hosts_newline and text.endswith("\n"):
            text = text[:-1]
        HOSTS.write_text(text)
        self._hosts_lines = []

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._daemon(
            [
                _which("munged"),
                "--force",
                f"--key-file={key}",
                f"--socket={self.socket}",
                f"--pid-file={self.root / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ],
            self.root / "munged.pid",
        )

    @property
    def socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def _daemon(self, cmd: list[str], pid_file: Path, timeout_s: float = 20.0) -> None:
        """Start a daemon that forks into the background and writes ``pid_file``."""
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._pid(pid_file):
            time.sleep(0.1)
        if proc.returncode != 0 or not self._pid(pid_file):
            raise SlurmUnavailable(
                f"`{' '.join(cmd)}` exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-800:]}\n"
                + self.logs_tail()
            )

    @staticmethod
    def _pid(pid_file: Path) -> int | None:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def _config(self) -> str:
        host = socket.gethostname()
        nodes = "\n".join(
            f"NodeName={name} NodeAddr={addr} NodeHostname={host} Port={self.ports[name]} "
            f"CPUs={self.cpus_per_node} RealMemory=8000 State=UNKNOWN"
            for name, addr in NODES.items()
        )
        r = self.root
        return f"""# written by tests/slurm_cluster.py
ClusterName=mtulu
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={self.ports["ctld"]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
ReturnToService=2
JobCompType=jobcomp/filetxt
JobCompLoc={r}/jobcomp.txt
JobRequeue=1
MinJobAge=3600
KillWait=30
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=120
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""

    def stop(self, timeout_s: float = 60.0) -> list[str]:
        """End every job and process this cluster started and restore /etc/hosts. Returns the
        command lines of processes that were still alive after SIGTERM and had to be SIGKILLed."""
        if self._pid(self.root / "slurmctld.pid"):
            self.run(["scancel", "--full", "--quiet", "--user=root"], check=False)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.5)
        for name in ("slurmd-n1", "slurmd-n0", "slurmctld", "munged"):
            self._stop_pid(self.root / f"{name}.pid")
        killed = []
        deadline = time.monotonic() + 15
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.processes():  # slurmstepd and job processes that outlived their daemons
            killed.append(_cmdline(pid))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._remove_hosts()
        left = self.processes()
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.processes()
        if left:
            raise RuntimeError(f"processes of the Slurm cluster still alive: {[_cmdline(p) for p in left]}")
        return killed

    def _stop_pid(self, pid_file: Path, timeout_s: float = 15.0) -> None:
        pid = self._pid(pid_file)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and not _zombie(pid):
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists() and not _zombie(pid):
            os.kill(pid, signal.SIGKILL)

    def processes(self) -> list[int]:
        """Live processes carrying this cluster's marker in their environment (daemons, slurmstepd,
        job processes) and their descendants (vLLM's processes rewrite their environment area for
        their titles, so the marker alone can miss them)."""
        needle = f"{MARKER}={self.root}".encode()
        parent: dict[int, int] = {}
        marked = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] == "Z":
                    continue
                parent[pid] = int(fields[1])
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    marked.add(pid)
            except (OSError, IndexError, ValueError):
                continue
        found, frontier = set(marked), list(marked)
        while frontier:
            pid = frontier.pop()
            for child, ppid in parent.items():
                if ppid == pid and child not in found:
                    found.add(child)
                    frontier.append(child)
        return sorted(found)

    # ---------------------------------------------------------------------------------- clients
    def run(
        self, cmd: list[str], check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        env = dict(self.env, **kw.pop("env", {}))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def sbatch(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> int:
        out = self.run(["sbatch", "--parsable", *args], cwd=cwd, env=env or {}).stdout.strip()
        return int(out.split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, NodeList, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: int, timeout_s: float, states: set[str] = FINAL_STATES) -> dict[str, str]:
        """Wait until the job reaches one of ``states``; returns its record (raises on timeout)."""
        deadline = time.monotonic() + timeout_s
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(1.0)
        raise TimeoutError(f"job {job_id} not in {sorted(states)} after {timeout_s:.0f} s: {info}")

    def completions(self) -> list[dict[str, str]]:
        """The job-completion log (jobcomp/filetxt): one record per finished job run."""
        path = self.root / "jobcomp.txt"
        if not path.exists():
            return []
        return [
            dict(re.findall(r"(\w+)=(\S*)", line)) for line in path.read_text().splitlines() if line.strip()
        ]

    def logs_tail(self, lines: int = 15) -> str:
        out = []
        for log in sorted((self.root / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"pid {pid}"


if __name__ == "__main__":
    import sys

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    cluster = SlurmCluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/slurm-cluster"))
    ensure_installed()
    try:
        cluster.start()
        print(f"Slurm up: export SLURM_CONF={cluster.conf}  (Ctrl-C or SIGTERM stops it)", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopped; killed:", cluster.stop(), flush=True)
