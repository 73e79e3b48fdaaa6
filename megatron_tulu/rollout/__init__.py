"""Rollouts on vLLM and the shard-exact refit bridge.

- :mod:`.engine`: :class:`RolloutEngine` (one TP vLLM engine; ``generate`` / ``sequence_logprobs``
  / ``refit``), :class:`SamplingSettings`, :class:`Rollout`; placement notes in its docstring.
- :mod:`.refit`: learner side (:class:`LearnerRefit`, :func:`refit_spec_for`) and the log-prob
  verification helpers.
- :mod:`.worker_ext`: the vLLM worker extension that receives refits.
- :mod:`.bridge`: the pure planner and the transport.

Names are re-exported lazily so importing the package does not import vLLM or Megatron.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Rollout": "engine",
    "RolloutEngine": "engine",
    "SamplingSettings": "engine",
    "LearnerRefit": "refit",
    "learner_sequence_logprobs": "refit",
    "max_abs_diff": "refit",
    "refit_spec_for": "refit",
    "RefitError": "bridge.transport",
    "RefitSpec": "bridge.transport",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
