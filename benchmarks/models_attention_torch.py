"""Attention fusion in PyTorch (the design and how each policy applies: :mod:`benchmarks.models_attention`).

:class:`AttentionFusionNet` follows :class:`benchmarks.models_torch.FusionNet`'s contract:
``encode(inputs) -> {modality: features}``, ``fuse(features) -> logits``, ``forward(inputs) ->
(logits, per-modality logits)``; its per-modality logits are the unimodal heads' (:meth:`unimodal_logits`).
:func:`attention_step` is one training step for any policy :func:`attention_wiring` accepts.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.models_attention import attention_wiring
from pdmp.backends.torch import Modulator, StepOutput, training_step


class AttentionFusionNet(nn.Module):
    """Encoders, one token per modality, a transformer over [class token, modality tokens], a linear head.

    Args:
        encoders: per modality, a module mapping its input to ``(batch, encoder.width)`` features.
        num_classes: the head's outputs.
        width: the tokens' width (default: the first encoder's).
        depth, heads: the fusion transformer's layers and attention heads.
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        num_classes: int,
        *,
        width: int | None = None,
        depth: int = 1,
        heads: int = 4,
    ) -> None:
        super().__init__()
        self.modalities = tuple(encoders)
        self.encoders = nn.ModuleDict(encoders)
        widths = {name: int(encoder.width) for name, encoder in encoders.items()}  # type: ignore[arg-type]
        width = width or next(iter(widths.values()))
        if width % heads:
            raise ValueError(f"attention fusion: width {width} is not a multiple of heads={heads}")
        self.project = nn.ModuleDict({name: nn.Linear(w, width) for name, w in widths.items()})
        self.modality_tokens = nn.Parameter(torch.zeros(len(self.modalities), width))
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.modality_tokens, std=0.02)
        nn.init.trunc_normal_(self.class_token, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        # Drawn last, so that the fused model's initial weights do not depend on whether heads are used.
        self.unimodal_heads = nn.ModuleDict({name: nn.Linear(w, num_classes) for name, w in widths.items()})

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.encoders[name](inputs[name]) for name in self.modalities}

    def fuse(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tokens = torch.stack([self.project[name](features[name]) for name in self.modalities], dim=1)
        tokens = tokens + self.modality_tokens
        batch = tokens.shape[0]
        joined = torch.cat([self.class_token.expand(batch, -1, -1), tokens], dim=1)
        return self.head(self.norm(self.fusion(joined)[:, 0]))

    def unimodal_logits(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's unimodal head on its encoder's features (differentiable)."""
        return {name: self.unimodal_heads[name](features[name]) for name in self.modalities}

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.encode(inputs)
        return self.fuse(features), {k: v.detach() for k, v in self.unimodal_logits(features).items()}


def attention_step(
    model: AttentionFusionNet,
    modulator: Modulator,
    optimizer: torch.optim.Optimizer,
    inputs: Mapping[str, torch.Tensor],
    target: torch.Tensor,
) -> StepOutput:
    """One step of ``modulator.policy`` on attention fusion, wired as :func:`attention_wiring` says
    (refused policies raise before any forward pass)."""
    wiring = attention_wiring(modulator.policy)
    heads = wiring == "unimodal_heads"
    return training_step(
        modulator,
        optimizer,
        inputs,
        target,
        encode=model.encode,
        fuse=model.fuse,
        decompose=model.unimodal_logits if heads else None,
        unimodal_heads=model.unimodal_heads if heads else None,
        loss_fn=F.cross_entropy,
    )


__all__ = ["AttentionFusionNet", "attention_step"]
