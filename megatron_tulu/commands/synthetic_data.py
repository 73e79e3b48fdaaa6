"""`python -m megatron_tulu.commands.synthetic_data --out DIR`: write the synthetic SFT/DPO/RLVR
jsonl files (``data/synthetic.py``); with the defaults, byte for byte the ones shipped in
``megatron_tulu/assets/data``."""

from __future__ import annotations

import argparse

from megatron_tulu.data.synthetic import DEFAULT_SIZES, write_embedded_datasets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the synthetic SFT/DPO/RLVR jsonl files")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-sft", type=int, default=DEFAULT_SIZES["sft"])
    parser.add_argument("--n-dpo", type=int, default=DEFAULT_SIZES["dpo"])
    parser.add_argument("--n-rlvr", type=int, default=DEFAULT_SIZES["rlvr"])
    parser.add_argument(
        "--n-heldout", type=int, default=DEFAULT_SIZES["heldout"], help="sft/dpo held-out rows"
    )
    parser.add_argument("--n-rlvr-heldout", type=int, default=DEFAULT_SIZES["rlvr_heldout"])
    args = parser.parse_args(argv)
    paths = write_embedded_datasets(
        args.out, args.seed, args.n_sft, args.n_dpo, args.n_rlvr, args.n_heldout, args.n_rlvr_heldout
    )
    for name, path in paths.items():
        print(f"{name}: {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
