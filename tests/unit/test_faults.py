"""Fault-injection specs: ``name``, ``name:step``, and ``@rank`` to aim at one rank of a job."""

from __future__ import annotations

import pytest

from megatron_tulu.engine import faults


@pytest.mark.parametrize(
    "spec, rank, fires",
    [
        ("kill_in_refit:2", "0", [2]),
        ("kill_in_refit:2@1", "1", [2]),
        ("kill_in_refit:2@1", "0", []),  # another rank of the job runs on
        ("kill_in_refit", "3", [1, 2, 3]),
        ("kill_after_step:2", "0", []),  # another crash point
    ],
)
def test_crash_point_specs(monkeypatch, spec, rank, fires):
    fired = []
    monkeypatch.setenv("MEGATRON_TULU_FAULT", spec)
    monkeypatch.setenv("RANK", rank)
    for step in (1, 2, 3):
        monkeypatch.setattr(faults, "_kill_self_and_children", lambda s=step: fired.append(s))
        faults.crash_point("kill_in_refit", step)
    assert fired == fires
