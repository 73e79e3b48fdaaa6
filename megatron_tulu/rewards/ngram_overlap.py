"""Hashed n-gram index for Tülu 3 decontamination (§3.2).

Rule: a test token is matched by a training instance when they share an n-gram (n = 8) containing
that token; a test instance overlaps a training instance when more than `threshold` (0.5) of its
tokens are matched by that *same* training instance.

Tokenization: lower-case the text and take maximal runs of word characters (`\\w+`, Unicode-aware),
dropping punctuation and whitespace. "Don't stop!" -> ["don", "t", "stop"]. The paper does not
name its tokenizer; this one is simple, deterministic and insensitive to formatting.

Only the evaluation side is indexed: each eval n-gram's 64-bit hash maps to the (instance,
position) pairs where it occurs. Training text is streamed: a training instance costs one hash
lookup per n-gram whose tokens all occur in the eval vocabulary (others cannot match), so time
is linear in training tokens and memory is bounded by the eval side. Hashes are Python's hash
of a tuple of integer token ids: 64-bit, deterministic for integers; a collision can only add a
spurious match, with probability ~2^-64 per n-gram pair.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

_TOKEN = re.compile(r"\w+")
_POSITION_BITS = 32


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class EvalInstance:
    eval_set: str
    key: str  # row id or file:line
    num_tokens: int


@dataclass(frozen=True)
class Overlap:
    instance_index: int  # into EvalIndex.instances
    coverage: float  # fraction of the eval instance's tokens matched by the training instance


class EvalIndex:
    def __init__(self, ngram: int = 8):
        if ngram < 1:
            raise ValueError("ngram must be >= 1")
        self.ngram = ngram
        self.instances: list[EvalInstance] = []
        self.too_short = 0  # eval instances with fewer than `ngram` tokens: they can never match
        self._vocab: dict[str, int] = {}
        self._postings: dict[int, list[int]] = defaultdict(list)

    def add(self, eval_set: str, key: str, text: str) -> None:
        tokens = tokenize(text)
        index = len(self.instances)
        self.instances.append(EvalInstance(eval_set, key, len(tokens)))
        if len(tokens) < self.ngram:
            self.too_short += 1
            return
        ids = [self._vocab.setdefault(token, len(self._vocab)) for token in tokens]
        for start in range(len(ids) - self.ngram + 1):
            gram = hash(tuple(ids[start : start + self.ngram]))
            self._postings[gram].append((index << _POSITION_BITS) | start)

    def overlaps(self, text: str, threshold: float = 0.5) -> list[Overlap]:
        """Eval instances of which more than `threshold` of the tokens are covered by `text`."""
        n = self.ngram
        ids = [self._vocab.get(token, -1) for token in tokenize(text)]
        hits: dict[int, list[int]] = defaultdict(list)
        postings = self._postings
        unknown_until = -1  # windows starting at or before this index contain an unknown token
        for position in range(len(ids)):
            if ids[position] < 0:
                unknown_until = position
            start = position - n + 1
            if start <= unknown_until or start < 0:
                continue
            found = postings.get(hash(tuple(ids[start : position + 1])))
            if found:
                for packed in found:
                    hits[packed >> _POSITION_BITS].append(packed & ((1 << _POSITION_BITS) - 1))
        result = []
        for instance_index, starts in hits.items():
            covered = _covered_tokens(starts, n)
            coverage = covered / self.instances[instance_index].num_tokens
            if coverage > threshold:
                result.append(Overlap(instance_index, coverage))
        return result


def _covered_tokens(starts: list[int], ngram: int) -> int:
    """Size of the union of the intervals [s, s + ngram)."""
    covered = 0
    reached = 0
    for start in sorted(set(starts)):
        end = start + ngram
        covered += end - max(start, reached) if end > reached else 0
        reached = max(reached, end)
    return covered
