"""Benchmark readers on the shipped fixtures, prompt templates, scoring with the real verifiers
(equal to `megatron-tulu verify` on the same generations), bad files, contamination report."""

from __future__ import annotations

import json

import pytest

from megatron_tulu.commands.eval import main as eval_main
from megatron_tulu.commands.verify import main as verify_main
from megatron_tulu.data.chat_template import render_tulu
from megatron_tulu.evaluation import EvalItem, build_messages, encode_items, load_tasks, read_task_file
from megatron_tulu.evaluation.contamination import contamination_report
from megatron_tulu.evaluation.metrics import task_metrics
from megatron_tulu.evaluation.runner import EvalRun, score_texts
from megatron_tulu.evaluation.tasks import SHIPPED, TaskFileError, parse_task_spec

# a response that follows each shipped IFEval item, in fixture order
IFEVAL_GOOD = [
    "Hello neighbor. May I borrow your ladder this weekend? Thank you.",
    "the streets shine with rain and people hurry home under grey umbrellas.",
    " ".join(["Study a little every day and ask questions early."] * 5),
    "* Save money.\n* Eat healthier.\n* Cook for friends.",
    "This steel bottle keeps your hydration on track all day.",
    "Thank you for a wonderful year. Is there anything else I can help with?",
    "<<Song of the Sea>>\nWaves roll in and out.\nP.S. I love the sea.",
    "Pedals turn gears that push the bike forward.",
    "OUR BAKERY: WHERE THE BREAD IS WARM AND THE PEOPLE ARE KIND.",
    '"Walking improves health and mood."',
]


@pytest.fixture(scope="module")
def tasks():
    return load_tasks("gsm8k,math,ifeval")


def _good(item: EvalItem, k: int) -> str:
    if item.dataset == "gsm8k":
        return f"Adding it up, the answer is {item.ground_truth}."
    if item.dataset == "math":
        return f"So the result is $\\boxed{{{item.ground_truth}}}$."
    return IFEVAL_GOOD[k]


def test_shipped_fixtures_read_in_their_public_formats(tasks):
    assert {name: len(items) for name, items in tasks.items()} == {"gsm8k": 10, "math": 10, "ifeval": 10}
    gsm = tasks["gsm8k"]
    assert gsm[0].ground_truth == "32" and gsm[6].ground_truth == "1500" and gsm[9].ground_truth == "-5"
    rows = [json.loads(line) for line in SHIPPED["math"].read_text().splitlines()]
    assert "answer" not in rows[0] and tasks["math"][0].ground_truth == "7"  # from \boxed{} in solution
    assert rows[8]["answer"] == "10" and "boxed" not in rows[8]["solution"]  # MATH-500 style: answer field
    assert tasks["math"][2].ground_truth == "\\frac{3}{4}"
    assert tasks["ifeval"][6].ground_truth["instruction_id_list"] == [
        "detectable_format:title",
        "detectable_content:postscript",
    ]


def test_fixture_answers_verify_as_correct_and_wrong_ones_do_not(tasks):
    items = [
        EvalItem(**{**vars(it), "index": i}) for i, it in enumerate(it for g in tasks.values() for it in g)
    ]
    good = [(i, 0, _good(it, i % 10), "stop", 5) for i, it in enumerate(items)]
    bad = [(i, 1, "", "stop", 0) for i in range(len(items))]
    records = score_texts(items, good + bad, workers=2)
    assert [r["location"] for r in records if r["sample"] == 0 and not r["correct"]] == []
    assert [r["location"] for r in records if r["sample"] == 1 and r["correct"]] == []
    math = [r for r in records if r["dataset"] == "math"]
    assert {r["subject"] for r in math} == {
        "Prealgebra",
        "Algebra",
        "Number Theory",
        "Counting & Probability",
        "Geometry",
    }
    assert task_metrics(math)["macro_accuracy"] == pytest.approx(
        0.5
    )  # every subject: 1 right, 1 wrong sample


