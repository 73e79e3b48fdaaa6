"""What the bridge tests share: small random models, their HF tensors, every learner rank's Megatron
shards of them, and one refit over real gloo groups with every party in a thread."""

from __future__ import annotations

import threading
from collections import defaultdict

import torch

from megatron_tulu.config.schema import ModelConfig
from megatron_tulu.models.hf_mapping import shard_from_hf
from megatron_tulu.rollout.bridge.layouts import (
    LearnerLayout,
    hf_shape,
    hf_tensor_names,
    learner_global_rank,
    megatron_local_shape,
    megatron_params,
    vllm_region,
)
from megatron_tulu.rollout.bridge.planner import plan_refit
from megatron_tulu.rollout.bridge.transport import (
    destroy_refit_group,
    init_refit_group,
    receive_refit,
    send_refit,
)
from tests.helpers import free_port


def small_model(
    *, name="rand", layers=2, hidden=64, ffn=96, heads=4, groups=2, head_dim=16, vocab=301, tied=False
) -> ModelConfig:
    return ModelConfig(
        name=name,
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=head_dim,
        vocab_size=vocab,
        tie_word_embeddings=tied,
    )


def random_hf(model: ModelConfig, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random full HF tensors of ``model``."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(hf_shape(model, n), generator=g).to(dtype) for n in hf_tensor_names(model)}


def learner_tensors(layout: LearnerLayout, hf: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """global rank -> {chunk-local Megatron name: local tensor}, as each learner rank holds them."""
    ranks: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for info in megatron_params(layout):
        for tp_rank in range(layout.tp):
            local = shard_from_hf(
                info.kind, [hf[n] for n in info.hf_names], layout.shapes, layout.tp, tp_rank
            )
            assert tuple(local.shape) == megatron_local_shape(layout, info)
            for dp_rank in range(layout.dp):
                rank = learner_global_rank(tp_rank, info.pp_stage, dp_rank, layout.tp, layout.dp)
                ranks[rank][info.name] = local.clone()
    return ranks


def run_parties(fns: list, timeout: float = 60.0) -> list:
    """Run one callable per thread; re-raise the first failure."""
    results, errors = [None] * len(fns), [None] * len(fns)

    def wrap(i):
        try:
            results[i] = fns[i]()
        except BaseException as exc:  # re-raised in the caller
            errors[i] = exc

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a party hung"
    for e in errors:
        if e is not None:
            raise e
    return results


def refit_in_threads(
    learner,
    engine,
    hf,
    *,
    bucket_bytes,
    checksums=False,
    dtype=torch.float32,
    recv_bucket_bytes=None,
    receive_buffer_bytes=None,
    hold=False,
    wrap=None,
    calls=None,
    region=None,
):
    """One refit with every party in a thread; returns the plan, the senders' and the receivers'
    stats and ``seen[(e, n)][name]``: what receiver ``(e, n)``'s loader read of each tensor it got.
    ``hold``: the loader keeps every tensor it got until its reload call returns (the worst case of
    vLLM's layerwise reload); ``wrap(group)`` replaces a party's group (e.g. ``CoalescingSpy``);
    ``calls[(e, n)]`` collects the HF names of each reload call; ``region(name, n)``: the box of a
    received tensor rank ``n`` reads (default :func:`vllm_region`; an fp8 engine's scales need
    their own)."""
    plan = plan_refit(learner, engine)
    local = learner_tensors(learner, hf)
    world = learner.world_size + engine.world_size
    port = free_port()
    seen: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    calls = {} if calls is None else calls
    wrap = wrap or (lambda g: g)
    region = region or (lambda name, n: vllm_region(learner.model, name, n, engine.tp))

    common = dict(receive_buffer_bytes=receive_buffer_bytes, checksums=checksums, timeout_s=30)

    def party(rank, run):
        """A thread's body: join the refit group as ``rank``, ``run(group)``, leave the group."""

        def fn():
            group = init_refit_group("127.0.0.1", port, rank, world, "gloo", timeout_s=30)
            try:
                return run(wrap(group))
            finally:
                destroy_refit_group(group)

        return fn

    def learner_party(rank):
        return party(
            rank, lambda g: send_refit(plan, local[rank], g, rank, bucket_bytes=bucket_bytes, **common)
        )

    def receiver_party(e, n):
        got = seen.setdefault((e, n), {})
        mine = calls.setdefault((e, n), [])

        def load(stream):
            held, names = [], []
            for name, full in stream:
                weight = name.removesuffix("_scale_inv")  # an fp8 engine's scales: their weight's
                assert weight in hf and (name != weight or tuple(full.shape) == hf[name].shape), name
                got[name] = full[tuple(slice(a, b) for a, b in region(name, n))].clone()
                names.append(name)
                if hold:
                    held.append(full)
            mine.append(names)

        receive = dict(dtype=dtype, bucket_bytes=recv_bucket_bytes or bucket_bytes, **common)
        return party(
            learner.world_size + e * engine.tp + n, lambda g: receive_refit(plan, e, n, g, load, **receive)
        )

    parties = [learner_party(r) for r in range(learner.world_size)]
    parties += [receiver_party(e, n) for e in range(engine.num_engines) for n in range(engine.tp)]
    stats = run_parties(parties)
    return plan, stats[: learner.world_size], stats[learner.world_size :], seen
