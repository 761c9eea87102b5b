"""Stage 1 in torch: train one unimodal model per modality on a budget, evaluate, rank (in the core).

The budget (epochs, fraction of the training set) is what makes ranking cheap; it is recorded in the
returned :class:`~pdmp.Ranking` (and so in its file) so a ranking says how it was obtained.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pdmp._validation import check_labels
from pdmp.metrics import Metric
from pdmp.ranking import Ranking, check_unimodal_request, rank_unimodal_outputs

OptimizerFactory = Callable[..., torch.optim.Optimizer]
OPTIMIZERS: dict[str, Callable[[Any, float], torch.optim.Optimizer]] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),
}


def rank_unimodal(
    factories: Mapping[str, Callable[[], nn.Module]],
    train: Mapping[str, tuple[Any, Any]],
    val: Mapping[str, tuple[Any, Any]],
    *,
    epochs: int,
    subset: float = 1.0,
    lr: float,
    optimizer: str | OptimizerFactory = "sgd",
    batch_size: int = 64,
    seed: int = 0,
    metric: str | Metric = "accuracy",
    device: str | torch.device = "cpu",
    progress: bool = True,
    n_bootstrap: int = 0,
    warn_margin: float = 0.01,
) -> Ranking:
    """Train each modality's unimodal model (encoder + own head) on a budget and rank the modalities.

    Args:
        factories: per modality, a callable returning a fresh model that maps that modality's input
            to class logits.
        train, val: per modality, ``(X, y)`` as tensors or arrays; ``y`` holds whole-number class
            indices ``0..C-1`` where ``C`` is the models' output width (fractional, negative, e.g.
            ``-100``, and out-of-range labels are refused before training). Validation sets are
            normally paired (same samples, same labels); then the core can bootstrap over them.
        epochs: passes over the training subset.
        subset: fraction of each training set used (the same seeded sample indices for every modality
            of equal size, so paired data stays paired).
        lr: learning rate.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"``, or ``f(params, lr)`` / ``f(params)``
            returning a torch optimizer.
        batch_size, seed: mini-batch size; seed of the subset, shuffling, model initialisation and
            everything the models draw while training (dropout): the same seed gives the same ranking
            whatever the caller's global RNG state, which is left untouched (CPU and the training device).
        metric: ``"accuracy"``, ``"macro_f1"`` or ``f(labels, predicted_classes)``.
        device: where to train.
        progress: show a tqdm bar per modality.
        n_bootstrap, warn_margin: passed to :func:`pdmp.rank_modalities`.
    """
    names, epochs, batch_size = check_unimodal_request(
        factories,
        train,
        val,
        epochs=epochs,
        subset=subset,
        batch_size=batch_size,
        lr=lr,
        metric=metric,
        n_bootstrap=n_bootstrap,
        seed=seed,
        warn_margin=warn_margin,
    )
    make_optimizer, optimizer_name = _optimizer_factory(optimizer)
    device = torch.device(device)
    # Every modality's data and labels are checked before the first model trains.
    data = {
        name: (_as_tensors(train[name], where=f"train[{name!r}]"), _as_tensors(val[name], where=f"val[{name!r}]"))
        for name in names
    }
    # The largest label anywhere, and where: checked against each model's output width at its first batch.
    top_label, top_where = max(
        (int(y.max()), f"{split}[{name!r}]")
        for name, ((_, y_train), (_, y_val)) in data.items()
        for split, y in (("train", y_train), ("val", y_val))
    )

    logits: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    train_samples: dict[str, int] = {}
    for index, name in enumerate(names):
        (x_train, y_train), (x_val, y_val) = data[name]
        generator = torch.Generator().manual_seed(seed)
        n_subset = max(1, round(subset * len(y_train)))
        chosen = torch.randperm(len(y_train), generator=generator)[:n_subset]
        x_train, y_train = x_train[chosen], y_train[chosen]
        train_samples[name] = n_subset
        bar = tqdm(
            total=epochs * math.ceil(n_subset / batch_size),
            desc=f"rank {name} ({index + 1}/{len(names)})",
            unit="batch",
            disable=not progress,
            leave=True,
        )
        with _seeded_rng(seed, device), bar:
            model = factories[name]().to(device)
            opt = make_optimizer(model.parameters(), lr)
            model.train()
            checked = False
            for _ in range(epochs):
                order = torch.randperm(n_subset, generator=generator)
                for start in range(0, n_subset, batch_size):
                    batch = order[start : start + batch_size]
                    output = model(x_train[batch].to(device))
                    if not checked:
                        _check_output_width(output, name, top_label, top_where)
                        checked = True
                    loss = nn.functional.cross_entropy(output, y_train[batch].to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            model.eval()
            with torch.no_grad():
                starts = range(0, len(y_val), batch_size)
                outputs = [model(x_val[s : s + batch_size].to(device)).float().cpu() for s in starts]
        logits[name] = torch.cat(outputs).numpy().astype(np.float64)
        labels[name] = y_val.numpy()

    budget = {
        "backend": "torch",
        "epochs": epochs,
        "subset": float(subset),
        "train_samples": train_samples,
        "batch_size": batch_size,
        "lr": float(lr),
        "optimizer": optimizer_name,
        "seed": seed,
    }
    return rank_unimodal_outputs(
        logits, labels, budget=budget, metric=metric, n_bootstrap=n_bootstrap, seed=seed, warn_margin=warn_margin
    )


def _optimizer_factory(optimizer: str | OptimizerFactory) -> tuple[Callable[[Any, float], torch.optim.Optimizer], str]:
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}, or pass a callable")
        return OPTIMIZERS[optimizer], optimizer
    if not callable(optimizer):
        raise TypeError(f"optimizer must be a name or a callable returning a torch optimizer, got {optimizer!r}")
    name = getattr(optimizer, "__name__", type(optimizer).__name__)
    try:
        takes_lr = len(inspect.signature(optimizer).parameters) >= 2
    except (TypeError, ValueError):
        takes_lr = True
    if takes_lr:
        return optimizer, name
    return (lambda params, lr: optimizer(params)), name


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the CPU RNG (and the training device's) inside a fork, so that what the models draw
    (initialisation, dropout) depends on ``seed`` only and the caller's RNG state is restored after."""
    if device.type in ("cpu", "meta"):
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    module = getattr(torch, device.type)
    index = device.index if device.index is not None else module.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.random.default_generator.manual_seed(seed)
        with module.device(index):
            module.manual_seed(seed)  # this device only, not every device of the type
        yield


