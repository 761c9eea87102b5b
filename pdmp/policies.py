"""Stage 2: per-modality gradient coefficients, as framework-free policies.

A policy answers one question: *what is each modality's coefficient at this step and epoch* (and,
for OGM-GE, given this batch's per-modality logits). Adapters multiply each modality's encoder
gradients (``grad`` mode) or learning rate (``lr`` mode) by it; fusion and head parameters are never
modulated.

Policies round-trip through plain dicts (:meth:`CoefficientPolicy.get_config` and
:func:`policy_from_config`) so that checkpoints and Keras configs can store them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from pdmp._validation import (
    check_bool,
    check_known_modality,
    check_modality_names,
    check_non_negative_int,
    check_positive_finite,
    check_same_modalities,
    check_state_keys,
)
from pdmp.diagnostics import modality_scores
from pdmp.ranking import Ranking

Unit = Literal["epoch", "step"]

#: OGM-GE adds this to a gradient's standard deviation before drawing its noise (reference code).
OGM_NOISE_EPS = 1e-8


@dataclass(frozen=True)
class Modulation:
    """What an adapter applies to one step's gradients.

    ``coefficients[m]`` multiplies modality m's encoder gradients. When ``noise`` is true (OGM-GE's
    Gaussian enhancement), the adapter then adds, to each modulated parameter's gradient, noise drawn
    from ``N(0, std(g) + OGM_NOISE_EPS)`` where ``g`` is that parameter's gradient *before* scaling
    (as in the reference code), for every modality, including those whose coefficient is 1.
    """

    coefficients: dict[str, float]
    noise: bool = False


def check_modulation(policy: CoefficientPolicy, modulation: Any, *, step: int, epoch: int) -> Modulation:
    """Return ``modulation`` if an adapter may apply it, else raise naming the policy, modality and value.

    A coefficient must be a finite number >= 0 for each of the policy's modalities: NaN or inf would
    poison the weights, a negative one would turn descent into ascent on that encoder (0 freezes it,
    which is allowed). Both backends call this on every :class:`Modulation` a policy returns before
    applying it, so a custom policy's mistake is refused at the step that makes it.
    """
    name = type(policy).__name__
    if not isinstance(modulation, Modulation):
        raise TypeError(
            f"{name}.modulation(step={step}, epoch={epoch}) returned {type(modulation).__name__}; "
            "it must return pdmp.Modulation({modality: coefficient, ...})"
        )
    coefficients = modulation.coefficients
    if not isinstance(coefficients, Mapping):
        raise TypeError(
            f"{name}.modulation(step={step}, epoch={epoch}).coefficients is {type(coefficients).__name__}; "
            "it must be a dict modality -> coefficient"
        )
    check_same_modalities(coefficients.keys(), policy.modalities, where=f"{name}.modulation coefficients")
    for modality in policy.modalities:
        value = coefficients[modality]
        number = float(value) if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number) or number < 0:
            raise ValueError(
                f"{name}.modulation(step={step}, epoch={epoch}) gives modality {modality!r} the coefficient "
                f"{value!r}; a coefficient must be a finite number >= 0 (NaN or inf would corrupt the weights, "
                "a negative one reverses the update). Fix the policy so it returns such a number (clip it, or "
                "fall back to 1.0 where its inputs are undefined)"
            )
    return modulation


@dataclass
class Clock:
    """Step and epoch counters that adapters advance and checkpoint."""

    step: int = 0
    epoch: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore both counters, or neither: both are checked before either is assigned."""
        check_state_keys(state, required=(), optional=("step", "epoch"), where="Clock state")
        step = check_non_negative_int(state.get("step"), name="state['step']")
        epoch = check_non_negative_int(state.get("epoch"), name="state['epoch']")
        self.step, self.epoch = step, epoch


