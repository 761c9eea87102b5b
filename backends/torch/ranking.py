"""Stage 1 in torch: train one unimodal model per modality on a budget, evaluate, rank (in the core).

The budget (epochs, fraction of the training set) is what makes ranking cheap; it is recorded in the
returned :class:`~pdmp.Ranking` (and so in its file) so a ranking says how it was obtained. The
training recipe (optimizer, learning-rate schedule, weight decay) can be the one of the multimodal
model, so that stage 1 ranks the modalities under the conditions of stage 2, and training can be
repeated over several seeds (:func:`pdmp.combine_rankings` then records how often the seeds agree).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pdmp._validation import check_labels
from pdmp.metrics import Metric
from pdmp.ranking import (
    FrameworkExamples,
    Ranking,
    TrainedUnimodal,
    TrainingCurve,
    UnimodalReport,
    check_optimizer_choice,
    check_rank_unimodal_call,
    factory_passes_lr,
    warn_unused_lr,
)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, lr, **options: torch.optim.SGD(params, lr=lr, momentum=0.9, **options),
    "adam": lambda params, lr, **options: torch.optim.Adam(params, lr=lr, **options),
    "adamw": lambda params, lr, **options: torch.optim.AdamW(params, lr=lr, **options),
}
SCHEDULER_INTERVALS = ("epoch", "step")
EXAMPLES = FrameworkExamples(
    model="lambda: nn.Linear(16, classes)",
    optimizer="a torch optimizer",
    optimizer_factory="lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)",
    decay_factory="lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)",
)


@dataclass(frozen=True)
class _Recipe:
    """The checked training recipe: how to build each model's optimizer and scheduler."""

    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    make_scheduler: SchedulerFactory | None
    interval: str
    budget: dict[str, Any]


@overload
def rank_unimodal(
    factories: Mapping[str, Callable[[], nn.Module]],
    train: Mapping[str, tuple[Any, Any]],
    val: Mapping[str, tuple[Any, Any]],
    *,
    epochs: int,
    subset: float = ...,
    lr: float | None = ...,
    optimizer: str | OptimizerFactory = ...,
    weight_decay: float | None = ...,
    scheduler: SchedulerFactory | None = ...,
    scheduler_interval: Literal["epoch", "step"] = ...,
    batch_size: int = ...,
    seed: int | None = ...,
    seeds: Sequence[int] | None = ...,
    metric: str | Metric = ...,
    device: str | torch.device = ...,
    progress: bool = ...,
    n_bootstrap: int = ...,
    warn_margin: float = ...,
    return_details: Literal[False] = ...,
) -> Ranking: ...


@overload
def rank_unimodal(
    factories: Mapping[str, Callable[[], nn.Module]],
    train: Mapping[str, tuple[Any, Any]],
    val: Mapping[str, tuple[Any, Any]],
    *,
    epochs: int,
    subset: float = ...,
    lr: float | None = ...,
    optimizer: str | OptimizerFactory = ...,
    weight_decay: float | None = ...,
    scheduler: SchedulerFactory | None = ...,
    scheduler_interval: Literal["epoch", "step"] = ...,
    batch_size: int = ...,
    seed: int | None = ...,
    seeds: Sequence[int] | None = ...,
    metric: str | Metric = ...,
    device: str | torch.device = ...,
    progress: bool = ...,
    n_bootstrap: int = ...,
    warn_margin: float = ...,
    return_details: Literal[True],
) -> UnimodalReport: ...


