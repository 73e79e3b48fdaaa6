"""The two task families of the synthetic data: arithmetic word problems and IFEval-style writing.

Both mirror the verifiable parts of the Tülu 3 RLVR mix (tulu3-facts §3), shrunk so that a
~5M-parameter model can learn them on a CPU in minutes:

* ``gsm8k``: :func:`make_arithmetic_problem` draws a 1-3 step word problem with small integers; its
  replies are a short chain of thought ending in ``#### N`` or ``The answer is N.``
* ``ifeval``: :func:`make_ifeval_task` draws a short writing request with one or two IFEval
  constraints (real instruction ids and kwarg names) and a compliant and a violating reply, both
  checked by ``data/synthetic_check.py`` as they are made.

Each takes a ``random.Random`` and nothing else, so ``data/synthetic.py`` (the row layouts, splits
and files) decides every draw's seed.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from megatron_tulu.data.synthetic_check import check_ifeval

# --------------------------------------------------------------------------------------------------------
# Vocabulary for the word problems.

NAMES = (
    "Sam", "Mia", "Leo", "Ava", "Noah", "Emma", "Liam", "Zoe", "Omar", "Lily", "Ben", "Nora", "Ivan", "Ruth",
    "Kai", "Anna", "Raj", "Elena", "Tom", "Grace", "Yuki", "Hugo", "Maya", "Felix", "Iris", "Jack", "Lucy",
    "Amir", "Sara", "Paul", "Nina", "Carlos", "Hana", "Owen", "Julia", "Theo", "Rosa", "Eli", "Tara", "Max",
)  # fmt: skip

ITEMS = (
    "apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "stamps", "shells", "cards",
    "balloons", "oranges", "eggs", "flowers", "toy cars", "ribbons", "buttons", "crayons", "candles", "beads",
    "muffins", "tickets", "rocks", "feathers", "plums", "erasers", "postcards", "magnets", "kites", "lemons",
)  # fmt: skip

CONTAINERS = ("bags", "boxes", "packs", "jars", "baskets")


@dataclass(frozen=True)
class ArithmeticProblem:
    """One word problem: the question, its worked solution steps and the exact answer."""

    question: str
    start_line: str  # "Sam starts with 12 apples."
    steps: tuple[str, ...]  # ("12 + 7 = 19.", "19 - 5 = 14.")
    answer: int

    def response(self, style: str = "hash", answer: int | None = None) -> str:
        """Short chain of thought; ``answer`` overrides the final number (to build wrong replies)."""
        final = self.answer if answer is None else answer
        steps = list(self.steps)
        if answer is not None and answer != self.answer:
            # Keep the reasoning but botch the last computation, as a careless model would.
            head, _, _ = steps[-1].rpartition("= ")
            steps[-1] = f"{head}= {final}."
        body = " ".join([self.start_line, *steps])
        if style == "hash":
            return f"{body}\n#### {final}"
        return f"{body} The answer is {final}."


def make_arithmetic_problem(rng: random.Random) -> ArithmeticProblem:
    """Draw a 1-3 step problem; every intermediate count stays a small non-negative integer."""
    name = rng.choice(NAMES)
    items = rng.choice(ITEMS)
    n_steps = rng.choice((1, 2, 2, 3))
    count = rng.randint(3, 30)
    sentences = [f"{name} has {count} {items}."]
    start_line = f"{name} starts with {count} {items}."
    steps: list[str] = []
    last_op = ""
    for i in range(n_steps):
        ops = ["add", "sub", "pack"]
        if count % 2 == 0 and count >= 4:
            ops.append("half")
        op = rng.choice(ops)
        if op == "sub" and count < 2:
            op = "add"
        lead = "" if i == 0 else rng.choice(("Then ", "After that ", "Later "))
        if op == "add":
            k = rng.randint(1, 15)
            verb = rng.choice(
                ("buys {k} more", "finds {k} more", "gets {k} more from a friend", "wins {k} more")
            )
            sentences.append(f"{lead}{name} {verb.format(k=k)}.")
            steps.append(f"{count} + {k} = {count + k}.")
            count += k
        elif op == "sub":
            k = rng.randint(1, min(count, 15))
            verb = rng.choice(("gives away {k}", "loses {k}", "sells {k}", "gives {k} to a neighbor"))
            sentences.append(f"{lead}{name} {verb.format(k=k)}.")
            steps.append(f"{count} - {k} = {count - k}.")
            count -= k
        elif op == "pack":
            m, k = rng.randint(2, 5), rng.randint(2, 6)
            box = rng.choice(CONTAINERS)
            sentences.append(f"{lead}{name} buys {m} {box} with {k} {items} in each.")
            steps.append(f"{m} * {k} = {m * k}.")
            steps.append(f"{count} + {m * k} = {count + m * k}.")
            count += m * k
        else:  # half
            half = count // 2
            sentences.append(f"{lead}{name} gives away half of them.")
            steps.append(f"{count} / 2 = {half}.")
            steps.append(f"{count} - {half} = {half}.")
            count -= half
        last_op = op
    ending = "have left" if last_op in ("sub", "half") else rng.choice(("have now", "have in total"))
    sentences.append(f"How many {items} does {name} {ending}?")
    return ArithmeticProblem(" ".join(sentences), start_line, tuple(steps), count)


# --------------------------------------------------------------------------------------------------------
# IFEval-style constrained writing.

# Each topic has short comma-free sentences, so "no commas" holds for the plain text and a comma is only
# ever introduced on purpose (to build a rejected reply).
TOPICS: dict[str, tuple[str, ...]] = {
    "the sea": (
        "The sea is calm and blue under the morning sun.",
        "Waves roll onto the sand and pull back again.",
        "The sea smells of salt and cold wind.",
    ),
    "mountains": (
        "Mountains rise high above the quiet valley.",
        "Snow stays on the tall peaks all year.",
        "The mountain path is steep but the view is worth it.",
    ),
    "autumn": (
        "Autumn turns the leaves red and gold.",
        "The air grows cool as the days get shorter.",
        "In autumn people rake leaves into big piles.",
    ),
    "coffee": (
        "Coffee is a warm drink that many people enjoy in the morning.",
        "Fresh coffee has a rich and bitter taste.",
        "A cup of coffee can help a tired student stay awake.",
    ),
    "a library": (
        "A library is a quiet place full of books.",
        "People visit the library to read and to learn.",
        "The library lends books to anyone with a card.",
    ),
    "the moon": (
        "The moon glows softly in the night sky.",
        "The moon changes shape over the course of a month.",
        "People first walked on the moon in 1969.",
    ),
    "rain": (
        "Rain taps gently on the roof at night.",
        "After the rain the streets shine like glass.",
        "Plants need rain to grow strong and green.",
    ),
    "a small town": (
        "A small town has a main street and a few shops.",
        "In a small town people often know their neighbors.",
        "Life in a small town moves at a slow pace.",
    ),
    "trains": (
        "Trains carry people and goods across the country.",
        "A long train rumbles past the station.",
        "Riding a train is a calm way to travel.",
    ),
    "bees": (
        "Bees fly from flower to flower collecting nectar.",
        "Bees make honey and help plants grow fruit.",
        "A busy hive can hold thousands of bees.",
    ),
    "winter": (
        "Winter brings snow and short cold days.",
        "In winter people wear warm coats and hats.",
        "Children build snowmen when winter comes.",
    ),
    "bread": (
        "Fresh bread smells wonderful when it leaves the oven.",
        "Bread is made from flour and water and yeast.",
        "A slice of warm bread with butter is a simple joy.",
    ),
    "cats": (
        "Cats like to sleep in warm and sunny spots.",
        "A cat can jump many times its own height.",
        "Cats clean their fur with their rough tongues.",
    ),
    "the city at night": (
        "The city at night is bright with a thousand lights.",
        "Cars move slowly through the busy streets after dark.",
        "Tall buildings shine against the black sky.",
    ),
    "a forest": (
        "A forest is full of tall trees and soft moss.",
        "Birds sing high in the branches of the forest.",
        "Walking in a forest can make a person feel calm.",
    ),
    "music": (
        "Music can lift the mood of a whole room.",
        "A simple song can stay in your head all day.",
        "People play music to celebrate and to remember.",
    ),
    "the desert": (
        "The desert is hot by day and cold at night.",
        "Sand dunes in the desert move slowly with the wind.",
        "Few plants can live in the dry desert.",
    ),
    "a bicycle": (
        "A bicycle is a cheap and clean way to get around.",
        "Riding a bicycle keeps the body strong.",
        "A bicycle needs air in its tires and oil on its chain.",
    ),
    "the stars": (
        "The stars shine brightest far from city lights.",
        "Sailors once used the stars to find their way.",
        "Some stars are much larger than our sun.",
    ),
    "a garden": (
        "A garden needs sun and water and care.",
        "Tomatoes and beans grow well in a summer garden.",
        "A small garden can feed a family all summer.",
    ),
}

REQUESTS = (
    "Write a short sentence about {topic}.",
    "Write one sentence describing {topic}.",
    "Tell me something about {topic} in one sentence.",
    "Describe {topic} briefly.",
)

END_PHRASES = (
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "Any other questions?",
    "That is all.",
)

KEYWORDS = ("river", "light", "journey", "friend", "window", "story", "bridge", "silver", "memory", "harbor")

# instruction id -> prompt phrasings (the IFEval wording where it is short enough).
CONSTRAINT_PROMPTS: dict[str, tuple[str, ...]] = {
    "change_case:english_lowercase": (
        "Your entire response should be in English and in all lowercase letters. No capital letters are allowed.",
        "Use only lowercase letters.",
    ),
    "change_case:english_capital": (
        "Your entire response should be in English and in all capital letters.",
        "Write your answer in all capital letters.",
    ),
    "startend:end_checker": (
        "Finish your response with this exact phrase '{end_phrase}'. No other words should follow this phrase.",
        "End your response with the exact phrase '{end_phrase}'.",
    ),
    "punctuation:no_comma": (
        "In your entire response refrain from the use of any commas.",
        "Do not use any commas in your response.",
    ),
    "startend:quotation": (
        "Wrap your entire response with double quotation marks.",
        "Put your whole answer inside double quotation marks.",
    ),
    "keywords:existence": (
        "Include the keyword '{keyword}' in your response.",
        "Make sure your response contains the word '{keyword}'.",
    ),
    "detectable_format:title": (
        "Your answer must contain a title wrapped in double angular brackets such as <<poem of joy>>.",
        "Give your answer a title in double angular brackets like <<my title>>.",
    ),
}

# Pairs that cannot be satisfied together, or whose exact-phrase wording would fight a case rule.
_CASE_IDS = {"change_case:english_lowercase", "change_case:english_capital"}
_INCOMPATIBLE = {
    frozenset(_CASE_IDS),
    frozenset({"change_case:english_lowercase", "startend:end_checker"}),
    frozenset({"change_case:english_capital", "startend:end_checker"}),
}


@dataclass(frozen=True)
class IFEvalTask:
    """One constrained writing prompt with its chosen (compliant) and rejected (violating) replies."""

    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]
    chosen: str
    rejected: str

    @property
    def ground_truth(self) -> str:
        return json.dumps(
            {"instruction_id_list": list(self.instruction_id_list), "kwargs": list(self.kwargs)},
            sort_keys=True,
        )


@dataclass
class _Constraint:
    instruction_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _render_reply(topic: str, sentence: str, constraints: list[_Constraint], violate: str | None) -> str:
    """Apply the constraints in a fixed order (content, case, ending, wrapping) so they all hold at once.

    ``violate`` names one instruction id that is deliberately broken instead of satisfied.
    """
    ids = {c.instruction_id: c.kwargs for c in constraints}
    text = sentence
    if "keywords:existence" in ids and violate != "keywords:existence":
        text = f"{text} It makes me think of the {ids['keywords:existence']['keywords'][0]}."
    if violate == "punctuation:no_comma":
        text = f"{text} Honestly, I like it."
    if "detectable_format:title" in ids and violate != "detectable_format:title":
        text = f"<<{topic.removeprefix('the ').removeprefix('a ').title()}>>\n{text}"
    if "change_case:english_lowercase" in ids and violate != "change_case:english_lowercase":
        text = text.lower()
    if "change_case:english_capital" in ids and violate != "change_case:english_capital":
        text = text.upper()
    if "startend:end_checker" in ids and violate != "startend:end_checker":
        text = f"{text} {ids['startend:end_checker']['end_phrase']}"
    if "startend:quotation" in ids and violate != "startend:quotation":
        text = f'"{text}"'
    return text


def make_ifeval_task(rng: random.Random) -> IFEvalTask:
    """Draw a writing request with one (70%) or two (30%) compatible IFEval constraints."""
    topic = rng.choice(sorted(TOPICS))
    sentence = rng.choice(TOPICS[topic])
    all_ids = sorted(CONSTRAINT_PROMPTS)
    first = rng.choice(all_ids)
    chosen_ids = [first]
    if rng.random() < 0.3:
        options = [i for i in all_ids if i != first and frozenset({first, i}) not in _INCOMPATIBLE]
        chosen_ids.append(rng.choice(options))
    constraints: list[_Constraint] = []
    phrases: list[str] = []
    for iid in chosen_ids:
        c = _Constraint(iid)
        if iid == "startend:end_checker":
            c.kwargs = {"end_phrase": rng.choice(END_PHRASES)}
        elif iid == "keywords:existence":
            # The keyword must not already be in the sentence, or the rejected reply would still pass.
            pool = [k for k in KEYWORDS if not re.search(k, sentence, re.IGNORECASE)]
            c.kwargs = {"keywords": [rng.choice(pool)]}
        constraints.append(c)
        template = rng.choice(CONSTRAINT_PROMPTS[iid])
        phrases.append(
            template.format(
                end_phrase=c.kwargs.get("end_phrase", ""), keyword=(c.kwargs.get("keywords") or [""])[0]
            )
        )
    prompt = " ".join([rng.choice(REQUESTS).format(topic=topic), *phrases])
    violate = rng.choice(chosen_ids)
    task = IFEvalTask(
        prompt=prompt,
        instruction_id_list=tuple(c.instruction_id for c in constraints),
        kwargs=tuple(dict(c.kwargs) for c in constraints),
        chosen=_render_reply(topic, sentence, constraints, None),
        rejected=_render_reply(topic, sentence, constraints, violate),
    )
    # Generation bugs should fail loudly here rather than ship mislabelled preference pairs.
    assert check_ifeval(task.chosen, task.instruction_id_list, task.kwargs), task
    assert not check_ifeval(task.rejected, task.instruction_id_list, task.kwargs), task
    return task
