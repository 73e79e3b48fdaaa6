"""kill -9 at random instants while the RL trainer's checkpoint is being written, then resume.

The RL checkpoint is one commit of several parts (policy and value models, both optimizers and
schedulers, the data position, RNG and the pending async batch; ``save_checkpoint(parts=...)``). A
worker (``tests/faults/workers/parts_worker.py loop``) saves that shape over and over on real
Megatron-Core models; each trial SIGKILLs it at a random instant, most of them while a
``step_N.partial`` directory exists (mid-save), then checks that what ``latest`` names passes
``checkpoint verify`` and loads (every part, its checksums verified on load). The
claim under test: a kill at any instant leaves either the previous or the new checkpoint as latest,
never a half one.

    python scripts/rl_checkpoint_kills.py --tries 20 --out /tmp/rl_ckpt_kills
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.multinode import in_sessions  # noqa: E402  (the repo's own test helpers)

WORKER = REPO / "tests" / "faults" / "workers" / "parts_worker.py"


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO))


def trial(root: Path, rng: random.Random) -> dict:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "loop", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env=_env(),
        start_new_session=True,
    )
    # wait for the first checkpoint to be committed (so there is a previous one to fall back to),
    # then kill at a random instant: 3 of 4 trials inside a later save (a .partial directory
    # exists), the rest anywhere
    deadline = time.monotonic() + 120
    while not (root / "latest").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 2.0))
    if rng.random() < 0.75:
        while not any(root.glob("step_*.partial")) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))
    during_save = any(root.glob("step_*.partial"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)
    orphans = in_sessions({proc.pid})
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    verify = subprocess.run(
        [sys.executable, "-m", "megatron_tulu.cli", "checkpoint", "verify", str(root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
    )
    load = subprocess.run(
        [sys.executable, str(WORKER), "load", str(root), str(root / "loaded.pt")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
    )
    latest = (root / "latest").read_text().strip() if (root / "latest").exists() else None
    return {
        "during_save": during_save,
        "latest": latest,
        "verify_ok": verify.returncode == 0,
        "load_ok": load.returncode == 0,
        "orphans": len(orphans),
        "error": (verify.stderr + load.stderr)[-400:] if verify.returncode or load.returncode else "",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tries", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    rows = []
    for i in range(args.tries):
        row = trial(args.out / f"trial_{i:02d}", rng)
        rows.append(row)
        print(
            f"trial {i:2d}: during save {row['during_save']!s:5}  latest {row['latest']}  "
            f"verify {'ok' if row['verify_ok'] else 'FAIL'}  load {'ok' if row['load_ok'] else 'FAIL'}  "
            f"orphans {row['orphans']}",
            flush=True,
        )
    summary = {
        "tries": len(rows),
        "killed_during_save": sum(r["during_save"] for r in rows),
        "latest_loads": sum(r["verify_ok"] and r["load_ok"] for r in rows),
        "orphans": sum(r["orphans"] for r in rows),
    }
    print(json.dumps(summary))
    (args.out / "summary.json").write_text(json.dumps({"summary": summary, "trials": rows}, indent=1))
    return 0 if summary["latest_loads"] == len(rows) and summary["orphans"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
