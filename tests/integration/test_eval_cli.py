"""`megatron-tulu eval` end to end on the embedded tiny model (random weights: it rarely answers
right and never stops, which the evaluation must score and count) with a real vLLM CPU engine and
the verifiers in their worker processes.

* sampled run (K=4): accuracy equals `megatron-tulu verify` on the saved generations; pass@k equals
  brute-force enumeration over the saved samples; the contamination report finds the planted items
  and the clean subset leaves them out.
* greedy: engine TP1 and TP2 give identical outputs (fp32 CPU), and a Megatron checkpoint
  (exported on the fly) gives the outputs of the HF directory it came from.
"""

from __future__ import annotations

import itertools
import json
import sys

import pytest

from megatron_tulu.evaluation.tasks import SHIPPED
from tests.helpers import VLLM_QUIET_ENV, quiet_env, run_logged

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ENV = quiet_env(**VLLM_QUIET_ENV, TOKENIZERS_PARALLELISM="false")


def _cli(*args: str, log) -> int:
    return run_logged([sys.executable, "-m", "megatron_tulu.cli", *args], log, ENV, 900)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    assert _cli("build-tiny", "--out", str(root / "tiny"), log=root / "build.log") == 0
    return root


def _brute_pass(correct: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_sampled_eval_equals_verify_passk_brute_force_and_planted_contamination(tiny, tmp_path):
    gsm = [json.loads(line) for line in SHIPPED["gsm8k"].read_text().splitlines()]
    ife = [json.loads(line) for line in SHIPPED["ifeval"].read_text().splitlines()]
    train = tmp_path / "train.jsonl"
    planted = [
        {"messages": [{"role": "user", "content": f"Please help: {gsm[0]['question']}"}]},
        {"messages": [{"role": "user", "content": gsm[2]["question"]}]},
        {"prompt": ife[1]["prompt"]},
        {"prompt": "An unrelated training prompt about painting a fence in the summer sun."},
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in planted))
    custom = tmp_path / "nocomma.jsonl"  # RLVR format; random text often has no comma
    gt = json.dumps({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
    custom.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [{"role": "user", "content": f"Say {w} without commas."}],
                    "ground_truth": gt,
                    "dataset": "ifeval",
                }
            )
            + "\n"
            for w in ("hello", "goodbye", "thanks")
        )
    )
    out = tmp_path / "out"
    rc = _cli(
        "eval", "--model", str(tiny / "tiny"), "--tasks", f"gsm8k,math,ifeval,nocomma={custom}",
        "--samples", "4", "--shots", "0", "--n", "4", "--temperature", "1.0", "--max-new-tokens", "12",
        "--workers", "2", "--decontaminate-against", str(train), "--out", str(out), "--no-progress",
        log=tmp_path / "eval.log",
    )  # fmt: skip
    log = (tmp_path / "eval.log").read_text()
    assert rc == 0, log[-4000:]
    assert "pass@4" in log and "maj@" in log and "prompt_level_loose" in log
    results = json.loads((out / "results.json").read_text())
    tasks = results["models"]["tiny"]["tasks"]
    assert {t: tasks[t]["n"] for t in tasks} == {"gsm8k": 4, "math": 4, "ifeval": 4, "nocomma": 3}
    assert (out / "comparison.png").stat().st_size > 0

    # pass@k from the saved samples, by brute force over k-subsets
    for name, task in tasks.items():
        by_item: dict[int, list[bool]] = {}
        for s in task["samples"]:
            by_item.setdefault(s["index"], []).append(bool(s["correct"]))
        assert all(len(v) == 4 for v in by_item.values())
        for k in (1, 2, 4):
            brute = sum(_brute_pass(v, k) for v in by_item.values()) / len(by_item)
            assert task[f"pass@{k}"] == pytest.approx(brute, abs=1e-12), (name, k)
        assert task["no_eos_share"] == pytest.approx(
            sum(s["finish_reason"] != "stop" for s in task["samples"]) / len(task["samples"])
        )
    assert 0 < tasks["nocomma"]["pass@4"]  # some random samples have no comma: not a vacuous check

    # the same saved generations through `megatron-tulu verify`
    gens = out / "tiny" / "generations.jsonl"
    scored = {}
    for mode in ("strict", "loose"):
        dest = tmp_path / f"verified_{mode}.jsonl"
        args = [
            "verify",
            "--input",
            str(gens),
            "--output",
            str(dest),
            "--ifeval-mode",
            mode,
            "--workers",
            "2",
        ]
        assert _cli(*args, log=tmp_path / f"verify_{mode}.log") == 0
        scored[mode] = [json.loads(line) for line in dest.read_text().splitlines()]
    rows = [json.loads(line) for line in gens.read_text().splitlines()]
    for name, mode in (("gsm8k", "strict"), ("math", "strict"), ("ifeval", "loose"), ("nocomma", "strict")):
        mine = [v for r, v in zip(rows, scored[mode]) if r["task"] == name]
        assert tasks[name]["accuracy"] == pytest.approx(sum(v["score"] >= 1.0 for v in mine) / len(mine)), (
            name
        )
        assert tasks[name]["mean_reward"] == pytest.approx(sum(v["reward"] for v in mine) / len(mine)), name
    for mode in ("strict", "loose"):
        mine = [v for r, v in zip(rows, scored[mode]) if r["task"] == "ifeval"]
        followed = [i["followed"] for v in mine for i in v["verification"]["instructions"]]
        assert tasks["ifeval"][f"instruction_level_{mode}"] == pytest.approx(sum(followed) / len(followed))

    # planted items: GSM8K items 0 and 2, IFEval item 1 (of the first 4)
    train_report = results["contamination"]["train"]["train"]["tasks"]
    assert train_report["gsm8k"]["items"] == [0, 2] and train_report["gsm8k"]["share"] == pytest.approx(0.5)
    assert train_report["ifeval"]["items"] == [1] and train_report["math"]["items"] == []
    assert tasks["gsm8k"]["clean"]["n"] == 2 and tasks["math"]["clean"]["n"] == 4
    clean = [s for s in tasks["gsm8k"]["samples"] if s["index"] in (1, 3)]
    assert tasks["gsm8k"]["clean"]["accuracy"] == pytest.approx(sum(s["correct"] for s in clean) / len(clean))
    assert "contamination" in log


