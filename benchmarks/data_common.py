"""Small models and a training loop shared by the data benchmarks (``data_report``, ``data_underopt_search``).

One small CNN per modality (or an MLP for vectors), concat fusion into a linear head, Adam or SGD with
a cosine schedule; the epoch with the best validation accuracy is the one reported (selection on val
only). Everything runs on CPU with one thread.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pdmp.datasets import MultimodalDataset


def encoder(
    shape: tuple[int, ...], width: int = 8, depth: int = 2, kind: str = "cnn", feat: int = 64
) -> tuple[nn.Module, int]:
    """A small encoder for one modality and its output width."""
    if len(shape) == 1 or kind == "mlp":
        d = int(np.prod(shape))
        hidden = width * 8
        layers: list[nn.Module] = [nn.Flatten()]
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        return nn.Sequential(*layers), d
    layers = []
    c, h, w = shape
    for i in range(depth):
        layers += [nn.Conv2d(c, width * 2**i, 3, padding=1), nn.BatchNorm2d(width * 2**i), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = width * 2**i, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, feat), nn.ReLU()]
    return nn.Sequential(*layers), feat


class Net(nn.Module):
    """Per-modality encoders, concatenated features, one linear head (concat fusion)."""

    def __init__(
        self, shapes: dict[str, tuple[int, ...]], n_classes: int, enc: dict[str, dict[str, Any]] | None = None
    ):
        super().__init__()
        enc = enc or {}
        self.names = list(shapes)
        built = {m: encoder(shapes[m], **enc.get(m, {})) for m in self.names}
        self.encoders = nn.ModuleDict({m: b[0] for m, b in built.items()})
        self.head = nn.Linear(sum(b[1] for b in built.values()), n_classes)

    def forward(self, xs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(torch.cat([self.encoders[m](xs[m]) for m in self.names], dim=1))


@dataclass
class Result:
    modalities: tuple[str, ...]
    lr: float
    best_epoch: int
    val_acc: float
    test_acc: float
    final_train_acc: float
    final_val_acc: float
    final_test_acc: float
    train_acc_curve: list[float]
    val_acc_curve: list[float]
    seconds: float


def _tensors(split: Any, mods: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return {m: torch.from_numpy(split.inputs[m]) for m in mods}, torch.from_numpy(split.labels)


@torch.no_grad()
def _accuracy(net: Net, xs: dict[str, torch.Tensor], y: torch.Tensor, bs: int = 1000) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(y), bs):
        correct += int((net({m: v[i : i + bs] for m, v in xs.items()}).argmax(1) == y[i : i + bs]).sum())
    return correct / max(1, len(y))


def train(
    ds: MultimodalDataset,
    modalities: tuple[str, ...],
    *,
    lr: float = 1e-3,
    epochs: int = 20,
    batch_size: int = 64,
    optimizer: str = "adam",
    seed: int = 0,
    enc: dict[str, dict[str, Any]] | None = None,
    weight_decay: float = 0.0,
) -> Result:
    """Train on ``ds.train`` with ``modalities``; report test accuracy at the best validation epoch."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    xs, y = _tensors(ds.train, modalities)
    xv, yv = _tensors(ds.val, modalities)
    xt, yt = _tensors(ds.test, modalities)
    net = Net({m: ds.shapes()[m] for m in modalities}, ds.num_classes, enc)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    best = (-1.0, 0, 0.0)
    tr_curve, va_curve = [], []
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(y), generator=gen)
        correct = 0
        for i in range(0, len(y), batch_size):
            b = perm[i : i + batch_size]
            out = net({m: v[b] for m, v in xs.items()})
            loss = nn.functional.cross_entropy(out, y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((out.argmax(1) == y[b]).sum())
        tr_curve.append(correct / len(y))
        va = _accuracy(net, xv, yv)
        va_curve.append(va)
        if va > best[0]:
            best = (va, ep, _accuracy(net, xt, yt))
    final_test = _accuracy(net, xt, yt)
    return Result(
        modalities,
        lr,
        best[1],
        best[0],
        best[2],
        tr_curve[-1],
        va_curve[-1],
        final_test,
        tr_curve,
        va_curve,
        time.perf_counter() - t0,
    )


def tuned(
    ds: MultimodalDataset, modalities: tuple[str, ...], lrs: tuple[float, ...], **kw: Any
) -> tuple[Result, list[Result]]:
    """Train at each learning rate; return the one with the best validation accuracy, and all."""
    runs = [train(ds, modalities, lr=lr, **kw) for lr in lrs]
    return max(runs, key=lambda r: r.val_acc), runs
