"""A vLLM *general plugin* (entry point group ``vllm.general_plugins``, loaded by vLLM in each of its
processes): the engine core that a megatron-tulu process starts dies with that process.

vLLM spawns its engine core (no fork hook runs in it) and the core does not exit when the process
that started it is SIGKILLed; its workers follow the core through their death pipes. So a trainer
killed with -9 (OOM killer, preemption) left a core and its workers holding memory. This plugin
asks the kernel for SIGKILL on parent death (``prctl(PR_SET_PDEATHSIG)``) in the one process whose
parent is the starting process named by ``MEGATRON_TULU_ENGINE_OWNER``, which
:class:`~megatron_tulu.rollout.engine.RolloutEngine` sets; other vLLM users are not affected.
"""

from __future__ import annotations

import os
import signal

OWNER_ENV = "MEGATRON_TULU_ENGINE_OWNER"


def die_with_owner() -> None:
    owner = os.environ.get(OWNER_ENV, "")
    if owner.isdigit() and os.getppid() == int(owner):
        from megatron_tulu.engine.hygiene import die_with_parent

        die_with_parent(signal.SIGKILL, expected_parent=int(owner))
