"""`megatron-tulu pipeline [output_dir=DIR] [sft.|dpo.|rlvr.<override> ...]`: SFT -> DPO -> RLVR
with held-out accuracy after every stage (:mod:`megatron_tulu.algorithms.pipeline`).

``python -m megatron_tulu.commands.pipeline`` runs the same command without the dispatcher.
"""

from __future__ import annotations

import sys

from megatron_tulu.algorithms import pipeline


def main(argv: list[str]) -> int:
    """`megatron-tulu pipeline [output_dir=DIR] [sft.|dpo.|rlvr.<override> ...]`: SFT -> DPO -> RLVR."""
    if any(a in ("-h", "--help") for a in argv):
        print(pipeline.__doc__)
        return 0
    pipeline.run_pipeline(argv)
    return 0


if __name__ == "__main__":
    from megatron_tulu.engine.gpu_stack import exit_on_cpu_stack

    exit_on_cpu_stack()  # as `megatron-tulu` does: no CPU venv on a GPU node
    sys.exit(main(sys.argv[1:]))
