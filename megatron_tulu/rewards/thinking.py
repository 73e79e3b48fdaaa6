"""Stripping the reasoning section of a reasoning-model response before it is verified.

Reasoning models write ``<think>…</think>`` before the answer, and some wrap the answer itself in
``<answer>…</answer>``. Scored as is, the thinking section leaks into every check: a number in the
scratch work becomes GSM8K's "last number", a capital letter in it fails "all lowercase". Tülu 3 /
open-instruct strip it before verifying (``remove_thinking_section`` in
``open_instruct/ground_truth_utils.py``); two functions are offered here:

* ``open_instruct_answer``: open-instruct's rule, exactly: drop ``<|assistant|>``, keep what follows
  the last ``</think>``, delete the ``<answer>``/``</answer>`` tags (keeping their content), strip
  whitespace. The RLVR ``func_name`` IF functions use it always, because open-instruct's verdicts
  for them are defined on this text.
* ``strip_thinking``: the opt-in option for every verifier (``verify --strip-thinking``,
  ``compute_rewards(strip_thinking=True)``). Same as above, but closed against two ways to game
  it: a ``<think>`` that is never closed leaves *no* answer (open-instruct would score the thinking
  as the answer), and when a complete ``<answer>…</answer>`` block exists only the content of the
  last one is the answer (text around it is not scored).
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
_ASSISTANT_TAG = "<|assistant|>"


def open_instruct_answer(response: str) -> str:
    """open-instruct's ``remove_thinking_section``, reproduced (see the module docstring)."""
    text = response.replace(_ASSISTANT_TAG, "").strip()
    text = text.split(THINK_CLOSE)[-1]
    text = text.replace(ANSWER_OPEN, "").replace(ANSWER_CLOSE, "")
    return text.strip()


def strip_thinking(response: str) -> str:
    """The answer part of a reasoning response; ``""`` if the thinking section never closes."""
    text = response
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        text = text[close + len(THINK_CLOSE) :]
    elif THINK_OPEN in text:
        return ""  # still thinking when the response ended: there is no answer to score
    end = text.rfind(ANSWER_CLOSE)
    start = text.rfind(ANSWER_OPEN, 0, end) if end >= 0 else -1
    if start >= 0:
        text = text[start + len(ANSWER_OPEN) : end]
    else:
        text = text.replace(ANSWER_OPEN, "").replace(ANSWER_CLOSE, "")
    return text.strip()
