"""torch.distributed quirks in one place: when to all-reduce, and on which device.

OGM-GE's batch scores are sums, so data-parallel ranks agree on the global batch's scores by summing
theirs. Every rank must take part in the collective, which is why ``Modulator.observe`` must be called
on every rank for every batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def is_distributed(group: Any = None) -> bool:
    """True when a default process group exists and (if given) ``group`` has more than one rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return bool(dist.get_world_size(group) > 1)


def all_reduce_sum(values: Sequence[float], *, device: torch.device, group: Any = None) -> list[float]:
    """Sum ``values`` over the ranks of ``group``.

    The tensor is put on ``device`` (the logits' device): NCCL needs CUDA tensors, gloo takes CPU
    ones, so the device the data lives on is the one the process group can reduce.
    """
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return [float(value) for value in tensor.tolist()]
