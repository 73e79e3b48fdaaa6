"""IFEval instruction checkers (all 25 types of the benchmark) and the "ifeval" verifier."""

from megatron_tulu.rewards.ifeval.spec import INSTRUCTIONS, validate_instruction
from megatron_tulu.rewards.ifeval.verifier import (
    check_instructions,
    loose_variants,
    parse_ground_truth,
    verify_ifeval,
)

__all__ = [
    "INSTRUCTIONS",
    "check_instructions",
    "loose_variants",
    "parse_ground_truth",
    "validate_instruction",
    "verify_ifeval",
]