class CoefficientPolicy(ABC):
    """Interface of every coefficient policy."""

    kind: ClassVar[str]
    #: True when the policy needs per-modality logits of the current batch: OGM-GE, and every
    #: GradientPolicy with ``uses_logits`` (AGM, ARL, InfoReg); the training loop must then observe them.
    needs_logits: ClassVar[bool] = False
    #: True when the policy learns from each step's per-modality batch scores (adaptive policies): the
    #: adapters call :meth:`update` with the step's (all-reduced) scores *after* fixing its coefficients,
    #: and save :meth:`state_dict` with their own state.
    observes_scores: ClassVar[bool] = False
    #: True when the training loss should add each modality's unimodal loss (the cross-entropy of its
    #: decomposed fusion logits, or of its own unimodal head) weighted by :meth:`unimodal_loss_weights`:
    #: adaptive policies with an auxiliary weight, ARL, InfoReg and MMPareto; the adapters fix the weights
    #: with the step's coefficients. A loop that branches on it adds exactly the losses the policy needs.
    uses_unimodal_losses: bool = False

    def update(self, scores: Mapping[str, float]) -> None:  # noqa: B027 - a no-op unless observes_scores
        """Fold in one step's per-modality batch scores (only policies with :attr:`observes_scores`)."""

    def unimodal_loss_weights(self, *, step: int = 0, epoch: int = 0) -> dict[str, float]:
        """Each modality's unimodal-loss weight in the training loss at this step (0 unless
        :attr:`uses_unimodal_losses`)."""
        return self._all(0.0)

    def state_dict(self) -> dict[str, Any]:
        """What the policy has learnt during training (empty for stateless policies); JSON-serialisable."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; stateless policies accept only an empty dict."""
        if not isinstance(state, Mapping):
            raise TypeError(f"{type(self).__name__} state must be a dict (from state_dict()), got {state!r}")
        if state:
            name = type(self).__name__
            raise ValueError(f"{name} state: unknown key(s) {sorted(map(str, state))}; {name} has no training state")

    def __init__(self, modalities: Sequence[str]) -> None:
        self.modalities: tuple[str, ...] = check_modality_names(modalities, where=f"{type(self).__name__} modalities")

    @abstractmethod
    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        """Coefficients for this step/epoch. ``scores`` are OGM-GE batch scores (ignored by others)."""

    def coefficients(
        self,
        *,
        step: int = 0,
        epoch: int = 0,
        logits: Mapping[str, ArrayLike] | None = None,
        labels: ArrayLike | None = None,
    ) -> dict[str, float]:
        """Coefficient per modality; ``logits``/``labels`` are needed only when :attr:`needs_logits`."""
        step = check_non_negative_int(step, name="step")
        epoch = check_non_negative_int(epoch, name="epoch")
        scores = None
        if self.needs_logits:
            if logits is None or labels is None:
                raise ValueError(f"{type(self).__name__} needs this batch's per-modality logits and labels")
            check_same_modalities(logits.keys(), self.modalities, where=f"{type(self).__name__} logits")
            scores = modality_scores(logits, labels)
        return self.modulation(step=step, epoch=epoch, scores=scores).coefficients

    def check_modalities(self, names: Sequence[str], *, where: str) -> None:
        """Raise if ``names`` are not exactly this policy's modalities."""
        check_same_modalities(names, self.modalities, where=where)

    def modulates(self, shape: Sequence[int]) -> bool:
        """Whether a modality parameter of this shape is modulated at all (by default, every one).

        Adapters ask this once per parameter when they bind the policy, so a policy can restrict
        itself (OGM-GE's reference code touches only 4-D conv kernels) without framework code.
        """
        return True

    @property
    def adds_noise(self) -> bool:
        """True when some step's :class:`Modulation` may have ``noise`` set (OGM-GE's enhancement).

        Noise is defined on gradients, so adapters that modulate learning rates instead refuse such a
        policy up front rather than at the first noisy step.
        """
        return False

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """A JSON-serialisable dict with a ``"type"`` key; :func:`policy_from_config` inverts it."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CoefficientPolicy:
        if not isinstance(config, Mapping):
            raise TypeError(f"a {cls.__name__} config must be a dict, got {type(config).__name__}")
        options = {key: value for key, value in config.items() if key != "type"}
        try:
            return cls(**options)
        except TypeError as error:
            raise ValueError(f"invalid {cls.__name__} config {dict(config)}: {error}") from error

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CoefficientPolicy)
            and type(other) is type(self)
            and other.get_config() == self.get_config()
        )

    def __hash__(self) -> int:
        return hash(repr(sorted(self.get_config().items())))

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({options})"

    def _all(self, value: float) -> dict[str, float]:
        return {name: value for name in self.modalities}


class NoModulation(CoefficientPolicy):
    """Plain joint training: every coefficient is 1."""

    kind = "NoModulation"

    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        return Modulation(self._all(1.0))

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "modalities": list(self.modalities)}


class PDMP(CoefficientPolicy):
    """Performance-Dominant Modality Prioritization (Wei et al., arXiv 2604.05773), our reading.

    The dominant modality's encoder gradients are multiplied by ``gamma_p``, every other modality's
    by ``gamma_r``. Schedule, with ``t`` the epoch or the step (``unit``):

    * ``t < warmup``: every coefficient is 1;
    * ``warmup <= t``: ``k = 1 + (gamma - 1) * min(1, (t - warmup + 1) / ramp)`` (``ramp=0``: jump
      straight to ``gamma``);
    * ``t >= end`` (if ``end`` is set): back to 1.

    ``gamma_p`` / ``gamma_r`` act as learning-rate multipliers under SGD: the defaults (10, 0.5) assume
    the field's base setting, SGD with lr 1e-3, momentum 0.9.

    ``gamma_r > gamma_p`` would prioritise the weaker modalities, inverting the method; it is refused
    unless ``allow_inverse=True``. (Prioritising a chosen weaker modality is done by naming it as
    ``dominant``.)
    """

    kind = "PDMP"

    def __init__(
        self,
        modalities: Sequence[str],
        dominant: str,
        gamma_p: float = 10.0,
        gamma_r: float = 0.5,
        *,
        warmup: int = 0,
        unit: Unit = "epoch",
        ramp: int = 0,
        end: int | None = None,
        allow_inverse: bool = False,
    ) -> None:
        super().__init__(modalities)
        if not isinstance(dominant, str):
            raise TypeError(
                f"PDMP dominant must be a modality name (one of {', '.join(self.modalities)}), got {dominant!r}"
            )
        self.dominant = check_known_modality(dominant, self.modalities, where="PDMP dominant")
        self.gamma_p = check_positive_finite(gamma_p, name="gamma_p")
        self.gamma_r = check_positive_finite(gamma_r, name="gamma_r")
        allow_inverse = check_bool(allow_inverse, name="allow_inverse")
        if self.gamma_r > self.gamma_p and not allow_inverse:
            raise ValueError(
                f"gamma_r={gamma_r} > gamma_p={gamma_p} would slow the dominant modality relative to the others, "
                "inverting PDMP; swap them, or pass allow_inverse=True if that is intended"
            )
        self.allow_inverse = allow_inverse
        if not isinstance(unit, str) or unit not in ("epoch", "step"):
            raise ValueError(f"unit must be 'epoch' or 'step', got {unit!r}")
        self.unit: Unit = unit
        self.warmup = check_non_negative_int(warmup, name="warmup")
        self.ramp = check_non_negative_int(ramp, name="ramp")
        self.end = None if end is None else check_non_negative_int(end, name="end")
        if self.end is not None and self.end <= self.warmup:
            raise ValueError(f"end={end} must be greater than warmup={warmup}, or None for no end")

    @classmethod
    def from_ranking(cls, ranking: Ranking, **options: Any) -> PDMP:
        """Prioritise the ranking's dominant modality."""
        if not isinstance(ranking, Ranking):
            raise TypeError(
                f"{cls.__name__}.from_ranking expects a pdmp.Ranking (e.g. pdmp.Ranking.load(path)), "
                f"got {type(ranking).__name__}"
            )
        return cls(ranking.order, ranking.dominant, **options)

    def progress(self, *, step: int, epoch: int) -> float:
        """0 during warm-up and after ``end``, rising to 1 over ``ramp``."""
        t = epoch if self.unit == "epoch" else step
        if t < self.warmup or (self.end is not None and t >= self.end):
            return 0.0
        if self.ramp == 0:
            return 1.0
        return min(1.0, (t - self.warmup + 1) / self.ramp)

    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        progress = self.progress(step=step, epoch=epoch)
        return Modulation(
            {
                name: 1.0 + ((self.gamma_p if name == self.dominant else self.gamma_r) - 1.0) * progress
                for name in self.modalities
            }
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "dominant": self.dominant,
            "gamma_p": self.gamma_p,
            "gamma_r": self.gamma_r,
            "warmup": self.warmup,
            "unit": self.unit,
            "ramp": self.ramp,
            "end": self.end,
            "allow_inverse": self.allow_inverse,
        }


