"""The pruned batch's layout (sequence.py) against a row-by-row Python model of what each function promises."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from sparsevlm.sequence import (
    MERGED,
    TEXT,
    Inserted,
    Layout,
    build_attention_mask,
    frame_index,
    gather_tokens,
    last_positions,
    rebuild,
    reduce_frames,
    visual_indices,
)

# A token of one row, as the row-by-row model sees it: (hidden[0], position, visual_index, rater).
Token = tuple[float, int, int, bool]

D = 2


def make_layout(rows: list[list[int]], raters: list[set[int]]) -> Layout:
    """A left-padded layout; ``rows[b]`` lists each real token's visual_index (TEXT for text), positions count
    from 0 in each row, and token ``j`` of row ``b`` has hidden ``[100 b + j, -(100 b + j)]``."""
    b, length = len(rows), max(len(r) for r in rows)
    hidden = torch.zeros(b, length, D)
    positions = torch.zeros(b, length, dtype=torch.long)
    valid = torch.zeros(b, length, dtype=torch.bool)
    visual_index = torch.full((b, length), TEXT)
    rater = torch.zeros(b, length, dtype=torch.bool)
    for i, row in enumerate(rows):
        pad = length - len(row)
        for j, index in enumerate(row):
            hidden[i, pad + j] = torch.tensor([100.0 * i + j, -(100.0 * i + j)])
            positions[i, pad + j] = j
            valid[i, pad + j] = True
            visual_index[i, pad + j] = index
            rater[i, pad + j] = j in raters[i]
    n_visual = tuple(sum(index != TEXT for index in row) for row in rows)
    return Layout(hidden, positions, valid, visual_index, rater, tuple(len(r) for r in rows), n_visual)


def real_tokens(layout: Layout) -> list[list[Token]]:
    """Each row's real tokens in order, read one by one."""
    out = []
    for b in range(layout.hidden.shape[0]):
        out.append(
            [
                (
                    float(layout.hidden[b, j, 0]),
                    int(layout.position_ids[b, j]),
                    int(layout.visual_index[b, j]),
                    bool(layout.rater[b, j]),
                )
                for j in range(layout.hidden.shape[1])
                if layout.valid[b, j]
            ]
        )
    return out


def check_left_padded(layout: Layout) -> None:
    """Real tokens are the last ``lengths[b]`` of each row; padding is zero, TEXT, not a rater."""
    width = layout.hidden.shape[1]
    assert width == max(layout.lengths)
    for b, n in enumerate(layout.lengths):
        assert layout.valid[b].tolist() == [False] * (width - n) + [True] * n
        pad = ~layout.valid[b]
        assert (layout.hidden[b][pad] == 0).all() and (layout.position_ids[b][pad] == 0).all()
        assert (layout.visual_index[b][pad] == TEXT).all() and not layout.rater[b][pad].any()
    assert layout.n_visual == tuple(layout.visual.sum(1).tolist())


ROWS = [
    [TEXT, 0, 1, 2, 3, 4, 5, TEXT, TEXT, TEXT],  # 10 tokens, 6 visual
    [TEXT, 0, 1, 2, 3, TEXT, TEXT],  # 7 tokens, 4 visual
    [TEXT, TEXT, TEXT, TEXT],  # text only
]
RATERS = [{8, 9}, {6}, {3}]


def test_a_made_layout_is_left_padded_and_knows_its_counts() -> None:
    layout = make_layout(ROWS, RATERS)
    check_left_padded(layout)
    assert layout.padded and not make_layout([ROWS[0]], [RATERS[0]]).padded
    assert layout.visual.sum(1).tolist() == [6, 4, 0]


