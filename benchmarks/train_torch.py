"""One benchmark run in PyTorch: unimodal or multimodal, with a method's policy through the adapter."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.models_torch import FusionNet, UnimodalNet, make_encoder
from pdmp import CoefficientPolicy, accuracy, dependency, macro_f1
from pdmp.backends.torch import Modulator


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    encoder: str = "cnn"
    fusion: str = "concat"
    width: int = 32
    depth: int = 2
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _tensors(split: Any, modalities: Sequence[str], device: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    inputs = {name: torch.as_tensor(np.asarray(split.inputs[name]), device=device) for name in modalities}
    return inputs, torch.as_tensor(np.asarray(split.labels), device=device)


def _batches(count: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    return list(order.split(batch_size))


@torch.no_grad()
def evaluate(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor, batch_size: int = 512
) -> dict[str, Any]:
    """Accuracy, macro-F1; for a fused model also per-modality dependency and decomposed accuracy."""
    model.eval()
    fused, parts = [], {}
    for index in _batches(labels.shape[0], batch_size, None):
        if isinstance(model, FusionNet):
            logits, per_modality = model({name: x[index] for name, x in inputs.items()})
            for name, value in per_modality.items():
                parts.setdefault(name, []).append(value.float().cpu())
        else:
            (x,) = inputs.values()
            logits = model(x[index])
        fused.append(logits.float().cpu())
    y = labels.cpu().numpy()
    predicted = torch.cat(fused).numpy()
    result: dict[str, Any] = {"acc": accuracy(y, predicted), "f1": macro_f1(y, predicted)}
    if parts:
        decomposed = {name: torch.cat(values).numpy() for name, values in parts.items()}
        result["dependency"] = dependency(decomposed, y).share
        result["decomposed_acc"] = {name: accuracy(y, logits) for name, logits in decomposed.items()}
    model.train()
    return result


@torch.no_grad()
def predict(model: nn.Module, inputs: Mapping[str, torch.Tensor], count: int, batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = []
    for index in _batches(count, batch_size, None):
        if isinstance(model, FusionNet):
            logits, _ = model({name: x[index] for name, x in inputs.items()})
        else:
            (x,) = inputs.values()
            logits = model(x[index])
        out.append(logits.argmax(1).cpu())
    model.train()
    return torch.cat(out).numpy()


def build_model(dataset: Any, modalities: Sequence[str], config: TrainConfig, seed: int) -> FusionNet | UnimodalNet:
    """Same seed, same initial weights: every method of a seed starts from one initialisation."""
    torch.manual_seed(seed)
    classes = len(dataset.class_names)
    encoders = {
        name: make_encoder(config.encoder, dataset.train.inputs[name].shape[1:], config.width, config.depth)
        for name in modalities
    }
    if len(modalities) == 1:
        return UnimodalNet(encoders[modalities[0]], classes).to(config.device)
    return FusionNet(encoders, classes, config.fusion).to(config.device)


def train_run(
    dataset: Any,
    modalities: Sequence[str],
    config: TrainConfig,
    seed: int,
    *,
    policy: CoefficientPolicy | None = None,
    lr_scale: float = 1.0,
    progress: Any = None,
) -> dict[str, Any]:
    """Train for ``config.epochs`` with SGD + cosine decay; return per-epoch metrics.

    The data order depends only on ``seed`` (a dedicated generator), so methods are paired.
    """
    device = config.device
    model = build_model(dataset, modalities, config, seed)
    train_x, train_y = _tensors(dataset.train, modalities, device)
    val_x, val_y = _tensors(dataset.val, modalities, device)
    test_x, test_y = _tensors(dataset.test, modalities, device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr * lr_scale, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps_per_epoch = -(-train_y.shape[0] // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    modulator = None
    if policy is not None and isinstance(model, FusionNet):
        modulator = Modulator(dict(model.encoders.items()), policy, mode="grad")
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        if modulator is not None:
            modulator.set_epoch(epoch)
        losses, correct, coefficient_sums, steps = 0.0, 0, dict.fromkeys(modalities, 0.0), 0
        for index in _batches(train_y.shape[0], config.batch_size, generator):
            index = index.to(device)
            y = train_y[index]
            if isinstance(model, FusionNet):
                logits, per_modality = model({name: x[index] for name, x in train_x.items()})
                if modulator is not None:
                    modulator.observe({name: value.detach() for name, value in per_modality.items()}, y)
            else:
                logits = model(train_x[modalities[0]][index])
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if modulator is not None:
                for name, value in modulator.coefficients.items():
                    coefficient_sums[name] += value
                modulator.step()
            losses += float(loss.detach()) * y.shape[0]
            correct += int((logits.detach().argmax(1) == y).sum())
            steps += 1
        record = {
            "epoch": epoch,
            "train_loss": losses / train_y.shape[0],
            "train_acc": correct / train_y.shape[0],
            "lr": schedule.get_last_lr()[0],
            "val": evaluate(model, val_x, val_y),
            "test": evaluate(model, test_x, test_y),
            "coefficients": {name: value / steps for name, value in coefficient_sums.items()}
            if modulator is not None
            else None,
            "elapsed_s": time.perf_counter() - start,
        }
        history.append(record)
        if progress is not None:
            progress.set_postfix(epoch=epoch, val=f"{record['val']['acc']:.3f}", refresh=False)
    if modulator is not None:
        modulator.remove()
    best = max(range(len(history)), key=lambda e: (history[e]["val"]["acc"], -e))
    return {
        "history": history,
        "final": {"epoch": len(history) - 1, "val": history[-1]["val"], "test": history[-1]["test"]},
        "best_val": {"epoch": best, "val": history[best]["val"], "test": history[best]["test"]},
        "wall_time_s": time.perf_counter() - start,
        # Final-epoch validation predictions: the ranking stage ranks unimodal runs by these.
        "val_predicted": predict(model, val_x, val_y.shape[0]),
    }


def cheap_rank(
    dataset: Any, *, fraction: float, epochs: int, width: int, lr: float, batch_size: int, progress: bool
) -> Any:
    """Rank with the adapter's helper on a subset of the training set and a short epoch budget."""
    from pdmp.backends.torch import rank_unimodal

    classes = len(dataset.class_names)

    def factory(name: str) -> Any:
        return lambda: UnimodalNet(make_encoder("cnn", dataset.train.inputs[name].shape[1:], width), classes)

    def pairs(split: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: (split.inputs[name], split.labels) for name in dataset.modalities}

    return rank_unimodal(
        {name: factory(name) for name in dataset.modalities},
        pairs(dataset.train),
        pairs(dataset.val),
        epochs=epochs,
        subset=fraction,
        lr=lr,
        batch_size=batch_size,
        seed=0,
        progress=progress,
    )