def _check_output_width(output: torch.Tensor, name: str, top_label: int, top_where: str) -> None:
    if output.ndim != 2:
        raise ValueError(
            f"the unimodal model of {name!r} returned shape {tuple(output.shape)}; it must return class logits "
            "of shape (batch, classes)"
        )
    if top_label >= output.shape[1]:
        raise ValueError(
            f"{top_where} labels contain class index {top_label} but the model of {name!r} outputs "
            f"{output.shape[1]} logits (classes 0..{output.shape[1] - 1}); give the model one output per class "
            "or fix the label encoding"
        )


def _as_tensors(data: Any, *, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{where} must be a pair (X, y), got {type(data).__name__}")
    x = torch.as_tensor(data[0])
    if x.dtype == torch.float64:
        x = x.float()  # models are float32; NumPy defaults to float64
    raw = data[1].detach().cpu().numpy() if isinstance(data[1], torch.Tensor) else data[1]
    # Refuses fractional labels (no truncation) and negatives such as -100, which cross_entropy would skip.
    y = torch.from_numpy(check_labels(raw, name=f"{where} labels"))
    if len(y) != len(x):
        raise ValueError(f"{where}: y must be 1-D, one label per row of X; got X {tuple(x.shape)}, y {tuple(y.shape)}")
    if len(y) == 0:
        raise ValueError(f"{where} is empty; give at least one sample")
    return x, y


__all__ = ["rank_unimodal"]
