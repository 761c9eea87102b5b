"""The small two-encoder torch model the Modulator's tests train (import after ``pytest.importorskip("torch")``)."""

from __future__ import annotations

import torch
from torch import nn


class TwoTower(nn.Module):
    """An audio and an image encoder (6 and 5 inputs, 8 features each) and a concat head over 3 classes;
    ``deep_audio`` gives the audio encoder a second linear layer."""

    def __init__(self, deep_audio: bool = False) -> None:
        super().__init__()
        extra = [nn.Linear(8, 8)] if deep_audio else []
        self.audio = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), *extra)
        self.image = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.head = nn.Linear(16, 3)

    def features(self, a: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"audio": self.audio(a), "image": self.image(v)}

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat(list(self.features(a, v).values()), dim=1))


def make_two_tower(*, deep_audio: bool = False) -> TwoTower:
    """The same initial weights every call (seed 0)."""
    torch.manual_seed(0)
    return TwoTower(deep_audio)


def groups(model: TwoTower) -> dict[str, nn.Module]:
    return {"audio": model.audio, "image": model.image}
