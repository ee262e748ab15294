"""Host-to-device copies that do not stall the device queue.

``torch.tensor(values, device="cuda")`` copies from pageable host memory with ``non_blocking=False``, and
PyTorch then synchronises the stream: the host waits for every kernel queued before it. The prefill copies a
few small host-side counts to the device at each step, so it stages them in pinned memory and copies them
asynchronously instead; on the CPU this is a plain tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(values: Sequence[int] | Sequence[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` (a host list or CPU tensor) on ``device``, copied without waiting for the device."""
    host = values if isinstance(values, torch.Tensor) else torch.tensor(values)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
