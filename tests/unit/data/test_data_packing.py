"""Packing, padded collation, the label shift and the block-causal mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_tulu.data.chat_template import IGNORE_INDEX
from megatron_tulu.data.packing import (
    block_causal_mask,
    collate_packed,
    pack_bins,
    pack_examples,
    pad_batch,
    shift_labels,
)
from megatron_tulu.data.sft import load_sft_examples
from megatron_tulu.data.tokenizer import DATA_DIR

I = IGNORE_INDEX  # noqa: E741


@pytest.fixture(scope="module")
def shipped(tok, tmp_path_factory):
    examples, _ = load_sft_examples(DATA_DIR / "sft.jsonl", tok, cache_dir=tmp_path_factory.mktemp("cache"))
    return examples


def segments_from_document_ids(document_ids: torch.Tensor) -> list[int]:
    """Lengths of the runs of equal ids in each row, rows in order (an independent cu_seqlens oracle)."""
    lengths = []
    for row in document_ids.tolist():
        start = 0
        for i in range(1, len(row) + 1):
            if i == len(row) or row[i] != row[i - 1]:
                lengths.append(i - start)
                start = i
    return lengths


def check_batch(batch: dict, docs_per_row: list[list[tuple[list[int], list[int]]]], pad_id: int) -> None:
    """Every invariant of the batch format, checked against the documents that went into each row."""
    b, s = batch["tokens"].shape
    assert batch["tokens"].dtype == torch.long and batch["cu_seqlens"].dtype == torch.int32
    for key in ("labels", "loss_mask", "position_ids", "document_ids"):
        assert batch[key].shape == (b, s)
    for r, docs in enumerate(docs_per_row):
        pos = 0
        for d, (ids, labels) in enumerate(docs):
            n = len(ids)
            sl = slice(pos, pos + n)
            assert batch["tokens"][r, sl].tolist() == ids
            assert batch["document_ids"][r, sl].tolist() == [d] * n
            assert batch["position_ids"][r, sl].tolist() == list(range(n))
            # Next-token targets inside the document; its last token predicts nothing.
            assert batch["labels"][r, sl].tolist() == [*labels[1:], I]
            assert batch["loss_mask"][r, sl].tolist() == [float(x != I) for x in [*labels[1:], I]]
            pos += n
        pad = slice(pos, s)
        assert batch["tokens"][r, pad].eq(pad_id).all()
        assert batch["document_ids"][r, pad].eq(-1).all()
        assert batch["labels"][r, pad].eq(I).all() and batch["loss_mask"][r, pad].eq(0).all()
        assert batch["position_ids"][r, pad].tolist() == list(range(s - pos))
    # Targets equal the next token wherever trained, and never cross a document boundary.
    trained = batch["loss_mask"].bool()
    assert torch.equal(batch["labels"][:, :-1][trained[:, :-1]], batch["tokens"][:, 1:][trained[:, :-1]])
    same_doc_next = batch["document_ids"][:, 1:] == batch["document_ids"][:, :-1]
    assert not (trained[:, :-1] & ~same_doc_next).any()
    assert not trained[:, -1].any()
    cu = batch["cu_seqlens"]
    assert cu[0] == 0 and cu[-1] == b * s
    assert (cu[1:] - cu[:-1]).tolist() == segments_from_document_ids(batch["document_ids"])
    assert batch["max_seqlen"] == int((cu[1:] - cu[:-1]).max())


def test_shift_labels_by_hand():
    ids = [10, 11, 12, 13, 14, 15]
    labels = [I, I, 12, 13, I, 15]
    targets, mask = shift_labels(ids, labels)
    assert targets.tolist() == [I, 12, 13, I, 15, I]
    assert mask.tolist() == [0, 1, 1, 0, 1, 0] and mask.dtype == torch.float32
    # Batched, with a document boundary between positions 2 and 3: position 2 must not predict 13.
    targets, mask = shift_labels(
        torch.tensor([ids, ids]), torch.tensor([labels, labels]), [[0, 0, 0, 1, 1, 1]] * 2
    )
    assert targets.tolist() == [[I, 12, I, I, 15, I]] * 2
    assert mask.sum() == 4


def test_shift_labels_rejects_already_shifted_labels():
    ids = [10, 11, 12]
    with pytest.raises(ValueError, match="already shifted"):
        shift_labels(ids, [11, 12, I])
    with pytest.raises(ValueError, match="shape"):
        shift_labels(ids, [I, 11])


def test_pack_bins_best_fit_decreasing():
    bins = pack_bins([5, 4, 3, 3, 1], seq_len=8)
    assert sorted(sorted([5, 4, 3, 3, 1][i] for i in b) for b in bins) == [[1, 3, 4], [3, 5]]
    assert sorted(i for b in bins for i in b) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="more than seq_len"):
        pack_bins([3, 9], seq_len=8)
    with pytest.raises(ValueError, match="empty"):
        pack_bins([3, 0], seq_len=8)


def test_packed_rows_on_shipped_data(shipped, tok):
    seq_len = 512
    packed = pack_examples(shipped, seq_len, pad_id=tok.pad_token_id, seed=0)
    # Each example lands in exactly one row, and no row overflows.
    assert sorted(i for b in packed.bins for i in b) == list(range(len(shipped)))
    assert all(sum(len(shipped[i]) for i in b) <= seq_len for b in packed.bins)
    total = sum(len(e) for e in shipped)
    assert packed.num_tokens == total
    assert packed.efficiency == pytest.approx(total / (len(packed) * seq_len))
    assert packed.efficiency >= 0.95

    rows = [packed[i] for i in range(0, len(packed), 7)]
    docs = [
        [(shipped[j].input_ids, shipped[j].labels) for j in packed.bins[i]] for i in range(0, len(packed), 7)
    ]
    batch = collate_packed(rows)
    assert batch["tokens"].shape == (len(rows), seq_len)
    check_batch(batch, docs, tok.pad_token_id)
    # Loss over all rows = every trained token of every example (the first token, a header, never is).
    all_mask = sum(float(packed[i]["loss_mask"].sum()) for i in range(len(packed)))
    assert all_mask == sum(sum(x != I for x in e.labels) for e in shipped)


def test_targets_never_cross_documents_even_when_next_document_starts_trained():
    # Chat examples start with an untrained header, which would hide a missing boundary; these do not.
    docs = [([5, 6, 7], [5, 6, 7]), ([8, 9], [8, 9]), ([10, 11, 12, 13], [10, 11, 12, 13])]
    packed = pack_examples(docs, seq_len=10, pad_id=0)
    assert len(packed) == 1
    row = packed[0]
    check_batch(collate_packed([row]), [[docs[j] for j in packed.bins[0]]], pad_id=0)
    assert int(row["loss_mask"].sum()) == sum(len(ids) - 1 for ids, _ in docs)


def test_packing_is_deterministic_per_seed(shipped):
    a = pack_examples(shipped, 512, seed=3).bins
    assert pack_examples(shipped, 512, seed=3).bins == a
    assert pack_examples(shipped, 512, seed=4).bins != a


def test_pad_batch_layout_and_fixed_length():
    docs = [([5, 6, 7], [I, 6, 7]), ([8, 9, 10, 11, 12], [I, I, 10, 11, 12]), ([13, 14], [I, 14])]
    batch = pad_batch(docs, pad_id=1)
    assert batch["tokens"].shape == (3, 5)
    check_batch(batch, [[d] for d in docs], pad_id=1)
    assert batch["cu_seqlens"].tolist() == [0, 3, 5, 10, 12, 15]
    assert batch["labels"][0].tolist() == [6, 7, I, I, I]

    fixed = pad_batch(docs, pad_to=8, pad_id=1)
    assert fixed["tokens"].shape == (3, 8)
    check_batch(fixed, [[d] for d in docs], pad_id=1)
    assert pad_batch(docs, pad_to_multiple_of=4)["tokens"].shape == (3, 8)
    with pytest.raises(ValueError, match="shorter"):
        pad_batch(docs, pad_to=4)


def test_block_causal_mask_by_hand():
    doc = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = block_causal_mask(doc)
    assert mask.shape == (1, 1, 6, 6) and mask.dtype == torch.bool
    allowed = [[j <= i and doc[0, i] == doc[0, j] for j in range(6)] for i in range(6)]
    assert mask[0, 0].tolist() == [[not a for a in row] for row in allowed]
    assert not mask[0, 0].diagonal().any()  # every query sees itself: no empty softmax row


def test_block_causal_mask_equals_per_document_attention(tok):
    # Attention over a packed row under the mask must equal causal attention over each document alone.
    torch.manual_seed(0)
    lengths = [4, 7, 3]
    seq_len = sum(lengths) + 2
    docs = [([1] * n, [I] * n) for n in lengths]
    packed = pack_examples(docs, seq_len, seed=0)
    row = packed[0]
    order = packed.bins[0]
    q, k, v = (torch.randn(1, 2, seq_len, 8) for _ in range(3))
    mask = block_causal_mask(row["document_ids"].unsqueeze(0))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask)
    pos = 0
    for j in order:
        n = lengths[j]
        sl = slice(pos, pos + n)
        ref = F.scaled_dot_product_attention(q[..., sl, :], k[..., sl, :], v[..., sl, :], is_causal=True)
        torch.testing.assert_close(out[..., sl, :], ref)
        pos += n
    cu = row["cu_seqlens"].tolist()
    assert cu == [0, *[sum(lengths[j] for j in order[: i + 1]) for i in range(len(order))], seq_len]
