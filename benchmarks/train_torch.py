"""One benchmark run in PyTorch: unimodal or multimodal, with a method's policy through the adapter.

Coefficient and gradient policies run through a :class:`~pdmp.backends.torch.Modulator`; the
:class:`~pdmp.rebalancing.RebalancingPolicy` methods (G-Blending, PMR, Diagnosing & Re-learning, MLA)
through a :class:`~pdmp.backends.torch.Rebalancer` (:func:`rebalancing_step`): G-Blending gets unimodal
heads, MLA the shared-head model (:class:`~benchmarks.models_torch.SharedHeadNet`) and its fusion weights
for every validation and test prediction; the held-out split of G-Blending's checkpoints and of the
re-learning diagnosis is the validation split.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.models_torch import FusionNet, SharedHeadNet, UnimodalNet, WidthAdapter, make_encoder
from benchmarks.protocol import TrainConfig, is_new_best, modulation_mode, split_metrics, summarise
from pdmp import AGM, ARL, CoefficientPolicy, GradientPolicy
from pdmp.backends.torch import Modulator, Rebalancer, training_step
from pdmp.rebalancing import RebalancingPolicy


def _tensors(split: Any, modalities: Sequence[str], device: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    inputs = {name: torch.as_tensor(np.asarray(split.inputs[name]), device=device) for name in modalities}
    return inputs, torch.as_tensor(np.asarray(split.labels), device=device)


def _batches(count: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    return list(order.split(batch_size))


@torch.no_grad()
def logits_of(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    count: int,
    batch_size: int = 512,
    predict: Any = None,
) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """Fused logits and, for a fused model, per-modality decomposed logits, as NumPy arrays.
    ``predict(inputs) -> fused logits`` replaces the model's own fusion (MLA's fusion weights)."""
    model.eval()
    fused, parts = [], {}
    for index in _batches(count, batch_size, None):
        if isinstance(model, FusionNet):
            batch = {name: x[index] for name, x in inputs.items()}
            logits, per_modality = model(batch)
            if predict is not None:
                logits = predict(batch)
            for name, value in per_modality.items():
                parts.setdefault(name, []).append(value.float().cpu())
        else:
            (x,) = inputs.values()
            logits = model(x[index])
        fused.append(logits.float().cpu())
    model.train()
    decomposed = {name: torch.cat(values).numpy() for name, values in parts.items()} or None
    return torch.cat(fused).numpy(), decomposed


def evaluate(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor, predict: Any = None
) -> dict[str, Any]:
    fused, per_modality = logits_of(model, inputs, labels.shape[0], predict=predict)
    return split_metrics(labels.cpu().numpy(), fused, per_modality)


def build_model(
    dataset: Any, modalities: Sequence[str], config: TrainConfig, seed: int, *, shared_head: bool = False
) -> FusionNet | UnimodalNet:
    """Same seed, same initial weights: every method of a seed starts from one initialisation (the
    encoders; ``shared_head``: :class:`SharedHeadNet`, the same encoders with MLA's shared head, wider
    encoders followed by a :class:`WidthAdapter` to the narrowest width)."""
    torch.manual_seed(seed)
    classes = len(dataset.class_names)
    encoders = {
        name: make_encoder(config.encoder_for(name), dataset.train.inputs[name].shape[1:], config.width, config.depth)
        for name in modalities
    }
    if len(modalities) == 1:
        return UnimodalNet(encoders[modalities[0]], classes).to(config.device)
    if shared_head:
        # One head for every modality: features of other sizes are mapped to the narrowest (WidthAdapter).
        narrowest = min(int(encoder.width) for encoder in encoders.values())  # type: ignore[arg-type]
        encoders = {
            name: encoder if int(encoder.width) == narrowest else WidthAdapter(encoder, narrowest)  # type: ignore[arg-type]
            for name, encoder in encoders.items()
        }
        return SharedHeadNet(encoders, classes).to(config.device)
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
    return_logits: bool = False,
) -> dict[str, Any]:
    """Train for ``config.epochs`` with SGD or AdamW + cosine decay; return per-epoch metrics.

    The data order depends only on ``seed`` (a dedicated generator), so methods are paired.
    ``return_logits``: also return the final model's fused logits on validation and test
    (``result["logits"]``), e.g. for the unimodal ensemble (``benchmarks.default_recipe``).
    """
    device = config.device
    rebalancing = policy if isinstance(policy, RebalancingPolicy) and len(modalities) > 1 else None
    shared = rebalancing is not None and (rebalancing.uses_training_passes or rebalancing.uses_fusion_weights)
    model = build_model(dataset, modalities, config, seed, shared_head=shared)
    train_x, train_y = _tensors(dataset.train, modalities, device)
    val_x, val_y = _tensors(dataset.val, modalities, device)
    test_x, test_y = _tensors(dataset.test, modalities, device)
    unimodal_gradients = isinstance(policy, GradientPolicy) and policy.uses_unimodal_gradients
    weighs_unimodal = rebalancing is not None and rebalancing.needs_held_out_losses  # G-Blending's terms
    if (unimodal_gradients or weighs_unimodal) and isinstance(model, FusionNet):
        add_unimodal_heads(model, len(dataset.class_names), seed)
    optimizer = make_optimizer(model, config, lr_scale)
    modulator = None
    rebalancer = None
    predict = None
    if rebalancing is not None and isinstance(model, FusionNet):
        rebalancer = make_rebalancer(model, rebalancing, len(dataset.class_names))
        if rebalancing.uses_fusion_weights:
            predict = rebalancer.predict
        boundary = SplitBatches(train_x, train_y, config.batch_size, seed=seed + 104729)  # not the training order
        held_out = SplitBatches(val_x, val_y, config.batch_size)
        rebalancer.start(boundary, held_out=held_out)
    elif policy is not None and isinstance(model, FusionNet):
        mode = modulation_mode(config, policy)
        modulator = Modulator(dict(model.encoders.items()), policy, mode=mode, optimizer=optimizer)
        if isinstance(policy, (AGM, ARL)):
            # Registered after the Modulator's, so it clips the transformed gradients, as the references do.
            optimizer.register_step_pre_hook(reference_clipping(model, policy))
    # The scheduler comes after the Modulator, whose "lr" mode splits the optimizer's parameter groups.
    steps_per_epoch = -(-train_y.shape[0] // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    val_labels = val_y.cpu().numpy()
    history: list[dict[str, Any]] = []
    best_state: dict[str, Any] = {}
    # Baselines and policies that add unimodal losses: baseline_step wires what each needs.
    adds_losses = isinstance(policy, GradientPolicy) or (policy is not None and policy.uses_unimodal_losses)
    wired_step = isinstance(model, FusionNet) and modulator is not None and adds_losses
    start = time.perf_counter()
    for epoch in range(config.epochs):
        if modulator is not None:
            modulator.set_epoch(epoch)
        if rebalancer is not None:
            rebalancer.set_epoch(epoch)
            activity = RebalancingActivity(rebalancer)
        losses, correct, coefficient_sums, steps = 0.0, 0, dict.fromkeys(modalities, 0.0), 0
        for index in _batches(train_y.shape[0], config.batch_size, generator):
            index = index.to(device)
            y = train_y[index]
            optimizer.zero_grad(set_to_none=True)
            if rebalancer is not None:
                assert isinstance(model, FusionNet)
                inputs = {name: x[index] for name, x in train_x.items()}
                logits, loss = rebalancing_step(model, inputs, y, rebalancer, optimizer, loss_fn)
                activity.add()
            elif wired_step:
                assert policy is not None and modulator is not None and isinstance(model, FusionNet)
                inputs = {name: x[index] for name, x in train_x.items()}
                logits, loss = baseline_step(model, inputs, y, modulator, loss_fn)
            else:
                if isinstance(model, FusionNet):
                    logits, per_modality = model({name: x[index] for name, x in train_x.items()})
                    if modulator is not None:
                        modulator.observe({name: value.detach() for name, value in per_modality.items()}, y)
                else:
                    logits = model(train_x[modalities[0]][index])
                loss = loss_fn(logits, y)
                loss.backward()
            if rebalancer is None:  # the Rebalancer's step took the optimizer step(s) itself
                optimizer.step()
            schedule.step()
            if modulator is not None:
                for name, value in modulator.coefficients.items():
                    coefficient_sums[name] += value
                modulator.step()
            losses += float(loss.detach()) * y.shape[0]
            correct += int((logits.detach().argmax(1) == y).sum())
            steps += 1
        if rebalancer is not None:
            # Before validation: the epoch's record describes the model that training continues from.
            rebalancer.end_epoch(epoch, boundary, held_out=held_out)
        val_fused, val_parts = logits_of(model, val_x, val_y.shape[0], predict=predict)
        record = {
            "epoch": epoch,
            "train_loss": losses / train_y.shape[0],
            "train_acc": correct / train_y.shape[0],
            "lr": schedule.get_last_lr()[0],
            "val": split_metrics(val_labels, val_fused, val_parts),
            "coefficients": {name: value / steps for name, value in coefficient_sums.items()}
            if modulator is not None
            else None,
            "elapsed_s": time.perf_counter() - start,
        }
        if rebalancer is not None:
            record["rebalancing"] = activity.record()
        history.append(record)
        if is_new_best(history):
            best_state = copy.deepcopy(model.state_dict())
        if progress is not None:
            progress.set_postfix(epoch=epoch, val=f"{record['val']['acc']:.3f}", refresh=False)
    if modulator is not None:
        modulator.remove()
    final_test = evaluate(model, test_x, test_y, predict)
    final_logits = None
    if return_logits:
        final_logits = {"val": val_fused, "test": logits_of(model, test_x, test_y.shape[0], predict=predict)[0]}
    model.load_state_dict(best_state)
    best_test = evaluate(model, test_x, test_y, predict)
    # The last epoch's validation predictions: the ranking stage ranks unimodal runs by these.
    result = summarise(history, start, val_fused.argmax(1), final_test=final_test, best_test=best_test)
    if final_logits is not None:
        result["logits"] = final_logits
    return result


def add_unimodal_heads(model: FusionNet, classes: int, seed: int) -> None:
    """MMPareto's unimodal heads (one linear layer per encoder), drawn from their own random stream so
    that the shared model starts from the same weights as every other method of the seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 7919)
        heads = {name: nn.Linear(int(encoder.width), classes) for name, encoder in model.encoders.items()}  # type: ignore[arg-type]
    device = next(model.parameters()).device
    model.unimodal_heads = nn.ModuleDict(heads).to(device)


