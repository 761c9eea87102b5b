"""Balancing methods that are not gradient transforms: weighted loss terms, parameter events, training passes.

Four of the methods PDMP is compared against do not fit :class:`~pdmp.transforms.GradientPolicy`:

* **G-Blending** (Wang, Tran & Feiszli, CVPR 2020) and **PMR** (Fan et al., CVPR 2023) change *which
  losses* join the training loss and with what weights (:class:`LossTerms`);
* **Diagnosing & Re-learning** (Wei, Li & Hu, ECCV 2024) softly re-initialises encoders at epoch
  boundaries (:class:`ParameterEvent`);
* **MLA** (Zhang, Latham & Zhao, CVPR 2024) trains the modalities in turn through a shared head, one
  optimizer step per modality (:class:`TrainingPass`), optionally projects the head's gradient against
  forgetting (:class:`HeadProjector`; off by default, as in the published code), and fuses the unimodal
  predictions at test time with entropy-based weights (:func:`entropy_fusion_weights`).

A :class:`RebalancingPolicy` declares what it needs with capability flags (``uses_prototypes``,
``uses_parameter_events``, ``uses_training_passes``, ``uses_fusion_weights``, ``needs_held_out_losses``)
and decides every number here, in NumPy; an adapter only computes the losses it is told to and applies the
weights, mixes and projections it is given. It scales no encoder gradient, and
:meth:`RebalancingPolicy.modulation` refuses to
be asked (a loop that applies only coefficients would silently train joint learning under the method's
name). ``uses_unimodal_losses`` stays False:
the unimodal terms come through :meth:`RebalancingPolicy.loss_terms`, whose ``fused`` weight may differ
from 1, and a loop adding both would count them twice.

What an adapter does, per flag (every number comes from the policy):

* always: per step, ``terms = policy.loss_terms(step=, epoch=, ...)``, compute the losses
  ``terms.needed()`` names, ``loss = terms.combine(fused_ce, unimodal=..., prototype=..., prototype_entropy=...)``;
* ``needs_held_out_losses`` (G-Blending): after ``e`` epochs with ``policy.checkpoint_due(e)`` (``e = 0``
  before training), evaluate every term's mean loss on training and held-out batches and call
  ``policy.checkpoint(e, train, held_out)``;
* ``uses_prototypes`` (PMR): before training and after each epoch, feed ``policy.accumulate`` the encoder
  features of the first ``policy.prototype_batches(n)`` training batches (eval mode, no gradient), then
  ``policy.close_prototypes(epoch)``; per step pass ``prototype_logits`` computed with ``policy.prototypes()``
  (``-||z - c||``, differentiable in the framework; the detached values go to ``loss_terms``);
* ``uses_parameter_events`` (D&R): keep each encoder's parameters from before training; after epoch e with
  ``policy.diagnosis_due(e)``, pass training and held-out encoder features to ``policy.parameter_events`` and
  assign ``event.apply(current, initial)`` to every parameter of ``event.modality``'s encoder;
* ``uses_training_passes`` (MLA): per step run ``policy.training_passes(...)`` in order, one
  forward/backward/optimizer step each; with ``project_shared_head``, ``P = policy.head_projection(z, ...)``
  and, unless None, the head's weight gradient ``G <- G @ P.T`` before the step;
* ``uses_fusion_weights`` (MLA): at evaluation, predict ``sum_m w[m] * head(z_m)`` with
  ``w = policy.fusion_weights({m: head(z_m)})`` per batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pdmp._validation import (
    check_bool,
    check_finite_array,
    check_labels,
    check_non_negative_finite,
    check_non_negative_int,
    check_positive_finite,
    check_positive_int,
    check_same_modalities,
    check_seed,
    check_state_keys,
)
from pdmp.diagnostics import modality_scores
from pdmp.policies import CoefficientPolicy, Modulation, register_policy

#: The key of the fused prediction's loss among G-Blending's weighted terms.
FUSED = "fused"


# -- what a policy declares -----------------------------------------------------------------------


@dataclass(frozen=True)
class LossTerms:
    """The weighted terms of one step's training loss.

    ``loss = fused * CE(fused logits) + sum_m unimodal[m] * CE(modality m's own logits)
    + sum_m prototype[m] * CE(-||z_m - c_m,k||, y) - sum_m prototype_entropy[m] * H(softmax(-||z_m - c_m,k||))``

    with ``z_m`` modality m's features, ``c_m,k`` its class-k prototype (:class:`PMR`) and ``H`` the mean
    over the batch of the entropy over classes. A modality missing from a dict, or weighted 0, needs no
    such loss computed. :meth:`combine` builds the sum from any numbers or framework tensors.
    """

    fused: float = 1.0
    unimodal: dict[str, float] = field(default_factory=dict)
    prototype: dict[str, float] = field(default_factory=dict)
    prototype_entropy: dict[str, float] = field(default_factory=dict)

    def needed(self) -> dict[str, tuple[str, ...]]:
        """Which losses have a nonzero weight: ``{"unimodal": (...), "prototype": (...), ...}``."""
        return {
            kind: tuple(m for m, w in getattr(self, kind).items() if w != 0.0)
            for kind in ("unimodal", "prototype", "prototype_entropy")
        }

    def vector(self, modalities: Sequence[str]) -> NDArray[np.float64]:
        """The weights as one fixed-shape array, ``[fused, unimodal..., prototype..., prototype_entropy...]``
        in ``modalities`` order (absent = 0): what a host callback inside a compiled step returns."""
        names = tuple(modalities)
        for kind in ("unimodal", "prototype", "prototype_entropy"):
            unknown = set(getattr(self, kind)) - set(names)
            if unknown:
                raise ValueError(f"LossTerms.{kind} names {sorted(unknown)}, not among the modalities {list(names)}")
        values = [self.fused]
        for kind in ("unimodal", "prototype", "prototype_entropy"):
            weights = getattr(self, kind)
            values.extend(float(weights.get(m, 0.0)) for m in names)
        return np.asarray(values, dtype=np.float64)

    @classmethod
    def from_vector(cls, values: ArrayLike, modalities: Sequence[str]) -> LossTerms:
        """Invert :meth:`vector`."""
        names = tuple(modalities)
        array = check_finite_array(values, name="LossTerms vector")
        if array.shape != (1 + 3 * len(names),):
            raise ValueError(
                f"a LossTerms vector for {len(names)} modalities has {1 + 3 * len(names)} values, "
                f"got shape {array.shape}"
            )
        parts = [
            dict(zip(names, (float(v) for v in array[1 + i * len(names) : 1 + (i + 1) * len(names)]), strict=True))
            for i in range(3)
        ]
        return cls(fused=float(array[0]), unimodal=parts[0], prototype=parts[1], prototype_entropy=parts[2])

    def combine(
        self,
        fused: Any = None,
        *,
        unimodal: Mapping[str, Any] | None = None,
        prototype: Mapping[str, Any] | None = None,
        prototype_entropy: Mapping[str, Any] | None = None,
    ) -> Any:
        """The weighted sum of the given losses (floats, arrays or framework tensors alike).

        ``prototype_entropy[m]`` is the entropy H itself; it enters with a minus sign. A term with a
        nonzero weight whose loss is not given is refused.
        """
        total: Any = 0.0
        given = {"unimodal": unimodal or {}, "prototype": prototype or {}, "prototype_entropy": prototype_entropy or {}}
        if self.fused != 0.0:
            if fused is None:
                raise ValueError(f"LossTerms: the fused loss has weight {self.fused} but was not given")
            total = total + self.fused * fused
        for kind, names in self.needed().items():
            weights = getattr(self, kind)
            for m in names:
                if m not in given[kind]:
                    raise ValueError(f"LossTerms: {kind} loss of {m!r} has weight {weights[m]} but was not given")
                sign = -1.0 if kind == "prototype_entropy" else 1.0
                total = total + (sign * weights[m]) * given[kind][m]
        return total


@dataclass(frozen=True)
class ParameterEvent:
    """Soft re-initialisation of one modality's encoder: every parameter
    ``theta <- mix * theta_init + (1 - mix) * theta``, ``theta_init`` its value before training began.

    Buffers (batch-norm running statistics) are left alone, as in D&R's reference. :meth:`apply` does the
    arithmetic on any numbers or tensors; the adapter assigns the result and keeps the optimizer state.
    """

    modality: str
    mix: float

    def apply(self, current: Any, initial: Any) -> Any:
        return self.mix * initial + (1.0 - self.mix) * current


@dataclass(frozen=True)
class TrainingPass:
    """One forward/backward/optimizer step inside a training step.

    Only ``modalities``' encoders are run; the loss is ``terms`` (for MLA the cross-entropy of the
    shared head on the one modality's features); with ``project_shared_head`` the adapter asks the
    policy (:meth:`MLA.head_projection`) for the matrix ``P`` and replaces the shared head's weight
    gradient ``G`` (classes x features) by ``G @ P.T`` before the optimizer step (the bias is left alone).
    The step updates only the pass's encoders and the head: the other encoders get *no* gradient (the
    reference's ``optimizer.step`` skips parameters whose gradient is None), not a zero gradient, which
    momentum and weight decay would still move.
    """

    modalities: tuple[str, ...]
    terms: LossTerms
    project_shared_head: bool = False


# -- the base class -------------------------------------------------------------------------------


class RebalancingPolicy(CoefficientPolicy):
    """A policy that changes the loss, the parameters or the step instead of scaling gradients.

    Every hook has a neutral default (plain joint training): :meth:`loss_terms` gives the fused loss
    weight 1 and nothing else, :meth:`parameter_events` none, :meth:`training_passes` one pass over every
    modality, :meth:`fusion_weights` None (use the model's own fused prediction).
    """

    #: The adapter must give :meth:`loss_terms` each modality's prototype logits ``-||z_m - c_m,k||``
    #: (computed from :meth:`PMR.prototypes`), and feed :meth:`PMR.accumulate` / :meth:`PMR.close_prototypes`.
    uses_prototypes: ClassVar[bool] = False
    #: The adapter must keep each encoder's initial parameters and call :meth:`parameter_events` at epoch ends.
    uses_parameter_events: ClassVar[bool] = False
    #: The adapter must run :meth:`training_passes` instead of one fused step.
    uses_training_passes: ClassVar[bool] = False
    #: The adapter's prediction is ``sum_m fusion_weights(...)[m] * logits_m`` (unimodal logits of a shared head).
    uses_fusion_weights: ClassVar[bool] = False
    #: The adapter must measure every term's mean loss on training and held-out data at the epochs the
    #: policy's ``checkpoint_due`` names (:meth:`GBlending.checkpoint_due`).
    needs_held_out_losses: ClassVar[bool] = False

    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        """Refused: a loop that applies only per-step coefficients would silently train plain joint learning.

        An adapter that applies this policy's declarations leaves the encoder gradients unscaled and does not
        call this; a subclass that also scales gradients overrides it.
        """
        needs = ["loss_terms"] + [
            flag
            for flag in (
                "uses_prototypes",
                "uses_parameter_events",
                "uses_training_passes",
                "uses_fusion_weights",
                "needs_held_out_losses",
            )
            if getattr(self, flag)
        ]
        raise TypeError(
            f"{type(self).__name__} is a pdmp.rebalancing.RebalancingPolicy: it acts through {', '.join(needs)}, "
            "not through per-step encoder coefficients, and a training loop that only applies coefficients would "
            "train plain joint learning under its name. Train it with an adapter that applies RebalancingPolicy "
            "declarations (they leave the encoder gradients unscaled)"
        )

    def loss_terms(
        self,
        *,
        step: int = 0,
        epoch: int = 0,
        prototype_logits: Mapping[str, ArrayLike] | None = None,
        labels: ArrayLike | None = None,
    ) -> LossTerms:
        """This step's weighted loss terms (``prototype_logits`` only for :attr:`uses_prototypes`)."""
        return LossTerms()

    def parameter_events(self, *, epoch: int, **inputs: Any) -> list[ParameterEvent]:
        """Re-initialisations to apply after training epoch ``epoch`` (none by default)."""
        return []

    def training_passes(self, *, step: int = 0, epoch: int = 0) -> tuple[TrainingPass, ...]:
        """The passes of this training step, in order (one pass over every modality by default)."""
        return (TrainingPass(self.modalities, self.loss_terms(step=step, epoch=epoch)),)

    def fusion_weights(self, logits: Mapping[str, ArrayLike]) -> dict[str, float] | None:
        """Test-time weights of each modality's logits, or None to use the model's fused prediction."""
        return None


# -- G-Blending -----------------------------------------------------------------------------------


def gblending_weights(
    train_before: Mapping[str, float],
    held_before: Mapping[str, float],
    train_after: Mapping[str, float],
    held_after: Mapping[str, float],
    *,
    floor: float = 1e-4,
) -> dict[str, float]:
    """G-Blending's weights from two checkpoints' mean losses, per term (each modality's head and ``"fused"``).

    For each term, the generalisation gain ``dG = L_held(before) - L_held(after)`` and the overfitting
    growth ``dO = O(after) - O(before)``, ``O = L_held - L_train``; the weight is ``dG / dO**2``
    normalised to sum to 1 (the paper's ``w_k = (1/Z) dG_k / dO_k**2``). ``dO`` below ``floor`` counts as
    ``floor`` (a term that did not overfit more is the best one, not a division by zero); a term whose
    held-out loss did not fall (``dG <= 0``) gets 0; if every term gets 0, all are weighted equally.
    """
    names = list(train_before)
    for where, losses in (("held_before", held_before), ("train_after", train_after), ("held_after", held_after)):
        check_same_modalities(losses.keys(), names, where=f"gblending_weights {where}")
    floor = check_positive_finite(floor, name="floor")
    raw = {}
    for k in names:
        values = [float(d[k]) for d in (train_before, held_before, train_after, held_after)]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"gblending_weights: the losses of {k!r} are {values}; every loss must be finite")
        t0, v0, t1, v1 = values
        gain = v0 - v1
        growth = max((v1 - t1) - (v0 - t0), floor)
        raw[k] = gain / growth**2 if gain > 0 else 0.0
    total = sum(raw.values())
    if total <= 0.0 or not math.isfinite(total):
        return dict.fromkeys(names, 1.0 / len(names))
    return {k: v / total for k, v in raw.items()}


@register_policy
class GBlending(RebalancingPolicy):
    """Gradient-Blending (Wang, Tran & Feiszli, "What makes training multi-modal classification networks
    hard?", CVPR 2020): the loss is ``w_fused * CE(fused) + sum_m w_m * CE(head_m)``, the weights from each
    term's overfitting-to-generalisation ratio on held-out data (:func:`gblending_weights`).

    Online G-Blend: every ``super_epoch`` epochs the adapter measures every term's mean loss on training
    data and on a held-out split (:meth:`checkpoint`); the weights for the next super-epoch come from the
    last two checkpoints. Offline G-Blend: pass ``weights`` (e.g. from :func:`gblending_weights` on short
    unimodal and multimodal runs) and ``online=False``.

    Source: no official code was released with the paper (searched the public code index); the arithmetic
    follows the paper's Proposition (``w_k ∝ dG_k / dO_k**2``) and the public re-implementation in
    MultiBench (pliang279/MultiBench, ``training_structures/gradient_blend.py``, functions
    ``train_unimodal``/``train_multimodal``/``gb_estimate``, commit 09a2219), whose ``delta=True`` branch is
    this formula and whose weights are normalised to sum 1 (default re-estimation period ``gb_epoch=20``).
    ``tests/test_core_gblending.py`` transcribes that arithmetic.

    Departures: the checkpoints are the blended run's own heads at the super-epoch boundaries (MultiBench,
    like the paper's online algorithm, trains copies of the model for ``gb_epoch`` epochs from the boundary
    to measure them, which doubles the training cost); the first super-epoch uses ``weights`` (default
    equal) instead of an estimate; ``dG <= 0`` gives 0 and ``dO`` is floored (MultiBench takes
    ``abs(dG / dO**2)``, so a term whose held-out loss rose still gets weight, and an unchanged ``dO``
    divides by zero).
    """

    kind = "GBlending"
    needs_held_out_losses = True

    def __init__(
        self,
        modalities: Sequence[str],
        weights: Mapping[str, float] | None = None,
        super_epoch: int = 20,
        online: bool = True,
        floor: float = 1e-4,
    ) -> None:
        super().__init__(modalities)
        if FUSED in self.modalities:
            raise ValueError(f"GBlending: a modality may not be named {FUSED!r} (the fused term's key); rename it")
        self.terms = (*self.modalities, FUSED)
        given = dict.fromkeys(self.terms, 1.0 / len(self.terms)) if weights is None else dict(weights)
        check_same_modalities(given.keys(), self.terms, where="GBlending weights (modalities and 'fused')")
        self.weights = {k: check_non_negative_finite(given[k], name=f"GBlending weights[{k!r}]") for k in self.terms}
        self.super_epoch = check_positive_int(super_epoch, name="super_epoch")
        self.online = check_bool(online, name="online")
        self.floor = check_positive_finite(floor, name="floor")
        self.reset()

    def reset(self) -> None:
        self._current = dict(self.weights)
        self._last: dict[str, Any] | None = None

    def checkpoint_due(self, epochs_done: int) -> bool:
        """Whether the adapter should call :meth:`checkpoint` after ``epochs_done`` epochs (0: before training)."""
        epochs_done = check_non_negative_int(epochs_done, name="epochs_done")
        return self.online and epochs_done % self.super_epoch == 0

    def checkpoint(
        self, epochs_done: int, train: Mapping[str, float], held_out: Mapping[str, float]
    ) -> dict[str, float]:
        """Record every term's mean training and held-out loss after ``epochs_done`` epochs; from the second
        checkpoint on, the weights become :func:`gblending_weights` of the last two. Returns the weights."""
        epochs_done = check_non_negative_int(epochs_done, name="epochs_done")
        for where, losses in (("train", train), ("held_out", held_out)):
            check_same_modalities(losses.keys(), self.terms, where=f"GBlending.checkpoint {where}")
        train_now = {k: float(train[k]) for k in self.terms}
        held_now = {k: float(held_out[k]) for k in self.terms}
        if self._last is not None:
            if epochs_done <= self._last["epoch"]:
                raise ValueError(
                    f"GBlending.checkpoint after {epochs_done} epochs follows one after {self._last['epoch']}; "
                    "checkpoints must move forward"
                )
            self._current = gblending_weights(
                self._last["train"], self._last["held_out"], train_now, held_now, floor=self.floor
            )
        self._last = {"epoch": epochs_done, "train": train_now, "held_out": held_now}
        return dict(self._current)

    def loss_terms(
        self,
        *,
        step: int = 0,
        epoch: int = 0,
        prototype_logits: Mapping[str, ArrayLike] | None = None,
        labels: ArrayLike | None = None,
    ) -> LossTerms:
        return LossTerms(fused=self._current[FUSED], unimodal={m: self._current[m] for m in self.modalities})

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self._current), "last": None if self._last is None else dict(self._last)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_keys(state, required=("weights", "last"), where="GBlending state")
        weights = state["weights"]
        check_same_modalities(weights.keys(), self.terms, where="GBlending state['weights']")
        current = {k: check_non_negative_finite(weights[k], name=f"state['weights'][{k!r}]") for k in self.terms}
        last = state["last"]
        if last is not None:
            check_state_keys(last, required=("epoch", "train", "held_out"), where="GBlending state['last']")
            check_non_negative_int(last["epoch"], name="state['last']['epoch']")
            for part in ("train", "held_out"):
                check_same_modalities(last[part].keys(), self.terms, where=f"GBlending state['last'][{part!r}]")
            last = {
                "epoch": int(last["epoch"]),
                **{p: {k: float(last[p][k]) for k in self.terms} for p in ("train", "held_out")},
            }
        self._current, self._last = current, last

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "weights": dict(self.weights),
            "super_epoch": self.super_epoch,
            "online": self.online,
            "floor": self.floor,
        }


