"""`megatron-tulu generate`: continue prompts with the Megatron model (any TP x PP).

    megatron-tulu generate --hf DIR --prompt "What is 2+2?" [--chat] [--max-new-tokens 32]
    megatron-tulu generate --ckpt CKPT --tokenizer DIR --prompt-ids 1,2,3 [parallel.tp=2]

Greedy by default (``--temperature 0``). Prints the new token ids as JSON and the decoded text
when a tokenizer is available. Meant for comparing against transformers and vLLM.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_tulu.commands._args import parse_flags_and_overrides, run_config
from megatron_tulu.config.schema import ModelConfig


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="megatron-tulu generate", description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", help="HF Llama directory")
    src.add_argument("--ckpt", help="megatron-tulu checkpoint root or step directory")
    parser.add_argument("--tokenizer", help="tokenizer directory (defaults to --hf)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt")
    prompt.add_argument("--prompt-ids", help="comma-separated token ids")
    parser.add_argument("--chat", action="store_true", help="wrap --prompt in the Tülu chat template")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parse_flags_and_overrides(parser, argv)

    from megatron_tulu.engine.checkpoint import load_checkpoint, read_meta
    from megatron_tulu.engine.generate import generate
    from megatron_tulu.engine.model import build_model
    from megatron_tulu.engine.parallel import destroy_parallel, init_parallel
    from megatron_tulu.models.hf_io import load_hf_weights, model_config_from_hf

    if args.hf:
        model_cfg = model_config_from_hf(args.hf)
    else:
        meta = read_meta(args.ckpt)
        model_cfg = ModelConfig(**meta["model"])
    tokenizer = None
    tok_dir = args.tokenizer or args.hf or model_cfg.hf_path
    if tok_dir and (Path(tok_dir) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if args.prompt_ids:
        ids = [int(x) for x in args.prompt_ids.split(",") if x.strip()]
    else:
        if tokenizer is None:
            parser.error("--prompt needs a tokenizer (--tokenizer or --hf)")
        text = args.prompt
        if args.chat:
            from megatron_tulu.data.chat_template import render_tulu

            text = render_tulu([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    cfg = run_config(overrides)
    info = init_parallel(model_cfg, cfg.parallel, seed=cfg.train.seed)
    chunks = build_model(model_cfg, cfg.parallel, cfg.precision, wrap_ddp=False)
    if args.hf:
        load_hf_weights(chunks, model_cfg, args.hf)
    else:
        load_checkpoint(meta["path"], chunks)
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    new = generate(
        chunks,
        ids,
        model_cfg.vocab_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        eos_token_id=eos,
        seed=args.seed,
    )
    if info.rank == 0:
        out = {"prompt_ids": ids, "new_token_ids": new}
        if tokenizer is not None:
            out["text"] = tokenizer.decode(new)
        print(json.dumps(out), flush=True)
    destroy_parallel()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
