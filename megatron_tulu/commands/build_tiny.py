"""`megatron-tulu build-tiny --out DIR [--seed N] [--tie-word-embeddings] [--dtype D]`: write the
embedded tiny Llama + tokenizer as an HF directory (:mod:`megatron_tulu.models.tiny`)."""

from __future__ import annotations

import argparse
import sys

from megatron_tulu.models.tiny import DTYPES, TINY_ARCH, build_tiny_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="megatron-tulu build-tiny",
        description="build the embedded tiny Llama + tokenizer as an HF directory",
    )
    parser.add_argument(
        "--out", required=True, help="output directory (replaced if it holds an earlier build)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight init seed")
    parser.add_argument(
        "--tie-word-embeddings", action="store_true", help="share embedding and output matrices"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="stored weight dtype")
    args = parser.parse_args(argv)
    out = build_tiny_model(
        args.out, seed=args.seed, tie_word_embeddings=args.tie_word_embeddings, dtype=args.dtype
    )
    print(
        f"wrote tiny Llama ({TINY_ARCH['num_hidden_layers']} layers, vocab {TINY_ARCH['vocab_size']}) to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
