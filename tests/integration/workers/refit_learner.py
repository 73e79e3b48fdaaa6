"""Torchrun worker: a Megatron learner that refits vLLM engines twice around one optimizer step.

For each ``--engine HOST:PORT:TP`` (in order) it joins that engine's refit group. Round 0: send
the HF-loaded weights to every engine, compute the learner's log-probs of the fixed sequences.
Then one Adam step. Round 1: send again, log-probs again. Each rank writes
``OUT/rank{r}.json`` (send stats per round; log-probs on the last stage's TP0 rank).
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_tulu.config.schema import OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_tulu.engine.model import build_model
from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
from megatron_tulu.models.hf_io import load_hf_weights, model_config_from_hf
from megatron_tulu.rollout.refit import LearnerRefit, learner_sequence_logprobs, refit_spec_for
from tests.distributed.workers.logits_worker import one_step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hf", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--engine", action="append", required=True, help="HOST:PORT:TP, repeatable")
    p.add_argument("--sequences", required=True, help="JSON list of token-id lists")
    p.add_argument("--bucket-bytes", type=int, default=1 << 20)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", required=True)
    p.add_argument("--weight-dtype", default="auto", help="engine weights: auto | fp8_block")
    p.add_argument("--receive-buffer-bytes", type=int, default=None, help="engine ranks' refit buffer bound")
    args = p.parse_args()

    cfg = model_config_from_hf(args.hf)
    parallel = ParallelConfig(tp=args.tp, pp=args.pp)
    init_parallel(cfg, parallel, seed=3)
    chunks = build_model(cfg, parallel, PrecisionConfig())
    load_hf_weights(chunks, cfg, args.hf)
    sequences = json.loads(args.sequences)

    refits = []
    for target in args.engine:
        host, port, etp = target.rsplit(":", 2)
        spec = refit_spec_for(
            chunks,
            cfg,
            int(etp),
            weight_dtype=args.weight_dtype,
            receive_buffer_bytes=args.receive_buffer_bytes,
        )
        refits.append(LearnerRefit(spec, host, int(port), timeout_s=300))

    rank = dist.get_rank()
    record = {"rank": rank, "rounds": []}
    for round_ in range(2):
        if round_ == 1:
            for chunk in chunks:
                chunk.train()
            ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(7))
            one_step(
                chunks, cfg, parallel, PrecisionConfig(), OptimizerConfig(lr=args.lr, warmup_ratio=0.0), ids
            )
        # round 0 also exercises the per-slice checksums
        stats = [r.send(chunks, bucket_bytes=args.bucket_bytes, checksums=round_ == 0) for r in refits]
        lps = learner_sequence_logprobs(chunks, cfg, sequences)
        entry = {"send": stats}
        if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
            entry["logprobs"] = [x.tolist() for x in lps]
        record["rounds"].append(entry)
    for r in refits:
        r.close()
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    destroy_parallel()


if __name__ == "__main__":
    main()
