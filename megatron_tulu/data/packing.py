"""Batches for the trainers: sequence packing, padded collation and the label shift.

Label convention (the one place the shift happens; trainers must not redo it):

* Loaders (``sft``, ``preference``) produce *per-token* labels: ``labels[i]`` is ``input_ids[i]`` where
  token ``i`` is trained (assistant content and its EOS) and ``IGNORE_INDEX`` (-100) elsewhere.
* Batches carry Megatron-style *next-token* targets: position ``t`` of a document with ids
  ``x_0..x_n`` predicts ``x_{t+1}``, so ``labels[t] = per_token_labels[t + 1]`` and ``loss_mask[t] = 1``
  exactly where that target is trained. The last token of every document gets ``IGNORE_INDEX`` /
  ``loss_mask 0``: nothing is predicted across a document boundary (or into padding). ``shift_labels``
  implements this; logits at position ``t`` are scored against ``labels[t]``.
* ``labels`` keep ``IGNORE_INDEX`` where ``loss_mask`` is 0 (so ``F.cross_entropy(ignore_index=-100)``
  works directly). Megatron's vocab-parallel cross entropy maps out-of-range targets to a dummy index,
  and the loss mask zeroes them; code that gathers log-probs by label should use
  ``labels.clamp(min=0)`` and multiply by ``loss_mask``.

Every batch (``collate_packed``, ``pad_batch``, and ``preference.collate_pairs``) has the keys

* ``tokens`` [b, s] int64, ``labels`` [b, s] int64, ``loss_mask`` [b, s] float32,
* ``position_ids`` [b, s] int64, restarting at 0 for each document (and for the padding run),
* ``document_ids`` [b, s] int64: 0, 1, ... per document within a row, -1 on padding,
* ``cu_seqlens`` [n + 1] int32 and ``max_seqlen`` (int): cumulative segment lengths of the batch
  flattened to ``b * s`` tokens (THD layout, for Megatron's ``PackedSeqParams``). A row's padding run,
  if any, is its own final segment, so ``cu_seqlens[-1] == b * s`` and every token belongs to exactly one
  segment; padding then attends only to padding and never to a document.

Pad tokens never carry loss. ``block_causal_mask`` gives the exact dense mask of the same segmentation.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from megatron_tulu.data.chat_template import IGNORE_INDEX


def _ids_labels(example: Any) -> tuple[Sequence[int], Sequence[int]]:
    """Accept ``Example``-like objects (``.input_ids``/``.labels``) or ``(input_ids, labels)`` pairs."""
    if hasattr(example, "input_ids"):
        return example.input_ids, example.labels
    ids, labels = example
    return ids, labels


def shift_labels(
    input_ids: Any, labels: Any, document_ids: Any | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token labels -> next-token ``(targets, loss_mask)``: ``targets[..., i] = labels[..., i + 1]``.

    Works on ``[s]`` or ``[b, s]`` (tensors or lists). The last position, and with ``document_ids`` the
    last token of every document, get ``IGNORE_INDEX``. ``loss_mask`` is float32, 1 where the target is
    trained. Raises ``ValueError`` if a label is neither ``IGNORE_INDEX`` nor the token at its position,
    which catches labels that were already shifted (shifting twice would silently train on garbage).
    """
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    lab = torch.as_tensor(labels, dtype=torch.long)
    if ids.shape != lab.shape:
        raise ValueError(f"input_ids {tuple(ids.shape)} and labels {tuple(lab.shape)} differ in shape")
    trained = lab != IGNORE_INDEX
    if bool((trained & (lab != ids)).any()):
        raise ValueError("labels must be per-token (equal to input_ids or IGNORE_INDEX); already shifted?")
    targets = torch.full_like(lab, IGNORE_INDEX)
    targets[..., :-1] = lab[..., 1:]
    if document_ids is not None:
        doc = torch.as_tensor(document_ids, dtype=torch.long)
        if doc.shape != lab.shape:
            raise ValueError(f"document_ids {tuple(doc.shape)} and labels {tuple(lab.shape)} differ in shape")
        boundary = doc[..., 1:] != doc[..., :-1]
        targets[..., :-1] = targets[..., :-1].masked_fill(boundary, IGNORE_INDEX)
    return targets, (targets != IGNORE_INDEX).to(torch.float32)


