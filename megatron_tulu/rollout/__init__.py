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

from megatron_tulu import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "engine": ("Rollout", "RolloutEngine", "SamplingSettings"),
        "refit": ("LearnerRefit", "learner_sequence_logprobs", "max_abs_diff", "refit_spec_for"),
        "bridge.transport": ("RefitError", "RefitSpec"),
    },
)
