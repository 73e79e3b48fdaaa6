"""Worker: sample RLVR rollouts from a real vLLM CPU engine and score them with the verifiers.

Writes the ``RolloutSample`` list as JSON, so learners at different layouts can train on exactly
the same engine-made batch (prompts, sampled responses, finish reasons, verifiable rewards).
"""

import argparse
import dataclasses
import json

from megatron_tulu.data.rlvr_prompts import load_rlvr_prompts
from megatron_tulu.data.tokenizer import DATA_DIR, load_tokenizer
from megatron_tulu.evaluation.rl import score_outputs
from megatron_tulu.rewards import DEFAULT_ALPHA, DEFAULT_NO_EOS_PENALTY
from megatron_tulu.rollout.engine import RolloutEngine, SamplingSettings


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    tokenizer = load_tokenizer(args.hf)
    prompts = load_rlvr_prompts([str(DATA_DIR / "rlvr.jsonl")], tokenizer, 112)[: args.prompts]
    with RolloutEngine(
        args.hf, tp=1, dtype="float32", seed=0, kv_cache_bytes=128 << 20, max_model_len=256
    ) as engine:
        outs = engine.generate(
            [q["ids"] for q in prompts],
            SamplingSettings(
                temperature=1.0, max_new_tokens=12, seed=11, stop_token_ids=(tokenizer.eos_token_id,)
            ),
        )
    samples = score_outputs(outs, prompts, tokenizer, DEFAULT_ALPHA, DEFAULT_NO_EOS_PENALTY)
    with open(args.out, "w") as f:
        json.dump([dataclasses.asdict(s) for s in samples], f)


if __name__ == "__main__":  # vLLM starts worker processes
    main()
