"""Result types shared by every verifier and by the reward assembly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class VerifierResult:
    """What a verifier says about one response.

    `score` is in [0, 1] (1 = correct). `details` is JSON-serialisable diagnostics (extracted
    answers, per-instruction verdicts, errors) written next to the reward by `megatron-tulu verify`.
    """

    score: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardResult:
    """The RLVR reward for one sample plus everything needed to explain it."""

    reward: float
    score: float
    dataset: str
    stopped_at_eos: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
