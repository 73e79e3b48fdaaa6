"""Driver: a Megatron learner (fp32; TP2 by default, ``--learner-tp/--learner-pp``, e.g. TP1xPP2)
refits a blockwise-FP8 vLLM CPU engine (``--engine-tp``, TP2 by default; bf16).

Run with ``tests/shims/amx_check`` on ``PYTHONPATH`` and ``MEGATRON_TULU_TEST_RELAX_AMX=1`` (the
test shim that lets vLLM CPU pick its block-FP8 kernel without AMX); the torchrun learner gets
neither.

1. Engine A starts on the offline FP8 export of *other* weights (``--start-hf``, another seed):
   greedy continuations before any refit.
2. A torchrun learner (``refit_learner.py --weight-dtype fp8_block``, ``--learner-tp`` x
   ``--learner-pp`` ranks; each PP stage sends its own layers) loads ``--hf`` and refits A twice
   (round 0: the HF weights, with checksums; round 1: after one optimizer step). After each round:
   A's worker stats, log-probs of fixed sequences and greedy continuations.
3. Engine A closes; engine B starts on the offline FP8 export of ``--hf``: greedy continuations
   and log-probs (what round 0 must reproduce).

Prints ``RESULT {json}`` (with the layouts: ``learner_tp``, ``learner_pp``, ``engine_tp``).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

LEARNER = Path(__file__).resolve().parent / "refit_learner.py"
SEQUENCES = [
    [5, 6, 7, 8, 9, 10, 11, 12],
    [100, 2000, 31, 7, 7, 3998, 42, 1, 17, 256, 3000, 9],
    [3998, 3997, 64, 65, 66],
    [17, 300, 1200, 2500, 3100, 800, 45],
]
PROMPTS = [seq[:4] for seq in SEQUENCES]


def engine_kwargs(tp: int) -> dict:
    return dict(
        tp=tp,
        dtype="bfloat16",
        weight_dtype="fp8_block",
        seed=0,
        kv_cache_bytes=128 << 20,
        max_model_len=256,
    )


def greedy(engine) -> list[list[int]]:
    from megatron_tulu.rollout.engine import SamplingSettings

    out = engine.generate(PROMPTS, SamplingSettings(temperature=0.0, max_new_tokens=12, ignore_eos=True))
    return [r.token_ids for r in out]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True, help="the learner's HF weights (fp32)")
    p.add_argument("--start-hf", required=True, help="other weights engine A starts from")
    p.add_argument("--workdir", required=True)
    p.add_argument("--bucket-bytes", type=int, default=1 << 20)
    p.add_argument("--learner-tp", type=int, default=2)
    p.add_argument("--learner-pp", type=int, default=1)
    p.add_argument("--engine-tp", type=int, default=2)
    args = p.parse_args()
    ltp, lpp, etp = args.learner_tp, args.learner_pp, args.engine_tp

    from benchmarks.common import torchrun_beside
    from megatron_tulu.models.fp8_export import engine_model_dir
    from megatron_tulu.models.hf_io import model_config_from_hf
    from megatron_tulu.rollout.bridge.layouts import EngineLayout, LearnerLayout
    from megatron_tulu.rollout.bridge.transport import RefitSpec
    from megatron_tulu.rollout.engine import RolloutEngine
    from tests.helpers import free_port

    work = Path(args.workdir)
    cfg = model_config_from_hf(args.hf)
    start_fp8 = engine_model_dir(args.start_hf, "fp8_block", work / "start-fp8")
    offline_fp8 = engine_model_dir(args.hf, "fp8_block", work / "offline-fp8")
    result: dict = {
        "sequences": SEQUENCES,
        "prompts": PROMPTS,
        "learner_tp": ltp,
        "learner_pp": lpp,
        "engine_tp": etp,
    }

    t0 = time.perf_counter()
    engine = RolloutEngine(start_fp8, **engine_kwargs(etp))
    result["engine_start_seconds"] = time.perf_counter() - t0
    try:
        result["greedy_before"] = greedy(engine)
        spec = RefitSpec(
            LearnerLayout(tp=ltp, pp=lpp, dp=1, model=cfg, dtype_bytes=4),
            EngineLayout(tp=etp, weight_dtype="fp8_block"),
            "float32",
        )
        port = free_port()
        out = Path(tempfile.mkdtemp(prefix="fp8_refit_learner_", dir=work))
        learner_args = [
            *("--hf", args.hf, "--tp", str(ltp), "--pp", str(lpp), "--out", str(out)),
            *("--sequences", json.dumps(SEQUENCES), "--bucket-bytes", str(args.bucket_bytes)),
            *("--weight-dtype", "fp8_block", "--engine", f"127.0.0.1:{port}:{etp}"),
        ]
        rounds = []
        drop = ("VLLM_CPU_OMP_THREADS_BIND", "MEGATRON_TULU_TEST_RELAX_AMX")
        with torchrun_beside(
            LEARNER, ltp * lpp, learner_args, out / "learner.log", name="learner", timeout=600, drop_env=drop
        ):
            engine.join_refit_group("127.0.0.1", port, spec, timeout_s=300)
            for round_ in range(2):
                t0 = time.perf_counter()
                stats = engine.refit(bucket_bytes=args.bucket_bytes, checksums=round_ == 0, timeout_s=300)
                rounds.append(
                    {
                        "workers": stats,
                        "rpc_seconds": time.perf_counter() - t0,
                        "logprobs": engine.sequence_logprobs(SEQUENCES),
                        "greedy": greedy(engine),
                    }
                )
            engine.leave_refit_group()
        result["rounds"] = rounds
        result["learner_ranks"] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(ltp * lpp)]
    finally:
        engine.close()
    del engine

    t0 = time.perf_counter()
    offline = RolloutEngine(offline_fp8, **engine_kwargs(etp))
    result["offline_start_seconds"] = time.perf_counter() - t0
    try:
        result["offline"] = {"greedy": greedy(offline), "logprobs": offline.sequence_logprobs(SEQUENCES)}
    finally:
        offline.close()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
