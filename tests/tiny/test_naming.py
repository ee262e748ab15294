"""The naming loss is a KL divergence: zero exactly when patches name what they show, positive otherwise."""

from __future__ import annotations

import torch

from sparsevlm.tiny.batches import IGNORE
from sparsevlm.tiny.naming import naming_loss

V, D = 12, 16
EMB = torch.eye(V, D) * 4.0  # orthonormal word directions (scaled)
COLOUR_IDS, SHAPE_IDS = torch.tensor([2, 3]), torch.tensor([5, 6])


def _loss(x: torch.Tensor, colour: list[int], shape: list[int]) -> torch.Tensor:
    return naming_loss(x, EMB, torch.tensor(colour), torch.tensor(shape), COLOUR_IDS, SHAPE_IDS)


def test_a_silent_background_and_a_named_object_cost_nothing() -> None:
    background = torch.zeros(D)  # relates equally to every word
    red_square = 50.0 * (EMB[3] + EMB[5])  # colour class 2 -> word 3, shape class 1 -> word 5, nothing else
    loss = _loss(torch.stack([background, red_square]), [0, 2], [0, 1])
    assert loss.item() < 1e-6


def test_a_background_that_names_a_word_or_an_object_named_wrongly_costs() -> None:
    loud_background = 3.0 * EMB[9]  # the failure measured on tiny-deep: background relates to one word
    assert _loss(loud_background[None], [0], [0]).item() > 0.5
    wrong = 50.0 * (EMB[2] + EMB[5])  # says colour word 2 where the patch is colour class 2 (word 3)
    assert _loss(wrong[None], [2], [1]).item() > 10


def test_ignored_patches_do_not_count() -> None:
    loud = 3.0 * EMB[9]
    alone = _loss(torch.zeros(1, D), [0], [0])
    mixed = _loss(torch.stack([torch.zeros(D), loud]), [0, IGNORE], [0, IGNORE])
    assert torch.allclose(alone, mixed) and alone.item() < 1e-6
    assert _loss(loud[None], [IGNORE], [IGNORE]).item() == 0.0


def test_gradients_reach_the_features_and_the_embeddings() -> None:
    x = torch.randn(2, 3, D, requires_grad=True)
    emb = EMB.clone().requires_grad_(True)
    colour, shape = torch.tensor([[0, 1, 2], [2, 0, 1]]), torch.tensor([[0, 2, 1], [1, 0, 2]])
    naming_loss(x, emb, colour, shape, COLOUR_IDS, SHAPE_IDS).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert emb.grad is not None and emb.grad.abs().sum() > 0
