"""CI sample of scripts/rl_checkpoint_kills.py: SIGKILL while the RL checkpoint (policy + value +
optimizers + pending batch) is written; latest always verifies and loads. The full set: --tries 20+."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.slow]


def test_kills_during_rl_checkpoint_saves_leave_a_loadable_latest(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "rl_checkpoint_kills", REPO / "scripts" / "rl_checkpoint_kills.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--tries", "2", "--seed", "3", "--out", str(tmp_path)]) == 0
