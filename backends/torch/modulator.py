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
Cost: ``"lr"`` does a few dict operations per optimizer step. ``"grad"`` has two paths (``path=``).
``"hooks"`` scales each backward pass's gradients in one tensor hook per parameter: a Python call and
a newly allocated product per tensor, some 25 us each inside backward on one CPU thread. ``"fused"``
multiplies each modality's gradients in place with one multi-tensor call just before
``optimizer.step()``, some 3 us per tensor. On a 156-tensor transformer at batch 8 (one CPU thread)
the step-time ratio is about 1.05 with the hooks and 1.03 fused (``benchmarks/torch_overhead_scale.py``,
numbers in ``benchmarks/reported/overhead/``). ``"auto"``, the default, takes ``"fused"`` when
``optimizer=`` is given and the policy's coefficients are fixed for the whole step and add no noise
(PDMP and its controls), and the hooks otherwise (OGM-GE, or no optimizer). The two give the same
updates except in the cases listed below, chiefly code that clips or reads gradients between backward
and the step.

Gradient policies (:class:`pdmp.transforms.GradientPolicy`: MMPareto, InfoReg, ... and any of your
own) go beyond a coefficient; the Modulator applies every one through the core's single form
(:func:`pdmp.transforms.apply_transform`), with no method-specific code here. ``mode="grad"`` and
``optimizer=`` only (refused otherwise): in the optimizer's pre-step hook (after ``GradScaler`` has
unscaled, after DDP has averaged, after a closure has run) it computes the step's gradient
statistics if the policy asks (torch ops on the device, float64 accumulation, one sync per step),
calls ``policy.transform`` exactly once per optimizer step, and overwrites each modulated encoder
parameter's ``.grad`` with the transformed gradient (``torch._foreach_*``). What the policy declares
it needs, the training loop provides:

* ``uses_logits``: :meth:`Modulator.observe` after each forward pass (the statistics of every
  micro-batch are summed, and all-reduced under torch.distributed); a step without it is refused.
* ``uses_unimodal_gradients``: :meth:`Modulator.backward` with each modality's unimodal loss instead
  of ``loss.backward()``; ``U`` is kept apart (one buffer the size of the encoders), ``G = .grad - U``.
* ``uses_anchor``: nothing; a copy of every modulated parameter is taken at each
  :meth:`Modulator.set_epoch` (and at construction, for epoch 0): memory of one more copy of the
  encoders, saved in :meth:`Modulator.state_dict`.
* ``uses_gradient_stats``: nothing.

As on the fused path, anything that reads gradients between backward and ``optimizer.step()``
(clipping, logging) sees the untransformed ones, and gradient accumulation transforms the sum.
Parameters the policy does not modulate, frozen ones and those without a gradient are left alone
(an encoder parameter the policy does not modulate keeps the ordinary gradient of everything
backpropagated). Checkpoints are taken between steps (what ``observe``/``backward`` gathered for a
step is not saved).

Design (why):

