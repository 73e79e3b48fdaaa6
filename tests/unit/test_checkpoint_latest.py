"""Only complete checkpoints are ever picked as latest."""

import json

from megatron_tulu.engine.checkpoint_format import META, find_latest


def _complete(root, name):
    (root / name).mkdir(parents=True)
    (root / name / META).write_text(json.dumps({"step": int(name.split("_")[1])}))


def test_partial_and_unmarked_dirs_are_ignored(tmp_path):
    _complete(tmp_path, "step_0000010")
    (tmp_path / "step_0000020.partial").mkdir()  # interrupted save
    (tmp_path / "step_0000030").mkdir()  # shards but no metadata: not complete
    assert find_latest(tmp_path) == tmp_path / "step_0000010"


def test_latest_pointer_wins_and_stale_pointer_falls_back(tmp_path):
    _complete(tmp_path, "step_0000010")
    _complete(tmp_path, "step_0000020")
    (tmp_path / "latest").write_text("step_0000010\n")
    assert find_latest(tmp_path) == tmp_path / "step_0000010"
    (tmp_path / "latest").write_text("step_0000099\n")
    assert find_latest(tmp_path) == tmp_path / "step_0000020"
    assert find_latest(tmp_path / "missing") is None