# -- PMR ------------------------------------------------------------------------------------------


def prototype_logits(features: ArrayLike, prototypes: ArrayLike) -> NDArray[np.float64]:
    """``-||z_i - c_k||`` (Euclidean distance, not squared), batch x classes: PMR's non-parametric logits."""
    z = check_finite_array(features, name="features")
    c = check_finite_array(prototypes, name="prototypes")
    if z.ndim != 2 or c.ndim != 2 or z.shape[1] != c.shape[1]:
        raise ValueError(f"features {z.shape} and prototypes {c.shape} must be (batch, dim) and (classes, dim)")
    return np.asarray(-np.sqrt(((z[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1)))


PrototypeRule = Literal["official", "paper"]


@register_policy
class PMR(RebalancingPolicy):
    """Prototypical Modal Rebalance (Fan et al., CVPR 2023).

    Each modality m keeps one prototype per class, ``c_m,k``, the mean of its features of class k. Per step,
    from the prototype logits ``-||z_m - c_m,k||``, the scores ``s_m = sum_i softmax(-||z_m,i - c_m,k||)[y_i]``
    and ``rho_m = mean(s_others) / s_m``: a modality with ``rho_m > 1`` (for two, ``s_a / s_v < 1`` makes
    audio the slow learner) gets its prototypical cross-entropy in the loss with weight ``alpha * b_m``,
    the others 0 (at a tie all get 0), where ``b_m`` is 1 (``rule="official"``, the published code) or
    ``clip(rho_m - 1, 0, 1)`` (``rule="paper"``, the paper's coefficient as the GeWu-Lab BalanceBenchmark
    toolkit transcribes it). Active for ``start_epoch <= epoch <= end_epoch``.

    Prototypical entropy regulariser (off by default): while also ``epoch <= entropy_end_epoch``, the
    modality with the highest score gets ``-entropy_weight * max_m b_m * H`` in the loss, ``H`` the batch
    mean of the entropy of its prototype softmax, which slows its convergence.

    Prototypes: the adapter runs the model in eval mode over the first :meth:`prototype_batches` training
    batches, calls :meth:`accumulate` with each batch's features, then :meth:`close_prototypes`; before the
    first epoch (``close_prototypes(0)``) and after every epoch e (``close_prototypes(e)``). The new
    prototypes are the class means, mixed as ``(1 - momentum) * mean + momentum * old`` when ``e >= 1``.

    Official code: fanyunfeng-bit/Modal-Imbalance-PMR (``main_Prototype_grad.py``: ``train_epoch``, the lines
    with ``ratio_a_p``, ``beta`` and ``lam``, and ``calculate_prototype``; commit 3615e48). Defaults are its
    argument defaults (``alpha=1.0``, ``momentum_coef=0.2``, ``modulation_starts=0``,
    ``modulation_ends=100``); its scripts use alpha 2.0, momentum 0.0 and end 70 for CREMA-D and AVE. The
    ``"paper"`` rule and the regulariser follow GeWu-Lab/BalanceBenchmark (``balancemm/trainer/PMR_trainer.py``,
    ``training_step``; commit 4c1482f).

    Departures: the published code has no entropy regulariser (its ``bash.sh`` runs a ``main_Proto_PER.py``
    that the repository does not contain), so it is off by default; BalanceBenchmark sums the entropy over
    the batch (here the mean: a batch-size-free weight) and takes it from the features of whichever modality
    has the lower unimodal loss (here the dominant modality's own); with more than two modalities each is
    compared with the mean of the others; a class absent from an epoch's prototype batches keeps its old
    prototype (the reference divides by a zero count and gets NaN); prototypes are float64.
    """

    kind = "PMR"
    uses_prototypes = True

    def __init__(
        self,
        modalities: Sequence[str],
        alpha: float = 1.0,
        *,
        rule: PrototypeRule = "official",
        start_epoch: int = 0,
        end_epoch: int = 100,
        momentum: float = 0.2,
        entropy_weight: float = 0.0,
        entropy_end_epoch: int | None = None,
        prototype_fraction: int = 10,
    ) -> None:
        super().__init__(modalities)
        self.alpha = check_non_negative_finite(alpha, name="alpha")
        if rule not in ("official", "paper"):
            raise ValueError(f"PMR rule={rule!r}; use 'official' (the published code) or 'paper'")
        self.rule: PrototypeRule = rule
        self.start_epoch = check_non_negative_int(start_epoch, name="start_epoch")
        self.end_epoch = check_non_negative_int(end_epoch, name="end_epoch")
        if self.end_epoch < self.start_epoch:
            raise ValueError(f"end_epoch={end_epoch} must be >= start_epoch={start_epoch}")
        self.momentum = check_non_negative_finite(momentum, name="momentum")
        if self.momentum > 1.0:
            raise ValueError(f"momentum={momentum} must be in [0, 1] (the old prototypes' share)")
        self.entropy_weight = check_non_negative_finite(entropy_weight, name="entropy_weight")
        self.entropy_end_epoch = (
            None if entropy_end_epoch is None else check_non_negative_int(entropy_end_epoch, name="entropy_end_epoch")
        )
        if self.entropy_weight > 0.0 and self.entropy_end_epoch is None:
            raise ValueError(
                f"entropy_weight={entropy_weight} needs entropy_end_epoch (the last epoch of the regulariser, "
                "e.g. start_epoch + 10)"
            )
        self.prototype_fraction = check_positive_int(prototype_fraction, name="prototype_fraction")
        self.reset()

    def reset(self) -> None:
        self._prototypes: dict[str, NDArray[np.float64]] | None = None
        self._sums: dict[str, NDArray[np.float64]] = {}
        self._counts: NDArray[np.float64] | None = None

    def prototype_batches(self, n_batches: int) -> int:
        """How many training batches the prototypes are computed from: ``max(1, n_batches // prototype_fraction)``
        (the reference stops after ``len(dataloader) // 10`` batches, and after the first when that is 0)."""
        return max(1, check_positive_int(n_batches, name="n_batches") // self.prototype_fraction)

    def prototypes(self) -> dict[str, NDArray[np.float64]]:
        """Each modality's prototypes, classes x dim (before the first :meth:`close_prototypes`: refused)."""
        if self._prototypes is None:
            raise RuntimeError("PMR has no prototypes yet: accumulate features and call close_prototypes(0) first")
        return {m: p.copy() for m, p in self._prototypes.items()}

    def accumulate(self, features: Mapping[str, ArrayLike], labels: ArrayLike, *, num_classes: int) -> None:
        """Add one batch's features (modality -> batch x dim, in eval mode, no gradient) to the class sums."""
        check_same_modalities(features.keys(), self.modalities, where="PMR.accumulate features")
        y = check_labels(labels, num_classes=num_classes)
        counts = np.bincount(y, minlength=num_classes).astype(np.float64)
        for m in self.modalities:
            z = check_finite_array(features[m], name=f"PMR features[{m!r}]")
            if z.ndim != 2 or z.shape[0] != y.shape[0]:
                raise ValueError(f"PMR features[{m!r}] has shape {z.shape}; expected ({y.shape[0]}, dim)")
            sums = np.zeros((num_classes, z.shape[1]))
            np.add.at(sums, y, z)
            if m in self._sums:
                if self._sums[m].shape != sums.shape:
                    raise ValueError(f"PMR features[{m!r}]: shape {sums.shape} differs from {self._sums[m].shape}")
                self._sums[m] = self._sums[m] + sums
            else:
                self._sums[m] = sums
        self._counts = counts if self._counts is None else self._counts + counts

    def close_prototypes(self, epoch: int) -> dict[str, NDArray[np.float64]]:
        """Turn the accumulated sums into prototypes after training epoch ``epoch`` (0 also before training)."""
        epoch = check_non_negative_int(epoch, name="epoch")
        if self._counts is None:
            raise RuntimeError("PMR.close_prototypes: no features were accumulated")
        seen = self._counts > 0
        new = {}
        for m in self.modalities:
            means = self._sums[m] / np.where(seen, self._counts, 1.0)[:, None]
            old = None if self._prototypes is None else self._prototypes[m]
            if old is not None and old.shape != means.shape:
                raise ValueError(f"PMR: prototypes of {m!r} changed shape from {old.shape} to {means.shape}")
            if old is not None:
                means = np.where(seen[:, None], means, old)
                if epoch > 0:
                    means = (1.0 - self.momentum) * means + self.momentum * old
            new[m] = means
        self._prototypes, self._sums, self._counts = new, {}, None
        return self.prototypes()

    def weaker(self, scores: Mapping[str, float]) -> dict[str, bool]:
        """Which modalities are slow learners: score below the mean of the others' (exact arithmetic)."""
        result = {}
        for m in self.modalities:
            others = [Fraction(float(scores[o])) for o in self.modalities if o != m]
            result[m] = Fraction(float(scores[m])) * len(others) < sum(others)
        return result

    def boosts(self, scores: Mapping[str, float]) -> dict[str, float]:
        """``b_m``: 1 or ``clip(rho_m - 1, 0, 1)`` (``rule``) for the slow learners, 0 for the others."""
        weak = self.weaker(scores)
        result = {}
        for m in self.modalities:
            if not weak[m]:
                result[m] = 0.0
            elif self.rule == "official":
                result[m] = 1.0
            else:
                others = [float(scores[o]) for o in self.modalities if o != m]
                ratio = (sum(others) / len(others)) / max(float(scores[m]), float(np.finfo(np.float64).tiny))
                result[m] = min(max(ratio - 1.0, 0.0), 1.0)
        return result

    def loss_terms(
        self,
        *,
        step: int = 0,
        epoch: int = 0,
        prototype_logits: Mapping[str, ArrayLike] | None = None,
        labels: ArrayLike | None = None,
    ) -> LossTerms:
        epoch = check_non_negative_int(epoch, name="epoch")
        if not self.start_epoch <= epoch <= self.end_epoch:
            return LossTerms()
        if prototype_logits is None or labels is None:
            raise ValueError("PMR.loss_terms needs this batch's prototype logits (-||z - c||) and labels")
        check_same_modalities(prototype_logits.keys(), self.modalities, where="PMR prototype_logits")
        scores = modality_scores(prototype_logits, labels)
        boosts = self.boosts(scores)
        entropy = dict.fromkeys(self.modalities, 0.0)
        if self.entropy_weight > 0.0 and self.entropy_end_epoch is not None and epoch <= self.entropy_end_epoch:
            dominant = max(self.modalities, key=lambda m: scores[m])
            entropy[dominant] = self.entropy_weight * max(boosts.values())
        return LossTerms(prototype={m: self.alpha * b for m, b in boosts.items()}, prototype_entropy=entropy)

    def state_dict(self) -> dict[str, Any]:
        return {
            "prototypes": None if self._prototypes is None else {m: p.tolist() for m, p in self._prototypes.items()},
            "sums": {m: s.tolist() for m, s in self._sums.items()},
            "counts": None if self._counts is None else self._counts.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_keys(state, required=("prototypes", "sums", "counts"), where="PMR state")
        prototypes = state["prototypes"]
        if prototypes is not None:
            check_same_modalities(prototypes.keys(), self.modalities, where="PMR state['prototypes']")
            prototypes = {
                m: check_finite_array(prototypes[m], name=f"state['prototypes'][{m!r}]") for m in self.modalities
            }
        sums = {m: check_finite_array(v, name=f"state['sums'][{m!r}]") for m, v in dict(state["sums"]).items()}
        if sums:
            check_same_modalities(sums.keys(), self.modalities, where="PMR state['sums']")
        counts = None if state["counts"] is None else check_finite_array(state["counts"], name="state['counts']")
        if (counts is None) != (not sums):
            raise ValueError("PMR state: 'sums' and 'counts' must be both empty or both set")
        self._prototypes, self._sums, self._counts = prototypes, sums, counts

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "alpha": self.alpha,
            "rule": self.rule,
            "start_epoch": self.start_epoch,
            "end_epoch": self.end_epoch,
            "momentum": self.momentum,
            "entropy_weight": self.entropy_weight,
            "entropy_end_epoch": self.entropy_end_epoch,
            "prototype_fraction": self.prototype_fraction,
        }


# -- Diagnosing & Re-learning ---------------------------------------------------------------------


def minmax_scale(features: ArrayLike, low: float = -1.0, high: float = 1.0) -> NDArray[np.float64]:
    """Scale every column to ``[low, high]`` (a constant column goes to ``low``), as scikit-learn's MinMaxScaler."""
    x = check_finite_array(features, name="features")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (samples, dim) array, got shape {x.shape}")
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = np.where(hi - lo == 0.0, 1.0, hi - lo)
    scale = (high - low) / span
    return np.asarray(x * scale + (low - lo * scale))


def kmeans(
    features: ArrayLike, n_clusters: int, *, seed: int = 0, n_init: int = 4, max_iter: int = 300
) -> NDArray[np.int64]:
    """Cluster labels by k-means (k-means++ seeding, Lloyd iterations, the best of ``n_init`` runs by inertia)."""
    x = check_finite_array(features, name="features")
    k = check_positive_int(n_clusters, name="n_clusters")
    if x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"kmeans needs a (samples, dim) array with at least {k} samples, got shape {x.shape}")
    rng = np.random.default_rng(check_seed(seed))
    best: tuple[float, NDArray[np.int64]] | None = None
    for _ in range(check_positive_int(n_init, name="n_init")):
        centres = x[[int(rng.integers(x.shape[0]))]]
        while centres.shape[0] < k:
            d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1).min(axis=1)
            total = d2.sum()
            pick = int(rng.choice(x.shape[0], p=d2 / total)) if total > 0 else int(rng.integers(x.shape[0]))
            centres = np.vstack([centres, x[pick]])
        assign = np.zeros(x.shape[0], dtype=np.int64)
        for _ in range(check_positive_int(max_iter, name="max_iter")):
            d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
            new = d2.argmin(axis=1)
            moved = centres.copy()
            for j in range(k):
                if (new == j).any():
                    moved[j] = x[new == j].mean(axis=0)
            if np.array_equal(new, assign) and np.array_equal(moved, centres):
                break
            assign, centres = new, moved
        inertia = float(((x - centres[assign]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, assign.copy())
    assert best is not None
    return best[1]


def purity(labels: ArrayLike, clusters: ArrayLike) -> float:
    """Cluster purity: the share of samples whose class is their cluster's most frequent class."""
    y = check_labels(labels)
    c = np.asarray(clusters)
    if c.shape != y.shape:
        raise ValueError(f"labels {y.shape} and clusters {c.shape} must have the same shape")
    return float(sum(np.bincount(y[c == j]).max() for j in np.unique(c)) / y.shape[0])


def clustering_purity(features: ArrayLike, labels: ArrayLike, *, n_clusters: int, seed: int = 0) -> float:
    """D&R's learning-state measure of one modality's representation: min-max scale to [-1, 1], k-means
    with one cluster per class, purity against the labels."""
    return purity(labels, kmeans(minmax_scale(features), n_clusters, seed=seed))


def relearning_strength(train_purity: float, held_purity: float, move_lambda: float = 3.0) -> float:
    """D&R's re-initialisation strength ``tanh(move_lambda * |purity_train - purity_held|)``: a modality
    whose representation separates its training data much better than held-out data is re-initialised more."""
    gap = abs(
        check_non_negative_finite(train_purity, name="train_purity")
        - check_non_negative_finite(held_purity, name="held_purity")
    )
    return math.tanh(check_non_negative_finite(move_lambda, name="move_lambda") * gap)


@register_policy
class DiagnosingRelearning(RebalancingPolicy):
    """Diagnosing & Re-learning (Wei, Li & Hu, ECCV 2024): after training epoch e with ``e % every == 0``
    and ``e > 0``, for the first ``count`` such epochs, each modality's learning state is diagnosed from its
    representations and its encoder is softly re-initialised toward its initial parameters by
    ``mix = tanh(move_lambda * |purity_train - purity_held|)`` (:func:`clustering_purity`,
    :func:`relearning_strength`, :class:`ParameterEvent`). The training loss is the plain fused loss.

    Official code: GeWu-Lab/Diagnosing_Relearning_ECCV2024 (``code/ours.py``: ``purity_score``,
    ``reinit_score``, ``reinit`` and the loop in ``main``; commit 025085e). Defaults are its arguments
    (``reinit_epoch=20``, ``reinit_num=3``, ``move_lambda=3``).

    Departures: k-means is this module's NumPy k-means (k-means++ seeding, best of ``n_init`` runs, seeded),
    not scikit-learn's ``KMeans(random_state=0)``, so the cluster labels (and so a purity) can differ on
    data without a clear cluster structure; the held-out features are whatever split the adapter passes
    (the reference uses its validation split).
    """

    kind = "DiagnosingRelearning"
    uses_parameter_events = True

    def __init__(
        self,
        modalities: Sequence[str],
        every: int = 20,
        count: int = 3,
        move_lambda: float = 3.0,
        seed: int = 0,
    ) -> None:
        super().__init__(modalities)
        self.every = check_positive_int(every, name="every")
        self.count = check_non_negative_int(count, name="count")
        self.move_lambda = check_non_negative_finite(move_lambda, name="move_lambda")
        self.seed = check_seed(seed)
        self._done = 0

    def diagnosis_due(self, epoch: int) -> bool:
        """Whether the adapter should collect features after training epoch ``epoch`` (0-based)."""
        epoch = check_non_negative_int(epoch, name="epoch")
        return epoch % self.every == 0 and epoch > 0 and self._done < self.count

    def parameter_events(  # type: ignore[override]
        self,
        *,
        epoch: int,
        train_features: Mapping[str, ArrayLike] | None = None,
        train_labels: ArrayLike | None = None,
        held_features: Mapping[str, ArrayLike] | None = None,
        held_labels: ArrayLike | None = None,
        num_classes: int | None = None,
    ) -> list[ParameterEvent]:
        """The re-initialisations after epoch ``epoch``: none unless :meth:`diagnosis_due`, else one per modality."""
        if not self.diagnosis_due(epoch):
            return []
        if (
            train_features is None
            or held_features is None
            or train_labels is None
            or held_labels is None
            or num_classes is None
        ):
            raise ValueError(
                "DiagnosingRelearning needs train/held-out features and labels and num_classes at a diagnosis epoch"
            )
        check_same_modalities(train_features.keys(), self.modalities, where="DiagnosingRelearning train_features")
        check_same_modalities(held_features.keys(), self.modalities, where="DiagnosingRelearning held_features")
        k = check_positive_int(num_classes, name="num_classes")
        events = []
        for m in self.modalities:
            p_train = clustering_purity(train_features[m], train_labels, n_clusters=k, seed=self.seed)
            p_held = clustering_purity(held_features[m], held_labels, n_clusters=k, seed=self.seed)
            events.append(ParameterEvent(m, relearning_strength(p_train, p_held, self.move_lambda)))
        self._done += 1
        return events

    def state_dict(self) -> dict[str, Any]:
        return {"done": self._done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_keys(state, required=("done",), where="DiagnosingRelearning state")
        self._done = check_non_negative_int(state["done"], name="state['done']")

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "every": self.every,
            "count": self.count,
            "move_lambda": self.move_lambda,
            "seed": self.seed,
        }


# -- MLA ------------------------------------------------------------------------------------------


def owm_alpha(batch_index: int, n_batches: int) -> float:
    """MLA's regulariser of the projector update at this batch: ``0.1 ** (batch_index / n_batches + 1)``."""
    i = check_non_negative_int(batch_index, name="batch_index")
    n = check_positive_int(n_batches, name="n_batches")
    return float(0.1 ** (i / n + 1))


Projection = Literal["code", "rls", "off"]


class HeadProjector:
    """MLA's gradient modification of the shared head (orthogonal weight modification).

    ``P`` starts as the identity (features x features). At every pass but the very first of training, with
    ``r`` the batch mean of the pass's features (a column) and ``alpha`` :func:`owm_alpha`: ``k = P r``,
    ``P <- P - D``, ``P <- P / ||P||_F``, and the head's weight gradient becomes ``G @ P.T``. With
    ``kind="code"``, ``D = (k k^T) / (alpha + k r^T)`` elementwise, the official ``GSPlugin`` as written
    (``torch.mm(k, r)`` of a d x 1 and a 1 x d matrix is d x d); with ``kind="rls"``,
    ``D = k k^T / (alpha + r^T k)``, the scalar denominator of the recursive-least-squares projector that
    orthogonal weight modification is built on. One ``P`` serves all modalities, so each modality's update is
    steered away from the feature directions of the passes before it.
    """

    def __init__(self, kind: Literal["code", "rls"] = "code") -> None:
        if kind not in ("code", "rls"):
            raise ValueError(f"HeadProjector kind={kind!r}; use 'code' or 'rls'")
        self.kind = kind
        self.matrix: NDArray[np.float64] | None = None
        self.count = 0

    def step(self, features: ArrayLike, *, batch_index: int, n_batches: int) -> NDArray[np.float64] | None:
        """Advance by one pass; return ``P`` to apply to this pass's head gradient, or None (the first pass)."""
        z = check_finite_array(features, name="features")
        if z.ndim != 2 or z.shape[0] == 0:
            raise ValueError(f"features must be a non-empty (batch, dim) array, got shape {z.shape}")
        alpha = owm_alpha(batch_index, n_batches)
        if self.matrix is None:
            self.matrix = np.eye(z.shape[1])
        elif self.matrix.shape[0] != z.shape[1]:
            raise ValueError(f"features have dim {z.shape[1]}, the projector {self.matrix.shape[0]}")
        first = self.count == 0
        self.count += 1
        if first:
            return None
        r = z.mean(axis=0)[None, :]  # 1 x d, as the reference's torch.mean(input, 0, True)
        k = self.matrix @ r.T  # d x 1
        denominator = alpha + (k @ r if self.kind == "code" else float((r @ k)[0, 0]))
        p = self.matrix - (k @ k.T) / denominator
        self.matrix = p / np.linalg.norm(p)
        return self.matrix.copy()

    def state_dict(self) -> dict[str, Any]:
        return {"matrix": None if self.matrix is None else self.matrix.tolist(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_keys(state, required=("matrix", "count"), where="HeadProjector state")
        matrix = None if state["matrix"] is None else check_finite_array(state["matrix"], name="state['matrix']")
        if matrix is not None and (matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]):
            raise ValueError(f"HeadProjector state['matrix'] must be square, got shape {matrix.shape}")
        self.matrix, self.count = matrix, check_non_negative_int(state["count"], name="state['count']")


def entropy_fusion_weights(logits: Mapping[str, ArrayLike], *, axis: int = 0) -> dict[str, float]:
    """MLA's test-time fusion weights: ``w_m = exp(H_max - H_m) / sum_j exp(H_max - H_j)``.

    ``H_m = -sum p log p`` over the whole batch of ``p = softmax(logits_m, axis)``. ``axis=0`` (the default)
    is the reference's ``F.softmax(output, dim=0)``: a softmax over the *batch* for every class, so the
    weights depend on the whole test batch; ``axis=1`` is the per-sample softmax over classes (the
    reference's commented-out alternative).
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (over the batch, as the reference) or 1 (over classes), got {axis!r}")
    entropies = {}
    for m, z in logits.items():
        x = check_finite_array(z, name=f"logits[{m!r}]")
        if x.ndim != 2:
            raise ValueError(f"logits[{m!r}] must be (batch, classes), got shape {x.shape}")
        shifted = x - x.max(axis=axis, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        entropies[m] = float(-(np.exp(log_p) * log_p).sum())
    top = max(entropies.values())
    raw = {m: math.exp(top - h) for m, h in entropies.items()}
    total = sum(raw.values())
    return {m: v / total for m, v in raw.items()}


Fusion = Literal["entropy", "fixed"]


@register_policy
class MLA(RebalancingPolicy):
    """Multimodal Learning with Alternating unimodal adaptation (Zhang, Latham & Zhao, CVPR 2024).

    Every training step runs one pass per modality, in order: the modality's encoder and the shared head
    (every encoder's features must have the head's input size) on that modality alone, loss
    ``CE(head(z_m))``, with ``projection="code"`` or ``"rls"`` the head's weight gradient projected by
    :class:`HeadProjector`, one optimizer step.
    At test time the prediction is ``sum_m w_m head(z_m)`` with :func:`entropy_fusion_weights`
    (``fusion="entropy"``, the reference's ``--dynamic``) or fixed ``weights`` (``fusion="fixed"``).

    Official code: Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation (``main.py``:
    ``train_epoch``'s ``gs_flag`` branch, ``calculate_entropy``, ``calculate_gating_weights`` and ``valid``;
    ``utils/utils.py``: ``GSPlugin.before_update``; commit ab6c184). There: SGD lr 1e-3, momentum 0.9; the
    fixed two-modality weights ``--av_alpha`` (default 0.5, so equal weights here).

    ``projection`` (default ``"off"``): the reference projects only a parameter named ``"module.weight"`` but
    hands ``before_update`` ``fusion_module.fc_out``, an ``nn.Linear`` whose weight is named ``"weight"``, so
    in the published code the projection never fires and the paper's MLA numbers were produced without it;
    ``"off"`` (the head's gradient left alone) is what that code does. ``"code"`` fires it with the
    reference's arithmetic as written (GeWu-Lab/BalanceBenchmark's ``MLA_trainer.py`` fixes the name the
    same way, but adds ``G @ P.T`` to ``G`` instead of replacing it); ``"rls"`` with the scalar
    recursive-least-squares denominator; ``P`` is float64 (float32 on the GPU there). Why not ``"code"`` by
    default: ``P <- P / ||P||_F`` (``||I||_F = sqrt(d)``) divides the shared head's gradient by about
    ``sqrt(d)`` at every step besides removing the mean feature directions seen, so the head learns several
    times slower. On the benchmark's tuning seed 100 (``benchmarks.trace_rebalancing --regime
    audio_dominant``: 32-dim features, SGD lr 0.05, 10 epochs): training loss 2.24 -> 1.87 and 39.6% test accuracy with
    ``"code"``, 2.20 -> 0.30 and 82.3% with ``"off"`` (joint training 81.9%).
    """

    kind = "MLA"
    uses_training_passes = True
    uses_fusion_weights = True

    def __init__(
        self,
        modalities: Sequence[str],
        fusion: Fusion = "entropy",
        weights: Mapping[str, float] | None = None,
        projection: Projection = "off",
        entropy_axis: int = 0,
    ) -> None:
        super().__init__(modalities)
        if fusion not in ("entropy", "fixed"):
            raise ValueError(f"MLA fusion={fusion!r}; use 'entropy' or 'fixed'")
        self.fusion: Fusion = fusion
        given = dict.fromkeys(self.modalities, 1.0 / len(self.modalities)) if weights is None else dict(weights)
        check_same_modalities(given.keys(), self.modalities, where="MLA weights")
        self.weights = {m: check_non_negative_finite(given[m], name=f"MLA weights[{m!r}]") for m in self.modalities}
        if projection not in ("code", "rls", "off"):
            raise ValueError(f"MLA projection={projection!r}; use 'code', 'rls' or 'off'")
        self.projection: Projection = projection
        if entropy_axis not in (0, 1) or isinstance(entropy_axis, bool):
            raise ValueError(f"MLA entropy_axis must be 0 or 1, got {entropy_axis!r}")
        self.entropy_axis = entropy_axis
        self.reset()

    def reset(self) -> None:
        self.projector = HeadProjector("rls" if self.projection == "rls" else "code")

    def training_passes(self, *, step: int = 0, epoch: int = 0) -> tuple[TrainingPass, ...]:
        return tuple(
            TrainingPass((m,), LossTerms(fused=0.0, unimodal={m: 1.0}), project_shared_head=self.projection != "off")
            for m in self.modalities
        )

    def head_projection(self, features: ArrayLike, *, batch_index: int, n_batches: int) -> NDArray[np.float64] | None:
        """The matrix ``P`` for this pass's head weight gradient (``G @ P.T``), or None: leave it (the first
        pass of training, or ``projection="off"``). ``features``: the pass's encoder output, detached."""
        if self.projection == "off":
            return None
        return self.projector.step(features, batch_index=batch_index, n_batches=n_batches)

    def fusion_weights(self, logits: Mapping[str, ArrayLike]) -> dict[str, float]:
        check_same_modalities(logits.keys(), self.modalities, where="MLA logits")
        if self.fusion == "fixed":
            return dict(self.weights)
        return entropy_fusion_weights({m: logits[m] for m in self.modalities}, axis=self.entropy_axis)

    def state_dict(self) -> dict[str, Any]:
        return {"projector": self.projector.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check_state_keys(state, required=("projector",), where="MLA state")
        projector = HeadProjector(self.projector.kind)
        projector.load_state_dict(state["projector"])
        self.projector = projector

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "fusion": self.fusion,
            "weights": dict(self.weights),
            "projection": self.projection,
            "entropy_axis": self.entropy_axis,
        }