* **Tensor hooks** (``param.register_hook``), not ``register_post_accumulate_grad_hook``: a tensor hook
  sees each backward pass's *contribution* before it is accumulated into ``.grad``, so with gradient
  accumulation every contribution is scaled exactly once (a post-accumulate hook would rescale what
  earlier passes already accumulated). It runs before DDP's all-reduce hook on the same parameter,
  and since every rank applies the same coefficient, scaling commutes with averaging. Coefficients
  multiply, so they commute with AMP's loss scaling. Hooks on leaf parameters run in the eager
  autograd engine, so a ``torch.compile``-d model is modulated too. A hook returns a new tensor and
  never edits its argument (autograd may share that tensor with other inputs' gradients).
* **The fused path** (``path="fused"``) multiplies ``param.grad`` of every trainable modality
  parameter in place, once per optimizer step, in an optimizer pre-step hook (after the closure when
  ``optimizer.step(closure)`` is given, as Lightning and LBFGS do). It gives the hook path's updates
  (the same bits without gradient accumulation) when the coefficients are fixed within the step,
  and differs from it exactly here:

  - *gradient accumulation*: the accumulated sum is scaled by the coefficient in effect at
    ``optimizer.step()``, i.e. the *last* micro-batch's; the hooks scale each micro-batch by its own.
    Equal for policies that change only at :meth:`Modulator.step` / :meth:`Modulator.set_epoch`
    (PDMP); different for OGM-GE, whose coefficients come from each micro-batch's logits, hence
    ``"auto"`` keeps OGM-GE on the hooks.
  - *anything that reads gradients between backward and the optimizer step* sees them unscaled:
    ``clip_grad_norm_`` clips the unmodulated gradient and the coefficient then multiplies the
    clipped one (like ``mode="lr"``), whereas with the hooks (and in Keras, which clips inside the
    optimizer) clipping sees the modulated gradient; gradient-norm logging likewise.
    ``GradScaler.unscale_`` and its inf check come before the scaling (scaling by a power-of-two
    loss scale commutes exactly with the coefficient, so the update is the same).
  - *gradients not cleared after a step* (no ``zero_grad``) are scaled again at the next step;
    with the hooks each backward contribution is scaled once. A closure called several times per
    step (LBFGS) must zero the gradients, as such closures do.
  - *DDP*: the hooks scale each rank's contribution before the all-reduce, the fused path the
    averaged gradient after it: the same value up to rounding.
  - *parameters without a gradient* (``grad is None``) or frozen are left alone by both paths;
    gradients written outside autograd (which the hooks never see, and :meth:`Modulator.step`
    reports) are scaled by the fused path.

  The fused path needs ``optimizer=`` and refuses noise-adding policies (OGM-GE's noise is drawn
  per backward pass from that pass's gradient, so it stays in the hooks).
* **OGM-GE noise** is added in the same hook, per backward pass, to each modulated parameter's
  contribution: ``k * g + N(0, std(g) + OGM_NOISE_EPS)``. Under AMP the hook sees ``S * g`` (``S`` the
  loss scale), so the noise is drawn as ``S * N(0, std(g) + eps)`` = ``N(0, std(S g) + S eps)``; pass
  ``scaler=`` so ``S`` is known (without it only the tiny ``eps`` term is off). Under DDP every rank
  draws the same noise (same seed, same draws) and adds it before the all-reduce, so averaging does
  not shrink it and all ranks stay identical. A skipped AMP step draws noise that is discarded along
  with the step.
* **The step lifecycle**: call :meth:`Modulator.step` after ``optimizer.step()`` and
  :meth:`Modulator.set_epoch` at the start of each epoch. Micro-batches accumulate into a step: what
  ``observe`` and ``backward`` gather (logit statistics, unimodal gradients, an adaptive policy's
  scores) is summed until the optimizer steps. A step is then *taken* or *skipped*, and policies
  observe, transform and count once per taken step. With ``optimizer=`` (required in ``lr`` mode and
  for GradientPolicies) ``step()`` knows which: a call when the optimizer has not stepped since the
  last one is a micro-batch (it counts nothing and keeps the gathered inputs, so calling it after every
  micro-batch, as the Lightning callback does, is fine); a step that ``GradScaler`` skipped for inf/NaN
  gradients is not counted and changes no policy state (a plain or ``foreach`` optimizer is then not
  called at all: the Modulator sees the skip as the scaler's lowered scale when given ``scaler=``, else
  at the next ``optimizer.zero_grad()``; a fused one, ``Adam(fused=True)`` or anything with
  ``_step_supports_amp_scaling``, is called with ``found_inf`` set, which the transform and
  :meth:`Modulator.step` read); an ``optimizer.step()`` that raises is abandoned: a GradientPolicy's
  state goes back to where it was before the step's transform and the step's inputs are forgotten.
  Without an optimizer every ``step()`` is a step.
* **The base learning rate survives exceptions** (``"lr"`` mode): the scaled rates live only inside
  ``optimizer.step()``, which the modulator wraps (in every mode) so that they are restored even when
  the step raises (a closure that fails, an out-of-memory retry).
* **Frozen parameters belong to their modality**: a parameter frozen when the modulator is built and
  unfrozen later is modulated once it trains. ``"lr"`` mode puts it in its modality's parameter group
  from the start; ``"grad"`` mode's fused path scales any trainable gradient it finds at the step,
  and its hook path attaches the hook when it first sees the parameter trainable, at
  :meth:`Modulator.set_epoch`, :meth:`Modulator.step` or (with ``optimizer=``) just before the
  optimizer step, where a gradient it already accumulated is modulated in place.
* **Misuse is loud**: a removed modulator (after its ``with`` block) refuses ``step``/``set_epoch``/
  ``observe`` and reports coefficients of 1; two modulators on one parameter are refused; with
  ``optimizer=``, encoder parameters the optimizer does not train (e.g. a deep copy) are refused;
  ``"grad"`` mode under an optimizer that normalises gradient scale (Adam, RMSprop, ...) warns at
  construction; a policy whose coefficients depend on the epoch warns at the first
  :meth:`Modulator.step` if :meth:`Modulator.set_epoch` was never called; a policy that adds unimodal
  losses (``AdaptivePDMP(auxiliary=...)``) is refused at a :meth:`Modulator.step` whose
  ``unimodal_loss_weights`` were never read (the losses were not added); float16 gradients that a
  coefficient > 1 overflowed to inf warn at the :meth:`Modulator.step` that follows (checked only for
  float16 parameters while a coefficient exceeds 1).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import sys
import types
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np
import torch
from torch import nn

from pdmp._validation import (
    check_bool,
    check_disjoint_assignment,
    check_non_negative_int,
    check_same_modalities,
    check_state_keys,
)
from pdmp.compare import AppliedRecord
from pdmp.diagnostics import modality_scores
from pdmp.policies import (
    OGM_NOISE_EPS,
    Clock,
    CoefficientPolicy,
    Modulation,
    NoModulation,
    check_modulation,
    policy_from_config,
)
from pdmp.rebalancing import RebalancingPolicy
from pdmp.transforms import (
    GRADIENT_STATISTICS,
    LOGIT_STATISTICS,
    GradientPolicy,
    GradientTransform,
    logit_statistics,
    stats_from_array,
    stats_to_array,
)

from ._distributed import all_reduce_sum, is_distributed

Mode = Literal["grad", "lr"]
GradPath = Literal["auto", "hooks", "fused"]
ParameterSource: TypeAlias = "nn.Module | nn.Parameter | Iterable[nn.Parameter]"

STATE_FORMAT = "pdmp.backends.torch.Modulator"
STATE_VERSION = 1

#: Optimizers that divide each update by (a running estimate of) the gradient's own scale, or use only
#: its sign, so a constant gradient multiplier barely changes the step.
SCALE_INVARIANT_OPTIMIZERS: tuple[type, ...] = tuple(
    cls
    for name in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "SparseAdam", "Adagrad", "Adadelta", "RMSprop", "Rprop")
    if isinstance(cls := getattr(torch.optim, name, None), type)
)

# Epochs at which a policy is compared with epoch 0 to tell whether its coefficients depend on the
# epoch (then forgetting set_epoch is a silent error). Spans short warm-ups and long schedules.
_PROBE_EPOCHS = (1, 2, 3, 5, 10, 30, 100, 1000)

# id(parameter) -> (parameter, modulator), both held weakly: which live Modulator hooks a parameter.
# Keyed by id because tensors compare elementwise; the weak parameter guards against id reuse.
_CLAIMS: dict[int, tuple[weakref.ref[torch.Tensor], weakref.ref[Modulator]]] = {}


class Modulator:
    """Apply a :class:`~pdmp.policies.CoefficientPolicy` to each modality's parameters.

    Args:
        modalities: modality name -> its encoder, as an ``nn.Module`` or an iterable of parameters.
            Parameters are given explicitly (never matched by name). Parameters in no modality
            (fusion, head) are never modulated. Frozen parameters still belong to their modality and
            are modulated once they are unfrozen and train (see the module docstring for when).
        policy: the core policy (:class:`~pdmp.PDMP`, :class:`~pdmp.OGMGE`, a
            :class:`~pdmp.transforms.GradientPolicy`, ...); its modality names must equal the keys of
            ``modalities``. A GradientPolicy needs ``mode="grad"`` and ``optimizer=`` (module docstring).
        mode: ``"grad"`` (gradient multipliers) or ``"lr"`` (per-modality learning rates); see the
            module docstring for which to use.
        optimizer: the optimizer training these parameters. Required for ``"lr"``; in ``"grad"`` mode
            it is optional and lets :meth:`step` ignore steps the optimizer skipped (AMP). Every
            trainable modality parameter must be in it (otherwise these are not the encoders it trains).
        scaler: the ``torch.amp.GradScaler`` in use, if any: OGM-GE's noise needs it, and
            :meth:`backward` scales the losses with it.
        seed: seed of the noise generator (OGM-GE). Keep it equal on every DDP rank.
        sync: all-reduce OGM-GE scores over ``process_group`` when torch.distributed is initialised.
        process_group: the group to reduce over (default: the world).
        path: how ``"grad"`` mode scales gradients: ``"hooks"`` (one tensor hook per parameter, per
            backward pass), ``"fused"`` (one in-place multi-tensor multiply per modality before
            ``optimizer.step()``; needs ``optimizer=`` and a policy without noise) or ``"auto"``
            (``"fused"`` where both give the same updates, see the module docstring). The resolved
            choice is in :attr:`path` (``None`` in ``"lr"`` mode).

    Usage::

        mod = Modulator({"audio": model.audio, "image": model.image}, policy, optimizer=opt)
        for epoch in range(epochs):
            mod.set_epoch(epoch)
            for x, y in loader:
                out = model(x)
                mod.observe(per_modality_logits, y)   # OGM-GE only; a no-op otherwise
                loss_fn(out, y).backward()
                opt.step(); opt.zero_grad(); mod.step()

    With a GradientPolicy that uses unimodal gradients (MMPareto), replace the backward line by
    ``mod.backward(fused_loss, {"audio": audio_head_loss, "image": image_head_loss})``.
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
        path: GradPath = "auto",
    ) -> None:
        # Every check comes before the first hook is registered: a refused Modulator leaves nothing behind.
        if not isinstance(policy, CoefficientPolicy):
            raise TypeError(f"policy must be a pdmp CoefficientPolicy (PDMP, OGMGE, ...), got {type(policy).__name__}")
        if isinstance(policy, RebalancingPolicy):
            # Before any hook: the core's own refusal would come only after hooks and guards were installed.
            raise TypeError(
                f"{type(policy).__name__} is a RebalancingPolicy: it changes the loss, the parameters or the step, "
                "not gradient coefficients; train it with pdmp.backends.torch.Rebalancer (and training_step), "
                "not a Modulator"
            )
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
        if path not in ("auto", "hooks", "fused"):
            raise ValueError(f"unknown path {path!r}; use 'auto', 'hooks' or 'fused'")
        if isinstance(policy, GradientPolicy):
            _check_gradient_policy_options(policy, mode, optimizer, path)
        if path == "fused" and (mode != "grad" or optimizer is None or policy.adds_noise):
            why = (
                "applies to mode='grad' only"
                if mode != "grad"
                else "needs optimizer= (it scales the gradients just before optimizer.step())"
                if optimizer is None
                else f"cannot add {policy!r}'s noise, which is drawn per backward pass; use path='hooks'"
            )
            raise ValueError(f"path='fused' {why}")
        if path == "hooks" and mode != "grad":
            raise ValueError("path='hooks' applies to mode='grad' only")
        if scaler is not None and not (callable(getattr(scaler, "get_scale", None)) and hasattr(scaler, "is_enabled")):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        seed = check_non_negative_int(seed, name="seed")
        sync = check_bool(sync, name="sync")
        params, labels = _resolve_parameters(modalities, policy)
        owner = {id(p): name for name, tensors in params.items() for p in tensors}
        _check_unclaimed(params, labels)
        if optimizer is not None:
            _check_in_optimizer(params, optimizer, mode)
            if mode == "lr":
                _split_param_groups(optimizer, owner)
            elif isinstance(optimizer, SCALE_INVARIANT_OPTIMIZERS) and not isinstance(
                policy,
                (NoModulation, GradientPolicy),  # a transform changes directions, not only the scale
            ):
                advice = (
                    "OGM-GE is defined for SGD; train it with SGD"
                    if policy.adds_noise
                    else "use mode='lr', which multiplies each modality's learning rate instead"
                )
                warnings.warn(
                    f"mode='grad' with {type(optimizer).__name__}: this optimizer normalises each update by the "
                    "gradient's own scale, so multiplying gradients by a coefficient barely changes training; "
                    f"{advice}",
                    UserWarning,
                    stacklevel=2,
                )
        self.policy = policy
        self.mode: Mode = mode
        #: How grad mode scales gradients, ``"hooks"`` or ``"fused"`` (``None`` in lr mode).
        self.path: Literal["hooks", "fused"] | None = None
        if mode == "grad":
            # Fused only where it gives the hooks' updates: coefficients fixed within the step, no noise.
            # A GradientPolicy reads logits once per step, from the whole step's statistics: always fused.
            per_pass_logits = policy.needs_logits and not isinstance(policy, GradientPolicy)
            fusable = optimizer is not None and not policy.adds_noise and not per_pass_logits
            self.path = "fused" if path == "fused" or (path == "auto" and fusable) else "hooks"
        self.optimizer = optimizer
        self.scaler = scaler
        self.seed = seed
        self.sync = bool(sync)
        self.process_group = process_group
        self.clock = Clock()
        #: Modality -> all of its parameters that the policy modulates, frozen ones included.
        self.params: dict[str, list[nn.Parameter]] = params
        self._labels = labels
        self._owner: dict[int, str] = owner
        self._factors: dict[str, float] = dict.fromkeys(policy.modalities, 1.0)
        self._noise = False
        self._loss_scale = 1.0
        self._observed = False
        self._weights_read = False
        self._hooks_ran = False
        self._hooks_verified = False
        self._removed = False
        self._epoch_given = False
        self._warned: set[str] = set()
        self._generators: dict[str, torch.Generator] = {}
        self._optimizer_steps = 0
        self._applied = AppliedRecord()
        self._steps_seen = 0
        self._found_inf: list[torch.Tensor] = []
        self._overflow: list[tuple[str, torch.Tensor]] = []
        self._saved_lrs: list[tuple[dict[str, Any], Any]] = []
        self._group_count = len(optimizer.param_groups) if optimizer is not None else 0
        # GradientPolicy: what the step's transform reads, gathered from observe()/backward() until
        # the optimizer step consumes it (summed over micro-batches), and the epoch-start anchors.
        self._gradient_policy: GradientPolicy | None = policy if isinstance(policy, GradientPolicy) else None
        self._logit_sums: np.ndarray | None = None
        self._unimodal: dict[int, torch.Tensor] | None = None
        self._step_transform: GradientTransform | None = None
        self._anchors: dict[str, list[torch.Tensor]] | None = None
        # The step lifecycle (module docstring): scores an adaptive policy observed during the step, folded
        # in only once the step is taken; the policy state to go back to should optimizer.step() raise after
        # the transform; whether step() was called without an optimizer step since (accumulation, or a step
        # GradScaler skipped without calling the optimizer); and the loss scale when the step began (a lower
        # one at step() means a skip).
        self._pending_scores: dict[str, float] | None = None
        self._policy_backup: tuple[Any, Any] | None = None
        self._unstepped = False
        self._step_scale: float | None = None
        self._anchor_epoch = 0
        self._anchor_loaded = False  # anchors came from a checkpoint: keep them at set_epoch of their epoch
        if self._gradient_policy is not None and self._gradient_policy.uses_anchor:
            self._anchors = _copy_parameters(params)
        self._handles: list[Any] = []
        # grad mode: tensors cannot carry hooks while frozen, so frozen ones wait here until they train.
        self._pending: list[tuple[str, nn.Parameter]] = []
        self._hooked: list[nn.Parameter] = []
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(self._before_optimizer_step))
            self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))
            self._guard_zero_grad(optimizer)
            self._guard_step(optimizer)
        if self.path == "hooks":
            for name, tensors in params.items():
                for param in tensors:
                    if param.requires_grad:
                        self._hook_parameter(name, param)
                    else:
                        self._pending.append((name, param))
        for tensors in params.values():
            for param in tensors:
                _CLAIMS[id(param)] = (weakref.ref(param), weakref.ref(self))
        self._step_scale = self._loss_scale_now()
        self._refresh()

    # ----------------------------------------------------------------- the training-loop interface

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.policy.modalities

    @property
    def coefficients(self) -> dict[str, float]:
        """The coefficient per modality in effect for the current step (after :meth:`observe` for OGM-GE).

        After :meth:`remove` nothing is modulated any more, so every coefficient reads 1 (with a warning).
        """
        if self._removed:
            self._warn_once(
                "removed",
                "this Modulator was removed (remove() or the end of its with block), so nothing is modulated: "
                "its coefficients read 1.0; keep training inside the with block to stay modulated",
            )
            return dict.fromkeys(self.policy.modalities, 1.0)
        return dict(self._factors)

    @property
    def applied(self) -> AppliedRecord:
        """The range of every coefficient and unimodal-loss weight applied on the steps taken since this
        Modulator was built (not restored by :meth:`load_state_dict`). Return ``mod.applied.to_dict()``
        under :data:`pdmp.compare.APPLIED_KEY` beside a run's metrics and :func:`pdmp.compare` says which
        candidates never moved a coefficient (a rule that never fired, or a policy not wired in)."""
        return self._applied

    @property
    def unimodal_loss_weights(self) -> dict[str, float]:
        """Each modality's weight for its unimodal loss in this step's training loss: for
        ``AdaptivePDMP(auxiliary=...)`` (``policy.uses_unimodal_losses``) from the batches before the
        step, fixed with its coefficients; for a GradientPolicy its ``unimodal_loss_weight(epoch)``;
        0 for the other policies. Add ``sum(w[m] * loss_fn(logits[m], y))`` over the
        decomposed logits (``concat_head_logits(..., detach=False)``) to the fused loss."""
        self._check_open("unimodal_loss_weights")
        self._weights_read = True
        return dict(self._unimodal_weights)

    @property
    def step_count(self) -> int:
        return self.clock.step

    @property
    def epoch(self) -> int:
        return self.clock.epoch

    @property
    def active(self) -> bool:
        """False once :meth:`remove` has been called."""
        return not self._removed

    def set_epoch(self, epoch: int) -> None:
        """Tell the modulator the current epoch; call it at the start of every epoch.

        A GradientPolicy with ``uses_anchor`` gets its anchor here (a copy of the encoders), except that
        right after :meth:`load_state_dict` the checkpoint's own epoch keeps the saved anchor, so that a
        run resumed mid-epoch continues exactly.
        """
        self._check_open("set_epoch()")
        self.clock.epoch = check_non_negative_int(epoch, name="epoch")
        self._epoch_given = True
        if self._anchors is not None:
            # A resumed run re-announces its checkpoint's epoch: that epoch's anchor is the saved one.
            if not (self._anchor_loaded and self.clock.epoch == self._anchor_epoch):
                self._anchors = _copy_parameters(self.params)
            self._anchor_epoch, self._anchor_loaded = self.clock.epoch, False
        self._attach_unfrozen(in_step=False)
        self._refresh()

    def observe(self, logits: Mapping[str, torch.Tensor], labels: torch.Tensor | Any) -> None:
        """Give OGM-GE this batch's per-modality logits; call after the forward pass, before backward.

        A no-op for policies that do not need logits. The scores are computed by the core (NumPy), so
        the logits are copied to the CPU: one device sync per batch, which OGM-GE needs anyway to turn
        scores into coefficients. Under torch.distributed the scores (sums over the batch) are
        all-reduced, so every rank computes the same coefficients from the global batch; call it on
        every rank for every batch. With gradient accumulation call it for every micro-batch: each
        backward pass is scaled by the coefficients of its own micro-batch. A policy that learns from the
        scores (:class:`~pdmp.AdaptivePDMP`) gets their sum over the step's micro-batches, once the step
        is taken (one ``update`` per optimizer step, none for a skipped one).

        For a :class:`~pdmp.transforms.GradientPolicy` with ``uses_logits``: the batch's
        :func:`~pdmp.transforms.logit_statistics` (all-reduced sums, likewise), summed over the
        micro-batches of the step and handed to the policy's transform at ``optimizer.step()``.
        """
        self._check_open("observe()")
        self._begin_gathering()
        if self._gradient_policy is not None:
            self._observe_logit_statistics(logits, labels)
            return
        if not (self.policy.needs_logits or self.policy.observes_scores):
            return
        if not isinstance(logits, Mapping) or not logits:
            raise TypeError(f"observe: logits must be a dict modality -> tensor, got {type(logits).__name__}")
        check_same_modalities(logits.keys(), self.policy.modalities, where="Modulator.observe logits")
        device = next(iter(logits.values())).device
        arrays = {name: _to_numpy(value) for name, value in logits.items()}
        scores = modality_scores(arrays, _to_numpy(labels))
        if self.sync and is_distributed(self.process_group):
            names = list(scores)
            reduced = all_reduce_sum([scores[name] for name in names], device=device, group=self.process_group)
            scores = dict(zip(names, reduced, strict=True))
        if self.policy.observes_scores:
            # This step's coefficients were fixed from earlier batches; this batch informs the next steps,
            # once the step is taken: summed over its micro-batches, folded in by step() (one update a step).
            pending = self._pending_scores or dict.fromkeys(self.modalities, 0.0)
            self._pending_scores = {name: pending[name] + float(scores[name]) for name in self.modalities}
            self._observed = True
            return
        self._apply(self.policy.modulation(step=self.clock.step, epoch=self.clock.epoch, scores=scores))
        if self._noise and self.scaler is not None and self.scaler.is_enabled():
            self._loss_scale = float(self.scaler.get_scale())
        self._observed = True

    def backward(self, loss: torch.Tensor, unimodal_losses: Mapping[str, torch.Tensor] | None = None) -> None:
        """Backpropagate the fused ``loss`` (and each modality's unimodal loss) for the policy.

        Pass the unscaled losses: with ``scaler=`` they are scaled as ``scaler.scale(loss).backward()``
        would. Every parameter's ``.grad`` receives the ordinary gradient of
        ``loss + sum(unimodal_losses.values())`` (fusion head, unimodal heads, encoders).

        For a :class:`~pdmp.transforms.GradientPolicy` with ``uses_unimodal_gradients`` (MMPareto),
        ``unimodal_losses`` must map every modality to the loss of its unimodal head (a classifier on
        that modality's encoder features); the gradient ``U`` of each one with respect to its own
        encoder's modulated parameters is also kept apart (``torch.autograd.grad``: one extra partial
        backward pass per modality, and one gradient-sized buffer per encoder), summed over the
        micro-batches of the step, averaged over DDP ranks like ``.grad``, and the fused-loss gradient
        is ``G = .grad - U`` at the optimizer step (so a unimodal loss that also reaches another
        modality's encoder counts there as part of that encoder's fused gradient: keep each unimodal
        head on its own encoder's features). For every other policy this is ``loss.backward()``
        (plus the unimodal losses, if given), so a training loop can always call it.

        Raises (changing nothing) on a non-scalar loss, a loss that needs no gradient, an unknown
        modality, a missing unimodal loss, or one that does not depend on its modality's encoder.
        """
        self._check_open("backward()")
        self._begin_gathering()
        _check_loss(loss, "Modulator.backward loss")
        if unimodal_losses is None:
            unimodal_losses = {}
        if not isinstance(unimodal_losses, Mapping):
            raise TypeError(
                f"Modulator.backward unimodal_losses must be a dict modality -> scalar loss tensor, "
                f"got {type(unimodal_losses).__name__}"
            )
        unknown = [name for name in unimodal_losses if name not in self.modalities]
        if unknown:
            raise ValueError(
                f"Modulator.backward unimodal_losses has unknown modalities {unknown}; the modalities are "
                f"{list(self.modalities)}"
            )
        for name, value in unimodal_losses.items():
            _check_loss(value, f"Modulator.backward unimodal_losses[{name!r}]")
        policy = self._gradient_policy
        separate = policy is not None and policy.uses_unimodal_gradients
        if separate:
            missing = [name for name in self.modalities if name not in unimodal_losses]
            if missing:
                raise ValueError(
                    f"{type(policy).__name__} combines each modality's fused and unimodal gradients, but "
                    f"unimodal_losses lacks {missing}: give every modality a unimodal head (a classifier on its "
                    "encoder's features) and pass {modality: that head's loss}"
                )
        scaled = self.scaler is not None and self.scaler.is_enabled()
        total = loss + sum(unimodal_losses[name] for name in self.modalities if name in unimodal_losses)
        if scaled:
            total = self.scaler.scale(total)
        if not separate:
            total.backward()
            return
        inverse = 1.0 / float(self.scaler.get_scale()) if scaled else 1.0  # a power of two: exact
        found: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name in self.modalities:
            unimodal = self.scaler.scale(unimodal_losses[name]) if scaled else unimodal_losses[name]
            inputs = [p for p in self.params[name] if p.requires_grad]
            grads = torch.autograd.grad(unimodal, inputs, retain_graph=True, allow_unused=True)
            pairs = [(p, g) for p, g in zip(inputs, grads, strict=True) if g is not None]
            if not pairs:
                raise ValueError(
                    f"Modulator.backward unimodal_losses[{name!r}] does not depend on modality {name!r}'s encoder "
                    "parameters; compute it from this modality's encoder features through its unimodal head"
                )
            found.extend(pairs)
        total.backward()  # the only step that changes anything: every check above has passed
        with torch.no_grad():
            buffers = self._unimodal if self._unimodal is not None else {}
            for param, grad in found:
                grad = grad * inverse if scaled else grad
                previous = buffers.get(id(param))
                buffers[id(param)] = grad if previous is None else previous + grad
        self._unimodal = buffers

    def step(self) -> bool:
        """End the training step if the optimizer has stepped; call after ``optimizer.step()``. Returns
        whether a step was taken (and counted).

        With an optimizer attached, a call when the optimizer has not stepped since the last one is a
        micro-batch of gradient accumulation (or a step GradScaler skipped without calling the optimizer):
        it counts nothing and keeps what ``observe``/``backward`` gathered, so the step's policy sees every
        micro-batch; calling it after every micro-batch (as the Lightning callback does) is fine. A step
        the optimizer skipped (``GradScaler``) or that raised is not counted and changes no policy state.
        Without an optimizer every call is a step.
        """
        self._check_open("step()")
        self._check_hooks_ran()
        stepped = self.optimizer is None or self._optimizer_steps != self._steps_seen
        if stepped:  # after a micro-batch the optimizer's pre-step hook still attaches (and fixes) them
            self._attach_unfrozen(in_step=True)
        self._check_overflow()
        self._check_epoch_given()
        if self.optimizer is not None:
            if not stepped:
                if self._scaler_skipped():
                    self._end_step(taken=False)  # GradScaler skipped the step without calling the optimizer
                else:
                    self._unstepped = True  # a micro-batch, unless the next zero_grad() says it was a skip
                    if self.policy.needs_logits and self._gradient_policy is None:
                        self._observed = False  # OGM-GE: each backward pass needs its own micro-batch's logits
                return False
            self._steps_seen = self._optimizer_steps
            # A fused optimizer runs even on a step GradScaler skips; found_inf says whether it did.
            taken = not any(bool(flag.item()) for flag in self._found_inf)
            self._found_inf.clear()
            if not taken:
                self._end_step(taken=False)
                return False
        if self.policy.observes_scores and not self._observed:
            raise RuntimeError(
                f"{type(self.policy).__name__} learns from every batch: call mod.observe(logits, labels) after "
                "the forward pass of each step (concat_head_logits / sum_head_logits split a fusion head); "
                "without it the coefficients would silently stay at 1"
            )
        # GradientPolicies (ARL, InfoReg, MMPareto) also add unimodal losses, but documented loops take their
        # weight from the policy (unimodal_loss_weight(epoch)) or hand the losses to backward(), so only the
        # adaptive rule's weights, which exist only here, are required to be read.
        if self.policy.uses_unimodal_losses and not self._weights_read and self._gradient_policy is None:
            raise RuntimeError(
                f"{self.policy!r} adds each modality's unimodal loss: in every step read "
                "mod.unimodal_loss_weights and add sum(w[m] * loss_fn(parts[m], y)) over the decomposed logits "
                "(concat_head_logits(head, features, detach=False)) to the loss before backward; without them the "
                "rule silently trains as plain joint training (for no auxiliary losses, use auxiliary=0)"
            )
        self._end_step(taken=True)
        return True

    def remove(self) -> None:
        """Remove every hook; training is then plain (learning rates are left at their base values)."""
        self._restore_lrs()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for tensors in self.params.values():
            for param in tensors:
                entry = _CLAIMS.get(id(param))
                if entry is not None and entry[1]() is self:
                    del _CLAIMS[id(param)]
        self._pending.clear()
        self._removed = True

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
            # What an adaptive policy has learnt (empty for the others): resuming needs it too.
            "policy_state": self.policy.state_dict(),
            # GradientPolicy with uses_anchor: the epoch-start parameter copies (references, not copies:
            # the Modulator replaces them at set_epoch and never edits them in place).
            "anchors": None if self._anchors is None else {name: list(ts) for name, ts in self._anchors.items()},
            "anchor_epoch": self._anchor_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restore :meth:`state_dict`. With ``strict`` the saved policy must equal this one.

        All or nothing: every field is checked (and the generator states tried on fresh generators)
        before anything is assigned, so a refused state leaves this modulator unchanged.
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a Modulator state_dict (missing 'format'); pass what Modulator.state_dict() returned")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"Modulator state version {state.get('version')!r} is not supported ({STATE_VERSION})")
        strict = check_bool(strict, name="strict")
        check_state_keys(
            state,
            required=("format", "version", "mode", "policy", "clock", "coefficients", "seed", "generators"),
            optional=("policy_state", "anchors", "anchor_epoch"),
            where="Modulator state",
        )
        try:
            saved_policy = policy_from_config(state["policy"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"Modulator state['policy'] is not a valid policy config: {error}") from error
        check_same_modalities(saved_policy.modalities, self.policy.modalities, where="Modulator.load_state_dict")
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint was saved in mode={state['mode']!r} but this Modulator uses {self.mode!r}")
        if strict and saved_policy != self.policy:
            raise ValueError(
                f"checkpoint was saved with {saved_policy!r} but this Modulator has {self.policy!r}; "
                "build the Modulator with the saved policy, or pass strict=False to keep the new one"
            )
        if not isinstance(state["clock"], Mapping):
            raise ValueError(f"Modulator state['clock'] must be a dict with 'step' and 'epoch', got {state['clock']!r}")
        clock = Clock()
        clock.load_state_dict(state["clock"])
        seed = check_non_negative_int(state["seed"], name="state['seed']")
        generators = _restored_generators(state["generators"])
        factors = _saved_coefficients(state["coefficients"], self.policy.modalities)
        policy_state = state.get("policy_state", {})  # absent in checkpoints of stateless policies
        try:
            policy_from_config(self.policy.get_config()).load_state_dict(policy_state)  # check on a copy first
        except (TypeError, ValueError) as error:
            raise ValueError(f"Modulator state['policy_state'] does not fit {self.policy!r}: {error}") from error
        anchors = self._saved_anchors(state.get("anchors"))
        anchor_epoch = check_non_negative_int(state.get("anchor_epoch", clock.epoch), name="state['anchor_epoch']")
        # Everything is valid: assign.
        self.policy.load_state_dict(policy_state)
        if anchors is not None:
            self._anchors, self._anchor_epoch, self._anchor_loaded = anchors, anchor_epoch, True
        self._clear_step_inputs()
        self._pending_scores, self._policy_backup = None, None
        self._unstepped, self._step_scale = False, self._loss_scale_now()
        self.clock.step, self.clock.epoch = clock.step, clock.epoch
        self.seed = seed
        self._generators = generators
        self._steps_seen = self._optimizer_steps
        self._found_inf.clear()
        self._observed = False
        self._epoch_given = True  # the checkpoint says which epoch this is
        self._refresh()
        if self.policy.needs_logits or self._gradient_policy is not None:
            # Both report what the last step applied, which the policy alone cannot recompute.
            self._factors = factors

    def _saved_anchors(self, saved: Any) -> dict[str, list[torch.Tensor]] | None:
        """Checked copies of a checkpoint's anchors on the parameters' devices (None if the policy has none)."""
        where = "Modulator state['anchors']"
        if self._anchors is None:
            if saved is not None:  # anchors for a policy that has none: the state is someone else's
                raise ValueError(f"{where} is {saved!r}, but {type(self.policy).__name__} has no anchors (None)")
            return None
        if not isinstance(saved, Mapping):
            raise ValueError(
                f"{where} is {type(saved).__name__}, but {type(self.policy).__name__} pulls towards epoch-start "
                "anchors: load a checkpoint saved by a Modulator with this policy"
            )
        check_same_modalities(saved.keys(), self.modalities, where=where)
        result: dict[str, list[torch.Tensor]] = {}
        for name in self.modalities:
            tensors, params = saved[name], self.params[name]
            if not isinstance(tensors, (list, tuple)) or len(tensors) != len(params):
                count = len(tensors) if isinstance(tensors, (list, tuple)) else type(tensors).__name__
                raise ValueError(
                    f"{where}[{name!r}] must be a list of {len(params)} tensors (one per modulated parameter), "
                    f"got {count}; was it saved from the same model?"
                )
            copies = []
            for index, (tensor, param) in enumerate(zip(tensors, params, strict=True)):
                if not isinstance(tensor, torch.Tensor) or tensor.shape != param.shape or tensor.dtype != param.dtype:
                    got = f"{tuple(tensor.shape)} {tensor.dtype}" if isinstance(tensor, torch.Tensor) else repr(tensor)
                    raise ValueError(
                        f"{where}[{name!r}][{index}] is {got}, but parameter {self._labels[id(param)]!r} is "
                        f"{tuple(param.shape)} {param.dtype}; was it saved from the same model?"
                    )
                copies.append(tensor.detach().to(param.device, copy=True))
            result[name] = copies
        return result

    # --------------------------------------------------------------------------------- internals

    def _refresh(self) -> None:
        """Recompute the coefficients from the clock (policies that need logits wait for observe)."""
        self._unimodal_weights = {
            name: float(value)
            for name, value in self.policy.unimodal_loss_weights(step=self.clock.step, epoch=self.clock.epoch).items()
        }
        if self.policy.needs_logits:
            return
        self._apply(self.policy.modulation(step=self.clock.step, epoch=self.clock.epoch))

    def _apply(self, modulation: Modulation) -> None:
        # A custom policy's NaN, inf or negative coefficient is refused here, before any gradient sees it.
        check_modulation(self.policy, modulation, step=self.clock.step, epoch=self.clock.epoch)
        self._factors = {name: float(modulation.coefficients[name]) for name in self.policy.modalities}
        self._noise = bool(modulation.noise)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=_caller_stacklevel())

    def _check_open(self, where: str) -> None:
        if self._removed:
            raise RuntimeError(
                f"Modulator.{where} after remove() (or after its with block ended): its hooks are gone, so "
                "gradients and learning rates are no longer modulated; train inside the with block, or build a "
                "new Modulator and load_state_dict(old.state_dict()) to continue the schedule"
            )

    def _require_observation(self, where: str) -> None:
        if self.policy.needs_logits and not self._observed:
            raise RuntimeError(
                f"{type(self.policy).__name__} needs this batch's per-modality logits before {where}: call "
                "mod.observe(logits, labels) after the forward pass and before backward "
                "(concat_head_logits / sum_head_logits split a fusion head)"
            )

    def _hook_parameter(self, modality: str, param: nn.Parameter) -> None:
        self._handles.append(param.register_hook(functools.partial(self._hook, modality)))
        self._hooked.append(param)

    def _hook(self, modality: str, grad: torch.Tensor) -> torch.Tensor | None:
        self._hooks_ran = True
        self._require_observation("backward")
        return self._modulate(modality, grad, self._loss_scale)

    def _modulate(self, modality: str, grad: torch.Tensor, loss_scale: float) -> torch.Tensor | None:
        factor = self._factors[modality]
        if not self._noise:
            if factor == 1.0:
                return None
            result = grad * factor
        else:
            std = grad.std() if grad.numel() > 1 else grad.new_zeros(())
            generator = self._generator(grad.device)
            noise = torch.randn(grad.shape, generator=generator, dtype=grad.dtype, device=grad.device)
            result = grad * factor + noise * (std + OGM_NOISE_EPS * loss_scale)
        if factor > 1.0 and grad.dtype == torch.float16:
            # A device-side flag, read once per step() (one sync, only for float16 and factor > 1).
            self._overflow.append((modality, (result.isinf() & grad.isfinite()).any()))
        return result

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            self._generators[key] = generator
        return self._generators[key]

    def _attach_unfrozen(self, *, in_step: bool, fix_grads: bool = False) -> None:
        """Hook pending (frozen at construction) parameters that are now trainable (grad mode).

        A gradient such a parameter already holds did not pass through a hook: before the optimizer
        step (``fix_grads``) it is modulated in place; after it (``in_step``) it is too late, so warn.
        """
        if not self._pending:
            return
        still_frozen: list[tuple[str, nn.Parameter]] = []
        missed: list[str] = []
        for modality, param in self._pending:
            if not param.requires_grad:
                still_frozen.append((modality, param))
                continue
            self._hook_parameter(modality, param)
            if param.grad is not None:
                if fix_grads:
                    # GradScaler has unscaled gradients by now, hence loss_scale 1 for OGM-GE's eps term.
                    modulated = self._modulate(modality, param.grad, 1.0)
                    if modulated is not None:
                        param.grad = modulated
                elif in_step:
                    missed.append(self._labels[id(param)])
        self._pending = still_frozen
        if missed:
            self._warn_once(
                "unfrozen",
                f"{len(missed)} parameter(s) were unfrozen and trained one step before the Modulator saw them "
                f"({', '.join(missed[:5])}{', ...' if len(missed) > 5 else ''}): that step was not modulated; "
                "call set_epoch() after unfreezing, or pass optimizer= so they are caught before the optimizer step",
            )

    def _check_overflow(self) -> None:
        if not self._overflow:
            return
        overflowed = sorted({modality for modality, flag in self._overflow if bool(flag)})
        self._overflow.clear()
        if overflowed:
            factors = ", ".join(f"{name}: {self._factors[name]:g}" for name in overflowed)
            self._warn_once(
                "overflow",
                f"multiplying float16 gradients by the coefficient ({factors}) overflowed some of them to inf; "
                "keep the parameters in float32 and use torch.autocast with a GradScaler, or lower gamma_p",
            )

    def _check_epoch_given(self) -> None:
        if self._epoch_given or "epoch" in self._warned:
            return
        if self._anchors is not None:
            self._warn_once(
                "epoch",
                f"step() before any set_epoch(): {type(self.policy).__name__} pulls each encoder towards its "
                "parameters at the epoch start, taken at set_epoch(); without it the anchor stays the initial "
                "weights. Call mod.set_epoch(epoch) at the start of every epoch",
            )
        if _depends_on_epoch(self.policy, step=self.clock.step):
            self._warn_once(
                "epoch",
                f"step() before any set_epoch(): {self.policy!r} changes with the epoch, but this Modulator "
                "stays at epoch 0 until told otherwise; call mod.set_epoch(epoch) at the start of every epoch",
            )
        self._warned.add("epoch")  # the rule is checked at the first step() only

    def _guard_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Wrap ``optimizer.zero_grad`` so the Modulator learns when a step's gradients are discarded."""
        previous = optimizer.__dict__.get("zero_grad")
        modulator = weakref.ref(self)

        def zero_grad(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            alive = modulator()
            if alive is not None:
                alive._on_zero_grad()
            return previous(*args, **kwargs) if previous is not None else type(opt).zero_grad(opt, *args, **kwargs)

        zero_grad.__signature__ = inspect.signature(type(optimizer).zero_grad)  # type: ignore[attr-defined]
        optimizer.zero_grad = types.MethodType(zero_grad, optimizer)
        self._handles.append(_StepGuard(optimizer, optimizer.zero_grad, previous, name="zero_grad"))

    def _guard_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Wrap ``optimizer.step`` so that a step that raises is abandoned (no policy state advances, its
        inputs are forgotten) and scaled learning rates are restored even then.

        The wrapper is a bound method (LR schedulers wrap ``step.__func__``) with the class step's
        signature (GradScaler inspects it); it calls whatever ``step`` was before it.
        """
        previous = optimizer.__dict__.get("step")  # an LR scheduler's wrapper, when one came first
        modulator = weakref.ref(self)

        def step(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            try:
                return previous(*args, **kwargs) if previous is not None else type(opt).step(opt, *args, **kwargs)
            except BaseException:
                alive = modulator()
                if alive is not None and not alive._removed:
                    alive._abandon_step()
                raise
            finally:
                alive = modulator()
                if alive is not None:
                    alive._restore_lrs()

        step.__signature__ = inspect.signature(type(optimizer).step)  # type: ignore[attr-defined]
        optimizer.step = types.MethodType(step, optimizer)
        self._handles.append(_StepGuard(optimizer, optimizer.step, previous))

    def _restore_lrs(self) -> None:
        for group, lr in reversed(self._saved_lrs):
            group["lr"] = lr
        self._saved_lrs.clear()

    def _before_optimizer_step(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        self._restore_lrs()  # left over only if a step raised past the guard (e.g. it was unwrapped)
        self._step_transform = None  # computed once per optimizer step, at its first gradient evaluation
        if self.path == "fused":
            return self._scale_after_closure(args, kwargs)
        if self.mode != "lr":
            self._attach_unfrozen(in_step=False, fix_grads=True)
            return None
        self._require_observation("optimizer.step()")
        if len(optimizer.param_groups) != self._group_count:
            # add_param_group since the last step (e.g. unfrozen encoders): keep one modality per group.
            _split_param_groups(optimizer, self._owner, added=True)
            self._group_count = len(optimizer.param_groups)
        for group in optimizer.param_groups:
            modality = self._owner.get(id(group["params"][0])) if group["params"] else None
            if modality is not None and self._factors[modality] != 1.0:
                self._saved_lrs.append((group, group["lr"]))
                group["lr"] = group["lr"] * self._factors[modality]
        return None

    def _scale_after_closure(self, args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Fused path: scale the gradients now, or after the closure when the step computes them.

        ``args`` are ``optimizer.step``'s positional arguments, the optimizer itself first.
        """
        optimizer = args[0]
        apply = (
            self._scale_gradients
            if self._gradient_policy is None
            else functools.partial(self._transform_gradients, optimizer)
        )
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            apply()
            return None

        def scaled_closure() -> Any:
            result = closure()
            apply()
            return result

        if "closure" in kwargs:
            return tuple(args), {**kwargs, "closure": scaled_closure}
        return (args[0], scaled_closure, *args[2:]), dict(kwargs)

    def _scale_gradients(self) -> None:
        """Fused path: multiply each modality's gradients in place by its coefficient.

        One multi-tensor call per modality, device and dtype, instead of one hook per tensor.
        """
        self._require_observation("optimizer.step()")
        with torch.no_grad():
            for modality, tensors in self.params.items():
                factor = self._factors[modality]
                if factor == 1.0:
                    continue
                groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
                for param in tensors:
                    grad = param.grad
                    if grad is None or not param.requires_grad:  # frozen: a stale gradient is not this step's
                        continue
                    if grad.layout != torch.strided:  # sparse: no multi-tensor kernel
                        grad.mul_(factor)
                    else:
                        groups.setdefault((grad.device, grad.dtype), []).append(grad)
                for (_, dtype), grads in groups.items():
                    if dtype == torch.float16 and factor > 1.0:
                        # Out of place so that overflow is told apart from an inf already there (as in _modulate).
                        scaled = torch._foreach_mul(grads, factor)
                        flags = [(new.isinf() & old.isfinite()).any() for new, old in zip(scaled, grads, strict=True)]
                        self._overflow.append((modality, torch.stack(flags).any()))
                        for old, new in zip(grads, scaled, strict=True):
                            old.copy_(new)
                    else:
                        torch._foreach_mul_(grads, factor)

    def _observe_logit_statistics(self, logits: Mapping[str, torch.Tensor], labels: Any) -> None:
        """GradientPolicy: add this batch's all-reduced logit statistics to the step's sums."""
        policy = self._gradient_policy
        assert policy is not None
        if not policy.uses_logits:
            return
        if not isinstance(logits, Mapping) or not logits:
            raise TypeError(f"observe: logits must be a dict modality -> tensor, got {type(logits).__name__}")
        check_same_modalities(logits.keys(), self.modalities, where="Modulator.observe logits")
        device = next(iter(logits.values())).device
        stats = logit_statistics({name: _to_numpy(value) for name, value in logits.items()}, _to_numpy(labels))
        sums = stats_to_array(stats, self.modalities, LOGIT_STATISTICS)
        if self.sync and is_distributed(self.process_group):
            reduced = all_reduce_sum(sums.ravel().tolist(), device=device, group=self.process_group)
            sums = np.asarray(reduced, dtype=np.float64).reshape(sums.shape)
        self._logit_sums = sums if self._logit_sums is None else self._logit_sums + sums

    def _clear_step_inputs(self) -> None:
        self._logit_sums = None
        self._unimodal = None
        self._step_transform = None

    def _end_step(self, *, taken: bool) -> None:
        """The step is over: taken (fold in what it observed, count it) or skipped (forget it all)."""
        if taken and self._pending_scores is not None:
            self.policy.update(self._pending_scores)
        self._pending_scores = None
        self._observed = self._weights_read = self._unstepped = False
        self._clear_step_inputs()
        if taken:
            self._applied.update(self._factors, self._unimodal_weights)
            self.clock.step += 1
        self._step_scale = self._loss_scale_now()
        self._refresh()

    def _begin_gathering(self) -> None:
        """observe()/backward() add to the current step; a step() without an optimizer step before them was a
        micro-batch of this step."""
        self._unstepped = False

    def _on_zero_grad(self) -> None:
        """``optimizer.zero_grad()`` discards the gradients: if step() was called without an optimizer step
        since the inputs were gathered, that step was skipped (GradScaler did not call the optimizer), so
        what it gathered goes with its gradients."""
        if self._removed:
            return
        if self._unstepped:
            self._end_step(taken=False)

    def _abandon_step(self) -> None:
        """``optimizer.step()`` raised: undo what its transform did to the policy (if it ran) and forget what
        the step gathered (its gradients may already be transformed); the clock does not move."""
        self._restore_lrs()
        policy = self._gradient_policy
        if policy is not None and self._policy_backup is not None:
            state, last = self._policy_backup
            policy.load_state_dict(state)
            policy._last = last  # the coefficients logs report are the last taken step's again
        self._policy_backup = None
        self._pending_scores = None
        self._observed = self._weights_read = self._unstepped = False
        self._clear_step_inputs()
        self._refresh()
        if policy is not None:
            self._apply(policy.modulation(step=self.clock.step, epoch=self.clock.epoch))

    def _loss_scale_now(self) -> float | None:
        if self.scaler is None or not self.scaler.is_enabled():
            return None
        return float(self.scaler.get_scale())

    def _scaler_skipped(self) -> bool:
        """GradScaler lowers its scale exactly when it skips a step (inf/NaN gradients)."""
        now = self._loss_scale_now()
        return now is not None and self._step_scale is not None and now < self._step_scale

    def _transform_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """GradientPolicy: replace each modulated gradient by the policy's transform of it.

        Runs in the optimizer's pre-step hook, so the gradients are final: summed over micro-batches,
        averaged by DDP, unscaled by ``GradScaler`` (a fused optimizer, which GradScaler does not unscale
        for, carries the scale in ``optimizer.grad_scale``: undone here and reapplied to the result).
        """
        policy = self._gradient_policy
        assert policy is not None
        found_inf = getattr(optimizer, "found_inf", None)
        if isinstance(found_inf, torch.Tensor) and bool(found_inf.item()):
            return  # GradScaler skips this step (a fused optimizer is still called); step() will not count it
        name = type(policy).__name__
        first = self._step_transform is None
        if first and policy.uses_logits and self._logit_sums is None:
            raise RuntimeError(
                f"{name} needs this step's per-modality logits before optimizer.step(): call "
                "mod.observe(logits, labels) after each forward pass (concat_head_logits / sum_head_logits "
                "split a fusion head)"
            )
        if policy.uses_unimodal_gradients and self._unimodal is None:
            raise RuntimeError(
                f"{name} needs each modality's unimodal gradient before optimizer.step(): call "
                "mod.backward(loss, {modality: unimodal_loss}) instead of loss.backward()"
            )
        grad_scale = getattr(optimizer, "grad_scale", None)
        scale = grad_scale if isinstance(grad_scale, torch.Tensor) else None
        with torch.no_grad():
            parts = self._gradient_parts(scale)
            if first:
                gradient_stats = _gradient_statistics(parts, self.modalities) if policy.uses_gradient_stats else None
                logit_stats = (
                    stats_from_array(self._logit_sums, self.modalities, LOGIT_STATISTICS)
                    if policy.uses_logits and self._logit_sums is not None
                    else None
                )
                # Kept until the step finishes: an optimizer.step() that raises must not advance the policy.
                self._policy_backup = (copy.deepcopy(policy.state_dict()), policy.last_transform)
                self._step_transform = policy.transform(
                    step=self.clock.step, epoch=self.clock.epoch, logit_stats=logit_stats, gradient_stats=gradient_stats
                )
            transform = self._step_transform
            assert transform is not None
            for modality in self.modalities:
                self._apply_transform(transform, modality, parts[modality], scale)
        self._logit_sums = None
        self._unimodal = None  # a closure evaluated again (LBFGS) backpropagates afresh
        self._apply(policy.modulation(step=self.clock.step, epoch=self.clock.epoch))

    def _gradient_parts(self, scale: torch.Tensor | None) -> dict[str, _Parts]:
        """Per modality: the trained parameters, their gradients ``G + U`` (unscaled), ``G``, ``U`` and anchors."""
        unimodal = self._unimodal
        if unimodal is not None and self.sync and is_distributed(self.process_group):
            unimodal = self._averaged_unimodal(unimodal)
        result: dict[str, _Parts] = {}
        for modality, tensors in self.params.items():
            indices = [i for i, p in enumerate(tensors) if p.requires_grad and p.grad is not None]
            params = [tensors[i] for i in indices]
            sparse = [self._labels[id(p)] for p in params if p.grad.layout != torch.strided]
            if sparse:
                raise RuntimeError(
                    f"{type(self.policy).__name__} cannot transform sparse gradients ({', '.join(sparse[:3])}); "
                    "use dense embeddings (sparse=False) in the encoders"
                )
            plain = [p.grad for p in params]
            if scale is not None:
                plain = list(torch._foreach_div(plain, scale))
            fused, extra = plain, None
            if unimodal is not None:
                extra = [
                    unimodal[id(p)] if id(p) in unimodal else torch.zeros_like(g)
                    for p, g in zip(params, plain, strict=True)
                ]
                fused = list(torch._foreach_sub(plain, extra))
            anchors = None if self._anchors is None else [self._anchors[modality][i] for i in indices]
            result[modality] = _Parts(params, plain, fused, extra, anchors)
        return result

    def _averaged_unimodal(self, unimodal: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """DDP averages ``.grad`` (``G + U``) over ranks; ``U`` must be averaged alike to recover ``G``.

        One all-reduce per device and dtype over every modulated parameter with a gradient (zeros where
        this rank's unimodal losses did not reach it), in parameter order, which every rank shares.
        """
        import torch.distributed as dist

        world = dist.get_world_size(self.process_group)
        buckets: dict[tuple[torch.device, torch.dtype], list[tuple[int, torch.Tensor]]] = {}
        for tensors in self.params.values():
            for param in tensors:
                if param.requires_grad and param.grad is not None:
                    value = unimodal.get(id(param))
                    value = torch.zeros_like(param.grad) if value is None else value
                    buckets.setdefault((value.device, value.dtype), []).append((id(param), value))
        result: dict[int, torch.Tensor] = {}
        for entries in buckets.values():
            flat = torch.cat([value.reshape(-1) for _, value in entries])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.process_group)
            flat /= world
            offset = 0
            for key, value in entries:
                result[key] = flat[offset : offset + value.numel()].view_as(value)
                offset += value.numel()
        return result

    def _apply_transform(
        self, transform: GradientTransform, modality: str, parts: _Parts, scale: torch.Tensor | None
    ) -> None:
        """``.grad = magnitude * floor(fused * G + unimodal * U) + anchor * (theta - theta*)`` per tensor."""
        if not parts.params:
            return
        a, b = transform.get("fused", modality), transform.get("unimodal", modality)
        c, magnitude = transform.get("anchor", modality), transform.get("magnitude", modality)
        floor = bool(transform.get("floor_to_sum", modality))
        if parts.unimodal is None and a == 1.0 and c == 0.0 and magnitude == 1.0:
            return  # the identity (a floor on G alone never rescales it)
        combined = list(torch._foreach_mul(parts.fused, a))
        if parts.unimodal is not None and b != 0.0:
            torch._foreach_add_(combined, parts.unimodal, alpha=b)
        if floor:
            combined_norms = torch._foreach_norm(combined)
            plain_norms = torch._foreach_norm(parts.plain)
            for tensor, norm, plain in zip(combined, combined_norms, plain_norms, strict=True):
                # c = 0 stays 0; where() also drops the inf/nan of that division.
                tensor.mul_(torch.where(norm > 0, torch.clamp(plain / norm, min=1.0), torch.ones_like(norm)))
        if magnitude != 1.0:
            torch._foreach_mul_(combined, magnitude)
        if c != 0.0:
            assert parts.anchors is not None
            torch._foreach_add_(combined, torch._foreach_sub(parts.params, parts.anchors), alpha=c)
        if scale is not None:
            torch._foreach_mul_(combined, scale)
        torch._foreach_copy_([p.grad for p in parts.params], combined)

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._policy_backup = None  # the step finished: its transform stands
        self._restore_lrs()
        found_inf = getattr(optimizer, "found_inf", None)  # set by GradScaler around a fused step
        if isinstance(found_inf, torch.Tensor):
            self._found_inf.append(found_inf)
        self._optimizer_steps += 1

    def _check_hooks_ran(self) -> None:
        """Fail loudly if gradients reached the parameters without passing through the hooks."""
        if self.path != "hooks" or self._hooks_verified:
            return
        if self._hooks_ran:
            self._hooks_verified = True
        elif any(p.grad is not None for p in self._hooked):
            raise RuntimeError(
                "modality parameters have gradients that did not pass through the Modulator's hooks, so they "
                "were not modulated; this training path (e.g. torch.func.functional_call on copies, FSDP flat "
                "parameters) is not supported in mode='grad'; use mode='lr' with the optimizer"
            )
        elif self.optimizer is None:
            self._warn_once(
                "no-gradients",
                "step() was called but no gradient has reached the modality parameters the Modulator hooks; "
                "are these the encoders being trained (not a copy) and did backward() run before step()?",
            )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {len(params)} tensors" for name, params in self.params.items())
        path = f", path={self.path!r}" if self.path is not None else ""
        return f"Modulator({self.policy!r}, mode={self.mode!r}{path}, {sizes})"


class _Parts(NamedTuple):
    """One modality's tensors for a GradientPolicy's step: parallel lists over its trained parameters."""

    params: list[torch.Tensor]
    plain: list[torch.Tensor]  # .grad, unscaled: the gradient of everything backpropagated (G + U)
    fused: list[torch.Tensor]  # G
    unimodal: list[torch.Tensor] | None  # U (None unless the policy uses unimodal gradients)
    anchors: list[torch.Tensor] | None


def _gradient_statistics(parts: Mapping[str, _Parts], modalities: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """:data:`~pdmp.transforms.GRADIENT_STATISTICS` per modality, on device in float64, one sync in all."""
    rows = []
    device = next((p.fused[0].device for p in parts.values() if p.fused), torch.device("cpu"))
    for modality in modalities:
        part = parts[modality]
        zero = torch.zeros((), dtype=torch.float64, device=device)
        fused_sq = unimodal_sq = dot = fisher = zero
        if part.fused:
            squares = [n.to(device) ** 2 for n in torch._foreach_norm(part.fused, 2, dtype=torch.float64)]
            fused_sq = torch.stack(squares).sum()
            weights = [sq / g.numel() for sq, g in zip(squares, part.fused, strict=True) if g.dim() >= 2 and g.numel()]
            fisher = torch.stack(weights).sum() if weights else zero
            if part.unimodal is not None:
                norms = torch._foreach_norm(part.unimodal, 2, dtype=torch.float64)
                unimodal_sq = torch.stack([n.to(device) ** 2 for n in norms]).sum()
                products = [
                    (g * u).sum(dtype=torch.float64).to(device) for g, u in zip(part.fused, part.unimodal, strict=True)
                ]
                dot = torch.stack(products).sum()
        rows.append(torch.stack([fused_sq, unimodal_sq, dot, fisher]))
    return stats_from_array(torch.stack(rows).tolist(), modalities, GRADIENT_STATISTICS)


def _check_gradient_policy_options(policy: GradientPolicy, mode: str, optimizer: Any, path: str) -> None:
    name = type(policy).__name__
    if mode != "grad":
        raise ValueError(
            f"{name} is a GradientPolicy: it transforms each encoder gradient (combining fused and unimodal "
            "gradients, pulling towards anchors), which no learning-rate multiplier can express; use mode='grad'"
        )
    if optimizer is None:
        raise ValueError(
            f"{name} is a GradientPolicy, applied once per step just before optimizer.step() (from the step's "
            "final gradients); pass optimizer=<the torch.optim optimizer that trains these parameters>"
        )
    if path == "hooks":
        raise ValueError(
            f"{name} is a GradientPolicy, applied once per step to the final gradients before optimizer.step(); "
            "path='hooks' sees one backward pass at a time: use path='auto' (or 'fused')"
        )


def _check_loss(loss: Any, where: str) -> None:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{where} must be a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1 or loss.dim() > 1:
        raise ValueError(
            f"{where} has shape {tuple(loss.shape)}; it must be a scalar: reduce it (e.g. .mean()) before backward"
        )
    if not loss.requires_grad:
        raise ValueError(
            f"{where} does not require grad (computed under torch.no_grad(), or detached); "
            "compute it from the model's outputs with autograd enabled"
        )


def _copy_parameters(params: Mapping[str, list[nn.Parameter]]) -> dict[str, list[torch.Tensor]]:
    """Detached copies of every modulated parameter (the anchors: one parameter-sized copy each)."""
    with torch.no_grad():
        return {name: [p.detach().clone() for p in tensors] for name, tensors in params.items()}


class _StepGuard:
    """Handle that undoes :meth:`Modulator._guard_step` (or ``_guard_zero_grad``) on remove (if nobody wrapped
    the method since)."""

    def __init__(self, optimizer: torch.optim.Optimizer, guard: Any, previous: Any, *, name: str = "step") -> None:
        self.optimizer, self.guard, self.previous, self.name = optimizer, guard, previous, name

    def remove(self) -> None:
        if self.optimizer.__dict__.get(self.name) is self.guard:
            if self.previous is None:
                delattr(self.optimizer, self.name)
            else:
                setattr(self.optimizer, self.name, self.previous)
        # Otherwise something wrapped the guard since; it stays as a pass-through (nothing left to restore).


def _resolve_parameters(
    modalities: Mapping[str, ParameterSource], policy: CoefficientPolicy
) -> tuple[dict[str, list[Any]], dict[int, str]]:
    """Modality -> its parameters that the policy modulates (frozen ones included), and a label per id.

    Checks that no parameter is claimed twice and that every modality has a trainable parameter now.
    """
    labels: dict[int, str] = {}
    params: dict[Any, Any] = {}
    groups: dict[str, list[int]] = {}
    for modality, source in modalities.items():
        ids: list[int] = []
        for label, param in _named_parameters(modality, source):
            labels.setdefault(id(param), label)
            params[id(param)] = param
            ids.append(id(param))
        if not any(params[key].requires_grad for key in ids):
            found = f"all {len(ids)} are frozen" if ids else "none given"
            raise ValueError(
                f"modality {modality!r} has no trainable parameters ({found}); give it its encoder's "
                "parameters and unfreeze at least one before building the Modulator"
            )
        groups[modality] = ids
    assigned = check_disjoint_assignment(groups, describe=lambda key: repr(labels[key]))
    result: dict[str, list[Any]] = {}
    for modality, keys in assigned.items():
        selected = [params[key] for key in keys if policy.modulates(tuple(params[key].shape))]
        if not any(p.requires_grad for p in selected):
            raise ValueError(
                f"{policy!r} modulates none of modality {modality!r}'s trainable parameters "
                f"(shapes {sorted({tuple(params[key].shape) for key in keys})}); "
                "OGMGE(conv_kernels_only=True) needs 4-D conv kernels, use conv_kernels_only=False"
            )
        result[modality] = selected
    return result, labels


def _check_unclaimed(params: Mapping[str, list[nn.Parameter]], labels: Mapping[int, str]) -> None:
    """Refuse a parameter that another live Modulator already modulates (the two would multiply)."""
    for tensors in params.values():
        for param in tensors:
            entry = _CLAIMS.get(id(param))
            if entry is None or entry[0]() is not param:
                continue
            other = entry[1]()
            if other is not None and other.active:
                raise ValueError(
                    f"parameter {labels[id(param)]!r} is already modulated by {other!r}; two Modulators on the "
                    "same parameters multiply their coefficients. Call remove() on the first one (or leave its "
                    "with block) before building another"
                )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this module (the user's call)."""
    frame = sys._getframe(1)  # the function about to call warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
        level += 1
    return level


def _depends_on_epoch(policy: CoefficientPolicy, *, step: int) -> bool:
    """Whether the policy's modulation at this step differs between epoch 0 and some later epoch."""
    # Distinct scores, so that OGM-GE is away from its tie and its on/off epochs show.
    scores = {name: float(index + 1) for index, name in enumerate(policy.modalities)}
    try:
        first = policy.modulation(step=step, epoch=0, scores=scores)
        return any(policy.modulation(step=step, epoch=epoch, scores=scores) != first for epoch in _PROBE_EPOCHS)
    except Exception:  # a user policy that cannot answer made-up scores: no warning, no failure
        return False


def _restored_generators(states: Any) -> dict[str, torch.Generator]:
    """Fresh generators set to the saved states; raises (changing nothing) if one is not valid."""
    if not isinstance(states, Mapping):
        raise ValueError(
            f"Modulator state['generators'] must be a dict device -> generator state, got {type(states).__name__}"
        )
    generators: dict[str, torch.Generator] = {}
    for device, generator_state in states.items():
        where = f"Modulator state['generators'][{device!r}]"
        if not isinstance(generator_state, torch.Tensor) or generator_state.dtype != torch.uint8:
            raise ValueError(
                f"{where} must be a uint8 tensor from torch.Generator.get_state(), got {generator_state!r}"
            )
        try:
            generator = torch.Generator(device=torch.device(device))
            generator.set_state(generator_state)
        except (RuntimeError, TypeError, ValueError) as error:
            raise ValueError(f"{where} is not a valid generator state for that device: {error}") from error
        generators[str(torch.device(device))] = generator
    return generators


def _saved_coefficients(saved: Any, modalities: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(saved, Mapping):
        raise ValueError(f"Modulator state['coefficients'] must be a dict modality -> number, got {saved!r}")
    check_same_modalities(saved.keys(), modalities, where="Modulator state['coefficients']")
    factors: dict[str, float] = {}
    for name in modalities:
        value = saved[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"Modulator state['coefficients'][{name!r}] is {value!r}; a coefficient is a finite number >= 0"
            )
        factors[name] = float(value)
    return factors


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


def _check_in_optimizer(params: Mapping[str, list[nn.Parameter]], optimizer: torch.optim.Optimizer, mode: str) -> None:
    """Every trainable modality parameter must be one the optimizer trains (frozen ones may join later)."""
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for modality, tensors in params.items():
        missing = [p for p in tensors if p.requires_grad and id(p) not in known]
        if missing:
            shapes = ", ".join(str(tuple(p.shape)) for p in missing[:3])
            why = (
                "mode='lr' scales the learning rates of the optimizer's parameter groups"
                if mode == "lr"
                else "the Modulator would hook tensors that are not the ones being trained (e.g. a deep copy of "
                "the encoder, or a model built twice)"
            )
            raise ValueError(
                f"{len(missing)} parameter(s) of modality {modality!r} (shapes {shapes}) are not in the optimizer; "
                f"{why}. Pass the encoders of the model the optimizer trains, and give the optimizer every "
                "parameter, e.g. torch.optim.SGD(model.parameters(), lr=...)"
            )


def _split_param_groups(optimizer: torch.optim.Optimizer, owner: Mapping[int, str], *, added: bool = False) -> None:
    """Split parameter groups so that each holds one modality (or only unmodulated parameters).

    Optimizer state is keyed by parameter, so it survives; LR schedulers hold one entry per group,
    so one created earlier would be silently misaligned, which is refused. ``added``: the groups were
    added (``add_param_group``) after the Modulator was built.
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
        fix = (
            "add one parameter group per modality (e.g. optimizer.add_param_group({'params': encoder.parameters()}))"
            if added
            else "create the Modulator first and the LR scheduler after it"
        )
        raise ValueError(
            "the optimizer already has an LR scheduler (its groups carry 'initial_lr'); mode='lr' splits parameter "
            f"groups that mix modalities, which would misalign the scheduler, so {fix}"
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
