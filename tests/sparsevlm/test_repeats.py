"""Cross-frame redundancy inside the LLM: the static-patch rule, its placement on the batch, and a pruning step
that spends its budget on distinct content first."""

from __future__ import annotations

import torch
from tiny_models import build_inputs, build_model, row_inputs, tokens_per_frame

from sparsevlm import SparseConfig, apply_patch, last_stats
from sparsevlm.repeats import (
    at_visual_index,
    by_visual_index,
    distinct_first,
    place_on_tokens,
    settled_patches,
    static_patches,
)
from sparsevlm.scoring import keep_mask


def _static_by_loop(videos: torch.Tensor, patch: int, threshold: float) -> torch.Tensor:
    """The rule written out patch by patch: mean |change| since the previous frame, CLS and frame 0 never."""
    n, t, _, h, w = videos.shape
    out = torch.zeros(n, t, 1 + (h // patch) * (w // patch), dtype=torch.bool)
    for v in range(n):
        for f in range(1, t):
            for i in range(h // patch):
                for j in range(w // patch):
                    rows, cols = slice(i * patch, (i + 1) * patch), slice(j * patch, (j + 1) * patch)
                    change = (videos[v, f, :, rows, cols] - videos[v, f - 1, :, rows, cols]).abs().mean()
                    out[v, f, 1 + i * (w // patch) + j] = bool(change <= threshold)
    return out


def test_static_patches_equal_the_rule_patch_by_patch() -> None:
    gen = torch.Generator().manual_seed(0)
    videos = torch.randn(3, 4, 3, 12, 8, generator=gen)  # 3 x 2 patches of 4 px
    videos[:, 2] = videos[:, 1]  # frame 2 repeats frame 1 exactly
    videos[0, 3, :, :4, :4] = videos[0, 2, :, :4, :4] + 0.01  # a faint change: static at 0.05
    videos[1, 3, :, 4:8, 4:] = videos[1, 2, :, 4:8, 4:]  # one patch repeats, its neighbours do not
    got = static_patches(videos, 4, 0.05)
    assert torch.equal(got, _static_by_loop(videos, 4, 0.05))
    assert got[:, 2, 1:].all() and not got[:, :, 0].any() and not got[:, 0].any()
    assert got[0, 3, 1] and got[1, 3, 4] and int(got[:, 3].sum()) == 2


def test_a_moving_object_is_never_a_duplicate_and_a_static_one_is() -> None:
    frames, size, patch = 6, 32, 8
    videos = torch.zeros(1, frames, 3, size, size)
    for f in range(frames):
        videos[0, f, 0, 2:6, 2 + 4 * f : 6 + 4 * f] = 1.0  # a red square moving right by 4 px a frame
        videos[0, f, 1, 20:28, 20:28] = 1.0  # a green square that stays
    static = static_patches(videos, patch, 0.02)[0, :, 1:].view(frames, 4, 4)  # [T, gh, gw]
    for f in range(1, frames):
        for col in range(4):
            touched = any(
                not (right <= col * patch or left >= (col + 1) * patch)
                for left, right in ((2 + 4 * f, 6 + 4 * f), (2 + 4 * (f - 1), 6 + 4 * (f - 1)))
            )
            assert bool(static[f, 0, col]) != touched  # a patch the square entered or left is not a duplicate
    assert static[1:, 2:, 2:].all()  # the green square and the background repeat
    assert static[1:, 1:, :].sum() == (frames - 1) * 12


def test_a_duplicate_stays_static_into_the_next_frame() -> None:
    static = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(4)) > 0.3
    got = settled_patches(static)
    for n in range(3):
        for t in range(5):
            for p in range(7):
                expected = bool(static[n, t, p]) and (t == 4 or bool(static[n, t + 1, p]))
                assert bool(got[n, t, p]) == expected


def test_flags_follow_the_video_tokens_of_a_ragged_batch() -> None:
    # Row 0: left padding and one video; row 1: text only; row 2: an image token, then a video.
    video = torch.tensor(
        [
            [0, 0, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    image = torch.zeros_like(video)
    image[2, 2] = True
    flags = torch.tensor([[[0, 1], [1, 0]], [[1, 1], [0, 1]]], dtype=torch.bool)  # [N=2, T=2, P=2]
    placed = place_on_tokens(flags, video)
    expected = torch.zeros_like(video)
    values = iter(flags.flatten().tolist())
    for b in range(3):
        for i in range(7):
            if video[b, i]:
                expected[b, i] = next(values)
    assert torch.equal(placed, expected)
    visual = video | image
    table = by_visual_index(placed, visual, width=5)
    for b in range(3):  # the j-th visual token of row b, image tokens included in the count
        positions = visual[b].nonzero().flatten().tolist()
        assert table[b].tolist() == [bool(placed[b, p]) for p in positions] + [False] * (5 - len(positions))


def test_a_table_by_visual_index_reads_back_at_the_tokens_that_survive() -> None:
    visual = torch.tensor([[False, True, True, True, False], [True, True, False, False, False]])
    placed = torch.tensor([[True, True, False, True, True], [False, True, True, False, False]])
    table = by_visual_index(placed, visual, 3)  # [B, 3]
    assert table.tolist() == [[True, False, True], [False, True, False]]  # text flags dropped
    # After pruning: row 0 kept visual 2 and 0 (in that order) with a merged token (-2) and text (-1) around.
    visual_index = torch.tensor([[-1, 2, -2, 0], [1, -1, -1, 0]])
    expected = [[bool(i >= 0 and table[b, i]) for i in row.tolist()] for b, row in enumerate(visual_index)]
    assert at_visual_index(table, visual_index).tolist() == expected


def test_distinct_first_spends_the_budget_on_distinct_tokens_first() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(3, 9, generator=gen) * 5 - 1
    present = torch.rand(3, 9, generator=gen) > 0.2
    present[1, :] = False  # a row without candidates
    duplicate = torch.rand(3, 9, generator=gen) > 0.4
    scores = scores.masked_fill(~present, float("-inf"))
    keep = torch.tensor([4, 2, 7])
    got = keep_mask(distinct_first(scores, duplicate), present, keep)
    for b in range(3):
        ranked = sorted(
            (i for i in range(9) if present[b, i]), key=lambda i: (bool(duplicate[b, i]), -float(scores[b, i]))
        )
        assert set(got[b].nonzero().flatten().tolist()) == set(ranked[: int(keep[b])])
    assert torch.equal(distinct_first(scores, torch.zeros_like(duplicate)), scores)


XF = SparseConfig(prune_layers=(1,), keep_tokens=(20,), static_threshold=0.0)


def test_a_static_video_keeps_its_distinct_tokens_before_any_repeat() -> None:
    model = build_model()
    inputs = build_inputs(model, [5, 9])
    inputs["pixel_values_videos"][1] = inputs["pixel_values_videos"][1, :1]  # row 1: every frame is frame 0
    tpf = tokens_per_frame(model)
    with torch.no_grad():
        apply_patch(model, XF)
        model(**inputs)
        xf = last_stats(model)
        apply_patch(model, XF.replace(static_threshold=None))
        model(**inputs)
        plain = last_stats(model)
    kept = xf[1].kept_indices[1].tolist()
    distinct = set(range(tpf)) | {f * tpf for f in range(8)}  # frame 0 and every CLS
    assert len(kept) == 20 and set(kept) <= distinct
    assert not set(plain[1].kept_indices[1].tolist()) <= distinct  # the raters alone spend some on repeats
    assert torch.equal(xf[0].kept_indices[1], plain[0].kept_indices[1])  # random frames: nothing repeats


def test_without_repeats_the_cross_frame_method_is_the_plain_one() -> None:
    model = build_model()
    inputs = build_inputs(model, [5, 9])  # random frames: no patch equals its previous one
    with torch.no_grad():
        apply_patch(model, XF.replace(static_threshold=None))
        expected = model(**inputs).logits
        apply_patch(model, XF)
        got = model(**inputs).logits
    assert torch.equal(got, expected)


def test_a_partly_static_batch_equals_each_row_alone() -> None:
    model = build_model()
    inputs = build_inputs(model, [4, 10], seed=2)
    pixels = inputs["pixel_values_videos"]
    pixels[:, 1:, :, :16] = pixels[:, :1, :, :16]  # the top half of every frame repeats frame 0
    apply_patch(model, XF.replace(keep_tokens=(40,)))
    with torch.no_grad():
        batch = model(**inputs).logits[:, -1]
        stats = last_stats(model)
        alone = [model(**row_inputs(inputs, b)).logits[0, -1] for b in range(2)]
        alone_stats = last_stats(model)
    for b in range(2):
        torch.testing.assert_close(batch[b], alone[b], atol=1e-5, rtol=1e-5)
    assert torch.equal(stats[1].kept_indices[1], alone_stats[0].kept_indices[1])


def test_never_keeping_repeats_makes_a_static_video_cheaper_and_changes_nothing_else() -> None:
    model = build_model()
    inputs = build_inputs(model, [5, 9])
    inputs["pixel_values_videos"][1] = inputs["pixel_values_videos"][1, :1]  # row 1: every frame is frame 0
    tpf = tokens_per_frame(model)
    distinct = set(range(tpf)) | {f * tpf for f in range(8)}  # frame 0 and every CLS: 24 tokens
    config = XF.replace(keep_tokens=(30,))
    with torch.no_grad():
        apply_patch(model, config)
        last = model(**inputs).logits
        last_stats_ = last_stats(model)
        apply_patch(model, config.replace(repeats="never"))
        never = model(**inputs).logits
        never_stats = last_stats(model)
    assert len(last_stats_[1].kept_indices[1]) == 30
    assert set(never_stats[1].kept_indices[1].tolist()) == distinct
    assert never_stats[1].equivalent_tokens < last_stats_[1].equivalent_tokens
    # Row 0 (random frames) repeats nothing: the same answer, though row 1's shorter sequence changes its padding.
    torch.testing.assert_close(never[0, -1], last[0, -1], atol=1e-5, rtol=1e-5)
