"""Host counts reach the device without a blocking copy (pinned and asynchronous on CUDA)."""

from __future__ import annotations

import pytest
import torch

from sparsevlm.transfer import to_device


def test_to_device_keeps_values_and_dtype_on_the_cpu() -> None:
    out = to_device([3, 1, 2], torch.device("cpu"))
    assert out.tolist() == [3, 1, 2] and out.dtype == torch.long
    table = torch.rand(2, 3)
    assert torch.equal(to_device(table, torch.device("cpu")), table)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_device_copies_asynchronously_from_pinned_memory() -> None:
    out = to_device([5, 6], torch.device("cuda"))
    assert out.is_cuda and out.tolist() == [5, 6]
