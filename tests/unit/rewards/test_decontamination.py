"""8-gram decontamination: index semantics and the `megatron-tulu decontaminate` command."""

import json

import pytest

from megatron_tulu.commands.decontaminate import main
from megatron_tulu.data.decontaminate import extract_prompt
from megatron_tulu.rewards.ngram_overlap import EvalIndex, tokenize

EVAL_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
PARAPHRASE = (
    "In April a girl called Natalia handed out forty-eight hair clips to friends; in May she handed "
    "out only half that number. Compute the total over both months."
)


def test_tokenization_is_lowercase_word_runs():
    assert tokenize("Don't STOP, 3.5x!") == ["don", "t", "stop", "3", "5x"]


def _index(text: str) -> EvalIndex:
    index = EvalIndex(ngram=8)
    index.add("eval", "e1", text)
    return index


def test_copied_item_is_found_and_paraphrase_is_not():
    index = _index(EVAL_QUESTION)
    copied = index.overlaps("Please solve: " + EVAL_QUESTION.upper() + " Show your work.")
    assert len(copied) == 1 and copied[0].coverage == 1.0
    assert index.overlaps(PARAPHRASE) == []
    assert index.overlaps("Write a poem about the sea and the sky at night, with rhymes.") == []


def test_fifty_percent_boundary_is_exclusive():
    eval_text = " ".join(f"w{i}" for i in range(16))  # 16 tokens
    index = _index(eval_text)
    exactly_half = " ".join(f"w{i}" for i in range(8)) + " other words"  # one 8-gram -> 8/16 tokens
    just_over = " ".join(f"w{i}" for i in range(9)) + " other words"  # two 8-grams -> 9/16 tokens
    assert index.overlaps(exactly_half) == []
    assert [round(o.coverage, 4) for o in index.overlaps(just_over)] == [0.5625]
    assert index.overlaps(exactly_half, threshold=0.49)[0].coverage == 0.5


def test_coverage_must_come_from_a_single_training_instance():
    eval_text = " ".join(f"w{i}" for i in range(16))
    index = _index(eval_text)
    first_half = " ".join(f"w{i}" for i in range(8))
    second_half = " ".join(f"w{i}" for i in range(8, 16))
    assert index.overlaps(first_half) == [] and index.overlaps(second_half) == []
    assert index.overlaps(first_half + " " + second_half)[0].coverage == 1.0


def test_short_eval_items_cannot_match():
    index = _index("too short to match")
    assert index.too_short == 1 and index.overlaps("too short to match") == []


def test_extract_prompt_uses_user_turns_only():
    row = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "ANSWER"},
            {"role": "user", "content": "more"},
        ]
    }
    assert extract_prompt(row, ["messages", "prompt"]) == "hi\nmore"
    assert extract_prompt({"prompt": "p", "completion": "c"}, ["messages", "prompt"]) == "p"
    assert extract_prompt({"completion": "c"}, ["messages", "prompt"]) is None


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_command_end_to_end(tmp_path, capsys):
    eval_rows = [
        {"id": f"gsm-{i}", "question": f"{EVAL_QUESTION} Variant number {i} of the test."} for i in range(10)
    ]
    clean = [
        {"messages": [{"role": "user", "content": f"Unrelated question {i} about painting fences today."}]}
        for i in range(20)
    ]
    leaked = {
        "id": "leak-1",
        "messages": [
            {"role": "user", "content": eval_rows[3]["question"]},
            {"role": "assistant", "content": "72"},
        ],
    }
    train_a = _jsonl(tmp_path / "mix_a.jsonl", clean[:10] + [leaked] + clean[10:])
    train_b = _jsonl(tmp_path / "mix_b.jsonl", [{"prompt": PARAPHRASE}] + clean[:5])
    eval_path = _jsonl(tmp_path / "gsm8k_test.jsonl", eval_rows)
    out = tmp_path / "out"
    assert main(["--train", train_a, train_b, "--eval", eval_path, "--out", str(out)]) == 0

    kept_a = (out / "mix_a.jsonl").read_text().splitlines()
    assert len(kept_a) == 20 and all("leak-1" not in line for line in kept_a)
    assert (out / "mix_a.removed_ids.txt").read_text().split() == ["leak-1"]
    assert len((out / "mix_b.jsonl").read_text().splitlines()) == 6
    assert (out / "mix_b.removed_ids.txt").read_text() == ""

    report = json.loads((out / "report.json").read_text())
    rows = {row["train"]: row for row in report["table"]}
    # The leaked item shares "Natalia ... May?" with every variant (>50% each): all 10 overlap.
    assert rows["mix_a"]["eval_instances_overlapped"] == 10 and rows["mix_a"]["contaminated"]
    assert rows["mix_a"]["train_rows_matched"] == 1
    assert rows["mix_b"]["eval_instances_overlapped"] == 0 and not rows["mix_b"]["contaminated"]
    assert report["contaminated_training_sets"] == ["mix_a"]
    assert "CONTAMINATED" in capsys.readouterr().out


