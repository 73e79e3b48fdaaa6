"""Text measurements used by the IFEval checkers: words, sentences, word tokens, language.

The reference counts words with nltk's `RegexpTokenizer(r"\\w+")` (reproduced exactly), splits
sentences with nltk's pretrained English Punkt model and tokenizes words for the capital-word
count with nltk's `word_tokenize` (Punkt + Treebank rules). The Punkt data is not available here,
so `split_sentences` re-implements Punkt's decision procedure with a hand-written abbreviation list
and a short list of frequent sentence starters standing in for the learned statistics.

Where `split_sentences` agrees with Punkt (ordinary English):
  * a break after ".", "?" or "!" followed by whitespace and another token, also when closing
    quotes/brackets follow the mark ('"Stop!" he said' is two sentences, as in Punkt);
  * no break inside decimals ("3.14"), inside "e.g."/"i.e."/"U.S." or after titles ("Mr. Smith");
  * no break without whitespace after the mark ("end.Next"), nor at bare newlines;
  * after an ellipsis "...", an abbreviation or an initial ("J. Smith") a break happens only
    before a capitalised common word ("etc. The"), never before a lowercase one;
  * a number followed by "." breaks before a capitalised word ("1. First" is two sentences,
    as in Punkt) but not before a lowercase one.
Known differences: Punkt's learned abbreviation list (from news text) is larger than ours and it
learned which capitalised words typically start sentences; ours is a fixed list (`_SENTENCE_STARTERS`).
Any dotted sequence of single letters ("a.k.a.", "n.b.") is treated as an abbreviation. Spaced
ellipses (". . .") are treated as three periods.
"""

from __future__ import annotations

import re
import threading

_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


# --------------------------------------------------------------------------- sentences

# Abbreviations (lower case, final period removed) after which "." is not a sentence end.
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof sr jr st mt rev hon gen col lt sgt capt cmdr adm gov sen rep pres supt messrs
    mme mlle e.g i.e etc vs cf viz al approx ca misc dept est fig figs eq eqs no nos vol vols pp ch
    sec ed eds op cit ibid inc ltd co corp llc bros assn univ a.m p.m jan feb apr jun jul aug sep
    sept oct nov dec tues thurs u.s u.k u.n u.s.a e.u d.c n.y l.a calif ave blvd rd ft oz lb lbs
    ph.d m.d b.a m.a b.s m.s a.k.a
    """.split()
)

# Common words that, capitalised, start a sentence. Stands in for Punkt's learned orthographic
# statistics when deciding whether "etc. The" or "Wait... What" is a sentence boundary.
_SENTENCE_STARTERS = frozenset(
    """
    a an the this that these those it its he she they we i you there here his her their our my your
    but and or so yet however also then now in on at for with as if when while after before since
    because although though what which who why how where some many most all each every no not one
    first finally next other another both let please thanks thank yes overall instead still
    meanwhile moreover furthermore therefore thus hence today to from by of is are was were do does
    did can could will would should may might must have has had be just only even such again
    """.split()
)

_NON_WORD_CHARS = set(")\";}]*:@'({[!?")  # split off as their own tokens by Punkt
_NOT_WORD_START = set('("`{[:;&#*@)}]-,')  # cannot begin a Punkt word token
_END_CONTEXT = re.compile(r"[.?!](?=(?P<after>[?!)\";}\]*:@'({\[])|\s+(?P<next>\S+))")
_NUMBER_TOKEN = re.compile(r"-?[.,]?\d[\d,.\-]*\.?")
_INITIAL_TOKEN = re.compile(r"[^\W\d]\.")
_DOTTED_LETTERS = re.compile(r"(?:[^\W\d]\.)+[^\W\d]")
_REALIGN = re.compile(r"[\"')\]}]+?(?:\s+|(?=--)|$)")


def _period_token(text: str, end: int, chunk_start: int) -> str:
    """The Punkt word token that ends with the "." at `end` (inclusive)."""
    start = end
    while start > chunk_start and text[start - 1] not in _NON_WORD_CHARS:
        start -= 1
    while start < end and text[start] in _NOT_WORD_START:
        start += 1
    return text[start : end + 1]


def _is_abbreviation(token: str) -> bool:
    body = token[:-1].lower()
    return (
        body in _ABBREVIATIONS
        or body.split("-")[-1] in _ABBREVIATIONS
        or bool(_DOTTED_LETTERS.fullmatch(body))
    )


def _next_word_kind(next_token: str | None) -> str:
    if not next_token or not next_token[0].isalpha():
        return "other"
    return "upper" if next_token[0].isupper() else "lower"


def _starts_sentence(next_token: str) -> bool:
    word = re.match(r"[^\W\d_]+", next_token)
    return bool(word) and word.group(0).lower() in _SENTENCE_STARTERS


def _is_break(text: str, match: re.Match[str], chunk_start: int) -> bool:
    end = match.start()
    if text[end] in "?!":
        return True
    next_token = match.group("next")  # None when punctuation follows the mark directly
    kind = _next_word_kind(next_token)
    if end > chunk_start and text[end - 1] == ".":  # ellipsis "..."
        return kind == "upper" and _starts_sentence(next_token)
    token = _period_token(text, end, chunk_start)
    if token == ".":
        return True
    if _is_abbreviation(token):
        return kind == "upper" and _starts_sentence(next_token)
    if _INITIAL_TOKEN.fullmatch(token):
        if kind == "upper":
            return _starts_sentence(next_token)  # "J. Smith" no, "plan B. The" yes
        return kind != "lower"
    if _NUMBER_TOKEN.fullmatch(token):
        return kind != "lower"
    return True


def split_sentences(text: str) -> list[str]:
    """Split English text into sentences the way nltk's Punkt `sent_tokenize` does (see module doc)."""
    spans: list[tuple[int, int]] = []
    last_break = 0
    pending: tuple[re.Match[str], int] | None = None
    chunk_start = scanned_to = 0
    for match in _END_CONTEXT.finditer(text):
        # Start of the whitespace-delimited chunk holding the mark; each character is scanned
        # once over the whole loop, keeping hostile 200 KB inputs linear.
        for i in range(match.start() - 1, scanned_to - 1, -1):
            if text[i].isspace():
                chunk_start = i + 1
                break
        scanned_to = match.start()
        # Of several marks inside one whitespace-delimited chunk ("Really?!"), Punkt looks at the last.
        if pending is not None and chunk_start <= pending[0].start():
            pending = (match, chunk_start)
            continue
        if pending is not None and _is_break(text, *pending):
            spans.append((last_break, pending[0].end()))
            last_break = pending[0].start("next") if pending[0].group("next") else pending[0].end()
        pending = (match, chunk_start)
    if pending is not None and _is_break(text, *pending):
        spans.append((last_break, pending[0].end()))
        last_break = pending[0].start("next") if pending[0].group("next") else pending[0].end()
    spans.append((last_break, len(text.rstrip())))
    return _realign(text, spans)


