"""The rater bookkeeping of a pruning layer (sparsevlm.scoring): which rows rate, what they may see, and their
attention on the visual tokens, each against a plain loop over the rows."""

from __future__ import annotations

import torch

from sparsevlm.scoring import rater_key_mask, rater_rows, visual_columns


def test_rater_rows_lists_each_rows_raters_in_order_and_marks_the_padding_slots() -> None:
    rater = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    order, valid = rater_rows(rater, 3)
    assert order[0].tolist() == [1, 3, 4] and valid[0].tolist() == [True, True, True]
    assert order[1, 0].item() == 0 and valid[1].tolist() == [True, False, False]
    assert not rater[1, order[1, 1:]].any()  # padding slots point at non-raters


def test_rater_key_mask_is_causal_over_real_keys_and_never_empty() -> None:
    valid = torch.tensor([[False, True, True, True, True]])  # one left-padding column
    order = torch.tensor([[2, 4, 0]])  # the last slot is padding at the padding position
    allowed = rater_key_mask(valid, order)
    for r, position in enumerate(order[0].tolist()):
        expected = [(k <= position and bool(valid[0, k])) or k == position for k in range(5)]
        assert allowed[0, r].tolist() == expected
    assert allowed.any(-1).all()


def test_visual_columns_gathers_each_rows_visual_tokens_and_zeroes_the_rest() -> None:
    torch.manual_seed(0)
    present = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 0, 0, 1, 0, 0]], dtype=torch.bool)
    attention = torch.rand(2, 3, 6)
    rater_valid = torch.tensor([[True, True, False], [True, True, True]])
    n_visual = present.sum(1)
    columns = visual_columns(attention, present, n_visual, int(n_visual.max()), rater_valid)
    assert columns.shape == (2, 3, 3)
    for b in range(2):
        positions = present[b].nonzero().flatten().tolist()
        for r in range(3):
            expected = [float(attention[b, r, p]) if rater_valid[b, r] else 0.0 for p in positions]
            expected += [0.0] * (3 - len(positions))
            assert torch.allclose(columns[b, r], torch.tensor(expected))