class OGMGE(CoefficientPolicy):
    """On-the-fly Gradient Modulation with Generalization Enhancement (Peng et al., CVPR 2022).

    From the batch scores ``s_u = sum_i softmax(out_u)[i, y_i]`` (see
    :func:`pdmp.diagnostics.modality_scores`), each modality's ratio against the others is
    ``rho_u = s_u / mean(s_others)`` (for two modalities exactly the paper's ``s_v / s_a``). A modality
    with ``rho_u > 1`` gets ``k_u = 1 - tanh(alpha * rho_u)``; the others get 1. Active for
    ``start_epoch <= epoch <= end_epoch`` (inclusive, as in the reference code); outside, all 1 and
    no noise.

    Differences from the reference code, documented: with more than two modalities each is compared
    with the mean of the others; at an exact tie (``rho = 1``) both get 1, whereas the reference code
    (``if rho_v > 1: ... else: ...`` with ``rho_v = s_v / s_a``) takes its ``else`` branch and gives
    its *audio* modality ``a`` -- the first one, the denominator of ``rho_v`` -- ``1 - tanh(alpha)`` and
    the visual modality 1; ``conv_kernels_only=False`` (default) modulates all of a modality's
    parameters, ``True`` reproduces the reference, which touches only 4-D conv kernels.
    """

    kind = "OGMGE"
    needs_logits = True

    def __init__(
        self,
        modalities: Sequence[str],
        alpha: float = 0.8,
        *,
        start_epoch: int = 0,
        end_epoch: int = 50,
        noise: bool = True,
        conv_kernels_only: bool = False,
    ) -> None:
        super().__init__(modalities)
        self.alpha = check_positive_finite(alpha, name="alpha")
        self.start_epoch = check_non_negative_int(start_epoch, name="start_epoch")
        self.end_epoch = check_non_negative_int(end_epoch, name="end_epoch")
        if self.end_epoch < self.start_epoch:
            raise ValueError(f"end_epoch={end_epoch} must be >= start_epoch={start_epoch}")
        self.noise = check_bool(noise, name="noise")
        self.conv_kernels_only = check_bool(conv_kernels_only, name="conv_kernels_only")

    def active(self, epoch: int) -> bool:
        return self.start_epoch <= epoch <= self.end_epoch

    def modulates(self, shape: Sequence[int]) -> bool:
        """All parameters, or with ``conv_kernels_only`` only 4-D conv kernels (the reference code)."""
        return not self.conv_kernels_only or len(tuple(shape)) == 4

    @property
    def adds_noise(self) -> bool:
        return self.noise

    def ratios(self, scores: Mapping[str, float]) -> dict[str, float]:
        """``rho_u = s_u / mean(s_others)``; scores must be finite and >= 0."""
        check_same_modalities(scores.keys(), self.modalities, where="OGMGE scores")
        values = {}
        for name in self.modalities:
            value = float(scores[name])
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"OGM-GE score of {name!r} is {scores[name]!r}; scores are sums of probabilities >= 0")
            # A score of exactly 0 happens only when softmax underflows; the floor keeps ratios finite.
            values[name] = max(value, np.finfo(np.float64).tiny)
        ratios = {}
        for name in self.modalities:
            others = [values[other] for other in self.modalities if other != name]
            # Sum the others directly: ``total - s_u`` cancels to 0 when s_u dwarfs them.
            with np.errstate(over="ignore"):
                ratios[name] = float(np.float64(values[name]) / (np.float64(sum(others)) / len(others)))
        return ratios

    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        if not self.active(epoch):
            return Modulation(self._all(1.0))
        if scores is None:
            raise ValueError("OGMGE needs this batch's per-modality scores (pdmp.diagnostics.modality_scores)")
        ratios = self.ratios(scores)
        return Modulation(
            {
                name: _one_minus_tanh(self.alpha * ratios[name]) if self._above_mean_of_others(name, scores) else 1.0
                for name in self.modalities
            },
            noise=self.noise,
        )

    def _above_mean_of_others(self, name: str, scores: Mapping[str, float]) -> bool:
        """``rho_u > 1`` decided in exact rational arithmetic, so equal scores never count as above."""
        others = [Fraction(float(scores[other])) for other in self.modalities if other != name]
        return Fraction(float(scores[name])) * len(others) > sum(others)

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "alpha": self.alpha,
            "start_epoch": self.start_epoch,
            "end_epoch": self.end_epoch,
            "noise": self.noise,
            "conv_kernels_only": self.conv_kernels_only,
        }


