"""Prompt templates for evaluation, following the settings Tülu 3 evaluated with (paper Tab. 24).

* GSM8K: 8-shot chain of thought, each exemplar a separate chat turn ("multiturn ICL"); the
  answer is the last number of the response.
* MATH: 4-shot chain of thought in the Minerva format (the answer closes with "Final Answer: The
  final answer is X. I hope it is correct."), multiturn; scored by the "flex" verifier.
* IFEval: 0-shot, the prompt as written.
* RLVR-format rows: the conversation as written (that is how RLVR trains and how the pipeline's
  held-out scoring prompts), never with exemplars.

The exemplars below are written for this project in the format of Wei et al. (GSM8K) and
Lewkowycz et al. (MATH); they are not the published exemplar texts, so absolute scores of a
large model can differ slightly from OLMES'. ``style="zero-shot"`` drops the exemplars (and keeps
the question format); ``shots`` overrides the count.

Chat templates: ``tulu`` (the Tülu 3 template, as training used), ``none`` (plain text: exemplars
and question separated by blank lines, for base models), ``model`` (the ``chat_template`` in the
model's ``tokenizer_config.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from megatron_tulu.data.chat_template import render_tulu
from megatron_tulu.evaluation.tasks import EvalItem

STYLES = ("tulu3", "zero-shot")
CHAT_TEMPLATES = ("tulu", "none", "model")
TULU3_SHOTS = {"gsm8k": 8, "math": 4, "ifeval": 0, "rlvr": 0}

# (question, chain of thought, final number)
GSM8K_EXEMPLARS: tuple[tuple[str, str, str], ...] = (
    (
        "A baker fills 6 trays with 12 rolls each and sells 50 rolls by noon. How many rolls are left?",
        "The baker made 6 * 12 = 72 rolls. After selling 50, 72 - 50 = 22 rolls are left.",
        "22",
    ),
    (
        "Mia reads 15 pages a day for 4 days and then 20 pages on the fifth day. How many pages did she read?",
        "In the first 4 days she read 15 * 4 = 60 pages. Adding the fifth day gives 60 + 20 = 80 pages.",
        "80",
    ),
    (
        "A bike costs $240. Sam has saved $95 and earns $25 a week. How many weeks until he can buy it?",
        "Sam still needs 240 - 95 = 145 dollars. At 25 dollars a week, 145 / 25 = 5.8, so he needs 6 weeks.",
        "6",
    ),
    (
        "There are 3 buses with 42 seats each. 117 students get on. How many seats are empty?",
        "The buses have 3 * 42 = 126 seats. With 117 students seated, 126 - 117 = 9 seats are empty.",
        "9",
    ),
    (
        "Lena buys 4 notebooks at $3 each and 2 pens at $1.50 each. She pays with a $20 bill. "
        "How much change does she get?",
        "The notebooks cost 4 * 3 = 12 dollars and the pens 2 * 1.50 = 3 dollars, 15 dollars in all. "
        "Her change is 20 - 15 = 5 dollars.",
        "5",
    ),
    (
        "A garden has 8 rows of 9 tulips. A third of the tulips are red. How many tulips are not red?",
        "There are 8 * 9 = 72 tulips. A third is 72 / 3 = 24 red tulips, so 72 - 24 = 48 are not red.",
        "48",
    ),
    (
        "Omar runs 5 km on weekdays and 8 km on each weekend day. How far does he run in a week?",
        "On the 5 weekdays he runs 5 * 5 = 25 km; on the 2 weekend days 2 * 8 = 16 km. In all 25 + 16 = 41 km.",
        "41",
    ),
    (
        "A tank holds 500 liters and is 40% full. How many liters must be added to fill it?",
        "The tank has 500 * 0.4 = 200 liters in it, so 500 - 200 = 300 liters must be added.",
        "300",
    ),
)

# (problem, solution, final answer)
MATH_EXEMPLARS: tuple[tuple[str, str, str], ...] = (
    (
        "Find the value of $x$ such that $3x - 7 = 11$.",
        "Adding 7 to both sides gives $3x = 18$, and dividing by 3 gives $x = 6$.",
        "6",
    ),
    (
        "What is the sum of the roots of $x^2 - 5x + 6 = 0$?",
        "The polynomial factors as $(x-2)(x-3)$, so the roots are 2 and 3 and their sum is $5$.",
        "5",
    ),
    (
        "Simplify $\\frac{12}{18}$.",
        "The greatest common divisor of 12 and 18 is 6, so $\\frac{12}{18} = \\frac{2}{3}$.",
        "\\frac{2}{3}",
    ),
    (
        "How many positive divisors does $36$ have?",
        "Since $36 = 2^2 \\cdot 3^2$, it has $(2+1)(2+1) = 9$ positive divisors.",
        "9",
    ),
)


def _gsm8k_shot(q: str, cot: str, ans: str) -> tuple[str, str]:
    return f"Question: {q}\nAnswer:", f"{cot} So the answer is {ans}."


def _math_user(problem: str) -> str:
    return f"Problem:\n{problem}\n\nSolution:"


def _math_shot(problem: str, solution: str, ans: str) -> tuple[str, str]:
    return _math_user(
        problem
    ), f"{solution}\nFinal Answer: The final answer is ${ans}$. I hope it is correct."


def resolve_shots(kind: str, style: str, shots: int | None) -> int:
    """How many exemplars an item of format ``kind`` gets."""
    if style not in STYLES:
        raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")
    if kind in ("ifeval", "rlvr"):
        return 0
    limit = len(GSM8K_EXEMPLARS) if kind == "gsm8k" else len(MATH_EXEMPLARS)
    wanted = (TULU3_SHOTS[kind] if style == "tulu3" else 0) if shots is None else shots
    if not 0 <= wanted <= limit:
        raise ValueError(
            f"{kind}: --shots must be between 0 and {limit} (the shipped exemplars), got {wanted}"
        )
    return wanted


def build_messages(item: EvalItem, style: str = "tulu3", shots: int | None = None) -> list[dict[str, str]]:
    """The conversation sent to the model for one item (exemplars as alternating turns)."""
    if item.kind == "rlvr":
        return [dict(m) for m in item.messages or []]
    n = resolve_shots(item.kind, style, shots)
    if item.kind == "gsm8k":
        pairs = [_gsm8k_shot(*ex) for ex in GSM8K_EXEMPLARS[:n]]
        final = f"Question: {item.question}\nAnswer:"
    elif item.kind == "math":
        pairs = [_math_shot(*ex) for ex in MATH_EXEMPLARS[:n]]
        final = _math_user(item.question)
    else:
        pairs, final = [], item.question
    messages: list[dict[str, str]] = []
    for user, assistant in pairs:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages + [{"role": "user", "content": final}]


def render(messages: Sequence[dict[str, str]], chat_template: str, tokenizer: Any = None) -> str:
    """Prompt text of a conversation that ends with the user turn to answer."""
    if chat_template == "tulu":
        return render_tulu(messages, add_generation_prompt=True)
    if chat_template == "none":
        parts = []
        for k, m in enumerate(messages):
            if m["role"] == "assistant":
                parts.append(" " + m["content"] + "\n\n")
            else:  # a system turn before the user's: a blank line between them
                following = messages[k + 1]["role"] if k + 1 < len(messages) else "assistant"
                parts.append(m["content"] + ("\n\n" if following != "assistant" else ""))
        return "".join(parts)
    if chat_template == "model":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat-template model: the model's tokenizer_config.json has no chat_template")
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    raise ValueError(f"chat template must be one of {CHAT_TEMPLATES}, got {chat_template!r}")


def encode_items(
    items: Sequence[EvalItem],
    tokenizer: Any,
    *,
    chat_template: str = "tulu",
    style: str = "tulu3",
    shots: int | None = None,
    max_prompt_len: int | None = None,
) -> list[list[int]]:
    """Prompt token ids per item, left-truncated to ``max_prompt_len`` (as RLVR's prompt loader
    does, so an RLVR-format held-out file gets exactly the ids the trainer scores)."""
    out = []
    for item in items:
        text = render(build_messages(item, style, shots), chat_template, tokenizer)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(list(ids[-max_prompt_len:] if max_prompt_len else ids))
    return out
