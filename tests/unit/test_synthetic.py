"""Synthetic verifiable tasks: determinism, disjoint splits, correct ground truth, verifiable preferences."""

from __future__ import annotations

import json
import re

import pytest

from megatron_tulu.data.chat_template import validate_messages
from megatron_tulu.data.synthetic import (
    EMBEDDED_DATA_DIR,
    preference_rows,
    rlvr_rows,
    sft_rows,
    split_of,
    write_embedded_datasets,
)
from megatron_tulu.data.synthetic_check import check_ifeval, response_is_correct

BUILDERS = {"sft": sft_rows, "dpo": preference_rows, "rlvr": rlvr_rows}
IFEVAL_IDS = {
    "change_case:english_lowercase": set(),
    "change_case:english_capital": set(),
    "startend:end_checker": {"end_phrase"},
    "punctuation:no_comma": set(),
    "startend:quotation": set(),
    "keywords:existence": {"keywords"},
    "detectable_format:title": set(),
}


def _prompts(kind: str, rows: list[dict]) -> list[str]:
    if kind == "dpo":
        return [r["prompt"] for r in rows]
    return [m["content"] for r in rows for m in r["messages"] if m["role"] == "user"]


def _solve(question: str) -> int:
    """Independent solver for the word-problem templates (does not reuse the generator's arithmetic)."""
    sentences = re.findall(r"[^.?]+[.?]", question)
    count = int(re.search(r"has (\d+) ", sentences[0]).group(1))
    for s in sentences[1:-1]:
        if m := re.search(r"buys (\d+) \w+ with (\d+) .* in each", s):
            count += int(m.group(1)) * int(m.group(2))
        elif "half of them" in s:
            count //= 2
        elif m := re.search(r"(?:buys|finds|gets|wins) (\d+) more", s):
            count += int(m.group(1))
        elif m := re.search(r"(?:gives away|loses|sells|gives) (\d+)", s):
            count -= int(m.group(1))
        else:
            raise AssertionError(f"unparsed sentence {s!r}")
    assert sentences[-1].startswith(" How many")
    return count


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_deterministic(kind):
    build = BUILDERS[kind]
    assert build(50, seed=7) == build(50, seed=7)
    assert build(50, seed=7) != build(50, seed=8)
    # A longer run extends a shorter one, so changing the size keeps the existing rows.
    assert build(80, seed=7)[:50] == build(50, seed=7)


def test_splits_disjoint_and_unique():
    train = {k: _prompts(k, b(600, seed=0, split="train")) for k, b in BUILDERS.items()}
    held = {k: _prompts(k, b(200, seed=0, split="heldout")) for k, b in BUILDERS.items()}
    all_train = set().union(*map(set, train.values()))
    all_held = set().union(*map(set, held.values()))
    assert not all_train & all_held
    assert all(split_of(p) == "heldout" for p in all_held)
    assert all(split_of(p) == "train" for p in all_train)
    for kind in BUILDERS:
        assert len(set(train[kind])) == len(train[kind]), kind
        assert len(set(held[kind])) == len(held[kind]), kind
    with pytest.raises(ValueError):
        sft_rows(1, split="test")


def test_sft_rows_shape():
    rows = sft_rows(400, seed=0)
    assert len({r["id"] for r in rows}) == 400
    assert {r["dataset"] for r in rows} == {"gsm8k", "ifeval"}
    assert any(r["messages"][0]["role"] == "system" for r in rows)
    assert any(sum(m["role"] == "assistant" for m in r["messages"]) == 2 for r in rows)
    for row in rows:
        validate_messages(row["messages"], require_assistant=True)
        assert row["messages"][-1]["role"] == "assistant"
        # Short replies: a 5M model must learn them on CPU.
        assert all(len(m["content"]) < 400 for m in row["messages"])


def test_sft_replies_are_correct():
    for row in sft_rows(300, seed=1):
        msgs = row["messages"]
        for user, reply in zip(msgs, msgs[1:]):
            if user["role"] != "user":
                continue
            if "How many" in user["content"]:
                assert reply["content"].endswith(
                    (f"#### {_solve(user['content'])}", f"is {_solve(user['content'])}.")
                )


def test_preference_pairs_are_verifiable():
    rows = preference_rows(400, seed=0)
    for row in rows:
        assert set(row) == {"id", "prompt", "chosen", "rejected", "dataset"}
        chosen, rejected = row["chosen"], row["rejected"]
        assert chosen[0] == rejected[0] == {"role": "user", "content": row["prompt"]}
        assert chosen[1]["role"] == rejected[1]["role"] == "assistant"
        assert chosen[1]["content"] != rejected[1]["content"]
        if row["dataset"] == "gsm8k":
            gt = str(_solve(row["prompt"]))
            assert response_is_correct("gsm8k", chosen[1]["content"], gt)
            assert not response_is_correct("gsm8k", rejected[1]["content"], gt)
    assert {r["dataset"] for r in rows} == {"gsm8k", "ifeval"}


