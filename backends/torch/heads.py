"""Per-modality logits from a fused head, for OGM-GE's scores (METHOD.md, "OGM-GE, exactly").

Both helpers return *detached* logits by default: to score how much each modality contributes to a
prediction no extra autograd graph is needed. ``detach=False`` keeps the graph, for methods that train
on these logits (InfoReg's and ARL's unimodal losses).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pdmp._validation import check_modality_names, check_same_modalities


def concat_head_logits(
    head: nn.Linear, features: Mapping[str, torch.Tensor], *, detach: bool = True
) -> dict[str, torch.Tensor]:
    """Split a concat-fusion linear head: ``out_u = f_u W_u^T + b / M``.

    ``features`` must be given in the order they are concatenated before ``head``; ``W_u`` is the
    block of ``head.weight``'s columns that multiplies ``f_u``. The per-modality logits sum to the
    head's output. ``detach=False``: differentiable (to train on a per-modality loss).
    """
    if not isinstance(head, nn.Linear):
        raise TypeError(f"head must be the nn.Linear applied to the concatenated features, got {type(head).__name__}")
    names = check_modality_names(features.keys(), where="concat_head_logits features")
    widths = {name: int(features[name].shape[-1]) for name in names}
    if sum(widths.values()) != head.in_features:
        raise ValueError(
            f"feature widths {widths} sum to {sum(widths.values())} but head.in_features is {head.in_features}; "
            "pass every modality's features, in the order they are concatenated"
        )
    with torch.no_grad() if detach else contextlib.nullcontext():
        bias = None if head.bias is None else head.bias / len(names)
        logits: dict[str, torch.Tensor] = {}
        start = 0
        for name in names:
            stop = start + widths[name]
            logits[name] = F.linear(features[name], head.weight[:, start:stop], bias)
            start = stop
    return logits


def sum_head_logits(
    heads: Mapping[str, nn.Module], features: Mapping[str, torch.Tensor], *, detach: bool = True
) -> dict[str, torch.Tensor]:
    """Sum fusion: ``out = sum_u head_u(f_u)``, so modality u's logits are ``head_u(f_u)`` (own bias).

    ``detach=False``: differentiable (to train on a per-modality loss)."""
    check_modality_names(heads.keys(), where="sum_head_logits heads")
    check_same_modalities(features.keys(), list(heads), where="sum_head_logits features")
    with torch.no_grad() if detach else contextlib.nullcontext():
        return {name: heads[name](features[name]) for name in heads}


__all__ = ["concat_head_logits", "sum_head_logits"]