def build_row(examples: Sequence[Any], length: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """One row of ``length`` tokens holding ``examples`` back to back, then padding.

    Returns per-row tensors (``cu_seqlens`` row-local, starting at 0 and ending at ``length``);
    ``collate_rows`` stacks rows into a batch.
    """
    tokens: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    docs: list[int] = []
    cu = [0]
    for d, example in enumerate(examples):
        ids, lab = _ids_labels(example)
        if len(ids) != len(lab):
            raise ValueError(f"example {d}: {len(ids)} input_ids but {len(lab)} labels")
        if not ids:
            raise ValueError(f"example {d} is empty")
        tokens.extend(ids)
        labels.extend(lab)
        positions.extend(range(len(ids)))
        docs.extend([d] * len(ids))
        cu.append(len(tokens))
    n_pad = length - len(tokens)
    if n_pad < 0:
        raise ValueError(f"{len(tokens)} tokens do not fit in a row of {length}")
    if n_pad:
        tokens.extend([pad_id] * n_pad)
        labels.extend([IGNORE_INDEX] * n_pad)
        positions.extend(range(n_pad))
        docs.extend([-1] * n_pad)
        cu.append(length)
    tok_t = torch.tensor(tokens, dtype=torch.long)
    doc_t = torch.tensor(docs, dtype=torch.long)
    targets, loss_mask = shift_labels(tok_t, torch.tensor(labels, dtype=torch.long), doc_t)
    return {
        "tokens": tok_t,
        "labels": targets,
        "loss_mask": loss_mask,
        "position_ids": torch.tensor(positions, dtype=torch.long),
        "document_ids": doc_t,
        "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
    }


def collate_rows(rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Stack rows from ``build_row`` / ``PackedDataset`` into a batch with batch-level ``cu_seqlens``."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    seq_len = rows[0]["tokens"].numel()
    if any(r["tokens"].numel() != seq_len for r in rows):
        raise ValueError("rows differ in length; pad them to one length first")
    batch: dict[str, Any] = {
        key: torch.stack([r[key] for r in rows])
        for key in ("tokens", "labels", "loss_mask", "position_ids", "document_ids")
    }
    # Row r occupies [r * s, (r + 1) * s) of the flattened batch; each row's boundaries end at s, so
    # dropping every row's leading 0 leaves no duplicate boundary.
    parts = [torch.zeros(1, dtype=torch.int32)]
    parts += [r["cu_seqlens"][1:] + i * seq_len for i, r in enumerate(rows)]
    cu = torch.cat(parts).to(torch.int32)
    batch["cu_seqlens"] = cu
    batch["max_seqlen"] = int((cu[1:] - cu[:-1]).max())
    return batch


def pad_batch(
    examples: Sequence[Any], pad_to: int | None = None, pad_id: int = 0, pad_to_multiple_of: int = 1
) -> dict[str, Any]:
    """Unpacked collate: one example per row, right-padded to the longest (or to ``pad_to``)."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    longest = max(len(_ids_labels(e)[0]) for e in examples)
    length = longest if pad_to is None else pad_to
    if length < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest example ({longest} tokens)")
    length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    return collate_rows([build_row([e], length, pad_id) for e in examples])


def block_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Dense attention mask ``[b, 1, s, s]`` (True = masked out, Megatron's convention).

    Query ``i`` may attend key ``j`` iff ``j <= i`` and both are in the same segment (same document id;
    the padding run, id -1, is one segment). Every query sees at least itself, so no softmax row is
    empty. This is the exact CPU reference for packed (THD) attention.
    """
    doc = torch.as_tensor(document_ids)
    if doc.dim() == 1:
        doc = doc.unsqueeze(0)
    s = doc.shape[-1]
    future = torch.ones(s, s, dtype=torch.bool, device=doc.device).triu(1)
    other_doc = doc[:, :, None] != doc[:, None, :]
    return (future | other_doc).unsqueeze(1)


@dataclass
class PackedDataset:
    """Examples packed into rows of exactly ``seq_len`` tokens; row ``i`` is built on access.

    ``bins[i]`` lists the example indices in row ``i`` in order. Rows are built lazily so that a large
    corpus costs only its token lists, not ``rows * seq_len`` tensors per field.
    """

    examples: Sequence[Any]
    bins: list[list[int]]
    seq_len: int
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return build_row([self.examples[j] for j in self.bins[i]], self.seq_len, self.pad_id)

    @property
    def num_tokens(self) -> int:
        """Non-pad tokens over all rows."""
        return sum(len(_ids_labels(self.examples[j])[0]) for b in self.bins for j in b)

    @property
    def efficiency(self) -> float:
        """Non-pad tokens / total tokens (1.0 for an empty dataset)."""
        total = len(self.bins) * self.seq_len
        return self.num_tokens / total if total else 1.0


def pack_bins(lengths: Sequence[int], seq_len: int, seed: int = 0) -> list[list[int]]:
    """Best-fit-decreasing bin packing of ``lengths`` into bins of capacity ``seq_len``.

    Items go longest first, each into the open bin with the least room that still fits it (else a new
    bin). Equal lengths are ordered by a ``seed``-ed shuffle, so the result is deterministic for a seed
    while different seeds mix different same-length documents. O(n log n) bisection plus list inserts.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    for i, n in enumerate(lengths):
        if n <= 0:
            raise ValueError(f"example {i} is empty")
        if n > seq_len:
            raise ValueError(
                f"example {i} has {n} tokens, more than seq_len={seq_len}; load with max_seq_len <= seq_len"
            )
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -lengths[i])  # stable: ties keep the seeded order
    bins: list[list[int]] = []
    # Open bins as sorted (room, bin index); full bins leave the list.
    open_bins: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(open_bins, (n, -1))
        if k == len(open_bins):
            b, room = len(bins), seq_len
            bins.append([])
        else:
            room, b = open_bins.pop(k)
        bins[b].append(i)
        room -= n
        if room > 0:
            bisect.insort(open_bins, (room, b))
    return bins


def pack_examples(examples: Sequence[Any], seq_len: int, pad_id: int = 0, seed: int = 0) -> PackedDataset:
    """Pack examples (``Example`` or ``(input_ids, labels)``) into rows of exactly ``seq_len`` tokens.

    Packing order is deterministic given ``seed``; shuffling the rows each epoch is the trainer's job.
    """
    lengths = [len(_ids_labels(e)[0]) for e in examples]
    return PackedDataset(examples, pack_bins(lengths, seq_len, seed), seq_len, pad_id)


def collate_packed(rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Collate ``PackedDataset`` items into a batch (a ``DataLoader`` ``collate_fn``)."""
    return collate_rows(rows)