def test_removed_id_falls_back_to_file_and_line(tmp_path):
    eval_path = _jsonl(tmp_path / "eval.jsonl", [{"prompt": EVAL_QUESTION}])
    train = _jsonl(tmp_path / "train.jsonl", [{"prompt": "hello there"}, {"prompt": EVAL_QUESTION}])
    assert main(["--train", train, "--eval", eval_path, "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "train.removed_ids.txt").read_text().split() == [f"{train}:2"]


def test_hf_dataset_on_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": "hello there"}, {"prompt": EVAL_QUESTION}]).save_to_disk(
        str(tmp_path / "hf_train")
    )
    eval_path = _jsonl(tmp_path / "eval.jsonl", [{"prompt": EVAL_QUESTION}])
    assert (
        main(["--train", str(tmp_path / "hf_train"), "--eval", eval_path, "--out", str(tmp_path / "o")]) == 0
    )
    kept = datasets.load_from_disk(str(tmp_path / "o" / "hf_train"))
    assert kept["prompt"] == ["hello there"]


def test_hub_parquet_layout(tmp_path):
    datasets = pytest.importorskip("datasets")
    hub = tmp_path / "tulu-3-sft-mixture"
    (hub / "data").mkdir(parents=True)
    rows = [
        {"id": "a", "messages": [{"role": "user", "content": "hello there"}], "source": "s"},
        {"id": "b", "messages": [{"role": "user", "content": EVAL_QUESTION}], "source": "s"},
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    eval_path = _jsonl(tmp_path / "eval.jsonl", [{"prompt": EVAL_QUESTION}])
    assert main(["--train", str(hub), "--eval", eval_path, "--out", str(tmp_path / "o")]) == 0
    kept = [
        json.loads(line) for line in (tmp_path / "o" / "tulu-3-sft-mixture.jsonl").read_text().splitlines()
    ]
    assert kept == rows[:1]
    assert (tmp_path / "o" / "tulu-3-sft-mixture.removed_ids.txt").read_text().split() == ["b"]


def test_folder_that_is_no_dataset_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    eval_path = _jsonl(tmp_path / "eval.jsonl", [{"prompt": EVAL_QUESTION}])
    assert main(["--train", str(tmp_path / "empty"), "--eval", eval_path, "--out", str(tmp_path / "o")]) == 2
    assert "not a dataset folder" in capsys.readouterr().err


def test_missing_prompt_is_an_error_naming_the_line(tmp_path, capsys):
    eval_path = _jsonl(tmp_path / "eval.jsonl", [{"prompt": EVAL_QUESTION}])
    train = _jsonl(tmp_path / "train.jsonl", [{"prompt": "ok"}, {"text": "no prompt"}])
    assert main(["--train", train, "--eval", eval_path, "--out", str(tmp_path / "o")]) == 2
    assert f"{train}:2" in capsys.readouterr().err
