"""Registry of IFEval instruction checkers and validation of their kwargs.

Each checker is `check(response: str, **kwargs) -> bool` registered under its IFEval id
("keywords:existence", ...). Kwargs are validated and normalised up front, the way the
reference's `build_description` normalises them (strip, lower-case, dedupe), except that a
missing or invalid kwarg is an error here: the reference would draw a random value instead,
which makes no sense when verifying.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from megatron_tulu.rewards.registry import InvalidGroundTruthError

RELATIONS = ("less than", "at least")

Normalizer = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class InstructionSpec:
    instruction_id: str
    check: Callable[..., bool]
    normalize: Normalizer


INSTRUCTIONS: dict[str, InstructionSpec] = {}


def instruction(instruction_id: str, normalize: Normalizer | None = None) -> Callable:
    """Register `check` for `instruction_id`; `normalize(kwargs)` validates and cleans kwargs."""

    def decorator(check: Callable[..., bool]) -> Callable[..., bool]:
        INSTRUCTIONS[instruction_id] = InstructionSpec(instruction_id, check, normalize or no_kwargs)
        return check

    return decorator


def compare(count: int, relation: str, threshold: int) -> bool:
    """IFEval's two relations: "less than" is count < threshold, "at least" is count >= threshold."""
    return count < threshold if relation == "less than" else count >= threshold


# ---------------------------------------------------------------- kwarg validators


def _missing(kwargs: Mapping[str, Any], key: str) -> InvalidGroundTruthError:
    return InvalidGroundTruthError(f"missing or invalid kwarg {key!r} (got {kwargs.get(key)!r})")


def get_int(kwargs: Mapping[str, Any], key: str, minimum: int = 0) -> int:
    value = kwargs.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _missing(kwargs, key)
    return value


def get_str(kwargs: Mapping[str, Any], key: str) -> str:
    value = kwargs.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _missing(kwargs, key)
    return value.strip()


def get_str_list(kwargs: Mapping[str, Any], key: str) -> list[str]:
    value = kwargs.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise _missing(kwargs, key)
    return list(value)


def get_relation(kwargs: Mapping[str, Any], key: str) -> str:
    value = kwargs.get(key)
    if value not in RELATIONS:
        raise InvalidGroundTruthError(f"kwarg {key!r} must be one of {RELATIONS}, got {value!r}")
    return value


def no_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {}


def validate_instruction(instruction_id: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Normalised kwargs for `instruction_id`; raises InvalidGroundTruthError on bad input."""
    spec = INSTRUCTIONS.get(instruction_id)
    if spec is None:
        raise InvalidGroundTruthError(
            f"unknown IFEval instruction {instruction_id!r}; known: {', '.join(sorted(INSTRUCTIONS))}"
        )
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise InvalidGroundTruthError(f"kwargs of {instruction_id!r} must be an object, got {kwargs!r}")
    # HF's IFEval stores every kwarg key for every instruction, unused ones as null.
    present = {key: value for key, value in kwargs.items() if value is not None}
    try:
        return spec.normalize(present)
    except InvalidGroundTruthError as exc:
        raise InvalidGroundTruthError(f"{instruction_id}: {exc}") from None
