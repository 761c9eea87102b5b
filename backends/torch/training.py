"""One training step that is right for every policy the library ships, so a loop need not branch.

What a step must do depends on the policy: gradient scaling (PDMP, its controls, MSLR) needs a plain
backward; OGM-GE, InfoReg, ARL and ``AdaptivePDMP`` read per-modality logits through
:meth:`Modulator.observe`, and some add unimodal losses to the training loss; AGM reads mono-modal
responses (the fused model with the other inputs zeroed); MMPareto needs each encoder's unimodal loss
kept apart from the fused one. :func:`training_step` does whichever the policy declares, from the
capability flags of the core (``needs_logits``, ``observes_scores``, ``uses_unimodal_losses``,
``uses_unimodal_gradients``;
AGM, whose logits are mono-modal responses, by its class), so a user's loop is::

    with Modulator(encoders, policy, optimizer=optimizer) as mod:
        for epoch in range(epochs):
            mod.set_epoch(epoch)
            for inputs, target in loader:
                training_step(mod, optimizer, inputs, target, encode=model.encode, fuse=model.fuse,
                              head=model.head, unimodal_heads=model.unimodal_heads)

The model contract: ``encode(inputs) -> {modality: features}`` and ``fuse(features) -> logits``.
Per-modality logits come from ``head``, the linear head applied to the features concatenated in the
encoders' order (:func:`concat_head_logits`), or from ``decompose(features) -> {modality: logits}``
for any other fusion whose output is a sum of per-modality terms. ``unimodal_heads`` (a classifier per
encoder) is needed by MMPareto only.

A :class:`~pdmp.rebalancing.RebalancingPolicy` (G-Blending, PMR, Diagnosing & Re-learning, MLA) is driven
by a :class:`~pdmp.backends.torch.Rebalancer` instead of a Modulator; pass the Rebalancer as the first
argument and the step is the policy's (weighted loss terms, prototype losses, MLA's training passes), so
the loop keeps one call per batch (the epoch-boundary work is the Rebalancer's ``start``/``end_epoch``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pdmp.baselines import AGM, mono_modal_responses
from pdmp.transforms import GradientPolicy

from ._modes import eval_mode
from .heads import concat_head_logits
from .modulator import Modulator
from .rebalancing import Rebalancer

__all__ = ["StepOutput", "training_step"]

Features = Mapping[str, torch.Tensor]


class StepOutput(NamedTuple):
    """The fused logits (for accuracy) and the fused loss (without any unimodal term) of the step."""

    logits: torch.Tensor
    loss: torch.Tensor


def training_step(
    modulator: Modulator | Rebalancer,
    optimizer: torch.optim.Optimizer,
    inputs: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    *,
    encode: Callable[[Mapping[str, torch.Tensor]], Features],
    fuse: Callable[[Features], torch.Tensor],
    head: nn.Linear | None = None,
    decompose: Callable[[Features], Features] | None = None,
    unimodal_heads: Mapping[str, nn.Module] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    zero_grad: bool = True,
    optimizer_step: bool = True,
) -> StepOutput:
    """Forward, backward and (unless ``optimizer_step=False``) the optimizer step for ``modulator.policy``.

    Args:
        modulator: the :class:`Modulator` applying the policy (created with ``optimizer=optimizer``), or the
            :class:`~pdmp.backends.torch.Rebalancer` of a RebalancingPolicy (its step: module docstring).
        optimizer: the optimizer over the whole model.
        inputs: modality -> batch input; ``target``: the labels.
        encode, fuse: the model split at the fusion (see the module docstring).
        head / decompose: where per-modality logits come from, for policies that read them.
        unimodal_heads: a classifier per encoder, for policies that need unimodal gradients (MMPareto).
        loss_fn: ``loss_fn(logits, target)``, a mean over the batch.
        zero_grad: clear gradients first; pass False on every micro-batch but the first of an
            accumulated step.
        optimizer_step: take the optimizer step and :meth:`Modulator.step`; pass False on every
            micro-batch but the last of an accumulated step.

    Raises:
        ValueError: the policy needs ``head``/``decompose`` or ``unimodal_heads`` and it was not given.
    """
    if isinstance(modulator, Rebalancer):
        logits, fused_loss = modulator.step(
            optimizer,
            inputs,
            target,
            encode=encode,
            fuse=fuse,
            head=head,
            unimodal_heads=unimodal_heads,
            loss_fn=loss_fn,
            zero_grad=zero_grad,
            optimizer_step=optimizer_step,
        )
        return StepOutput(logits, fused_loss)
    policy = modulator.policy
    gradient_policy = policy if isinstance(policy, GradientPolicy) else None
    if zero_grad:
        optimizer.zero_grad()
    features = encode(inputs)
    logits = fuse(features)
    loss = loss_fn(logits, target)
    if gradient_policy is not None and gradient_policy.uses_unimodal_gradients:
        if unimodal_heads is None:
            raise ValueError(
                f"{policy.kind} combines each encoder's fused and unimodal gradients: pass unimodal_heads= "
                "(a classifier per encoder, e.g. nn.ModuleDict({m: nn.Linear(width, classes) ...}))"
            )
        missing = sorted(set(modulator.modalities) - set(unimodal_heads))
        if missing:
            raise ValueError(f"unimodal_heads lacks {missing}; give every modulated modality a head")
        unimodal = {m: loss_fn(unimodal_heads[m](features[m]), target) for m in modulator.modalities}
        modulator.backward(loss, unimodal)
    elif isinstance(policy, AGM):
        _observe_mono_modal_responses(modulator, inputs, target, encode=encode, fuse=fuse)
        loss.backward()
    elif policy.needs_logits or policy.observes_scores or policy.uses_unimodal_losses:
        parts = _decomposed(policy.kind, features, head, decompose, modulator.modalities)
        weights = modulator.unimodal_loss_weights  # this step's, fixed before observe() informs the policy
        if policy.needs_logits or policy.observes_scores:
            modulator.observe({m: part.detach() for m, part in parts.items()}, target)
        auxiliary = [weights[m] * loss_fn(parts[m], target) for m in modulator.modalities if weights.get(m)]
        (loss + sum(auxiliary)).backward() if auxiliary else loss.backward()
    else:
        loss.backward()
    if optimizer_step:
        optimizer.step()
        modulator.step()
    return StepOutput(logits.detach(), loss.detach())


def _decomposed(
    kind: str,
    features: Features,
    head: nn.Linear | None,
    decompose: Callable[[Features], Features] | None,
    modalities: tuple[str, ...],
) -> dict[str, torch.Tensor]:
    if (head is None) == (decompose is None):
        raise ValueError(
            f"{kind} reads per-modality logits: pass exactly one of head= (the linear head on the concatenated "
            "features) or decompose= (features -> per-modality logits summing to the fused logits)"
        )
    if head is not None:
        parts = concat_head_logits(head, features, detach=False)
    else:
        assert decompose is not None
        parts = dict(decompose(features))
    missing = sorted(set(modalities) - set(parts))
    if missing:
        raise ValueError(f"the per-modality logits lack {missing}; they must cover every modulated modality")
    return parts


def _observe_mono_modal_responses(
    modulator: Modulator,
    inputs: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    *,
    encode: Callable[[Mapping[str, torch.Tensor]], Features],
    fuse: Callable[[Features], torch.Tensor],
) -> None:
    """AGM's responses: the fused model with the other inputs zeroed, in eval mode and without gradient,
    as the reference's masked passes."""
    owners = (getattr(encode, "__self__", None), getattr(fuse, "__self__", None))
    modules = list({id(m): m for m in owners if isinstance(m, nn.Module)}.values())
    with torch.no_grad(), eval_mode(modules):
        responses: Any = mono_modal_responses(lambda masked: fuse(encode(masked)), inputs)
    modulator.observe(responses, target)
