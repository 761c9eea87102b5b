"""Bind a core coefficient policy to a torch model: per-modality gradient or learning-rate modulation.

The policy (:mod:`pdmp.policies`) decides every coefficient; this module only applies them.

Two modes:

* ``"grad"`` (the paper's mechanism): each modality's parameter gradients are multiplied by that
  modality's coefficient. Right for plain SGD / SGD with momentum, the field's standard setting, where
  a gradient multiplier *is* a learning-rate multiplier (weight decay aside: it is added by the
  optimizer after the hook, so it is not scaled).
* ``"lr"``: each modality's learning rate is multiplied by its coefficient, on the optimizer's
  parameter groups, for the duration of ``optimizer.step()``. Right for Adam/AdamW (which divide by the
  gradient's own scale, so a constant gradient multiplier does almost nothing) and whenever weight
  decay should be scaled with the step.

Under SGD without weight decay the two give identical updates without momentum, and with momentum
while the coefficient is constant. When a coefficient changes (end of warm-up, a ramp, OGM-GE),
torch's SGD applies the new learning rate to the whole momentum buffer in ``"lr"`` mode, whereas
``"grad"`` mode (and Keras's SGD in either mode) applies it to new gradients only; use ``"grad"``
with SGD for the same dynamics in both frameworks (tested in ``tests/test_parity_training.py``).
Cost: ``"lr"`` does a few dict operations per optimizer step; ``"grad"`` adds one Python hook call
and one multiply per parameter tensor per backward pass (roughly 5-10 us each on CPU): negligible for
a ResNet-sized step, a few percent for a very small, fast step (use ``"lr"`` there if the optimizer
allows).

Design (why):

* **Tensor hooks** (``param.register_hook``), not ``register_post_accumulate_grad_hook``: a tensor hook
  sees each backward pass's *contribution* before it is accumulated into ``.grad``, so with gradient
  accumulation every contribution is scaled exactly once (a post-accumulate hook would rescale what
  earlier passes already accumulated). It runs before DDP's all-reduce hook on the same parameter,
  and since every rank applies the same coefficient, scaling commutes with averaging. Coefficients
  multiply, so they commute with AMP's loss scaling. Hooks on leaf parameters run in the eager
  autograd engine, so a ``torch.compile``-d model is modulated too. A hook returns a new tensor and
  never edits its argument (autograd may share that tensor with other inputs' gradients).
* **OGM-GE noise** is added in the same hook, per backward pass, to each modulated parameter's
  contribution: ``k * g + N(0, std(g) + OGM_NOISE_EPS)``. Under AMP the hook sees ``S * g`` (``S`` the
  loss scale), so the noise is drawn as ``S * N(0, std(g) + eps)`` = ``N(0, std(S g) + S eps)``; pass
  ``scaler=`` so ``S`` is known (without it only the tiny ``eps`` term is off). Under DDP every rank
  draws the same noise (same seed, same draws) and adds it before the all-reduce, so averaging does
  not shrink it and all ranks stay identical. A skipped AMP step draws noise that is discarded along
  with the step.
* **Steps advance explicitly**: call :meth:`Modulator.step` after ``optimizer.step()`` and
  :meth:`Modulator.set_epoch` at the start of each epoch. When the modulator knows the optimizer
  (``optimizer=``; required in ``lr`` mode), ``step()`` counts only steps the optimizer really took, so
  a step that ``GradScaler`` skipped for inf/NaN gradients does not advance the schedule.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from torch import nn

from pdmp._validation import check_disjoint_assignment, check_non_negative_int, check_same_modalities
from pdmp.diagnostics import modality_scores
from pdmp.policies import OGM_NOISE_EPS, Clock, CoefficientPolicy, Modulation, policy_from_config

from ._distributed import all_reduce_sum, is_distributed

Mode = Literal["grad", "lr"]
ParameterSource: TypeAlias = "nn.Module | nn.Parameter | Iterable[nn.Parameter]"

STATE_FORMAT = "pdmp.backends.torch.Modulator"
STATE_VERSION = 1


class Modulator:
    """Apply a :class:`~pdmp.policies.CoefficientPolicy` to each modality's parameters.

    Args:
        modalities: modality name -> its encoder, as an ``nn.Module`` or an iterable of parameters.
            Parameters are given explicitly (never matched by name). Parameters in no modality
            (fusion, head) are never modulated. Frozen parameters are skipped with one warning.
        policy: the core policy (:class:`~pdmp.PDMP`, :class:`~pdmp.OGMGE`, ...); its modality names
            must equal the keys of ``modalities``.
        mode: ``"grad"`` (gradient hooks) or ``"lr"`` (per-modality learning rates); see the module
            docstring for which to use.
        optimizer: the optimizer training these parameters. Required for ``"lr"``; in ``"grad"`` mode
            it is optional and lets :meth:`step` ignore steps the optimizer skipped (AMP).
        scaler: the ``torch.amp.GradScaler`` in use, if any; only OGM-GE's noise needs it.
        seed: seed of the noise generator (OGM-GE). Keep it equal on every DDP rank.
        sync: all-reduce OGM-GE scores over ``process_group`` when torch.distributed is initialised.
        process_group: the group to reduce over (default: the world).

    Usage::

        mod = Modulator({"audio": model.audio, "image": model.image}, policy, optimizer=opt)
        for epoch in range(epochs):
            mod.set_epoch(epoch)
            for x, y in loader:
                out = model(x)
                mod.observe(per_modality_logits, y)   # OGM-GE only; a no-op otherwise
                loss_fn(out, y).backward()
                opt.step(); opt.zero_grad(); mod.step()
    """

    def __init__(
        self,
        modalities: Mapping[str, ParameterSource],
        policy: CoefficientPolicy,
        mode: Mode = "grad",
        optimizer: torch.optim.Optimizer | None = None,
        *,
        scaler: Any = None,
        seed: int = 0,
        sync: bool = True,
        process_group: Any = None,
    ) -> None:
        if not isinstance(policy, CoefficientPolicy):
            raise TypeError(f"policy must be a pdmp CoefficientPolicy (PDMP, OGMGE, ...), got {type(policy).__name__}")
        if not isinstance(modalities, Mapping):
            raise TypeError(
                f"modalities must be a dict modality name -> module or parameters, got {type(modalities).__name__}"
            )
        policy.check_modalities(list(modalities), where="Modulator modalities")
        if mode not in ("grad", "lr"):
            raise ValueError(f"unknown mode {mode!r}; use 'grad' (gradient hooks) or 'lr' (per-modality learning rate)")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if mode == "lr" and optimizer is None:
            raise ValueError("mode='lr' needs optimizer=<the torch.optim optimizer that trains these parameters>")
        if mode == "lr" and policy.adds_noise:
            raise ValueError(
                f"{policy!r} adds gradient noise, which mode='lr' cannot apply; use mode='grad' "
                "(OGM-GE's own mechanism) or disable the noise (OGMGE(..., noise=False))"
            )
        self.policy = policy
        self.mode: Mode = mode
        self.optimizer = optimizer
        self.scaler = scaler
        self.seed = check_non_negative_int(seed, name="seed")
        self.sync = bool(sync)
        self.process_group = process_group
        self.clock = Clock()
        self.params: dict[str, list[nn.Parameter]] = _resolve_parameters(modalities, policy)
        self._owner: dict[int, str] = {id(p): name for name, params in self.params.items() for p in params}
        self._factors: dict[str, float] = dict.fromkeys(policy.modalities, 1.0)
        self._noise = False
        self._loss_scale = 1.0
        self._observed = False
        self._hooks_ran = False
        self._hooks_verified = False
        self._generators: dict[str, torch.Generator] = {}
        self._optimizer_steps = 0
        self._steps_seen = 0
        self._saved_lrs: list[tuple[dict[str, Any], Any]] = []
        self._handles: list[Any] = []
        if optimizer is not None:
            if mode == "lr":
                _check_in_optimizer(self.params, optimizer)
                _split_param_groups(optimizer, self._owner)
            self._handles.append(optimizer.register_step_pre_hook(self._before_optimizer_step))
            self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))
        if mode == "grad":
            for name, params in self.params.items():
                for param in params:
                    self._handles.append(param.register_hook(functools.partial(self._hook, name)))
        self._refresh()

    # ----------------------------------------------------------------- the training-loop interface

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.policy.modalities

    @property
    def coefficients(self) -> dict[str, float]:
        """The coefficient per modality in effect for the current step (after :meth:`observe` for OGM-GE)."""
        return dict(self._factors)

    @property
    def step_count(self) -> int:
        return self.clock.step

    @property
    def epoch(self) -> int:
        return self.clock.epoch

    @property
    def active(self) -> bool:
        """False once :meth:`remove` has been called."""
        return bool(self._handles)

    def set_epoch(self, epoch: int) -> None:
        """Tell the modulator the current epoch; call it at the start of every epoch."""
        self.clock.epoch = check_non_negative_int(epoch, name="epoch")
        self._refresh()

    def observe(self, logits: Mapping[str, torch.Tensor], labels: torch.Tensor | Any) -> None:
        """Give OGM-GE this batch's per-modality logits; call after the forward pass, before backward.

        A no-op for policies that do not need logits. The scores are computed by the core (NumPy), so
        the logits are copied to the CPU: one device sync per batch, which OGM-GE needs anyway to turn
        scores into coefficients. Under torch.distributed the scores (sums over the batch) are
        all-reduced, so every rank computes the same coefficients from the global batch; call it on
        every rank for every batch. With gradient accumulation call it for every micro-batch: each
        backward pass is scaled by the coefficients of its own micro-batch.
        """
        if not self.policy.needs_logits:
            return
        check_same_modalities(logits.keys(), self.policy.modalities, where="Modulator.observe logits")
        device = next(iter(logits.values())).device
        arrays = {name: _to_numpy(value) for name, value in logits.items()}
        scores = modality_scores(arrays, _to_numpy(labels))
        if self.sync and is_distributed(self.process_group):
            names = list(scores)
            reduced = all_reduce_sum([scores[name] for name in names], device=device, group=self.process_group)
            scores = dict(zip(names, reduced, strict=True))
        self._apply(self.policy.modulation(step=self.clock.step, epoch=self.clock.epoch, scores=scores))
        if self._noise and self.scaler is not None and self.scaler.is_enabled():
            self._loss_scale = float(self.scaler.get_scale())
        self._observed = True

    def step(self) -> bool:
        """Advance one training step; call after ``optimizer.step()``. Returns whether it advanced.

        With an optimizer attached, a step it did not take (``GradScaler`` skipped it) is not counted.
        """
        self._check_hooks_ran()
        self._observed = False
        if self.optimizer is not None:
            if self._optimizer_steps == self._steps_seen:
                self._refresh()
                return False
            self._steps_seen = self._optimizer_steps
        self.clock.step += 1
        self._refresh()
        return True

    def remove(self) -> None:
        """Remove every hook; training is then plain (learning rates are left at their base values)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Modulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    # ----------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume with exactly the coefficients (and noise) of an uninterrupted run."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "mode": self.mode,
            "policy": self.policy.get_config(),
            "clock": self.clock.state_dict(),
            "coefficients": dict(self._factors),
            "seed": self.seed,
            "generators": {device: gen.get_state() for device, gen in self._generators.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restore :meth:`state_dict`. With ``strict`` the saved policy must equal this one."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a Modulator state_dict (missing 'format'); pass what Modulator.state_dict() returned")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"Modulator state version {state.get('version')!r} is not supported ({STATE_VERSION})")
        saved_policy = policy_from_config(state["policy"])
        check_same_modalities(saved_policy.modalities, self.policy.modalities, where="Modulator.load_state_dict")
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint was saved in mode={state['mode']!r} but this Modulator uses {self.mode!r}")
        if strict and saved_policy != self.policy:
            raise ValueError(
                f"checkpoint was saved with {saved_policy!r} but this Modulator has {self.policy!r}; "
                "build the Modulator with the saved policy, or pass strict=False to keep the new one"
            )
        self.clock.load_state_dict(state["clock"])
        self.seed = check_non_negative_int(state["seed"], name="state['seed']")
        self._generators = {}
        for device, generator_state in state["generators"].items():
            self._generator(torch.device(device)).set_state(generator_state)
        self._steps_seen = self._optimizer_steps
        self._observed = False
        self._refresh()
        if self.policy.needs_logits:
            self._factors = {name: float(state["coefficients"][name]) for name in self.policy.modalities}

    # --------------------------------------------------------------------------------- internals

    def _refresh(self) -> None:
        """Recompute the coefficients from the clock (policies that need logits wait for observe)."""
        if self.policy.needs_logits:
            return
        self._apply(self.policy.modulation(step=self.clock.step, epoch=self.clock.epoch))

    def _apply(self, modulation: Modulation) -> None:
        self._factors = {name: float(modulation.coefficients[name]) for name in self.policy.modalities}
        self._noise = bool(modulation.noise)

    def _require_observation(self, where: str) -> None:
        if self.policy.needs_logits and not self._observed:
            raise RuntimeError(
                f"{type(self.policy).__name__} needs this batch's per-modality logits before {where}: call "
                "mod.observe(logits, labels) after the forward pass and before backward "
                "(concat_head_logits / sum_head_logits split a fusion head)"
            )

    def _hook(self, modality: str, grad: torch.Tensor) -> torch.Tensor | None:
        self._hooks_ran = True
        self._require_observation("backward")
        factor = self._factors[modality]
        if not self._noise:
            return None if factor == 1.0 else grad * factor
        std = grad.std() if grad.numel() > 1 else grad.new_zeros(())
        noise = torch.randn(grad.shape, generator=self._generator(grad.device), dtype=grad.dtype, device=grad.device)
        return grad * factor + noise * (std + OGM_NOISE_EPS * self._loss_scale)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            self._generators[key] = generator
        return self._generators[key]

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.mode != "lr":
            return
        self._require_observation("optimizer.step()")
        for group in optimizer.param_groups:
            modality = self._owner.get(id(group["params"][0])) if group["params"] else None
            if modality is not None and self._factors[modality] != 1.0:
                self._saved_lrs.append((group, group["lr"]))
                group["lr"] = group["lr"] * self._factors[modality]

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group, lr in self._saved_lrs:
            group["lr"] = lr
        self._saved_lrs.clear()
        self._optimizer_steps += 1

    def _check_hooks_ran(self) -> None:
        """Fail loudly if gradients reached the parameters without passing through the hooks."""
        if self.mode != "grad" or self._hooks_verified or not self._handles:
            return
        if self._hooks_ran:
            self._hooks_verified = True
        elif any(p.grad is not None for params in self.params.values() for p in params):
            raise RuntimeError(
                "modality parameters have gradients that did not pass through the Modulator's hooks, so they "
                "were not modulated; this training path (e.g. torch.func.functional_call on copies, FSDP flat "
                "parameters) is not supported in mode='grad'; use mode='lr' with the optimizer"
            )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {len(params)} tensors" for name, params in self.params.items())
        return f"Modulator({self.policy!r}, mode={self.mode!r}, {sizes})"


