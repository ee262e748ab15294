"""Find the rows of a batch that hold the same video, in O(B) and with two host reads."""

from __future__ import annotations

import functools

import torch

from sparsevlm.transfer import to_device


def distinct_rows(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of ``batch`` (exact equality, first occurrence order) and, per row, its index among them.

    O(B) work and two device-to-host transfers: each row gets an integer fingerprint (:func:`_fingerprints`),
    rows with equal fingerprints are grouped on the host, and one batched comparison confirms each row equals
    its group's first row (a row that does not is its own group).

    Returns:
        ``(unique [U, ...], inverse [B])`` with ``unique[inverse]`` equal to ``batch``.
    """
    b = batch.shape[0]
    flat = batch.reshape(b, -1)
    prints = _fingerprints(flat).tolist()
    first: dict[int, int] = {}
    candidate = [first.setdefault(p, row) for row, p in enumerate(prints)]
    same = (flat == flat[to_device(candidate, flat.device)]).all(1).tolist()
    firsts: list[int] = []
    position: dict[int, int] = {}
    inverse = []
    for row in range(b):
        source = candidate[row] if same[row] else row
        if source not in position:
            position[source] = len(firsts)
            firsts.append(source)
        inverse.append(position[source])
    index = to_device(inverse, batch.device)
    return (batch if len(firsts) == b else batch[to_device(firsts, batch.device)]), index


_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _fingerprints(flat: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """``[B]`` int64 fingerprint of each row of ``[B, N]``: its bits as integers, times fixed random weights,
    summed with wrap-around. Integer sums do not depend on the order of addition, so equal rows always get
    equal fingerprints (a float projection does not: its rounding depends on how the kernel splits rows)."""
    bits = flat.contiguous().view(_INT_VIEW[flat.element_size()])
    weights = _fingerprint_weights(flat.shape[1], str(flat.device))
    parts = [(bits[i : i + chunk].long() * weights).sum(1) for i in range(0, flat.shape[0], chunk)]
    return torch.cat(parts)


@functools.lru_cache(maxsize=4)
def _fingerprint_weights(n: int, device: str) -> torch.Tensor:
    return torch.randint(1, 2**62, (n,), generator=torch.Generator().manual_seed(0)).to(device)