def test_preference_ifeval_pairs_split_on_the_constraint():
    """chosen satisfies every constraint the prompt states; rejected breaks at least one."""
    rlvr = {r["messages"][0]["content"]: r["ground_truth"] for r in rlvr_rows(1000, seed=0)}
    seen = 0
    for row in preference_rows(1000, seed=0):
        if row["dataset"] != "ifeval" or row["prompt"] not in rlvr:
            continue
        seen += 1
        gt = rlvr[row["prompt"]]
        assert response_is_correct("ifeval", row["chosen"][1]["content"], gt)
        assert not response_is_correct("ifeval", row["rejected"][1]["content"], gt)
    assert seen > 0


def test_rlvr_ground_truth():
    rows = rlvr_rows(500, seed=0)
    kinds = {r["dataset"] for r in rows}
    assert kinds == {"gsm8k", "ifeval"}
    for row in rows:
        assert set(row) == {"id", "messages", "ground_truth", "dataset"}
        assert isinstance(row["ground_truth"], str)
        (msg,) = row["messages"]
        assert msg["role"] == "user"
        if row["dataset"] == "gsm8k":
            assert row["ground_truth"] == str(_solve(msg["content"]))
            assert int(row["ground_truth"]) >= 0
        else:
            gt = json.loads(row["ground_truth"])
            assert set(gt) == {"instruction_id_list", "kwargs"}
            assert 1 <= len(gt["instruction_id_list"]) == len(gt["kwargs"]) <= 2
            for iid, kwargs in zip(gt["instruction_id_list"], gt["kwargs"]):
                assert set(kwargs) == IFEVAL_IDS[iid]
                if iid == "keywords:existence":
                    assert isinstance(kwargs["keywords"], list) and kwargs["keywords"][0] in msg["content"]
                if iid == "startend:end_checker":
                    assert kwargs["end_phrase"] in msg["content"]


def test_checkers():
    assert check_ifeval("all lower here.", ["change_case:english_lowercase"], [{}])
    assert not check_ifeval("Not lower.", ["change_case:english_lowercase"], [{}])
    assert check_ifeval('"quoted. Any other questions?"', ["startend:end_checker", "startend:quotation"],
                        [{"end_phrase": "Any other questions?"}, {}])  # fmt: skip
    assert not check_ifeval("a, b", ["punctuation:no_comma"], [{}])
    assert check_ifeval("<<Title>>\nbody", ["detectable_format:title"], [{}])
    assert response_is_correct("gsm8k", "5 + 9 = 14.\n#### 14", "14")
    assert response_is_correct("gsm8k", "So the total is 1,200. The answer is 1,200.", "1200")
    assert not response_is_correct("gsm8k", "#### 15", "14")


def test_shipped_files_match_generator(tmp_path):
    paths = write_embedded_datasets(tmp_path)
    assert set(paths) == {"sft", "dpo", "rlvr", "sft_heldout", "dpo_heldout", "rlvr_heldout"}
    counts = {
        "sft": 2000,
        "dpo": 1000,
        "rlvr": 1000,
        "sft_heldout": 200,
        "dpo_heldout": 200,
        "rlvr_heldout": 500,
    }
    total = 0
    for name, path in paths.items():
        shipped = EMBEDDED_DATA_DIR / path.name
        assert shipped.read_bytes() == path.read_bytes(), f"{shipped} is stale: regenerate it"
        assert sum(1 for _ in open(shipped, encoding="utf-8")) == counts[name]
        total += shipped.stat().st_size
    assert total < 3_000_000


def test_case_rules_check_the_case_only():
    """The one place the checker departs from rewards.ifeval: IFEval's language detection reads
    some all-capital English replies the generator ships as chosen as another language."""
    from megatron_tulu.rewards.ifeval import verify_ifeval

    reply, ids = "A LIBRARY IS A QUIET PLACE FULL OF BOOKS.", ["change_case:english_capital"]
    assert check_ifeval(reply, ids, [{}])
    assert verify_ifeval(reply, {"instruction_id_list": ids, "kwargs": [{}]}, reward="all").score == 0.0
    assert not check_ifeval(reply.lower(), ids, [{}])


def test_synthetic_data_command(tmp_path, capsys):
    from megatron_tulu.commands.synthetic_data import main

    args = ["--n-sft", "3", "--n-dpo", "2", "--n-rlvr", "4", "--n-heldout", "1", "--n-rlvr-heldout", "1"]
    assert main(["--out", str(tmp_path), *args]) == 0
    assert "rlvr_heldout: " in capsys.readouterr().out
    lines = {p.name: len(p.read_text().splitlines()) for p in tmp_path.iterdir()}
    assert lines == {
        "sft.jsonl": 3,
        "dpo.jsonl": 2,
        "rlvr.jsonl": 4,
        "sft_heldout.jsonl": 1,
        "dpo_heldout.jsonl": 1,
        "rlvr_heldout.jsonl": 1,
    }
    assert (tmp_path / "sft.jsonl").read_text().splitlines() == [
        json.dumps(r, ensure_ascii=False) for r in sft_rows(3)
    ]