def test_prompt_templates_follow_tulu3_settings(tasks):
    gsm, math, ife = tasks["gsm8k"][0], tasks["math"][0], tasks["ifeval"][0]
    assert len(build_messages(gsm)) == 2 * 8 + 1 and len(build_messages(math)) == 2 * 4 + 1
    assert build_messages(ife) == [{"role": "user", "content": ife.question}]
    assert len(build_messages(gsm, style="zero-shot")) == 1 and len(build_messages(gsm, shots=2)) == 5
    assert "Final Answer: The final answer is" in build_messages(math)[1]["content"]
    with pytest.raises(ValueError, match="between 0 and 8"):
        build_messages(gsm, shots=9)


def test_rlvr_rows_get_exactly_the_trainers_prompt_ids(tmp_path):
    from megatron_tulu.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    path = tmp_path / "heldout.jsonl"
    rows = [
        {
            "messages": [{"role": "user", "content": "Tom has 3 cards and finds 4. How many now?"}],
            "ground_truth": "7",
            "dataset": "gsm8k",
        },
        {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
            "ground_truth": json.dumps({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}),
            "dataset": "ifeval",
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_task_file(path, "heldout")
    ids = encode_items(items, tok, chat_template="tulu", max_prompt_len=8)
    for row, got in zip(rows, ids):
        text = render_tulu(row["messages"], add_generation_prompt=True)
        assert got == tok(text, add_special_tokens=False)["input_ids"][-8:]
    plain = encode_items(items, tok, chat_template="none")
    assert tok.decode(plain[1]) == "Be brief.\n\nSay hi."


def test_scores_equal_megatron_tulu_verify_on_the_same_generations(tasks, tmp_path, capsys):
    """Saved generations (right, wrong, empty, truncated, loose-only) scored by the evaluation and by
    `megatron-tulu verify`: per-dataset accuracy, IFEval prompt/instruction levels strict and loose."""
    items = [it for group in tasks.values() for it in group]
    samples = []
    for i, it in enumerate(items):
        k = i % 10
        samples.append((i, 0, _good(it, k) if k % 2 == 0 else "no idea", "stop", 4))
        samples.append((i, 1, "", "stop", 0))  # emitted nothing
        samples.append((i, 2, _good(it, k) + " and more and more", "length", 64))  # never stopped
    local = [EvalItem(**{**vars(it), "index": i}) for i, it in enumerate(items)]
    # item 0 (a GSM8K item) becomes IFEval no-comma, answered with a loose-only pass: 9 GSM8K items left
    local[0] = EvalItem(**{**vars(tasks["ifeval"][0]), "index": 0})
    samples[0] = (0, 0, "Sure, here it is:\n" + IFEVAL_GOOD[0], "stop", 9)  # follows only when loose
    records = score_texts(local, samples, workers=2)
    for r, (i, *_rest) in zip(records, samples):
        r["task"] = local[i].dataset
    run = EvalRun(records)
    gens = tmp_path / "gens.jsonl"
    gens.write_text(
        "".join(
            json.dumps({k: r[k] for k in ("prompt", "response", "ground_truth", "dataset", "finish_reason")})
            + "\n"
            for r in records
        )
    )
    per_mode = {}
    for mode in ("strict", "loose"):
        out = tmp_path / f"scored_{mode}.jsonl"
        assert (
            verify_main(["--input", str(gens), "--output", str(out), "--ifeval-mode", mode, "--workers", "2"])
            == 0
        )
        per_mode[mode] = [json.loads(line) for line in out.read_text().splitlines()]
    capsys.readouterr()
    metrics = {t: task_metrics(run.task_records(t)) for t in ("gsm8k", "math", "ifeval")}
    for dataset in ("gsm8k", "math"):
        rows = [r for r in per_mode["strict"] if r["dataset"] == dataset]
        assert metrics[dataset]["accuracy"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))
        assert metrics[dataset]["mean_reward"] == pytest.approx(sum(r["reward"] for r in rows) / len(rows))
    for mode in ("strict", "loose"):
        rows = [r for r in per_mode[mode] if r["dataset"] == "ifeval"]
        followed = [i["followed"] for r in rows for i in r["verification"]["instructions"]]
        assert metrics["ifeval"][f"prompt_level_{mode}"] == pytest.approx(
            sum(r["score"] >= 1.0 for r in rows if r["verification"]["all_followed"]) / len(rows)
        )
        assert metrics["ifeval"][f"instruction_level_{mode}"] == pytest.approx(sum(followed) / len(followed))
    assert (
        metrics["ifeval"]["prompt_level_loose"] > metrics["ifeval"]["prompt_level_strict"]
    )  # the "Sure," row
    assert metrics["ifeval"]["accuracy"] == pytest.approx(
        metrics["ifeval"]["prompt_level_loose"]
    )  # Tülu's IFEval headline
    assert metrics["gsm8k"]["empty_responses"] == 9 and metrics["gsm8k"]["no_eos_share"] == pytest.approx(
        1 / 3
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"question": "q", "answer": "#### 1"}\n\n{"question": "q2", "answer": "4"}\n',
            ":3: GSM8K field 'answer' has no",
        ),
        ('{"question": "q", "answer": "#### 1"}\n{"question": "q2", "answer": \n', ":2: invalid JSON"),
        ('{"problem": "p", "solution": "no box here"}\n', ":1: MATH field 'solution' has no complete"),
        (
            '{"key": 1, "prompt": "p", "instruction_id_list": ["nope:nope"], "kwargs": [{}]}\n',
            ":1: IFEval row: unknown",
        ),
        ('{"text": "hello"}\n', ":1: not a known benchmark row"),
        (
            '{"messages": [{"role": "user", "content": "q"}], "ground_truth": "1", "dataset": "chess"}\n',
            ":1: no verifier",
        ),
    ],
)
def test_a_bad_task_file_is_one_error_line_naming_file_and_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TaskFileError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_task_file(path, "bad")
    assert eval_main(["--model", str(tmp_path), "--tasks", f"bad={path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_task_spec_errors_are_clear():
    assert [t[0] for t in parse_task_spec("gsm8k, mine=/x.jsonl")] == ["gsm8k", "mine"]
    with pytest.raises(TaskFileError, match="no shipped fixture"):
        parse_task_spec("gsm9k")
    with pytest.raises(TaskFileError, match="appears twice"):
        parse_task_spec("gsm8k,gsm8k")


def test_contamination_report_finds_the_planted_items(tasks, tmp_path):
    gsm, ife, math = tasks["gsm8k"], tasks["ifeval"], tasks["math"]
    planted_gsm, planted_if = [1, 4, 7], [2]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Solve this, showing work: {gsm[i].question} Thanks!"},
                {"role": "assistant", "content": "ok"},
            ]
        }
        for i in planted_gsm
    ]
    rows.append({"prompt": ife[planted_if[0]].question})
    rows.append(
        {"messages": [{"role": "user", "content": "A school orders 5 boxes of crayons for art."}]}
    )  # < 8 shared
    rows += [
        {"question": f"What is {k} plus {k + 1} when counted by a careful child today?"} for k in range(5)
    ]
    train = tmp_path / "train_mix.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clean = tmp_path / "other.jsonl"
    clean.write_text(json.dumps({"prompt": "Completely unrelated text about the weather in spring."}) + "\n")
    report = contamination_report(tasks, [str(train), str(clean)])
    mix = report["train"]["train_mix"]["tasks"]
    assert mix["gsm8k"]["items"] == planted_gsm and mix["gsm8k"]["share"] == pytest.approx(0.3)
    assert mix["ifeval"]["items"] == planted_if and mix["math"]["items"] == []
    assert report["train"]["train_mix"]["rows"] == len(rows)
    assert all(t["contaminated"] == 0 for t in report["train"]["other"]["tasks"].values())
    assert report["contaminated"] == {"gsm8k": planted_gsm, "math": [], "ifeval": planted_if}
    assert len(math) == 10


def test_rl_scoring_options_reach_the_verifiers(tasks):
    """The trainer's gsm8k rule reaches the verifier: Tülu 3's release regex drops the sign of "-5"."""
    item = EvalItem(**{**vars(tasks["gsm8k"][9]), "index": 0})
    assert item.ground_truth == "-5"
    sample = [(0, 0, "The temperature is -5 degrees.", "stop", 6)]
    numeric = score_texts([item], sample, workers=1)
    reference = score_texts([item], sample, workers=1, verifier_options={"gsm8k": {"rule": "tulu3"}})
    assert numeric[0]["correct"] and not reference[0]["correct"]