def _expected(layout: Layout, deleted: list[set[int]], inserted: list[list[Token]], compact: bool) -> list[list[Token]]:
    """The promise of rebuild, row by row: survivors in order, merged tokens right after the last surviving
    visual token, and with ``compact`` positions renumbered from the row's first position."""
    out = []
    for b, tokens in enumerate(real_tokens(layout)):
        kept = [t for j, t in enumerate(tokens) if j not in deleted[b]]
        last_visual = max((j for j, t in enumerate(kept) if t[2] != TEXT), default=-1)
        row = kept[: last_visual + 1] + inserted[b] + kept[last_visual + 1 :]
        if compact and row:
            row = [(h, row[0][1] + j, index, r) for j, (h, _, index, r) in enumerate(row)]
        out.append(row)
    return out


@pytest.mark.parametrize("compact", [False, True])
def test_rebuild_drops_inserts_after_the_last_surviving_visual_token_and_re_pads(compact: bool) -> None:
    layout = make_layout(ROWS, RATERS)
    pad = [max(layout.lengths) - n for n in layout.lengths]
    # Pruning drops visual tokens: row 0 loses visual 1, 2 and 5 (its last), row 1 visual 0, row 2 nothing.
    deleted = [{2, 3, 6}, {1}, set()]
    mask = torch.zeros(layout.valid.shape, dtype=torch.bool)
    for b, js in enumerate(deleted):
        for j in js:
            mask[b, pad[b] + j] = True
    merged = [[(1000.0, 40, MERGED, False), (1001.0, 41, MERGED, False)], [(2000.0, 50, MERGED, False)], []]
    hidden = torch.zeros(3, 2, D)
    positions = torch.zeros(3, 2, dtype=torch.long)
    for b, tokens in enumerate(merged):
        for c, (h, p, _, _) in enumerate(tokens):
            hidden[b, c] = torch.tensor([h, -h])
            positions[b, c] = p
    out = rebuild(layout, mask, [len(js) for js in deleted], Inserted(hidden, positions, [2, 1, 0]), compact=compact)
    check_left_padded(out)
    assert real_tokens(out) == _expected(layout, deleted, merged, compact)
    assert out.lengths == (9, 7, 4) and out.n_visual == (5, 4, 0)
    assert torch.equal(out.hidden[..., 1], -out.hidden[..., 0])  # every feature moved with its token


def test_rebuild_with_nothing_to_do_changes_nothing() -> None:
    layout = make_layout(ROWS, RATERS)
    out = rebuild(layout, torch.zeros(layout.valid.shape, dtype=torch.bool), [0, 0, 0])
    for name in ("hidden", "position_ids", "valid", "visual_index", "rater"):
        assert torch.equal(getattr(out, name), getattr(layout, name)), name
    assert (out.lengths, out.n_visual) == (layout.lengths, layout.n_visual)


def _allowed(kv_valid: torch.Tensor, q_len: int) -> list[list[list[bool]]]:
    """Query ``i`` is key ``K - q_len + i``: it sees real keys up to itself, and always itself."""
    k = kv_valid.shape[1]
    return [
        [[(j <= k - q_len + i and bool(valid[j])) or j == k - q_len + i for j in range(k)] for i in range(q_len)]
        for valid in kv_valid
    ]


@pytest.mark.parametrize("q_len", [1, 3, 6])
def test_the_bool_mask_is_causal_without_padding_keys_and_never_empty(q_len: int) -> None:
    kv_valid = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    mask = build_attention_mask(kv_valid, q_len, "sdpa", torch.float32, padded=True)
    assert mask is not None and mask.dtype == torch.bool and mask.shape == (2, 1, q_len, 6)
    assert mask[:, 0].tolist() == _allowed(kv_valid, q_len)
    assert mask.any(-1).all()  # a padding query still sees itself: its softmax is not NaN


def test_the_eager_mask_is_additive_in_the_given_dtype() -> None:
    kv_valid = torch.tensor([[False, True, True, True]])
    mask = build_attention_mask(kv_valid, 4, "eager", torch.bfloat16, padded=True)
    assert mask is not None and mask.dtype == torch.bfloat16 and mask.shape == (1, 1, 4, 4)
    allowed = torch.tensor(_allowed(kv_valid, 4))[:, None]
    assert (mask[allowed] == 0).all() and (mask[~allowed] == torch.finfo(torch.bfloat16).min).all()


