"""The one evaluation implementation: generate with an engine-like generator, score with the
verifier registry (forked worker processes, hard time limit per item), keep per-sample records.

``megatron-tulu eval``, the pipeline's per-stage scoring and the RLVR trainer's in-loop held-out
evaluation all go through :func:`evaluate`; the trainer reads :meth:`EvalRun.rlvr_metrics`
(``eval/reward/all``, ``eval/accuracy/<dataset>``, ...), the eval command reads
:meth:`EvalRun.task_metrics`.

The generator is anything with ``generate(prompt_token_ids, SamplingSettings) -> list[Rollout]``
returning ``n`` samples per prompt, prompt-major: :class:`megatron_tulu.rollout.engine.RolloutEngine`
(a fresh engine on HF weights, or the trainer's refit engine). A response that is empty, or that
hit ``max_new_tokens`` without EOS, is scored like any other (0 / the no-EOS penalty) and counted.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from megatron_tulu.evaluation.metrics import canonical_answer, rlvr_metrics, task_metrics
from megatron_tulu.evaluation.tasks import EvalItem


class Generator(Protocol):
    def generate(self, prompt_token_ids: Sequence[Sequence[int]], settings: Any) -> list[Any]: ...


@dataclass(frozen=True)
class EvalSettings:
    """Decoding for an evaluation. ``n > 1`` with ``temperature > 0`` gives pass@k / maj@k;
    greedy (``temperature=0``, ``n=1``) is Tülu's pass@1 setting. Prompt ``i`` is sampled with
    seed ``seed + i`` (whatever the batching), so a run is reproducible."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int | None = None  # prompts per engine call (None: all at once); for progress bars


@dataclass
class EvalRun:
    """Per-sample records of one evaluation, and the metrics computed from them."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r["task"] for r in self.records))

    def task_records(self, task: str, keep: set[int] | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records if r["task"] == task and (keep is None or r["index"] in keep)]

    def task_metrics(self) -> dict[str, dict[str, Any]]:
        return {t: task_metrics(self.task_records(t)) for t in self.tasks()}

    def rlvr_metrics(self, prefix: str = "eval/") -> dict[str, float]:
        return rlvr_metrics(self.records, prefix)

    def item_verdicts(self) -> list[bool]:
        """Sample 0's RLVR verdict (verifier score >= 1) per item, in item order (for paired tests)."""
        first = sorted((r for r in self.records if r["sample"] == 0), key=lambda r: (r["task"], r["index"]))
        return [r["score"] >= 1.0 for r in first]


def generate(
    generator: Generator,
    prompt_ids: Sequence[Sequence[int]],
    settings: EvalSettings,
    stop_token_ids: Sequence[int] = (),
    progress: Any = None,
) -> list[Any]:
    """``settings.n`` rollouts per prompt, prompt-major; ``prompt_index`` is the global prompt index."""
    from megatron_tulu.rollout.engine import SamplingSettings

    size = settings.batch_size or max(1, len(prompt_ids))
    outs: list[Any] = []
    for start in range(0, len(prompt_ids), size):
        chunk = prompt_ids[start : start + size]
        sampling = SamplingSettings(
            temperature=settings.temperature,
            top_p=settings.top_p if settings.temperature > 0 else 1.0,
            max_new_tokens=settings.max_new_tokens,
            n=settings.n,
            seed=settings.seed + start,
            stop_token_ids=tuple(int(t) for t in stop_token_ids),
        )
        got = generator.generate(chunk, sampling)
        if len(got) != len(chunk) * settings.n:
            raise RuntimeError(
                f"generator returned {len(got)} samples for {len(chunk)} prompts x {settings.n}"
            )
        for o in got:
            o.prompt_index += start
        outs += got
        if progress is not None:
            progress.update(len(chunk))
    return outs


