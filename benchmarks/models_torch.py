"""Encoders and fusion heads for the benchmarks, in PyTorch, sized for 2 CPU cores.

Every encoder maps one modality's input to a feature vector of ``width``; a fusion head maps the
features to class logits and can also give per-modality (decomposed) logits, which OGM-GE and the
dependency diagnostics need:

* ``concat``: one linear layer on the concatenated features; decomposed as in OGM-GE
  (``f_u W_u^T + b / M``, :func:`pdmp.backends.torch.concat_head_logits`).
* ``sum``: one linear layer per modality, logits summed; decomposed exactly (each modality's own layer).
* ``film`` (first modality conditions the others: ``h = gamma(f_0) * f_u + beta(f_0)``) and ``gated``
  (``h = sum_u sigmoid(g_u(f)) * f_u``): not additive, so a modality's decomposed logits are the head
  applied with every other modality's features set to zero (documented approximation).
* ``shared`` (:class:`SharedHeadNet`, MLA): one ``Linear(width, classes)`` applied to each modality's
  features alone; the fused prediction is the mean of those logits (MLA's runs predict with its fusion
  weights through the Rebalancer instead), and each modality's logits are its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from benchmarks.protocol import ENCODERS, FUSIONS, WIDE_MLP_HIDDEN
from pdmp.backends.torch import concat_head_logits, sum_head_logits

__all__ = [
    "ENCODERS",
    "FUSIONS",
    "FusionNet",
    "MLPEncoder",
    "ResNetEncoder",
    "ResidualBlock",
    "SharedHeadNet",
    "TransformerEncoder",
    "UnimodalNet",
    "make_encoder",
]


class ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """A ResNet-18-shaped stack, narrow and shallow: stem, three stages, global average pool."""

    def __init__(self, in_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        base = max(width // 4, 8)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU())
        self.stages = nn.Sequential(
            ResidualBlock(base, base, 1), ResidualBlock(base, base * 2, 2), ResidualBlock(base * 2, width, 2)
        )
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


class TransformerEncoder(nn.Module):
    """ViT/AST-style: non-overlapping patches, learned positions, pre-norm encoder layers, mean pool."""

    def __init__(
        self,
        input_shape: Sequence[int],
        width: int = 64,
        patch: int = 4,
        depth: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        channels, height, length = input_shape
        self.embed = nn.Conv2d(channels, width, patch, patch)
        tokens = (height // patch) * (length // patch)
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.position
        return self.norm(self.layers(tokens)).mean(dim=1)


class MLPEncoder(nn.Module):
    """Flatten, then two ReLU layers: for feature vectors (the mfeat views), and as the memorising
    image encoder of the under-optimization regime (``hidden=512``: 784-512-512)."""

    def __init__(self, in_features: int, width: int = 64, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 2 * width
        out = width if hidden == 2 * width else hidden
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out), nn.ReLU()
        )
        self.width = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_encoder(kind: str, input_shape: Sequence[int], width: int = 64, depth: int = 2) -> nn.Module:
    """An encoder for one modality: vectors get an MLP whatever ``kind`` says; images a CNN, a
    transformer, or (``"wide_mlp"``) a flattening 512-512 MLP."""
    if len(input_shape) == 1:
        return MLPEncoder(input_shape[0], width)
    if kind == "wide_mlp":
        return MLPEncoder(int(np.prod(input_shape)), width, hidden=WIDE_MLP_HIDDEN)
    if kind == "cnn":
        return ResNetEncoder(input_shape[0], width)
    if kind == "transformer":
        return TransformerEncoder(input_shape, width, depth=depth)
    raise ValueError(f"unknown encoder {kind!r}; use one of {ENCODERS}")


class FusionNet(nn.Module):
    """Encoders per modality plus a fusion head; ``forward`` returns fused logits and per-modality logits."""

    def __init__(self, encoders: Mapping[str, nn.Module], num_classes: int, fusion: str = "concat") -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; use one of {FUSIONS}")
        self.modalities = tuple(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        widths = [int(encoder.width) for encoder in encoders.values()]  # type: ignore[arg-type]
        width, count = widths[0], len(self.modalities)
        if fusion != "concat" and len(set(widths)) > 1:
            sizes = dict(zip(self.modalities, widths, strict=True))
            raise ValueError(f"{fusion} fusion needs encoders of equal width, got {sizes}")
        if fusion == "concat":
            self.head: nn.Module = nn.Linear(sum(widths), num_classes)
        elif fusion == "sum":
            self.heads = nn.ModuleDict({name: nn.Linear(width, num_classes) for name in self.modalities})
        elif fusion == "film":
            self.film = nn.Linear(width, 2 * width)
            self.head = nn.Linear(width * count, num_classes)
        else:
            self.gates = nn.ModuleDict({name: nn.Linear(width * count, width) for name in self.modalities})
            self.head = nn.Linear(width, num_classes)

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.encoders[name](inputs[name]) for name in self.modalities}

    def fuse(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ordered = [features[name] for name in self.modalities]
        if self.fusion == "concat":
            return self.head(torch.cat(ordered, dim=1))
        if self.fusion == "sum":
            return sum(self.heads[name](features[name]) for name in self.modalities)  # type: ignore[return-value]
        if self.fusion == "film":
            gamma, beta = self.film(ordered[0]).chunk(2, dim=1)
            conditioned = [ordered[0]] + [gamma * f + beta for f in ordered[1:]]
            return self.head(torch.cat(conditioned, dim=1))
        joined = torch.cat(ordered, dim=1)
        return self.head(sum(torch.sigmoid(self.gates[name](joined)) * features[name] for name in self.modalities))

    def per_modality_logits(
        self, features: Mapping[str, torch.Tensor], *, detach: bool = True
    ) -> dict[str, torch.Tensor]:
        """Decomposed logits; ``detach=False`` keeps them differentiable (for unimodal losses)."""
        if self.fusion == "concat":
            ordered = {name: features[name] for name in self.modalities}
            return concat_head_logits(self.head, ordered, detach=detach)
        if self.fusion == "sum":
            return sum_head_logits(dict(self.heads.items()), dict(features), detach=detach)  # type: ignore[arg-type]
        return {
            name: self.fuse({other: f if other == name else torch.zeros_like(f) for other, f in features.items()})
            for name in self.modalities
        }

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.encode(inputs)
        return self.fuse(features), self.per_modality_logits(features)


class WidthAdapter(nn.Module):
    """An encoder followed by a linear map of its features to ``width``. MLA's shared head needs every
    modality's features in one size; where the encoders differ (the under-optimization regime's image MLP
    is 512 wide, the audio CNN 32), :func:`benchmarks.train_torch.build_model` maps the wider ones to the
    narrowest width, and the map trains with its encoder (it is part of that modality's parameters)."""

    def __init__(self, encoder: nn.Module, width: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.project = nn.Linear(int(encoder.width), width)  # type: ignore[arg-type]
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.encoder(x))


class SharedHeadNet(FusionNet):
    """The same encoders with one head shared by every modality, ``Linear(width, classes)`` (MLA's model)."""

    def __init__(self, encoders: Mapping[str, nn.Module], num_classes: int) -> None:
        nn.Module.__init__(self)
        self.modalities = tuple(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = "shared"
        widths = {name: int(encoder.width) for name, encoder in encoders.items()}  # type: ignore[arg-type]
        if len(set(widths.values())) > 1:
            raise ValueError(
                f"a shared head needs encoders of one width (its input size), got {widths}; give every encoder "
                "the same width"
            )
        self.head = nn.Linear(next(iter(widths.values())), num_classes)

    def fuse(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = self.per_modality_logits(features, detach=False)
        return sum(logits.values()) / len(logits)  # type: ignore[return-value]

    def per_modality_logits(
        self, features: Mapping[str, torch.Tensor], *, detach: bool = True
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad() if detach else contextlib.nullcontext():
            return {name: self.head(features[name]) for name in self.modalities}


class UnimodalNet(nn.Module):
    """One encoder and its own linear head (the ranking stage and the unimodal baselines)."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.width, num_classes)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
