"""The CPU compat layer: what it patches still exists in megatron-core, and it is inert under CUDA."""

import importlib
from pathlib import Path

import pytest
import torch

import megatron_tulu.engine.cpu_compat as compat


def _site_file(relative: str) -> Path:
    import megatron

    return Path(megatron.__path__[0]).parent / relative


@pytest.mark.parametrize("owner,attr,user_file", compat.PATCH_TARGETS)
def test_patch_targets_still_exist_and_are_used(owner, attr, user_file):
    # If a megatron-core release renames or stops using one of these, the shim would silently do
    # nothing (or break something else): fail here first.
    module = importlib.import_module(owner)
    assert hasattr(module, attr), f"{owner}.{attr} is gone"
    source = _site_file(user_file).read_text()
    short = attr if owner.startswith("megatron") else f"torch.cuda.{attr}"
    assert short in source, f"{user_file} no longer references {short}"


def test_megatron_version_is_the_supported_one():
    import megatron.core

    assert megatron.core.__version__ in compat.SUPPORTED_MEGATRON_CORE


def test_clip_assertion_that_the_shim_replaces_is_still_there():
    source = _site_file("megatron/core/optimizer/clip_grads.py").read_text()
    assert "torch.cuda.FloatTensor" in source


def test_inert_when_cuda_is_available(monkeypatch):
    compat.disable_cpu_compat()
    original = torch.cuda.current_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compat.enable_cpu_compat() is False
    assert not compat.is_enabled()
    assert torch.cuda.current_device is original


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_enable_maps_cuda_to_cpu_and_disable_restores():
    compat.disable_cpu_compat()
    try:
        assert compat.enable_cpu_compat() is True
        assert compat.enable_cpu_compat() is True  # idempotent
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.ones(1, device=torch.cuda.current_device()).device.type == "cpu"
        assert torch.ones(1).cuda().device.type == "cpu"
        assert torch.ones(1).to("cuda").device.type == "cpu"
        assert torch.ones(1).to(torch.float64).dtype == torch.float64  # non-device .to untouched
        torch.cuda.synchronize()

        from megatron.core.tensor_parallel import random as mrandom

        mrandom.model_parallel_cuda_manual_seed(123, tp_rank=0, ep_rank=0, etp_rank=0, force_reset_rng=True)
        tracker = mrandom.get_cuda_rng_tracker()
        before = torch.get_rng_state()
        with tracker.fork():
            a = torch.rand(3)
        with tracker.fork():
            b = torch.rand(3)
        assert not torch.equal(a, b)  # the tracked stream advances
        assert torch.equal(before, torch.get_rng_state())  # default stream untouched
    finally:
        compat.disable_cpu_compat()
    with pytest.raises((RuntimeError, AssertionError)):  # stock torch again: no CUDA here
        torch.zeros(1, device="cuda")


@pytest.mark.parametrize("user_file,text", compat.TYPE_CHECKS)
def test_type_checks_the_shim_answers_are_still_there(user_file, text):
    assert text in _site_file(user_file).read_text(), f"{user_file} no longer checks {text}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_cuda_type_names_only_inside_the_context_and_only_when_enabled():
    x = torch.zeros(2, dtype=torch.bfloat16)
    compat.disable_cpu_compat()
    with compat.cuda_type_names():  # shims off: nothing to answer
        assert x.type() == "torch.BFloat16Tensor"
    try:
        compat.enable_cpu_compat()
        with compat.cuda_type_names():
            assert x.type() == "torch.cuda.BFloat16Tensor"
            assert x.float().type() == "torch.cuda.FloatTensor"
            assert x.type(torch.float32).dtype == torch.float32  # the converting form is untouched
        assert x.type() == "torch.BFloat16Tensor"
    finally:
        compat.disable_cpu_compat()


def test_clip_replacement_scales_like_megatron():
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 3.0)
    compat._clip_grad_by_total_norm([p], max_norm=1.0, total_norm=6.0)
    assert torch.allclose(p.grad, torch.full((4,), 3.0 / (6.0 + 1e-6)))
    q = torch.nn.Parameter(torch.ones(2))
    q.grad = torch.ones(2)
    compat._clip_grad_by_total_norm([q], max_norm=10.0, total_norm=1.0)
    assert torch.equal(q.grad, torch.ones(2))