def _one_minus_tanh(x: float) -> float:
    """``1 - tanh(x)`` for x > 0 without cancellation, floored at the smallest normal float so it stays > 0."""
    value = 2.0 / (1.0 + math.exp(2.0 * x)) if x < 350 else 0.0
    return max(value, float(np.finfo(np.float64).tiny))


#: Policy classes by their ``kind``: what :func:`policy_from_config` (and so ``.keras`` loading and
#: ``Modulator.load_state_dict``) can rebuild. Add your own with :func:`register_policy`.
POLICIES: dict[str, type[CoefficientPolicy]] = {cls.kind: cls for cls in (NoModulation, PDMP, OGMGE)}

PolicyType = TypeVar("PolicyType", bound=type[CoefficientPolicy])


def register_policy(cls: PolicyType) -> PolicyType:
    """Make a user-defined policy class loadable by :func:`policy_from_config` (usable as a decorator).

    The class needs a unique string ``kind`` and a ``get_config()`` whose dict (``"type"`` set to
    ``kind``) its ``from_config`` turns back into an equal policy; the default ``from_config`` passes
    every key but ``"type"`` to ``__init__``. Register it before a saved model or state is loaded::

        @pdmp.register_policy
        class Halve(pdmp.CoefficientPolicy):
            kind = "Halve"
            ...

    Registering the same class twice is harmless; another class under a taken ``kind`` is refused.
    """
    if not (isinstance(cls, type) and issubclass(cls, CoefficientPolicy)):
        raise TypeError(f"register_policy expects a CoefficientPolicy subclass, got {cls!r}")
    kind = cls.__dict__.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ValueError(
            f"policy class {cls.__name__} needs its own non-empty string attribute 'kind' "
            "(the 'type' written by get_config), e.g. kind = 'MyPolicy'"
        )
    registered = POLICIES.get(kind)
    if registered is not None and registered is not cls:
        raise ValueError(
            f"policy kind {kind!r} is already registered by {registered.__module__}.{registered.__qualname__}; "
            f"give {cls.__qualname__} another kind"
        )
    POLICIES[kind] = cls
    return cls


def policy_from_config(config: Mapping[str, Any]) -> CoefficientPolicy:
    """Rebuild a policy from :meth:`CoefficientPolicy.get_config`'s dict."""
    if not isinstance(config, Mapping) or "type" not in config:
        raise ValueError(f"a policy config must be a dict with a 'type' key, got {config!r}")
    kind = config["type"]
    if kind not in POLICIES:
        raise ValueError(
            f"unknown policy type {kind!r}; known: {', '.join(sorted(POLICIES))}. A policy class of your own "
            "must be registered with pdmp.register_policy before a model or state that uses it is loaded"
        )
    return POLICIES[kind].from_config(config)