def score_texts(
    items: Sequence[EvalItem],
    samples: Sequence[tuple[int, int, str, str, int]],
    *,
    alpha: float | None = None,
    no_eos_penalty: float | None = None,
    workers: int | None = None,
    time_limit: float | None = None,
    progress: Any = None,
    strip_thinking: bool = False,
    verifier_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Score ``(item index, sample index, response text, finish_reason, token count)`` tuples.

    Scored with the registry's default options (what RLVR rewards); IFEval items are checked a
    second time in loose mode for the loose prompt/instruction levels.
    """
    from megatron_tulu.rewards import (
        DEFAULT_ALPHA,
        DEFAULT_NO_EOS_PENALTY,
        DEFAULT_TIME_LIMIT_S,
        compute_rewards,
        get_verifier,
    )

    alpha = DEFAULT_ALPHA if alpha is None else alpha
    no_eos_penalty = DEFAULT_NO_EOS_PENALTY if no_eos_penalty is None else no_eos_penalty
    time_limit = DEFAULT_TIME_LIMIT_S if time_limit is None else time_limit
    lock = threading.Lock()

    def tick(_: int) -> None:
        if progress is not None:
            with lock:
                progress.update(1)

    rows = [
        {
            "response": text,
            "ground_truth": items[i].ground_truth,
            "dataset": items[i].dataset,
            "prompt": items[i].question,
            "finish_reason": finish,
        }
        for i, _, text, finish, _ in samples
    ]
    options = {name: dict(v) for name, v in (verifier_options or {}).items()}
    strict = compute_rewards(
        rows,
        alpha=alpha,
        no_eos_penalty=no_eos_penalty,
        workers=workers,
        time_limit=time_limit,
        on_done=tick,
        strip_thinking=strip_thinking,
        verifier_options=options,
    )
    is_if = [get_verifier(r["dataset"]).name == "ifeval" for r in rows]
    loose_rows = [r for r, f in zip(rows, is_if) if f]
    loose_iter = iter(
        compute_rewards(
            loose_rows,
            alpha=alpha,
            no_eos_penalty=no_eos_penalty,
            workers=workers,
            time_limit=time_limit,
            verifier_options={**options, "ifeval": {**options.get("ifeval", {}), "mode": "loose"}},
            strip_thinking=strip_thinking,
        )
        if loose_rows
        else []
    )
    records = []
    for (i, j, text, finish, ntok), res, flag in zip(samples, strict, is_if):
        item = items[i]
        rec: dict[str, Any] = {
            "task": item.task,
            "index": item.index,
            "sample": j,
            "location": item.location,
            "dataset": res.dataset,
            "prompt": item.question,
            "ground_truth": item.ground_truth,
            "response": text,
            "finish_reason": finish,
            "num_tokens": ntok,
            "reward": res.reward,
            "score": res.score,
            "answer": canonical_answer(res.dataset, res.details),
            "verification": res.details,
        }
        subject = item.meta.get("subject") or item.meta.get("type")
        if subject:  # MATH: Tülu reports the macro average over subjects
            rec["subject"] = subject
        correct = res.score >= 1.0
        if flag:
            loose = next(loose_iter)
            rec["verification_loose"] = loose.details
            if item.kind == "ifeval":  # the IFEval benchmark's headline: prompt-level loose
                correct = bool(loose.details.get("all_followed", False))
        rec["correct"] = bool(correct)
        records.append(rec)
    return records


def evaluate(
    generator: Generator,
    items: Sequence[EvalItem],
    prompt_ids: Sequence[Sequence[int]],
    tokenizer: Any,
    settings: EvalSettings = EvalSettings(),
    *,
    alpha: float | None = None,
    no_eos_penalty: float | None = None,
    workers: int | None = None,
    time_limit: float | None = None,
    progress: bool = False,
    desc: str = "eval",
    strip_thinking: bool = False,
    verifier_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> EvalRun:
    """Generate ``settings.n`` samples per item and score them: the one evaluation loop.

    ``prompt_ids[i]`` is the prompt of ``items[i]`` (see :func:`~megatron_tulu.evaluation.prompts.encode_items`).
    ``strip_thinking`` / ``verifier_options`` are passed to ``compute_rewards`` (the RL trainer's
    scoring options, e.g. ``{"gsm8k": {"rule": "tulu3"}}``). Generation stops at the tokenizer's EOS. With ``progress`` two bars (generation in prompts,
    verification in samples) go to stderr.
    """
    if len(items) != len(prompt_ids):
        raise ValueError(f"{len(items)} items but {len(prompt_ids)} prompts")
    # items may come from several tasks; records index them by position here, then by item.index
    local = [EvalItem(**{**vars(it), "index": k}) for k, it in enumerate(items)]
    gen_bar = score_bar = None
    if progress:
        from tqdm import tqdm

        gen_bar = tqdm(total=len(items), desc=f"{desc}: generate", unit="prompt", dynamic_ncols=True)
    try:
        stop = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
        outs = generate(generator, prompt_ids, settings, stop, gen_bar)
    finally:
        if gen_bar is not None:
            gen_bar.close()
    if progress:
        from tqdm import tqdm

        score_bar = tqdm(total=len(outs), desc=f"{desc}: verify", unit="sample", dynamic_ncols=True)
    try:
        texts = [tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outs]
        samples = [
            (o.prompt_index, o.sample_index, t, o.finish_reason, len(o.token_ids))
            for o, t in zip(outs, texts)
        ]
        records = score_texts(
            local,
            samples,
            alpha=alpha,
            no_eos_penalty=no_eos_penalty,
            workers=workers,
            time_limit=time_limit,
            progress=score_bar,
            strip_thinking=strip_thinking,
            verifier_options=verifier_options,
        )
    finally:
        if score_bar is not None:
            score_bar.close()
    for rec, out in zip(records, outs):
        rec["index"] = items[out.prompt_index].index
    return EvalRun(records)