def baseline_step(
    model: FusionNet,
    inputs: Mapping[str, torch.Tensor],
    y: torch.Tensor,
    modulator: Modulator,
    loss_fn: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward for a gradient-transform baseline, or for a policy that adds unimodal losses,
    through :func:`pdmp.backends.torch.training_step` on the benchmark's model: MMPareto gets the model's
    unimodal heads, AGM its masked passes, the others (InfoReg, ARL, the adaptive rule, the recipe) the
    fusion's decomposed logits (``per_modality_logits``, any fusion), whose unimodal losses join the loss
    weighted by ``modulator.unimodal_loss_weights``. Returns the fused logits and the fused loss.
    """
    # The library's one step for every policy; the caller zeroes the gradients and steps (its schedule
    # and coefficient logging sit between optimizer.step() and modulator.step()).
    logits, loss = training_step(
        modulator,
        modulator.optimizer,  # not stepped here (optimizer_step=False)
        inputs,
        y,
        encode=model.encode,
        fuse=model.fuse,
        decompose=lambda features: model.per_modality_logits(features, detach=False),
        unimodal_heads=getattr(model, "unimodal_heads", None),
        loss_fn=loss_fn,
        zero_grad=False,
        optimizer_step=False,
    )
    return logits, loss


def make_rebalancer(model: FusionNet, policy: RebalancingPolicy, classes: int) -> Rebalancer:
    """The Rebalancer of a benchmark model: its encoders, encode/fuse, the shared head (MLA) and the
    unimodal heads (G-Blending)."""
    return Rebalancer(
        policy,
        dict(model.encoders.items()),
        num_classes=classes,
        encode=model.encode,
        fuse=model.fuse,
        head=model.head if isinstance(model, SharedHeadNet) else None,
        unimodal_heads=getattr(model, "unimodal_heads", None),
    )


def rebalancing_step(
    model: FusionNet,
    inputs: Mapping[str, torch.Tensor],
    y: torch.Tensor,
    rebalancer: Rebalancer,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a RebalancingPolicy through :func:`pdmp.backends.torch.training_step`, optimizer step(s)
    included (MLA takes one per modality). Returns the fused logits and the fused loss."""
    logits, loss = training_step(
        rebalancer,
        optimizer,
        inputs,
        y,
        encode=model.encode,
        fuse=model.fuse,
        loss_fn=loss_fn,
    )
    return logits, loss


class SplitBatches:
    """A split's batches as ``(inputs, target)``, re-iterable with a length, for the Rebalancer's
    epoch-boundary work: in index order, or (``seed``) in a fresh order from their own generator on every
    pass, so that the training data order stays the one every method of the seed shares."""

    def __init__(
        self, x: Mapping[str, torch.Tensor], y: torch.Tensor, batch_size: int, *, seed: int | None = None
    ) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-int(self.y.shape[0]) // self.batch_size)

    def __iter__(self) -> Any:
        for index in _batches(int(self.y.shape[0]), self.batch_size, self.generator):
            index = index.to(self.y.device)
            yield {name: x[index] for name, x in self.x.items()}, self.y[index]


class RebalancingActivity:
    """What a RebalancingPolicy did in one epoch, for the run record: the mean weight of every loss term
    it used (``"<kind>/<modality>"``, ``"fused"``), the mean training fusion weights (MLA) and the
    epoch-boundary events (checkpoints, prototypes, re-initialisations)."""

    def __init__(self, rebalancer: Rebalancer) -> None:
        self.rebalancer = rebalancer
        self.first_event = len(rebalancer.events)
        self.terms: dict[str, float] = {}
        self.fusion: dict[str, float] = {}
        self.steps = 0

    def add(self) -> None:
        self.steps += 1
        terms = self.rebalancer.last_terms
        if terms is not None:
            weights = {"fused": terms.fused}
            for kind in ("unimodal", "prototype", "prototype_entropy"):
                weights.update({f"{kind}/{m}": w for m, w in getattr(terms, kind).items()})
            for key, value in weights.items():
                self.terms[key] = self.terms.get(key, 0.0) + float(value)
        for m, w in (self.rebalancer.last_fusion_weights or {}).items():
            self.fusion[m] = self.fusion.get(m, 0.0) + float(w)

    def record(self) -> dict[str, Any]:
        steps = max(self.steps, 1)
        events = self.rebalancer.events[self.first_event :]
        return {
            "loss_weights": {key: value / steps for key, value in self.terms.items()},
            "fusion_weights": {m: value / steps for m, value in self.fusion.items()} or None,
            "events": [list(event) for event in events],
        }


def reference_clipping(model: FusionNet, policy: GradientPolicy) -> Any:
    """The gradient clipping AGM's and ARL's reference training loops apply after their modulation.

    AGM (``run/CREMAD_main.py``): when the fusion head's weight gradient leaves [-1, 1], every gradient
    is clipped to a total norm of 1 (AGM's boost can reach ``exp(alpha * clip)``). ARL
    (``main_arl_variance.py``): always clipped to a total norm of 40.
    """

    def clip(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if isinstance(policy, AGM):
            grad = model.head.weight.grad
            if grad is not None and (float(grad.max()) > 1.0 or float(grad.min()) < -1.0):
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        else:
            nn.utils.clip_grad_norm_(model.parameters(), 40.0)

    return clip


def make_optimizer(model: nn.Module, config: TrainConfig, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    lr = config.lr * lr_scale
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


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