def test_sdpa_takes_its_own_causal_path_only_without_padding_and_for_one_or_all_queries() -> None:
    kv_valid = torch.ones(2, 5, dtype=torch.bool)
    assert build_attention_mask(kv_valid, 1, "sdpa", torch.float32, padded=False) is None
    assert build_attention_mask(kv_valid, 5, "sdpa", torch.float32, padded=False) is None
    assert build_attention_mask(kv_valid, 3, "sdpa", torch.float32, padded=False) is not None
    assert build_attention_mask(kv_valid, 5, "sdpa", torch.float32, padded=True) is not None
    assert build_attention_mask(kv_valid, 5, "eager", torch.float32, padded=False) is not None


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_a_key_bias_makes_an_additive_mask_with_the_bias_on_allowed_keys(implementation: str) -> None:
    kv_valid = torch.tensor([[False, True, True, True], [True, True, True, True]])
    bias = torch.tensor([[0.0, 0.5, 0.0, 1.5], [2.0, 0.0, 0.0, 0.0]])
    mask = build_attention_mask(kv_valid, 4, implementation, torch.float32, padded=False, key_bias=bias)
    assert mask is not None and mask.dtype == torch.float32 and mask.shape == (2, 1, 4, 4)
    allowed = torch.tensor(_allowed(kv_valid, 4))[:, None]
    expected = bias[:, None, None, :].expand(2, 1, 4, 4)
    assert torch.equal(mask[allowed], expected[allowed])
    assert (mask[~allowed] == torch.finfo(torch.float32).min).all()