def _realign(text: str, spans: list[tuple[int, int]]) -> list[str]:
    # Closing quotes/brackets right after a break belong to the sentence before it.
    sentences: list[str] = []
    shift = 0
    for i, (start, stop) in enumerate(spans):
        start += shift
        shift = 0
        if i + 1 < len(spans):
            nxt_start, _ = spans[i + 1]
            moved = _REALIGN.match(text, nxt_start)
            if moved:
                stop = nxt_start + len(moved.group(0).rstrip())
                shift = moved.end() - nxt_start
        if start < stop and text[start:stop]:
            sentences.append(text[start:stop])
    return sentences


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


# --------------------------------------------------------------------------- word tokens

# nltk word_tokenize splits these off as separate tokens (Treebank rules).
_SPLIT_PUNCT = re.compile(r"[;@#$%&?!*()\[\]{}<>\"`]|\.{2,}|--|[,:](?=\D|$)")
_CONTRACTION_SUFFIX = re.compile(r"(?<=[^'])('[sSmMdD]|'ll|'LL|'re|'RE|'ve|'VE|n't|N'T|')$")
_FUSED_WORDS = re.compile(
    r"(?i)^(?:(can)(not)|(gon)(na)|(got)(ta)|(wan)(na)|(gim)(me)|(lem)(me)|(d)('ye)|(more)('n))$"
)


def word_tokenize(text: str) -> list[str]:
    """Approximation of nltk's `word_tokenize`, faithful in what the capital-word count sees.

    Splits punctuation, contractions ("DON'T" -> "DO", "N'T") and fused words ("CANNOT" ->
    "CAN", "NOT") like the Treebank tokenizer; keeps hyphenated words, "U.S." and "A/B" whole.
    """
    tokens: list[str] = []
    for chunk in _SPLIT_PUNCT.sub(lambda m: f" {m.group(0)} ", text).split():
        fused = _FUSED_WORDS.match(chunk)
        if fused:
            tokens.extend(part for part in fused.groups() if part)
            continue
        suffix = _CONTRACTION_SUFFIX.search(chunk)
        if suffix and suffix.start() > 0:
            tokens.extend((chunk[: suffix.start()], suffix.group(0)))
        else:
            tokens.append(chunk)
    return tokens


# --------------------------------------------------------------------------- language

_langdetect_lock = threading.Lock()
_profiles_loaded = False


def preload_language_profiles() -> None:
    """Load langdetect's profiles (about a second) once, e.g. before forking workers."""
    global _profiles_loaded
    from langdetect import DetectorFactory, detector_factory

    with _langdetect_lock:  # langdetect's lazy loader is not thread-safe
        DetectorFactory.seed = 0
        detector_factory.init_factory()
        _profiles_loaded = True


def detect_language(text: str) -> str | None:
    """ISO code from langdetect with a fixed seed (deterministic), or None if undetectable."""
    import langdetect

    if not _profiles_loaded:
        preload_language_profiles()
    langdetect.DetectorFactory.seed = 0  # the reference leaves it unseeded: random verdicts
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None
