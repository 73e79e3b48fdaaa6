import pytest
import torch

from megatron_tulu.rollout.batch import RolloutSample, build_rollout_tensors, row_length


def sample(prompt: list[int], response: list[int], score: float = 1.0) -> RolloutSample:
    return RolloutSample(prompt, response, "stop", score, 1.0, "gsm8k", 0)


def test_row_length_rounds_the_longest_row_up_and_respects_the_cap():
    batch = [sample([1] * 5, [2] * 3), sample([1] * 9, [2] * 8)]  # longest row: 17 tokens
    assert row_length(batch, 16, 160) == 32
    assert row_length(batch, 8, 160) == 24
    assert row_length(batch, 16, 20) == 20  # rounding stops at the configured maximum
    assert row_length(batch, 16, 10) == 17  # a row longer than the cap still fits


def test_rows_mask_exactly_the_response_targets():
    data = build_rollout_tensors([sample([5, 6, 7], [8, 9], score=2.5), sample([5], [4, 3, 2])], 6, pad_id=0)
    assert data["tokens"].tolist() == [[5, 6, 7, 8, 9, 0], [5, 4, 3, 2, 0, 0]]
    assert data["labels"].tolist() == [[6, 7, 8, 9, 0, 0], [4, 3, 2, 0, 0, 0]]
    # position t predicts token t+1: only the positions whose target is a response token count
    assert data["mask"].tolist() == [[0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]
    assert torch.equal(data["scores"], torch.tensor([2.5, 1.0]))
    with pytest.raises(ValueError, match="rollout 0 has 5 tokens"):
        build_rollout_tensors([sample([5, 6, 7], [8, 9])], 4, pad_id=0)
