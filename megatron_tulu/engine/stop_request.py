"""Stop for requeue: a run asked to stop saves an atomic checkpoint at the next step boundary and
exits cleanly, leaving a marker that tells its launcher to requeue it.

Who asks (any of them, on any rank of the trainer's process group):

- the file ``<train.output_dir>/stop_request`` (checked by rank 0): the Slurm batch script
  (``examples/slurm/rlvr.sbatch``) touches it when Slurm sends it ``--signal=B:USR1@<seconds>``
  before the time limit; anyone can touch it by hand;
- ``SIGUSR1`` delivered to a rank (not to ``torchrun``: its agent has no USR1 handler and dies);
- ``SIGTERM`` delivered to a rank while the trainer is in its step loop (Slurm's time limit or
  preemption, ``kill``, ``timeout``): the first one becomes a stop request; a second one, or one
  outside the step loop, unwinds at once as before (``cli.exit_on_sigterm``). A rank blocked in a
  collective runs no Python handler; the job's watchdog covers that case (engine/liveness.py).

The decision is collective: at every step boundary each rank of the default process group (RL: the
learner ranks; engine ranks are stopped by the driver's ``fleet.close()`` as at any end of a run)
contributes its local request to one all-reduce (MAX), so every rank stops after the same step.
Then every rank saves the checkpoint of that step (``save_checkpoint``: ``latest`` moves only once
all of it is written), rank 0 writes ``<train.output_dir>/stopped_for_requeue`` (JSON: step,
reason, checkpoint) and consumes the stop file, and the run returns with exit code 0. The next start
resumes from that checkpoint (``checkpoint.resume=auto`` or ``true``) and reproduces the
uninterrupted run's metrics: the checkpoint is the same one a periodic save writes at that step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

STOP_FILE = "stop_request"
STOPPED_FILE = "stopped_for_requeue"

# Local request codes; the all-reduce keeps the largest, whose text names the reason.
_NONE, _FILE, _USR1, _TERM = 0, 1, 2, 3
_REASONS = {_FILE: f"{STOP_FILE} file", _USR1: "SIGUSR1", _TERM: "SIGTERM"}


class _State:
    """Process-wide: signal handlers run on the main thread between bytecodes, so plain fields do."""

    armed = False  # a trainer is in its step loop: a first SIGTERM becomes a stop request
    code = _NONE
    sigterm_deferred = False


_state = _State()


def _say(text: str) -> None:
    # os.write: a handler may interrupt a print to the same stream (a reentrant call would raise)
    try:
        os.write(2, f"[stop] rank {os.environ.get('RANK', '0')}: {text}\n".encode())
    except OSError:
        pass


def defer_sigterm() -> bool:
    """For the process's SIGTERM handler: True when this SIGTERM became a stop request (a trainer
    is in its step loop and it is the first one), False when the process should unwind now."""
    if not _state.armed or _state.sigterm_deferred:
        return False
    _state.sigterm_deferred = True
    _state.code = max(_state.code, _TERM)
    _say("SIGTERM: saving a checkpoint at the end of this step, then exiting (a second SIGTERM exits now)")
    return True


def _on_usr1(signum: int, frame: Any) -> None:
    if _state.code < _USR1:
        _say("SIGUSR1: saving a checkpoint at the end of this step, then exiting for requeue")
    _state.code = max(_state.code, _USR1)


def catch_usr1() -> None:
    """Take SIGUSR1 as a stop request in this process (its default action ends the process)."""
    if threading.current_thread() is threading.main_thread():  # signal.signal refuses other threads
        signal.signal(signal.SIGUSR1, _on_usr1)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


class StopRequest:
    """The stop requests of one run (see the module docstring). ``armed()`` brackets the step loop;
    :meth:`agreed` is the collective check at a step boundary."""

    def __init__(self, out_dir: str | os.PathLike):
        self.file = Path(out_dir) / STOP_FILE
        self.marker = Path(out_dir) / STOPPED_FILE

    def clear_marker(self) -> None:
        """Rank 0, before the steps: a marker left by an earlier start is not this start's outcome."""
        if _rank() == 0:
            self.marker.unlink(missing_ok=True)

    def arm(self) -> None:
        """The step loop begins: a first SIGTERM from now on is a stop request."""
        catch_usr1()
        _state.armed = True

    def disarm(self) -> None:
        _state.armed = False

    def local_code(self) -> int:
        code = _state.code
        if _rank() == 0 and self.file.exists():
            code = max(code, _FILE)
        return code

    def agreed(self) -> str | None:
        """Collective over the default process group: the reason to stop after this step, or None."""
        import torch
        import torch.distributed as dist

        code = self.local_code()
        if dist.is_initialized() and dist.get_world_size() > 1:
            nccl = "nccl" in str(dist.get_backend()).lower()
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
            flag = torch.tensor([code], dtype=torch.int32, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code = int(flag.item())
        return _REASONS.get(code)

    def record(self, step: int, reason: str, checkpoint: Path) -> dict[str, Any]:
        """Rank 0, after the checkpoint committed: the marker the launcher reads, written atomically;
        the stop file is consumed (a later start must not stop again on it)."""
        outcome = {"step": step, "reason": reason, "checkpoint": str(checkpoint)}
        if _rank() == 0:
            tmp = self.marker.with_name(self.marker.name + ".tmp")
            tmp.write_text(json.dumps(outcome) + "\n")
            os.replace(tmp, self.marker)
            self.file.unlink(missing_ok=True)
            print(
                f"[stop] {reason}: stopped after step {step} with checkpoint {checkpoint}; wrote {self.marker} "
                "(a restart with checkpoint.resume=auto or true continues from it)",
                file=sys.stderr,
                flush=True,
            )
        return outcome


def reset_for_tests() -> None:
    """Forget requests seen by this process (unit tests run several trainers in one process)."""
    _state.armed, _state.code, _state.sigterm_deferred = False, _NONE, False
