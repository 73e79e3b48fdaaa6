"""The MATH flex verifier agrees with calling math-verify directly on varied, well-formed cases."""

import random
from fractions import Fraction

from math_verify import parse, verify

from megatron_tulu.rewards.math_verifier import verify_math


def _forms(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """(gold, equivalent forms, wrong forms) for a random kind of answer."""
    kind = rng.choice(["int", "frac", "decimal", "sqrt", "poly", "tuple", "pi", "neg"])
    if kind == "int":
        n = rng.randint(0, 5000)
        return str(n), [str(n), f"{n}.0", f"{{{n}}}"], [str(n + 1), str(n * 2 + 3)]
    if kind == "frac":
        p, q = rng.randint(1, 50), rng.randint(2, 50)
        f = Fraction(p, q)
        if f.denominator == 1:
            q += 1
            f = Fraction(p, q)
        eq = [
            rf"\frac{{{f.numerator}}}{{{f.denominator}}}",
            rf"\dfrac{{{2 * f.numerator}}}{{{2 * f.denominator}}}",
        ]
        eq.append(f"{f.numerator}/{f.denominator}")
        return (
            rf"\frac{{{f.numerator}}}{{{f.denominator}}}",
            eq,
            [rf"\frac{{{f.numerator + 1}}}{{{f.denominator}}}"],
        )
    if kind == "decimal":
        cents = rng.randint(1, 9999)
        value = f"{cents / 100:.2f}"
        return value, [value, value.rstrip("0")], [f"{(cents + 7) / 100:.2f}"]
    if kind == "sqrt":
        n = rng.choice([2, 3, 5, 6, 7, 10, 11])
        k = rng.randint(2, 9)
        return rf"{k}\sqrt{{{n}}}", [rf"{k}\sqrt{{{n}}}", rf"\sqrt{{{k * k * n}}}"], [rf"{k + 1}\sqrt{{{n}}}"]
    if kind == "poly":
        a = rng.randint(1, 9)
        return f"x^2+{2 * a}x+{a * a}", [f"(x+{a})^2", f"x^2 + {2 * a}x + {a * a}"], [f"(x+{a + 1})^2"]
    if kind == "tuple":
        a, b = rng.randint(-9, 9), rng.randint(-9, 9)
        return f"({a},{b})", [f"({a}, {b})", rf"\left({a},{b}\right)"], [f"({b + 20},{a})"]
    if kind == "pi":
        k = rng.randint(2, 20)
        return rf"{k}\pi", [rf"{k}\pi", rf"\pi \cdot {k}"], [rf"{k + 1}\pi"]
    n = rng.randint(1, 500)
    return f"-{n}", [f"-{n}", f"-{n}.0"], [str(n)]


_TEMPLATES = [
    "We simplify step by step. Therefore the answer is $\\boxed{{{answer}}}$.",
    "Some work: $a = 2$. Final Answer: The final answer is ${answer}$. I hope it is correct.",
    "Compute carefully and we obtain \\boxed{{{answer}}}",
    "So $x = 3$ and $y = 4$, hence the result is \\boxed{{{answer}}}.",
]


def _reference(response: str, gold: str) -> bool:
    return verify(parse("$" + gold + "$"), parse(response))


def test_agreement_with_math_verify_is_at_least_99_percent():
    rng = random.Random(1234)
    cases = []
    while len(cases) < 300:
        gold, equivalent, wrong = _forms(rng)
        answer = rng.choice(equivalent) if rng.random() < 0.6 else rng.choice(wrong)
        cases.append((rng.choice(_TEMPLATES).format(answer=answer), gold))
    verdicts = [(verify_math(r, g).score == 1.0, _reference(r, g)) for r, g in cases]
    agree = sum(ours == ref for ours, ref in verdicts)
    assert agree / len(cases) >= 0.99, [c for c, v in zip(cases, verdicts) if v[0] != v[1]][:10]
    # The cases must exercise both verdicts, or agreement would mean nothing.
    assert 0.3 < sum(ref for _, ref in verdicts) / len(cases) < 0.8


def test_documented_difference_several_boxes():
    # math-verify alone merges every boxed answer of a text into a set; Tülu's flex rule (ours)
    # takes the last box, so a corrected answer counts.
    response = r"At first we guessed \boxed{0}, but correcting that gives \boxed{-34}."
    assert not _reference(response, "-34")
    assert verify_math(response, "-34").score == 1.0
