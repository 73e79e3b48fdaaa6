"""String normalisations of MATH answers used by Tülu 3's "flex" check.

Two normalisers with the semantics of the ones open-instruct uses:

* `minerva_normalize` (Lewkowycz et al. 2022, `normalize_final_answer`): applied to answers pulled
  out of "Final Answer: ..." lines, `$...$` spans and raw text. Drops units and filler words,
  unwraps `\\text{}`/`\\boxed{}`, expands `\\frac12`.
* `hendrycks_normalize` (Hendrycks et al. 2021, `strip_string`): applied to both sides right
  before the plain string comparison.

Every step is a linear-time string operation: model output can be hundreds of kilobytes, and the
reference's `(.*?)\\$(.*?)\\$(.*)` regex backtracks cubically on such input.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# (old, new) replacements, in order. "an "/"a " are removed as filler words, exactly as in the
# reference (it also clips them inside words, e.g. "mean 5" -> "me5"; kept for agreement).
_MINERVA_SUBSTITUTIONS = (
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
)

# Units and decorations deleted from answers, in order.
_MINERVA_REMOVED = (
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "ft",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    r"\mathrm{th}",
    r"^\circ",
    r"^{\circ}",
    r"\;",
    r",\!",
    "{,}",
    '"',
    "\\dots",
)

_SHORT_FRAC = re.compile(r"frac([^{])(.)")
_SHORT_SQRT = re.compile(r"sqrt([^{])")


def _per_line(text: str, rewrite: Callable[[str], str]) -> str:
    return "\n".join(rewrite(line) for line in text.split("\n"))


def _first_dollar_span(line: str) -> str:
    """A line holding two "$" reduced to "$<text between its first two $>$"."""
    first = line.find("$")
    second = line.find("$", first + 1) if first >= 0 else -1
    return "$" + line[first + 1 : second] + "$" if second >= 0 else line


def _unwrap_first_group(text: str, command: str) -> str:
    """Replace every `command{X}` by `X`, where X ends at the first "}" (non-greedy, as reference)."""
    out: list[str] = []
    start = 0
    while True:
        at = text.find(command, start)
        if at < 0:
            break
        close = text.find("}", at + len(command))
        if close < 0:
            break
        out.append(text[start:at])
        out.append(text[at + len(command) : close])
        start = close + 1
    out.append(text[start:])
    return "".join(out)


def _unwrap_boxed_greedy(line: str) -> str:
    # Reference: re.sub(r"(\\boxed\{)(.*)(\})", r"\2") on each line: drop the first "\boxed{"
    # and the last "}" after it.
    at = line.find("\\boxed{")
    close = line.rfind("}")
    if at < 0 or close < at + len("\\boxed{"):
        return line
    return line[:at] + line[at + len("\\boxed{") : close] + line[close + 1 :]


def minerva_normalize(answer: str) -> str:
    answer = answer.split("=")[-1]
    for old, new in _MINERVA_SUBSTITUTIONS:
        answer = answer.replace(old, new)
    for removed in _MINERVA_REMOVED:
        answer = answer.replace(removed, "")
    answer = _per_line(answer, _first_dollar_span)
    for command in ("\\text{", "\\textbf{", "\\overline{"):
        answer = _unwrap_first_group(answer, command)
    answer = _per_line(answer, _unwrap_boxed_greedy)
    answer = _SHORT_FRAC.sub(r"frac{\1}{\2}", answer)
    answer = _SHORT_SQRT.sub(r"sqrt{\1}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


def _fix_sqrt(text: str) -> str:
    # "\sqrt3" -> "\sqrt{3}"
    pieces = text.split("\\sqrt")
    fixed = [pieces[0]]
    for piece in pieces[1:]:
        if piece and piece[0] != "{":
            piece = "{" + piece[0] + "}" + piece[1:]
        fixed.append(piece)
    return "\\sqrt".join(fixed)


def _fix_fracs(text: str) -> str:
    # "\frac12" -> "\frac{1}{2}", "\frac1{2}" -> "\frac{1}{2}"; too-short remainders leave the
    # whole string untouched, as in the reference.
    pieces = text.split("\\frac")
    fixed = [pieces[0]]
    for piece in pieces[1:]:
        if piece.startswith("{"):
            fixed.append(piece)
            continue
        if len(piece) < 2:
            return text
        numerator, denominator, rest = piece[0], piece[1], piece[2:]
        if denominator == "{":
            fixed.append("{" + numerator + "}" + piece[1:])
        else:
            fixed.append("{" + numerator + "}{" + denominator + "}" + rest)
    return "\\frac".join(fixed)


def _fix_a_slash_b(text: str) -> str:
    parts = text.split("/")
    if len(parts) != 2:
        return text
    numerator, denominator = parts
    if re.fullmatch(r"-?\d+", numerator) and re.fullmatch(r"-?\d+", denominator):
        if text == f"{int(numerator)}/{int(denominator)}":
            return f"\\frac{{{int(numerator)}}}{{{int(denominator)}}}"
    return text


def hendrycks_normalize(answer: str) -> str:
    text = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.replace("\\$", "")
    if "\\text{ " in text:  # units written after the value, e.g. "5 \text{ cm}"
        text = text.split("\\text{ ")[0]
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "x = 5" -> "5"
        text = sides[1]
    text = _fix_sqrt(text)
    text = text.replace(" ", "")
    text = _fix_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _fix_a_slash_b(text)