def _resolve_parameters(modalities: Mapping[str, ParameterSource], policy: CoefficientPolicy) -> dict[str, list[Any]]:
    """Modality -> its trainable parameters that the policy modulates; checks ownership and emptiness."""
    names: dict[int, str] = {}
    params: dict[Any, Any] = {}
    groups: dict[str, list[int]] = {}
    frozen: list[str] = []
    for modality, source in modalities.items():
        ids: list[int] = []
        for label, param in _named_parameters(modality, source):
            names.setdefault(id(param), label)
            if not param.requires_grad:
                frozen.append(label)
                continue
            params[id(param)] = param
            ids.append(id(param))
        groups[modality] = ids
    if frozen:
        warnings.warn(
            f"skipping {len(frozen)} frozen parameter(s) (requires_grad=False), which are not modulated: "
            f"{', '.join(frozen[:5])}{', ...' if len(frozen) > 5 else ''}",
            UserWarning,
            stacklevel=3,
        )
    assigned = check_disjoint_assignment(groups, describe=lambda key: repr(names[key]))
    result: dict[str, list[Any]] = {}
    for modality, keys in assigned.items():
        selected = [params[key] for key in keys if policy.modulates(tuple(params[key].shape))]
        if not selected:
            raise ValueError(
                f"{policy!r} modulates none of modality {modality!r}'s parameters "
                f"(shapes {sorted({tuple(params[key].shape) for key in keys})}); "
                "OGMGE(conv_kernels_only=True) needs 4-D conv kernels, use conv_kernels_only=False"
            )
        result[modality] = selected
    return result


