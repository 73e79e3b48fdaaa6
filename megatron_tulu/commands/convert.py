"""`megatron-tulu convert`: HF Llama <-> Megatron distributed checkpoint, at any TP x PP.

    megatron-tulu convert hf-to-mcore --hf DIR --out CKPT_ROOT [parallel.tp=2 parallel.pp=2]
    megatron-tulu convert mcore-to-hf --ckpt CKPT --out DIR [--tokenizer DIR] [parallel.pp=2]

Run under ``torchrun --nproc_per_node=tp*pp*dp`` for a multi-rank layout; each rank reads or
writes only its own shards. The checkpoint is reshardable: it loads at any other layout
(:mod:`megatron_tulu.models.convert`).
"""

from __future__ import annotations

import argparse
import sys

from megatron_tulu.commands._args import parse_flags_and_overrides
from megatron_tulu.models.convert import hf_to_mcore, mcore_to_hf


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="megatron-tulu convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", choices=["hf-to-mcore", "mcore-to-hf"])
    parser.add_argument("--hf", help="HF Llama directory (hf-to-mcore)")
    parser.add_argument("--ckpt", help="checkpoint root or step directory (mcore-to-hf)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer", help="directory whose tokenizer files to copy (mcore-to-hf)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="dtype of exported tensors")
    args, overrides = parse_flags_and_overrides(parser, argv)
    if args.direction == "hf-to-mcore":
        if not args.hf:
            parser.error("hf-to-mcore needs --hf")
        print(hf_to_mcore(args.hf, args.out, overrides))
    else:
        if not args.ckpt:
            parser.error("mcore-to-hf needs --ckpt")
        print(mcore_to_hf(args.ckpt, args.out, args.tokenizer, overrides, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