def test_a_key_weighing_w_takes_the_attention_of_w_copies_of_itself() -> None:
    """Proportional attention: softmax over a key with ``+ log w`` equals softmax over ``w`` copies of it, so the
    output of attention is the same as if the merged token's members were all there with its key and value."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 8, generator=g) for _ in range(3))  # [B, H, L, hd]
    copies = 4
    k_many = torch.cat([k, k[:, :, 1:2].expand(-1, -1, copies - 1, -1)], 2)  # key 1 repeated, as a merged token's
    v_many = torch.cat([v, v[:, :, 1:2].expand(-1, -1, copies - 1, -1)], 2)
    bias = torch.tensor([[0.0, float(torch.tensor(copies).log()), 0.0]])
    mask = build_attention_mask(torch.ones(1, 3, dtype=torch.bool), 3, "sdpa", torch.float32, False, bias)
    assert mask is not None
    last = slice(2, 3)  # the last query sees every key
    weighted = torch.nn.functional.scaled_dot_product_attention(q[:, :, last], k, v, attn_mask=mask[:, :, last])
    repeated = torch.nn.functional.scaled_dot_product_attention(q[:, :, last], k_many, v_many)
    assert torch.allclose(weighted, repeated, atol=1e-6)


def test_rebuild_carries_weights_and_gives_inserted_tokens_theirs() -> None:
    layout = make_layout(ROWS, RATERS)
    pad = [max(layout.lengths) - n for n in layout.lengths]
    weight = torch.ones(layout.valid.shape)
    weight[0, pad[0] + 1] = 3.0  # a token that already stands for three
    layout = replace(layout, weight=weight)
    deleted = torch.zeros(layout.valid.shape, dtype=torch.bool)
    deleted[0, pad[0] + 2] = True
    hidden = torch.zeros(3, 1, D)
    positions = torch.full((3, 1), 40)
    out = rebuild(layout, deleted, [1, 0, 0], Inserted(hidden, positions, [1, 0, 0], torch.tensor([[5.0], [0], [0]])))
    assert out.weight is not None
    real = out.weight[out.valid]
    assert sorted(real.tolist()).count(1.0) == int(out.valid.sum()) - 2
    merged = out.valid & (out.visual_index == MERGED)
    assert out.weight[merged].tolist() == [5.0]
    assert 3.0 in out.weight[0].tolist()
    bias = out.key_bias()
    assert bias is not None and torch.allclose(bias, out.weight.log())
    unweighted = rebuild(make_layout(ROWS, RATERS), deleted, [1, 0, 0])
    assert unweighted.weight is None and unweighted.key_bias() is None


def test_gather_tokens_takes_each_rows_own_positions() -> None:
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    index = torch.tensor([[4, 0], [1, 1]])
    expected = torch.stack([torch.stack([x[b, i] for i in row]) for b, row in enumerate(index.tolist())])
    assert torch.equal(gather_tokens(x, index), expected)


def test_visual_indices_count_each_rows_visual_tokens_in_order() -> None:
    visual = torch.tensor([[False, True, True, False, True], [True, False, False, False, True]])
    expected = []
    for row in visual.tolist():
        seen, out = 0, []
        for v in row:
            out.append(seen if v else TEXT)
            seen += v
        expected.append(out)
    assert visual_indices(visual).tolist() == expected


def test_last_positions_are_those_of_each_rows_last_real_token() -> None:
    valid = torch.tensor([[False, False, True, True, True], [True, True, True, True, True], [False] * 5])
    position_ids = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    assert last_positions(valid, position_ids).tolist() == [2, 4, 7]  # an empty row: its first column


def test_frame_index_forward_fills_from_the_previous_visual_token() -> None:
    visual_index = torch.tensor(
        [[TEXT, 0, 1, 2, 3, 4, 5, MERGED, 6, 7, TEXT], [TEXT, TEXT, 3, MERGED, 0, 8, 8, 8, 8, 8, 8]]
    )
    assert frame_index(visual_index, 3).tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2],
        [0, 0, 1, 1, 0, 2, 2, 2, 2, 2, 2],
    ]
    assert frame_index(visual_index, None).tolist()[0] == [0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 7]


def test_reduce_frames_groups_rows_by_frame_count_and_leaves_partial_frames_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Rows 0 and 2: 2 frames of 3 tokens; row 1: 4 visual tokens, not whole frames; row 3: text only.
    rows = [ROWS[0], ROWS[1], [TEXT, 0, 1, 2, 3, 4, 5, TEXT], ROWS[2]]
    layout = make_layout(rows, [*RATERS[:2], {7}, RATERS[2]])
    calls = []

    def keep_first_frame(frames: torch.Tensor, least: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Doubles every feature; keeps frame 0 and the first token of later frames."""
        calls.append((tuple(frames.shape), least.tolist(), frames[..., 0].tolist()))
        keep = torch.zeros(frames.shape[:3], dtype=torch.bool)
        keep[:, 0] = True
        keep[:, 1:, 0] = True
        return frames * 2, keep

    with caplog.at_level(logging.WARNING, logger="sparsevlm.sequence"):
        out = reduce_frames(layout, 3, keep_first_frame, room=[5, 99, 2, 99])
    assert "row 1: 4 visual tokens are not whole frames of 3" in caplog.text
    # One call for both 6-token rows, their frames in visual order; least = tokens over the row's room.
    assert calls == [((2, 2, 3, D), [1, 4], [[[1, 2, 3], [4, 5, 6]], [[201, 202, 203], [204, 205, 206]]])]
    check_left_padded(out)
    before, after = real_tokens(layout), real_tokens(out)
    for b in (0, 2):
        dropped = {j for j, t in enumerate(before[b]) if t[2] in (4, 5)}  # frame 1 but its first token
        expected = [(h * 2 if index != TEXT else h, p, index, r) for j, (h, p, index, r) in enumerate(before[b])]
        assert after[b] == [t for j, t in enumerate(expected) if j not in dropped]
    assert after[1] == before[1] and after[3] == before[3]
    assert out.n_visual == (4, 4, 4, 0)