def _named_parameters(modality: str, source: Any) -> Iterator[tuple[str, nn.Parameter]]:
    if isinstance(source, nn.Module):
        for name, param in source.named_parameters():
            yield f"{modality}.{name}", param
        return
    if isinstance(source, torch.Tensor):
        source = [source]
    elif isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise TypeError(
            f"modality {modality!r}: expected an nn.Module or an iterable of parameters, got {source!r}; "
            "parameters are given explicitly, never by name"
        )
    for index, param in enumerate(source):
        if not isinstance(param, torch.Tensor) or not param.is_leaf:
            raise TypeError(
                f"modality {modality!r}: item {index} is {type(param).__name__}, not a leaf parameter; "
                "pass module.parameters() or a list of nn.Parameter"
            )
        yield f"{modality}[{index}] {tuple(param.shape)}", param


def _check_in_optimizer(params: Mapping[str, list[nn.Parameter]], optimizer: torch.optim.Optimizer) -> None:
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for modality, tensors in params.items():
        missing = [p for p in tensors if id(p) not in known]
        if missing:
            shapes = ", ".join(str(tuple(p.shape)) for p in missing[:3])
            raise ValueError(
                f"{len(missing)} parameter(s) of modality {modality!r} (shapes {shapes}) are not in the optimizer; "
                "mode='lr' scales the learning rates of the optimizer's parameter groups, so give the optimizer "
                "every parameter, e.g. torch.optim.SGD(model.parameters(), lr=...)"
            )


