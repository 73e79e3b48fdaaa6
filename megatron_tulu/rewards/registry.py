"""Dataset name -> verifier registry.

A verifier is `fn(response: str, ground_truth: Any, prompt: str, **options) -> VerifierResult`.
Adding one takes a few lines::

    from megatron_tulu.rewards import VerifierResult, register_verifier

    @register_verifier("exact_string")
    def exact_string(response, ground_truth, prompt):
        return VerifierResult(float(response.strip() == str(ground_truth).strip()))

Samples are dispatched on their `dataset` field, case-insensitively, so open-instruct's names
("MATH", "gsm8k", "ifeval") work unchanged.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from megatron_tulu.rewards.types import VerifierResult

VerifierFn = Callable[..., VerifierResult]
GroundTruthValidator = Callable[[Any], None]

# Modules whose import registers the built-in verifiers. Imported lazily so that importing the
# registry (e.g. from a user's plugin) never pulls in sympy or langdetect.
_BUILTIN_MODULES = (
    "megatron_tulu.rewards.gsm8k",
    "megatron_tulu.rewards.math_verifier",
    "megatron_tulu.rewards.ifeval.verifier",
)


class UnknownDatasetError(KeyError):
    """Raised when a sample's `dataset` has no registered verifier."""

    def __init__(self, dataset: object, registered: list[str]):
        self.dataset = dataset
        self.registered = registered
        super().__init__(
            f"no verifier registered for dataset {dataset!r}; registered: {', '.join(registered) or '(none)'}"
        )

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return self.args[0]


class InvalidGroundTruthError(ValueError):
    """Raised by a verifier's validator when a ground truth cannot be checked at all."""


@dataclass(frozen=True)
class RegisteredVerifier:
    name: str
    fn: VerifierFn
    validate: GroundTruthValidator | None = None
    warm_up: Callable[[], None] | None = None


_lock = threading.Lock()
_verifiers: dict[str, RegisteredVerifier] = {}
_aliases: dict[str, str] = {}
_builtins_loaded = False
# Bumped on every registration; the sandbox re-forks its worker when this changes so that the
# worker always sees the same registry as the parent.
_generation = 0


def canonical_name(dataset: str) -> str:
    return dataset.strip().lower()


def registry_generation() -> int:
    return _generation


def register_verifier(
    name: str,
    *,
    aliases: tuple[str, ...] = (),
    validate: GroundTruthValidator | None = None,
    warm_up: Callable[[], None] | None = None,
    replace: bool = False,
) -> Callable[[VerifierFn], VerifierFn]:
    """Decorator registering `fn` as the verifier for dataset `name` (and `aliases`).

    `validate(ground_truth)` (optional) raises InvalidGroundTruthError for ground truths the
    verifier can never check; the verify CLI reports those as malformed rows. `warm_up()` (optional)
    runs once in the parent before worker processes fork, to load heavy state (models, profiles) once.
    Re-registering an existing name raises unless `replace=True`.
    """

    def decorator(fn: VerifierFn) -> VerifierFn:
        global _generation
        key = canonical_name(name)
        keys = [key, *(canonical_name(a) for a in aliases)]
        with _lock:
            if not replace:
                taken = [k for k in keys if k in _verifiers or k in _aliases]
                if taken:
                    raise ValueError(f"verifier name(s) already registered: {taken}; pass replace=True")
            _verifiers[key] = RegisteredVerifier(key, fn, validate, warm_up)
            for alias in keys[1:]:
                _aliases[alias] = key
            _generation += 1
        return fn

    return decorator


def unregister_verifier(name: str) -> None:
    """Remove a verifier and its aliases (mainly for tests and plugins that reload)."""
    global _generation
    key = canonical_name(name)
    with _lock:
        _verifiers.pop(key, None)
        for alias in [a for a, target in _aliases.items() if target == key]:
            del _aliases[alias]
        _generation += 1


def _ensure_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    _builtins_loaded = True


def registered_datasets() -> list[str]:
    _ensure_builtins()
    return sorted(_verifiers)


def get_verifier(dataset: str) -> RegisteredVerifier:
    """Look up the verifier for a sample's `dataset` field (case-insensitive)."""
    _ensure_builtins()
    if not isinstance(dataset, str):
        raise UnknownDatasetError(dataset, sorted(_verifiers))
    key = canonical_name(dataset)
    key = _aliases.get(key, key)
    try:
        return _verifiers[key]
    except KeyError:
        raise UnknownDatasetError(dataset, sorted(_verifiers)) from None
