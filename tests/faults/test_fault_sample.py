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


def _four_steps(cmd: list[str]) -> list[str]:
    return [("train.train_iters=4" if a.startswith("train.train_iters=") else a) for a in cmd]


def test_damaged_latest_checkpoint_refused_by_true_and_skipped_by_auto(tmp_path):
    """Case 5: a flipped byte in the newest checkpoint no longer loads silently. resume=true stops
    with an error naming the file; resume=auto falls back to the older intact one, says so, and
    finishes with the same final weights as the clean run."""
    import shutil

    kind = trials.KINDS["sft"]
    cache, ref = tmp_path / "cache", tmp_path / "ref"
    rc, _, _ = trials.run_to_end(
        _four_steps(trials.command(kind, ref, cache, None, "false")),
        trials._env(kind),
        tmp_path / "ref.log",
    )
    assert rc == 0, (tmp_path / "ref.log").read_text()[-2000:]
    damaged = tmp_path / "damaged"
    shutil.copytree(ref / "checkpoints", damaged)
    # The final save is step 4; step 2 is the older intact one, from which auto redoes steps 3-4.
    victim = sorted((damaged / "step_0000004").glob("*.distcp"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    args = [f"checkpoint.load_dir={damaged}"]

    out_true = tmp_path / "resume_true"
    rc, _, left = trials.run_to_end(
        _four_steps(trials.command(kind, out_true, cache, None, "true")) + args,
        trials._env(kind),
        tmp_path / "true.log",
    )
    text = (tmp_path / "true.log").read_text()
    assert rc == 2 and left == [], text[-2000:]
    assert "error:" in text and str(victim) in text and "Traceback" not in text

    out_auto = tmp_path / "resume_auto"
    rc, _, left = trials.run_to_end(
        _four_steps(trials.command(kind, out_auto, cache, None, "auto")) + args,
        trials._env(kind),
        tmp_path / "auto.log",
    )
    text = (tmp_path / "auto.log").read_text()
    assert rc == 0 and left == [], text[-2000:]
    assert "falling back to" in text and "step_0000002" in text and str(victim) in text
    assert trials.same_weights(out_auto / kind.weights, ref / kind.weights)