def _split_param_groups(optimizer: torch.optim.Optimizer, owner: Mapping[int, str]) -> None:
    """Split parameter groups so that each holds one modality (or only unmodulated parameters).

    Optimizer state is keyed by parameter, so it survives; LR schedulers hold one entry per group,
    so one created earlier would be silently misaligned, which is refused.
    """
    new_groups: list[dict[str, Any]] = []
    changed = False
    for group in optimizer.param_groups:
        buckets: dict[str | None, list[Any]] = {}
        for param in group["params"]:
            buckets.setdefault(owner.get(id(param)), []).append(param)
        if len(buckets) <= 1:
            new_groups.append(group)
            continue
        changed = True
        options = {key: value for key, value in group.items() if key != "params"}
        new_groups.extend({**options, "params": members} for members in buckets.values())
    if not changed:
        return
    if any("initial_lr" in group for group in optimizer.param_groups):
        raise ValueError(
            "the optimizer already has an LR scheduler (its groups carry 'initial_lr'); mode='lr' splits parameter "
            "groups per modality, so create the Modulator first and the LR scheduler after it"
        )
    optimizer.param_groups[:] = new_groups


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.is_floating_point():
            value = value.to(torch.float64)
        return value.cpu().numpy()
    return np.asarray(value)


__all__ = ["Mode", "Modulator", "ParameterSource"]