def test_greedy_tp1_equals_tp2_and_megatron_checkpoint_equals_its_hf_source(tiny, tmp_path):
    ckpt = tmp_path / "mcore"
    assert (
        _cli("convert", "hf-to-mcore", "--hf", str(tiny / "tiny"), "--out", str(ckpt), log=tmp_path / "c.log")
        == 0
    )
    common = [
        "--tasks",
        "gsm8k,ifeval",
        "--samples",
        "3",
        "--max-new-tokens",
        "16",
        "--workers",
        "2",
        "--no-progress",
    ]
    rc = _cli("eval", "--model", str(tiny / "tiny"), "--engine-tp", "1", "--out", str(tmp_path / "tp1"), *common,
              log=tmp_path / "tp1.log")  # fmt: skip
    assert rc == 0, (tmp_path / "tp1.log").read_text()[-4000:]
    rc = _cli("eval", "--model", str(tiny / "tiny"), "--model", str(ckpt), "--engine-tp", "2",
              "--out", str(tmp_path / "tp2"), *common, log=tmp_path / "tp2.log")  # fmt: skip
    assert rc == 0, (tmp_path / "tp2.log").read_text()[-4000:]
    tp1 = json.loads((tmp_path / "tp1" / "results.json").read_text())["models"]
    tp2 = json.loads((tmp_path / "tp2" / "results.json").read_text())["models"]
    assert list(tp2) == ["tiny", "mcore"]
    assert json.loads((tmp_path / "tp2" / "results.json").read_text())["settings"]["engine_tp"] == 2

    def outputs(model):
        return [
            (t, s["index"], s["response"], s["finish_reason"])
            for t in model["tasks"]
            for s in model["tasks"][t]["samples"]
        ]

    assert len(outputs(tp1["tiny"])) == 6
    assert outputs(tp1["tiny"]) == outputs(tp2["tiny"])  # engine TP1 == TP2, greedy, fp32
    assert outputs(tp2["mcore"]) == outputs(tp2["tiny"])  # checkpoint exported on the fly == its HF source
    for task in ("gsm8k", "ifeval"):
        assert tp1["tiny"]["tasks"][task]["accuracy"] == tp2["mcore"]["tasks"][task]["accuracy"]
    assert (tmp_path / "tp2" / "comparison.png").stat().st_size > 0
