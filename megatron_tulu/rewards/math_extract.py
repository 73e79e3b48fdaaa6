"""Answer-candidate extraction for MATH responses, in Tülu 3's "flex" order.

1. the last `\\boxed{...}` (balanced braces; also `\\boxed 5` and `\\fbox{...}`),
2. the Minerva line "Final Answer: The final answer is X. I hope it is correct.",
3. only if neither exists: the text between the last two "$",
4. only if still nothing: the raw response (Minerva-normalised for the string comparison).

All scans are linear in the response length.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.rewards.math_normalize import minerva_normalize

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_MINERVA_PREFIX = "Final Answer: The final answer is"
_MINERVA_SUFFIX = " I hope it is correct"
INVALID_ANSWER = "[invalidanswer]"


@dataclass(frozen=True)
class Candidate:
    source: str  # "boxed" | "minerva" | "dollars" | "raw"
    answer: str  # as the reference compares it (Minerva-normalised except for boxed answers)
    # What math-verify parses: the extracted text before Minerva normalisation, which mangles
    # valid LaTeX ("\left(" loses its "ft" as a unit). Empty for "raw" (the response is used).
    latex: str = ""


def _closing_brace(text: str, open_at: int) -> int | None:
    """Index of the "}" matching the "{" at `open_at`; escaped braces (`\\{`, `\\}`) are content."""
    depth = 0
    i = open_at
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed_answer(text: str) -> str | None:
    """Content of the last `\\boxed{...}`/`\\fbox{...}`/`\\boxed X`, or None (also if unbalanced)."""
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    after = start + len(command)
    rest = text[after:]
    stripped = rest.lstrip(" ")
    if stripped.startswith("{"):
        open_at = after + (len(rest) - len(stripped))
        close_at = _closing_brace(text, open_at)
        return None if close_at is None else text[open_at + 1 : close_at]
    if rest.startswith(" "):
        # "\boxed 5": the argument runs to the closing "$" (as in Hendrycks' extraction) or line end.
        answer = rest[1:].split("$", 1)[0].split("\n", 1)[0].strip()
        return answer or None
    return None


def minerva_answer(text: str) -> str | None:
    """X from "Final Answer: The final answer is X. I hope it is correct.", or None.

    As in the reference regex, the first "Final Answer" line is used, the answer must be on that
    line, and the character right before " I hope it is correct" (normally ".") is dropped.
    """
    start = text.find(_MINERVA_PREFIX)
    if start < 0:
        return None
    line_end = text.find("\n", start)
    line = text[start + len(_MINERVA_PREFIX) : None if line_end < 0 else line_end]
    if line_end < 0:
        # The reference appends "I hope it is correct." to the whole text before matching, so a
        # last line ending in "is 5. " matches too.
        line += _MINERVA_SUFFIX.lstrip() + "."
    end = line.find(_MINERVA_SUFFIX)
    if end < 1:
        return None
    return line[: end - 1].strip()


def last_dollar_span(text: str) -> str | None:
    last = text.rfind("$")
    if last <= 0:
        return None
    before = text.rfind("$", 0, last)
    if before < 0:
        return None
    return text[before + 1 : last]


def extract_candidates(response: str) -> list[Candidate]:
    candidates: list[Candidate] = []
    boxed = last_boxed_answer(response)
    if boxed is not None:
        candidates.append(Candidate("boxed", boxed, boxed))
    minerva = minerva_answer(response)
    if minerva is not None:
        normalized = minerva_normalize(minerva)
        if normalized and normalized != INVALID_ANSWER:
            candidates.append(Candidate("minerva", normalized, minerva))
    if not candidates:
        span = last_dollar_span(response)
        if span is not None:
            candidates.append(Candidate("dollars", minerva_normalize(span), "$" + span + "$"))
    if not candidates:
        # math-verify looks at the raw text itself; the string check uses it normalised (reference).
        candidates.append(Candidate("raw", minerva_normalize(response)))
    return candidates
