"""Cross-frame redundancy inside the LLM: which visual tokens repeat the previous frame, and how a pruning
step spends its budget on the tokens that do not ("what repeats costs once; tokens go where frames differ").

A token is a *duplicate* when its patch is static: the patch's pixels equal (within a small mean absolute
change) the same patch of the previous frame. The test is on pixels, not on the projector's features, because
the features are shift-invariant colour/shape detectors: a moving object's patches look alike at every
position, so a feature test folds a moving object into its first position and loses direction and order
questions (``shared/reference/fidelity-findings.md``, cross-frame merging). A patch that an object enters,
leaves or crosses changes its pixels and is therefore never a duplicate. Frame 0 and the CLS tokens are never
duplicates. Pure tensor functions; no model knowledge.
"""

from __future__ import annotations

import torch

from sparsevlm.sequence import visual_indices


def static_patches(videos: torch.Tensor, patch_size: int, threshold: float) -> torch.Tensor:
    """``[N, T, 1 + G]`` bool: which of each frame's tokens (CLS first, then the ``G`` patches row-major, as a
    CLIP vision tower lays them out) show the same pixels as in the previous frame.

    Args:
        videos: ``[N, T, C, H, W]`` pixel values (any normalisation: the threshold is in its units).
        patch_size: the vision tower's patch side in pixels; ``H`` and ``W`` are multiples of it.
        threshold: a patch is static when the mean absolute change of its ``C * patch_size**2`` values since
            the previous frame is at most this.
    """
    n, t, c, h, w = videos.shape
    gh, gw = h // patch_size, w // patch_size
    change = (videos[:, 1:] - videos[:, :-1]).abs().float()  # [N, T-1, C, H, W]
    change = change.view(n, t - 1, c, gh, patch_size, gw, patch_size).mean(dim=(2, 4, 6))  # [N, T-1, gh, gw]
    static = torch.zeros(n, t, 1 + gh * gw, dtype=torch.bool, device=videos.device)
    static[:, 1:, 1:] = change.flatten(2) <= threshold  # frame 0 and CLS stay False
    return static


def settled_patches(static: torch.Tensor) -> torch.Tensor:
    """``[N, T, P]`` bool: the duplicates among ``static`` patches (:func:`static_patches`): static since the
    previous frame *and* into the next one (the last frame: static suffices). The frame just before a patch
    changes stays distinct, because the model reads motion and appearance by comparing a patch with the same
    position a frame earlier (chosen on the dev seed: 5 % budget 0.977 against 0.961 without it).
    """
    into_next = torch.ones_like(static)
    into_next[:, :-1] = static[:, 1:]
    return static & into_next


def place_on_tokens(flags: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: per-video-token ``flags`` written at the video-token positions of a batch, in the order
    the model scatters the video features into them (row-major over the batch; the model checks that the
    counts agree), False elsewhere (text, image tokens).

    Args:
        flags: ``[N, T, P]`` bool, one per video token (:func:`static_patches`).
        video: ``[B, L]`` bool video-token positions.
    """
    placed = torch.zeros_like(video)
    return placed.masked_scatter(video, flags.reshape(-1).to(video.device))  # no host sync, as the model's own


def by_visual_index(placed: torch.Tensor, visual: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` bool: ``placed`` (``[B, L]``) re-indexed by each row's visual-token index (the ``j``-th
    visual token of row ``b`` at ``[b, j]``), so it follows the tokens through pruning and merging."""
    index = visual_indices(visual).masked_fill(~visual, width)  # [B, L]; non-visual to a spare column
    table = torch.zeros(visual.shape[0], width + 1, dtype=torch.bool, device=visual.device)
    table.scatter_(1, index, placed & visual)
    return table[:, :width]


def at_visual_index(table: torch.Tensor, visual_index: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: a table by visual index (``[B, V]``, :func:`by_visual_index`) read at each token of a
    sequence, the inverse of :func:`by_visual_index` after pruning and merging moved the tokens.

    Args:
        table: ``[B, V]`` bool, entry ``[b, j]`` for the ``j``-th original visual token of row ``b``.
        visual_index: ``[B, L]`` long, each token's original visual index; negative (text, padding, a merged
            token) reads False.
    """
    return table.gather(1, visual_index.clamp(0, table.shape[1] - 1)) & (visual_index >= 0)


def distinct_first(scores: torch.Tensor, duplicate: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` scores that rank every duplicate below every other token of its row, keeping the order within
    each group, so a top-``k`` selection spends its ``k`` on distinct content first and takes a duplicate only
    when the distinct tokens run out (a static video then keeps its first frame and the rest of the budget
    still buys the duplicates it needs).

    Args:
        scores: ``[B, L]`` float, ``-inf`` where a token is no candidate.
        duplicate: ``[B, L]`` bool.
    """
    finite = torch.isfinite(scores)
    low = torch.where(finite, scores, float("inf")).amin(1, keepdim=True)  # [B, 1]
    high = torch.where(finite, scores, float("-inf")).amax(1, keepdim=True)  # [B, 1]
    offset = torch.where(torch.isfinite(high - low), high - low + 1.0, 0.0)  # rows without candidates: 0
    return torch.where(duplicate & finite, scores - offset, scores)