def rank_unimodal(
    factories: Mapping[str, Callable[[], nn.Module]],
    train: Mapping[str, tuple[Any, Any]],
    val: Mapping[str, tuple[Any, Any]],
    *,
    epochs: int,
    subset: float = 1.0,
    lr: float | None = None,
    optimizer: str | OptimizerFactory = "sgd",
    weight_decay: float | None = None,
    scheduler: SchedulerFactory | None = None,
    scheduler_interval: Literal["epoch", "step"] = "epoch",
    batch_size: int = 64,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
    metric: str | Metric = "accuracy",
    device: str | torch.device = "cpu",
    progress: bool = True,
    n_bootstrap: int = 0,
    warn_margin: float = 0.01,
    return_details: bool = False,
) -> Ranking | UnimodalReport:
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
        lr: learning rate; required with a named optimizer or a factory ``f(params, lr)``, optional
            with a factory ``f(params)`` that sets its own.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"``, or a factory: ``f(params)``
            (e.g. ``lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)``, the
            recipe of the multimodal model) or ``f(params, lr)``, returning a torch optimizer over
            (some of) the given parameters.
        weight_decay: with a named optimizer, its weight decay (``None``: the optimizer's default,
            0 for SGD and Adam, 0.01 for AdamW). A factory sets its own, so then it must stay ``None``.
        scheduler: ``f(optimizer)`` returning a torch LR scheduler for that optimizer (e.g.
            ``lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)``), or ``None``.
            ``ReduceLROnPlateau`` is stepped with the epoch's validation loss.
        scheduler_interval: ``"epoch"`` (default): ``scheduler.step()`` after every epoch, the usual
            torch convention; ``"step"``: after every optimizer step (e.g. ``OneCycleLR``; an epoch
            has ``ceil(round(subset * len(train)) / batch_size)`` steps).
        batch_size: mini-batch size.
        seed: the training seed (default 0): seed of the subset, shuffling, model initialisation and
            everything the models draw while training (dropout), and of the bootstrap. The same seed
            gives the same ranking whatever the caller's global RNG state, which is left untouched
            (CPU and the training device).
        seeds: instead of ``seed``, several training seeds, e.g. ``(0, 1, 2)``: every unimodal model
            is trained once per seed (each seed as ``seed`` would be) and the per-seed rankings are
            combined by :func:`pdmp.combine_rankings`: scores are the seed means, ``seed_agreement``
            says how often a seed puts the dominant modality on top (beside the bootstrap
            ``stability``), and a :class:`~pdmp.RankingWarning` says when they disagree. Costs one
            training per seed.
        metric: ``"accuracy"``, ``"macro_f1"`` or ``f(labels, predicted_classes)``.
        device: where to train.
        progress: show a tqdm bar per modality (and seed).
        n_bootstrap, warn_margin: passed to :func:`pdmp.rank_modalities`.
        return_details: return a :class:`UnimodalReport` (the ranking plus the trained models, their
            validation logits and per-epoch training curves) instead of the ranking alone. The
            curves need a validation pass per epoch; the ranking is the same either way.

    Every argument, every label and every model's optimizer and scheduler are checked before the
    first model trains (each factory is called once ahead for that, with the first seed).
    """
    call = check_rank_unimodal_call(
        factories,
        train,
        val,
        epochs=epochs,
        subset=subset,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        seeds=seeds,
        metric=metric,
        n_bootstrap=n_bootstrap,
        warn_margin=warn_margin,
        progress=progress,
        return_details=return_details,
        examples=EXAMPLES,
    )
    recipe = _recipe(optimizer, lr, weight_decay, scheduler, scheduler_interval)
    device = torch.device(device)
    # Every modality's data and labels are checked before the first model trains.
    data = {
        name: (_as_tensors(train[name], where=f"train[{name!r}]"), _as_tensors(val[name], where=f"val[{name!r}]"))
        for name in call.names
    }
    labels = {name: data[name][1][1].numpy() for name in call.names}
    call.check_paired(labels)
    first: tuple[torch.optim.Optimizer, float, Any] | None = None
    for name in call.names:
        # Only the first modality's optimizer is kept (for the budget): the others' models are freed at once.
        built = _preflight(name, factories[name], data[name], recipe, call.seeds[0], device, call.batch_size)
        first = first or built
    assert first is not None
    opt, initial_lr, schedule = first
    recipe_budget = dict(recipe.budget)
    if not isinstance(optimizer, str):
        # A factory's settings are only known once it has built an optimizer: record what it built.
        group = opt.param_groups[0]
        recipe_budget |= {"optimizer_class": type(opt).__name__, "lr": initial_lr}
        if isinstance(group.get("weight_decay"), (int, float)):
            recipe_budget["weight_decay"] = float(group["weight_decay"])
        warn_unused_lr(lr, initial_lr, takes_lr="f(params, lr)")
    plateau = isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if schedule is not None:
        recipe_budget["scheduler_class"] = type(schedule).__name__
    del first, built, opt, schedule

    def train_one(training_seed: int, name: str, description: str) -> TrainedUnimodal:
        return _train_one(
            factories[name],
            data[name],
            recipe,
            seed=training_seed,
            epochs=call.epochs,
            subset=subset,
            batch_size=call.batch_size,
            device=device,
            # A validation pass per epoch only when something reads it: the curves, or a plateau scheduler.
            validate_each_epoch=call.return_details or plateau,
            bar_desc=description,
            progress=call.progress,
        )

    return call.run(train_one, labels, backend="torch", recipe=recipe_budget)


def _train_one(
    factory: Callable[[], nn.Module],
    data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    recipe: _Recipe,
    *,
    seed: int,
    epochs: int,
    subset: float,
    batch_size: int,
    device: torch.device,
    validate_each_epoch: bool,
    bar_desc: str,
    progress: bool,
) -> TrainedUnimodal:
    """Train one unimodal model with one seed; return its validation logits, it, its curve, its sample count."""
    (x_train, y_train), (x_val, y_val) = data
    generator = torch.Generator().manual_seed(seed)
    n_subset = max(1, round(subset * len(y_train)))
    chosen = torch.randperm(len(y_train), generator=generator)[:n_subset]
    x_train, y_train = x_train[chosen], y_train[chosen]
    history: dict[str, list[float]] = {key: [] for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}
    lrs: list[float] = []
    bar = tqdm(
        total=epochs * math.ceil(n_subset / batch_size),
        desc=bar_desc,
        unit="batch",
        disable=not progress,
        leave=True,
    )
    with _seeded_rng(seed, device), bar:
        model = factory().to(device)
        opt = recipe.make_optimizer(model.parameters())
        schedule = recipe.make_scheduler(opt) if recipe.make_scheduler is not None else None
        for epoch in range(epochs):
            model.train()
            lrs.append(float(opt.param_groups[0]["lr"]))
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            order = torch.randperm(n_subset, generator=generator)
            for start in range(0, n_subset, batch_size):
                batch = order[start : start + batch_size]
                target = y_train[batch].to(device)
                output = model(x_train[batch].to(device))
                loss = nn.functional.cross_entropy(output, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if schedule is not None and recipe.interval == "step":
                    schedule.step()
                # Accumulated on the device: no extra host sync per step beyond the progress bar's.
                loss_sum += loss.detach().double() * len(batch)
                correct += (output.detach().argmax(dim=1) == target).sum()
                bar.update(1)
                if progress:
                    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            history["train_loss"].append(float(loss_sum) / n_subset)
            history["train_accuracy"].append(int(correct) / n_subset)
            last = epoch == epochs - 1
            if validate_each_epoch or last:
                outputs = _predict(model, x_val, batch_size, device)
                if validate_each_epoch:
                    val_loss = float(nn.functional.cross_entropy(outputs, y_val))
                    history["val_loss"].append(val_loss)
                    history["val_accuracy"].append(float((outputs.argmax(dim=1) == y_val).double().mean()))
            if schedule is not None and recipe.interval == "epoch":
                if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    schedule.step(val_loss)
                else:
                    schedule.step()
    model.eval()
    curve = TrainingCurve(**{key: tuple(values) for key, values in history.items()}, lr=tuple(lrs))
    return outputs.numpy().astype(np.float64), model, curve, n_subset


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits of ``x`` in evaluation mode, as float32 on the CPU."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[s : s + batch_size].to(device)).float().cpu() for s in range(0, len(x), batch_size)])


def _recipe(optimizer: Any, lr: float | None, weight_decay: Any, scheduler: Any, interval: Any) -> _Recipe:
    """Check the optimizer, learning rate, weight decay and scheduler arguments together."""
    if interval not in SCHEDULER_INTERVALS:
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {interval!r}")
    if scheduler is not None and not callable(scheduler):
        raise TypeError(
            f"scheduler must be a callable f(optimizer) returning a torch LR scheduler, got {scheduler!r}; e.g. "
            "scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)"
        )
    budget, options = check_optimizer_choice(optimizer, lr, weight_decay, known=OPTIMIZERS, examples=EXAMPLES)
    if isinstance(optimizer, str):
        named = OPTIMIZERS[optimizer]
        make: Callable[[Any], torch.optim.Optimizer] = lambda params: named(params, lr, **options)  # noqa: E731
    else:
        takes_lr = factory_passes_lr(optimizer, lr, position=1, own_form="f(params)")
        factory = optimizer
        make = (lambda params: factory(params, lr)) if takes_lr else (lambda params: factory(params))
    if scheduler is not None:
        budget["scheduler"] = getattr(scheduler, "__name__", type(scheduler).__name__)
        budget["scheduler_interval"] = interval
    return _Recipe(make_optimizer=make, make_scheduler=scheduler, interval=interval, budget=budget)


def _preflight(
    name: str,
    factory: Callable[[], nn.Module],
    data: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    recipe: _Recipe,
    seed: int,
    device: torch.device,
    batch_size: int,
) -> tuple[torch.optim.Optimizer, float, Any]:
    """Build one model, its optimizer and scheduler, and score one batch, so that a bad factory or
    label fails before any model trains. Runs in a forked RNG, trains nothing; returns the optimizer,
    its initial learning rate and the scheduler built (their settings go into the budget)."""
    (x_train, y_train), (_, y_val) = data
    with _seeded_rng(seed, device):
        model = factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"factories[{name!r}]() returned {type(model).__name__}; it must return a torch nn.Module")
        model = model.to(device)
        opt = recipe.make_optimizer(model.parameters())
        _check_optimizer(opt, model, name)
        # Read before the scheduler exists: some schedulers change the learning rate when built.
        lr = float(opt.param_groups[0]["lr"])
        schedule = None
        if recipe.make_scheduler is not None:
            schedule = recipe.make_scheduler(opt)
            _check_scheduler(schedule, opt, recipe.interval)
        model.eval()
        with torch.no_grad():
            output = model(x_train[: min(batch_size, len(x_train))].to(device))
    top = max((int(y_train.max()), f"train[{name!r}]"), (int(y_val.max()), f"val[{name!r}]"))
    _check_output_width(output, name, *top)
    return opt, lr, schedule


def _check_optimizer(opt: Any, model: nn.Module, name: str) -> None:
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(
            f"the optimizer factory returned {type(opt).__name__} {opt!r} for {name!r}; it must return a "
            "torch.optim.Optimizer built on the parameters it is given"
        )
    owned = {id(p) for p in model.parameters()}
    given = [p for group in opt.param_groups for p in group["params"]]
    if not given or any(id(p) not in owned for p in given):
        raise ValueError(
            f"the optimizer factory's optimizer for {name!r} does not optimize the model it was given "
            f"({len(given)} parameter(s), {sum(id(p) not in owned for p in given)} foreign); build it on the "
            "params argument: lambda params: torch.optim.AdamW(params, ...)"
        )


def _check_scheduler(schedule: Any, opt: torch.optim.Optimizer, interval: str) -> None:
    plateau = isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if not (isinstance(schedule, torch.optim.lr_scheduler.LRScheduler) or plateau):
        raise TypeError(
            f"the scheduler factory returned {type(schedule).__name__} {schedule!r}; it must return a torch LR "
            "scheduler built on the optimizer it is given, e.g. lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1)"
        )
    if schedule.optimizer is not opt:
        raise ValueError(
            "the scheduler factory's scheduler drives another optimizer; build it on the optimizer it is given"
        )
    if plateau and interval != "epoch":
        raise ValueError(
            "ReduceLROnPlateau steps on the validation loss once per epoch; use scheduler_interval='epoch'"
        )


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
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        shape = f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"the unimodal model of {name!r} returned {shape}; it must return class logits of shape (batch, classes)"
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


__all__ = ["TrainingCurve", "UnimodalReport", "rank_unimodal"]
