"""Attention fusion: how each shipped policy is applied to it (framework-free; the models are in
:mod:`benchmarks.models_attention_torch` and :mod:`benchmarks.models_attention_keras`).

The fusion: each modality's encoder (the benchmark encoders of ``models_torch`` / ``models_keras``)
gives one embedding per sample; a per-modality linear projection to a common width plus a learned
modality embedding makes it one token; a learned class token joins them and a pre-norm transformer
(cross-modal self-attention: every token attends to every modality's) mixes them; the class token's
output, layer-normalised, goes to a linear classification head. Every modality's features reach the
logits through the attention, so the logits do not split into per-modality parts.

What each policy needs (:func:`attention_wiring`):

* ``"parameters"``: PDMP, uniform scaling, inverse PDMP, joint training (and MSLR): only which
  parameters belong to which encoder, so they apply unchanged. The projections, the modality and class
  tokens, the transformer and the head are fusion parameters and are never modulated.
* ``"masked_inputs"``: AGM reads mono-modal responses, the fused model's outputs with the other
  modalities' inputs zeroed; that needs no decomposition, so it applies unchanged.
* ``"unimodal_heads"``: MMPareto, ARL, InfoReg and the recipe train each encoder with a unimodal loss; on
  attention fusion their per-modality logits come from a linear unimodal head on each encoder's output,
  trained by those losses, as MMPareto's and ARL's official code do for fusions that are not
  decomposable. For ARL and InfoReg this replaces the concat head's decomposition (``f_m W_m^T + b / M``)
  by the unimodal heads' logits: the same quantity where the head is linear on the concatenation, a
  translation here.
* refused (:class:`AttentionWiringError`): OGM-GE and ``AdaptivePDMP`` without auxiliary losses. They
  read the fused head's per-modality share of the logits and train no unimodal head; attention fusion has
  no such share, and a head that no loss trains would give untrained logits, so there is no faithful way.
"""

from __future__ import annotations

from typing import Literal

from pdmp import AGM, CoefficientPolicy, GradientPolicy

Wiring = Literal["parameters", "masked_inputs", "unimodal_heads"]


class AttentionWiringError(ValueError):
    """A policy that has no faithful application to attention fusion."""


def attention_wiring(policy: CoefficientPolicy) -> Wiring:
    """How ``policy`` is applied to attention fusion (see the module); raises :class:`AttentionWiringError`."""
    if not isinstance(policy, CoefficientPolicy):
        raise TypeError(f"attention_wiring needs a pdmp policy, got {type(policy).__name__}")
    if isinstance(policy, AGM):
        return "masked_inputs"
    if (isinstance(policy, GradientPolicy) and policy.uses_unimodal_gradients) or policy.uses_unimodal_losses:
        return "unimodal_heads"
    if policy.needs_logits or policy.observes_scores:
        raise AttentionWiringError(
            f"{policy.kind} reads each modality's share of the fused head's logits (OGM-GE's decomposition) and "
            "trains no unimodal head; attention fusion mixes the modalities before the head, so the logits have no "
            "per-modality share, and an untrained unimodal head is no stand-in. Use a concat or sum fusion for "
            f"{policy.kind}, or a policy that applies to attention fusion (PDMP, uniform scaling, AGM, MMPareto, "
            "ARL, InfoReg, the recipe)"
        )
    return "parameters"


__all__ = ["AttentionWiringError", "Wiring", "attention_wiring"]
