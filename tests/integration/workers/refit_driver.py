"""Driver: real vLLM CPU engines (started once) refit from Megatron learners under torchrun.

Starts one engine per ``--engine-tp`` (dedicated processes: this controller plus vLLM's
workers), then for each ``--learner TPxPP`` launches a torchrun learner
(``refit_learner.py``) that joins every engine's refit group; per round it refits every engine
and reads vLLM's log-probs of the fixed sequences. Prints ``RESULT {json}`` with, per learner
layout and engine: the worker stats and log-probs of both rounds, the learner's log-probs and
send stats, and the engine start times.
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
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--engine-tp", type=int, action="append", required=True)
    p.add_argument("--learner", action="append", required=True, help="TPxPP, e.g. 2x1")
    p.add_argument("--bucket-bytes", type=int, default=1 << 20)
    p.add_argument("--receive-buffer-bytes", type=int, default=None, help="engine ranks' refit buffer bound")
    args = p.parse_args()

    from benchmarks.common import torchrun_beside
    from megatron_tulu.models.hf_io import model_config_from_hf
    from megatron_tulu.rollout.bridge.layouts import EngineLayout, LearnerLayout
    from megatron_tulu.rollout.bridge.transport import RefitSpec
    from megatron_tulu.rollout.engine import RolloutEngine
    from tests.helpers import free_port

    cfg = model_config_from_hf(args.hf)
    engines = {}
    result = {"engine_start_seconds": {}, "runs": []}
    try:
        for etp in args.engine_tp:
            engines[etp] = RolloutEngine(
                args.hf, tp=etp, dtype="float32", seed=0, kv_cache_bytes=128 << 20, max_model_len=256
            )
            result["engine_start_seconds"][etp] = engines[etp].start_seconds
        for layout in args.learner:
            tp, pp = (int(x) for x in layout.split("x"))
            ports = {etp: free_port() for etp in engines}
            specs = {
                etp: RefitSpec(
                    LearnerLayout(tp=tp, pp=pp, dp=1, model=cfg, dtype_bytes=4),
                    EngineLayout(tp=etp),
                    receive_buffer_bytes=args.receive_buffer_bytes,
                )
                for etp in engines
            }
            out = Path(tempfile.mkdtemp(prefix="refit_learner_"))
            learner_args = [
                *("--hf", args.hf, "--tp", str(tp), "--pp", str(pp), "--out", str(out)),
                *("--sequences", json.dumps(SEQUENCES), "--bucket-bytes", str(args.bucket_bytes)),
            ]
            for etp in engines:
                learner_args += ["--engine", f"127.0.0.1:{ports[etp]}:{etp}"]
            if args.receive_buffer_bytes:
                learner_args += ["--receive-buffer-bytes", str(args.receive_buffer_bytes)]
            with torchrun_beside(
                LEARNER, tp * pp, learner_args, out / "learner.log", name=f"learner {layout}", timeout=600
            ):
                for etp, eng in engines.items():
                    eng.join_refit_group("127.0.0.1", ports[etp], specs[etp], timeout_s=180)
                run = {"learner": layout, "engines": {}}
                for round_ in range(2):
                    for etp, eng in engines.items():
                        t0 = time.perf_counter()
                        stats = eng.refit(
                            bucket_bytes=args.bucket_bytes, checksums=round_ == 0, timeout_s=300
                        )
                        seconds = time.perf_counter() - t0
                        lps = eng.sequence_logprobs(SEQUENCES)
                        entry = run["engines"].setdefault(str(etp), {"rounds": []})
                        entry["rounds"].append({"workers": stats, "rpc_seconds": seconds, "logprobs": lps})
                for eng in engines.values():
                    eng.leave_refit_group()
            run["learner_ranks"] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(tp * pp)]
            result["runs"].append(run)
        # the generation API on the refit weights: greedy and seeded sampling
        from megatron_tulu.rollout.engine import SamplingSettings

        prompts = [seq[:4] for seq in SEQUENCES]
        result["generate"] = {}
        for etp, eng in engines.items():
            out = {}
            for name, settings in (
                ("greedy", SamplingSettings(temperature=0.0, max_new_tokens=6, ignore_eos=True)),
                (
                    "sampled",
                    SamplingSettings(temperature=1.0, max_new_tokens=6, n=2, seed=11, ignore_eos=True),
                ),
            ):
                rollouts = eng.generate(prompts, settings)
                out[name] = [
                    {
                        "prompt_ids": r.prompt_ids,
                        "token_ids": r.token_ids,
                        "logprobs": r.logprobs,
                        "finish_reason": r.finish_reason,
                        "prompt_index": r.prompt_index,
                        "sample_index": r.sample_index,
                    }
                    for r in rollouts
                ]
                out[name + "_rescored"] = eng.logprobs_of(
                    [r.prompt_ids for r in rollouts], [r.token_ids for r in rollouts]
                )
            stop = out["greedy"][0]["token_ids"][2]
            stopped = eng.generate(
                prompts[:1], SamplingSettings(temperature=0.0, max_new_tokens=6, stop_token_ids=(stop,))
            )
            out["stopped"] = {"token_ids": stopped[0].token_ids, "finish_reason": stopped[0].finish_reason}
            out["stop_token"] = stop
            # seeded sampling over more prefill tokens than one scheduler step takes (160 x 64 >
            # 8192): on CPU a split prefill used to kill the engine (CPU generators have no offset)
            many = [[(7 * i + j) % 3990 + 5 for j in range(64)] for i in range(160)]
            big = eng.generate(many, SamplingSettings(temperature=1.0, max_new_tokens=2, n=2, seed=3))
            out["big_batch"] = sorted({(r.prompt_index, r.sample_index) for r in big}) == [
                (i, j) for i in range(160) for j in range(2)
            ]
            result["generate"][str(etp)] = out
    finally:
        for eng in engines.values():
            eng.close()
    result["sequences"] = SEQUENCES
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
