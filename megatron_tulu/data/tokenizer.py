"""The embedded tokenizer: a byte-level BPE trained offline, deterministically, from text this repo ships.

Training input (see ``megatron_tulu/assets/corpus/README.md``): every ``*.txt`` under
``assets/corpus/`` (hand-written English prose and instructions) plus the message contents of the shipped
synthetic train splits (``assets/data/{sft,dpo,rlvr}.jsonl``), so that the task vocabulary (numbers,
``####``, IFEval phrases) gets merges of its own. Only message *contents* are fed to the trainer: the role
and EOS strings are added tokens, and letting BPE learn merges for ``<|``/``|>`` would waste vocabulary.

Vocabulary: exactly ``VOCAB_SIZE`` = 3,999 ids, deliberately not a multiple of 128 so Megatron's vocab
padding is exercised. Ids 0-4 are ``<|begin_of_text|>`` (BOS), ``<|end_of_text|>`` (EOS, also pad),
``<|system|>``, ``<|user|>``, ``<|assistant|>``; then the 256 byte symbols; then the merges.

Decisions:

* BOS/EOS are *special* tokens (stripped by ``decode(..., skip_special_tokens=True)``).
* The three role tokens are single, *non-special* added tokens: they are never split, but they survive
  ``skip_special_tokens=True``. In the real Tülu 3 tokenizer the role markers are ordinary text, so a
  model that (wrongly) emits ``<|user|>`` should show it in decoded output rather than have it vanish;
  keeping them single tokens makes the header/content boundary and label masking unambiguous.
* No BOS is added by ``tokenizer(text)`` (the post-processor is a plain ``$A``): the Tülu 3 template has
  no BOS and the release code does not add one (``--add_bos`` unset), so ``tokenizer(render_tulu(m))``
  equals ``apply_chat_template(m, tokenize=True)``.
* Determinism: the ``tokenizers`` BPE trainer breaks frequency ties by token id and the initial alphabet
  is ordered by code point, so training the same text gives the same ``tokenizer.json`` in any process
  (checked by the tests, which build the model directory twice in separate processes).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_tulu.data.chat_template import TULU_CHAT_TEMPLATE

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
CORPUS_DIR = ASSETS_DIR / "corpus"
DATA_DIR = ASSETS_DIR / "data"
# Train splits only: the held-out files stay out of everything the model is built from.
CORPUS_DATA_FILES = ("sft.jsonl", "dpo.jsonl", "rlvr.jsonl")

VOCAB_SIZE = 3999
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = EOS_TOKEN
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN)
MODEL_MAX_LENGTH = 4096


def _message_texts(row: dict[str, Any]) -> Iterator[str]:
    """The contents of every conversation in an SFT / preference / RLVR row."""
    for key in ("messages", "chosen", "rejected"):
        for message in row.get(key) or []:
            yield message["content"]


def iter_corpus() -> Iterator[str]:
    """The tokenizer's training text, in a fixed order (sorted file names, file order within files)."""
    txt_files = sorted(CORPUS_DIR.glob("*.txt"))
    if not txt_files:
        raise FileNotFoundError(f"no tokenizer corpus found under {CORPUS_DIR}")
    for path in txt_files:
        # Paragraph-sized pieces: the trainer only sees pre-tokenized words, so the split point is irrelevant
        # to the result but keeps memory small.
        yield from path.read_text(encoding="utf-8").split("\n\n")
    for name in CORPUS_DATA_FILES:
        path = DATA_DIR / name
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing; regenerate it with `python -m megatron_tulu.commands.synthetic_data --out {DATA_DIR}`"
            )
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield from _message_texts(json.loads(line))


@functools.lru_cache(maxsize=1)
def _trained_json() -> str:
    """Train once per process and cache the serialized result (training takes about a second)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: a leading space would change what the first token of every turn looks like.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        # 1, not 2: the corpus is small and repetitive, and with pairs seen twice or more it runs out of
        # merges near 3,200 ids (with 1 it could reach ~4,800, leaving margin for corpus edits).
        min_frequency=1,
        show_progress=False,
        # Listed first so they take ids 0-4 in this order.
        special_tokens=[*SPECIAL_TOKENS, *ROLE_TOKENS],
        # All 256 byte symbols, so any UTF-8 text round-trips even if the corpus never used a byte.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(iter_corpus(), trainer=trainer)
    # The trainer only puts the specials in the vocab; registering them as added tokens makes the
    # tokenizer match them in raw text before pre-tokenization (ids unchanged).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ROLE_TOKENS])
    tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
    if tok.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
        raise RuntimeError(
            f"embedded tokenizer has {tok.get_vocab_size(with_added_tokens=True)} ids, expected {VOCAB_SIZE}: "
            "the corpus is too small to learn enough merges"
        )
    return tok.to_str()


def train_tokenizer() -> Tokenizer:
    """The raw ``tokenizers.Tokenizer`` (a fresh object each call; training itself is cached)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_trained_json())


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The embedded tokenizer wrapped as an HF fast tokenizer, with the Tülu 3 chat template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=TULU_CHAT_TEMPLATE,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(out_dir: str | Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json (with ``chat_template`` inside it) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # save_jinja_files=False keeps the template in tokenizer_config.json (the older layout that every
    # transformers/vLLM version reads) instead of a separate chat_template.jinja.
    build_tokenizer().save_pretrained(str(out), save_jinja_files=False)
    # transformers 5 records its internal class name (TokenizersBackend); the public alias is what older
    # transformers releases and other readers (vLLM, TRL) know, and transformers 5 maps it back.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(
        json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return out


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer directory, or build the embedded one when ``path`` is None."""
    if path is None:
        return build_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
