"""CI's sample of the fault-injection trials (scripts/fault_trials.py runs many more).

A reference SFT run, then: SIGKILL while a checkpoint save is in progress, SIGTERM at a random
instant; each resumed with checkpoint.resume=auto must end with the reference's metrics sequence
and bit-identical weights, leaving no process of its session. One corruption trial must be named by
`checkpoint verify`.
"""

from __future__ import annotations

import importlib.util
import random
import signal
import sys

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.slow]

_spec = importlib.util.spec_from_file_location("fault_trials", REPO / "scripts" / "fault_trials.py")
trials = importlib.util.module_from_spec(_spec)
sys.modules["fault_trials"] = trials  # dataclasses look their module up while the class is built
_spec.loader.exec_module(trials)


def test_sft_kills_resume_exactly_and_leave_no_process(tmp_path):
    kind = trials.KINDS["sft"]
    cache, ref = tmp_path / "cache", tmp_path / "ref"
    rc, seconds, left = trials.run_to_end(
        trials.command(kind, ref, cache, None, "false"), trials._env(kind), tmp_path / "ref.log"
    )
    assert rc == 0 and left == [], (tmp_path / "ref.log").read_text()[-2000:]
    rng = random.Random(7)
    for i, (during_save, sig) in enumerate([(True, signal.SIGKILL), (False, signal.SIGTERM)]):
        work = tmp_path / f"trial{i}"
        work.mkdir()
        row = trials.kill_trial(kind, ref, seconds, work, cache, None, rng, during_save=during_save, sig=sig)
        assert row["orphans_after_kill"] == 0 and row["orphans_after_resume"] == 0, row
        assert row["outcome"] == "resumed exactly", row
    (tmp_path / "corrupt").mkdir()
    assert trials.corruption_trial(ref, tmp_path / "corrupt", rng)["outcome"] == "detected and named"
