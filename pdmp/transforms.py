"""Gradient transforms: what balancing methods do to an encoder's gradient beyond scaling it.

PDMP and OGM-GE multiply each modality's encoder gradient by a coefficient. The methods PDMP is
compared against do more: MMPareto combines the fused loss's gradient with the modality's unimodal
loss's gradient, InfoReg adds a pull towards the parameters' values at the epoch start. One form covers
them all. For modality ``m``, with ``G_t`` the gradient of the fused (multimodal) loss for one of its
encoder's parameter tensors ``t``, ``U_t`` the gradient of m's unimodal loss (its own head) and
``theta*_t`` the tensor's value at the last anchor (the epoch start):

    c_t = fused_m * G_t + unimodal_m * U_t
    c_t <- c_t * max(1, ||G_t + U_t|| / ||c_t||)       only if floor_to_sum_m (per tensor; c_t = 0 stays 0)
    g_t = magnitude_m * c_t + anchor_m * (theta_t - theta*_t)

A :class:`GradientPolicy` returns these per-modality numbers (:class:`GradientTransform`) once per
optimizer step, from what the adapters hand it:

* ``logit_stats``: per-modality sums over the batch of :data:`LOGIT_STATISTICS`, computed from the
  per-modality logits the training loop passes to ``observe`` (decomposed fusion logits, unimodal
  heads' logits, or the fused model's output with the other modalities masked, whatever the method
  asks for); summed over data-parallel replicas;
* ``gradient_stats``: per-modality sums of :data:`GRADIENT_STATISTICS` over the encoder's tensors
  (squared norms and a dot product, and a Fisher-trace estimate), from this step's gradients.

Adapters apply every policy through this one form (no method-specific code): the NumPy references
:func:`logit_statistics`, :func:`gradient_statistics` and :func:`apply_transform` are what the torch
and Keras adapters are tested against.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pdmp._validation import check_labels, check_same_modalities
from pdmp.diagnostics import softmax, true_class_mass
from pdmp.policies import CoefficientPolicy, Modulation

#: Per-modality batch sums computed from per-modality logits (each an array ``(samples, classes)``):
#: ``count`` samples; ``true_prob`` softmax mass on the true class (OGM-GE's and InfoReg's score);
#: ``cross_entropy`` ``-log softmax[y]`` (AGM's); ``entropy`` of the softmax and ``logit_abs`` the sum of
#: the logits' absolute values (ARL's).
LOGIT_STATISTICS: tuple[str, ...] = ("count", "true_prob", "cross_entropy", "entropy", "logit_abs")

#: Per-modality sums over the encoder's gradient tensors: ``fused_sq`` = sum ||G_t||^2, ``unimodal_sq``
#: = sum ||U_t||^2, ``dot`` = sum <G_t, U_t> (0 without unimodal gradients), ``fisher`` = sum over
#: weight tensors (2 or more dimensions: conv and dense kernels, not biases or norm scales) of mean(G_t^2).
GRADIENT_STATISTICS: tuple[str, ...] = ("fused_sq", "unimodal_sq", "dot", "fisher")

#: The columns of :meth:`GradientTransform.as_array`, in order.
TRANSFORM_FIELDS: tuple[str, ...] = ("fused", "unimodal", "anchor", "magnitude", "floor_to_sum")
#: What each field is for a modality a transform leaves out: the gradient unchanged.
_TRANSFORM_DEFAULTS = {"fused": 1.0, "unimodal": 0.0, "anchor": 0.0, "magnitude": 1.0, "floor_to_sum": 0.0}

Stats = dict[str, dict[str, float]]


def logit_statistics(logits: Mapping[str, ArrayLike], labels: ArrayLike) -> Stats:
    """:data:`LOGIT_STATISTICS` per modality, summed over the batch (float64, numerically stable)."""
    masses = true_class_mass(logits, labels)  # validates names, shapes, labels and finiteness
    y = check_labels(labels)
    result: Stats = {}
    for name, mass in masses.items():
        array = np.asarray(logits[name], dtype=np.float64)
        shifted = array - array.max(axis=-1, keepdims=True)
        log_prob = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        probs = softmax(array)
        result[name] = {
            "count": float(array.shape[0]),
            "true_prob": float(mass.sum()),
            "cross_entropy": float(-log_prob[np.arange(array.shape[0]), y].sum()),
            "entropy": float(-(probs * log_prob).sum()),
            "logit_abs": float(np.abs(array).sum()),
        }
    return result


def gradient_statistics(
    fused: Sequence[ArrayLike], unimodal: Sequence[ArrayLike | None] | None = None
) -> dict[str, float]:
    """:data:`GRADIENT_STATISTICS` of one modality's encoder from its gradient tensors (NumPy reference)."""
    fused_arrays = [np.asarray(g, dtype=np.float64) for g in fused]
    result = {
        "fused_sq": float(sum((g**2).sum() for g in fused_arrays)),
        "unimodal_sq": 0.0,
        "dot": 0.0,
        "fisher": float(sum((g**2).mean() for g in fused_arrays if g.ndim >= 2 and g.size)),
    }
    if unimodal is not None:
        if len(unimodal) != len(fused_arrays):
            raise ValueError(f"{len(unimodal)} unimodal gradient tensors for {len(fused_arrays)} fused ones")
        for g, u in zip(fused_arrays, unimodal, strict=True):
            if u is None:
                continue
            u_array = np.asarray(u, dtype=np.float64)
            result["unimodal_sq"] += float((u_array**2).sum())
            result["dot"] += float((g * u_array).sum())
    return result


@dataclass(frozen=True)
class GradientTransform:
    """One step's transform, per modality (see the module docstring for the formula).

    Defaults leave a gradient unchanged: ``fused`` 1, ``unimodal`` 0, ``anchor`` 0, ``magnitude`` 1,
    ``floor_to_sum`` False.
    """

    fused: dict[str, float]
    unimodal: dict[str, float] = field(default_factory=dict)
    anchor: dict[str, float] = field(default_factory=dict)
    magnitude: dict[str, float] = field(default_factory=dict)
    floor_to_sum: dict[str, bool] = field(default_factory=dict)

    def get(self, field_name: str, modality: str) -> float:
        return float(getattr(self, field_name).get(modality, _TRANSFORM_DEFAULTS[field_name]))

    def as_array(self, modalities: Sequence[str]) -> NDArray[np.float64]:
        """Shape ``(len(modalities), 5)``, columns :data:`TRANSFORM_FIELDS` (``floor_to_sum`` as 0/1)."""
        return np.asarray([[self.get(f, m) for f in TRANSFORM_FIELDS] for m in modalities], dtype=np.float64)

    @classmethod
    def from_array(cls, array: ArrayLike, modalities: Sequence[str]) -> GradientTransform:
        values = np.asarray(array, dtype=np.float64).reshape(len(modalities), len(TRANSFORM_FIELDS))
        columns = {
            f: {m: float(values[i, j]) for i, m in enumerate(modalities)} for j, f in enumerate(TRANSFORM_FIELDS)
        }
        return cls(
            fused=columns["fused"],
            unimodal=columns["unimodal"],
            anchor=columns["anchor"],
            magnitude=columns["magnitude"],
            floor_to_sum={m: bool(v) for m, v in columns["floor_to_sum"].items()},
        )

    def coefficient(self, modality: str) -> float:
        """The overall factor on the fused-loss gradient (``magnitude * fused``): what logs report."""
        return self.get("magnitude", modality) * self.get("fused", modality)


def apply_transform(
    transform: GradientTransform,
    modality: str,
    fused: Sequence[ArrayLike],
    unimodal: Sequence[ArrayLike | None] | None = None,
    params: Sequence[ArrayLike] | None = None,
    anchors: Sequence[ArrayLike] | None = None,
) -> list[NDArray[np.float64]]:
    """The transformed gradient of each of ``modality``'s tensors (the NumPy reference of the adapters)."""
    a = transform.get("fused", modality)
    b = transform.get("unimodal", modality)
    c = transform.get("anchor", modality)
    magnitude = transform.get("magnitude", modality)
    floor = bool(transform.get("floor_to_sum", modality))
    if b and unimodal is None:
        raise ValueError(f"the transform weights {modality!r}'s unimodal gradient by {b} but none was given")
    if c and (params is None or anchors is None):
        raise ValueError(f"the transform pulls {modality!r} towards its anchor ({c}) but params/anchors are missing")
    result = []
    for index, g in enumerate(fused):
        g_array = np.asarray(g, dtype=np.float64)
        u_array = None if unimodal is None or unimodal[index] is None else np.asarray(unimodal[index], np.float64)
        combined = a * g_array if u_array is None else a * g_array + b * u_array
        if floor:
            plain = g_array if u_array is None else g_array + u_array
            norm = float(np.sqrt((combined**2).sum()))
            if norm > 0:
                combined = combined * max(1.0, float(np.sqrt((plain**2).sum())) / norm)
        out = magnitude * combined
        if c:
            assert params is not None and anchors is not None
            out = out + c * (np.asarray(params[index], np.float64) - np.asarray(anchors[index], np.float64))
        result.append(out)
    return result


def check_transform(policy: CoefficientPolicy, transform: Any, *, step: int, epoch: int) -> GradientTransform:
    """Return ``transform`` if an adapter may apply it, else raise naming the policy, field, modality and value.

    Every number must be finite and >= 0 (NaN or inf would poison the weights, a negative factor turns
    descent into ascent or pushes away from the anchor) and every key one of the policy's modalities
    (a misspelt one would silently leave that modality unchanged). :meth:`GradientPolicy.transform`
    calls it on each step's result, so every backend refuses a bad transform before applying it.
    """
    name = type(policy).__name__
    if not isinstance(transform, GradientTransform):
        raise TypeError(
            f"{name}.compute_transform(step={step}, epoch={epoch}) returned {type(transform).__name__}; "
            "it must return a pdmp.transforms.GradientTransform"
        )
    for field_name in TRANSFORM_FIELDS:
        values = getattr(transform, field_name)
        if not isinstance(values, Mapping):
            raise TypeError(
                f"{name}'s transform field {field_name!r} is {type(values).__name__}; "
                "it must be a dict modality -> value"
            )
        unknown = [key for key in values if key not in policy.modalities]
        if unknown:
            raise ValueError(
                f"{name}'s transform at step {step}, epoch {epoch} sets {field_name!r} for unknown modalities "
                f"{unknown}; the policy's modalities are {list(policy.modalities)}"
            )
        for modality, value in values.items():
            ok = isinstance(value, (int, float, np.number))
            number = float(value) if ok else math.nan
            if not ok or not math.isfinite(number) or number < 0:
                raise ValueError(
                    f"{name}'s transform at step {step}, epoch {epoch} sets {field_name!r} of modality {modality!r} "
                    f"to {value!r}; every transform value must be a finite number >= 0 (NaN or inf would corrupt "
                    "the weights, a negative one reverses the update). Fix the policy's compute_transform (clip "
                    "the value, or return the identity where its inputs are undefined)"
                )
    return transform


def stats_to_array(
    stats: Mapping[str, Mapping[str, float]], modalities: Sequence[str], names: Sequence[str]
) -> NDArray[np.float64]:
    """``(len(modalities), len(names))`` matrix of a stats dict (what adapters all-reduce and pass around)."""
    return np.asarray([[float(stats[m][n]) for n in names] for m in modalities], dtype=np.float64)


def stats_from_array(array: ArrayLike, modalities: Sequence[str], names: Sequence[str]) -> Stats:
    values = np.asarray(array, dtype=np.float64).reshape(len(modalities), len(names))
    return {m: {n: float(values[i, j]) for j, n in enumerate(names)} for i, m in enumerate(modalities)}


class GradientPolicy(CoefficientPolicy):
    """A policy that transforms encoder gradients (see the module docstring), applied in ``grad`` mode.

    Subclasses declare what they need from the training loop (each costs something, see the README's
    baselines section) and implement :meth:`transform`, which the adapters call exactly once per
    optimizer step, just before it, and which may update the policy's state (running averages); the
    state must round-trip through :meth:`~pdmp.CoefficientPolicy.state_dict` so that training resumes exactly.
    """

    #: Per-modality logits of this batch, through the adapter's ``observe(logits, labels)``.
    uses_logits: ClassVar[bool] = False
    #: Each modality's unimodal loss, backpropagated separately from the fused loss.
    uses_unimodal_gradients: ClassVar[bool] = False
    #: A copy of the encoders' parameters taken at the start of every epoch.
    uses_anchor: ClassVar[bool] = False
    #: This step's :data:`GRADIENT_STATISTICS` (computed from the gradients before the transform).
    uses_gradient_stats: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The generic capability flags follow the specific ones, so that a training loop (or an adapter)
        # that branches on needs_logits / uses_unimodal_losses wires what the policy needs. A class may
        # still set them itself (ARL and InfoReg add unimodal losses without needing their gradients).
        if "needs_logits" not in cls.__dict__:
            cls.needs_logits = cls.uses_logits
        if "uses_unimodal_losses" not in cls.__dict__ and cls.uses_unimodal_gradients:
            cls.uses_unimodal_losses = True

    def __init__(self, modalities: Sequence[str]) -> None:
        super().__init__(modalities)
        self._last: GradientTransform | None = None

    @abstractmethod
    def compute_transform(
        self, *, step: int, epoch: int, logit_stats: Stats | None, gradient_stats: Stats | None
    ) -> GradientTransform:
        """This step's transform; may update the policy's state (called once per optimizer step)."""

    def transform(
        self,
        *,
        step: int,
        epoch: int,
        logit_stats: Mapping[str, Mapping[str, float]] | None = None,
        gradient_stats: Mapping[str, Mapping[str, float]] | None = None,
    ) -> GradientTransform:
        """Check the inputs the policy declared, then :meth:`compute_transform`."""
        name = type(self).__name__
        checked_logits = self._check_stats(logit_stats, LOGIT_STATISTICS, self.uses_logits, f"{name} logit_stats")
        checked_grads = self._check_stats(
            gradient_stats, GRADIENT_STATISTICS, self.uses_gradient_stats, f"{name} gradient_stats"
        )
        result = self.compute_transform(
            step=step, epoch=epoch, logit_stats=checked_logits, gradient_stats=checked_grads
        )
        check_transform(self, result, step=step, epoch=epoch)
        self._last = result
        return result

    def _check_stats(
        self, stats: Mapping[str, Mapping[str, float]] | None, names: Sequence[str], needed: bool, where: str
    ) -> Stats | None:
        if stats is None:
            if needed:
                raise ValueError(f"{where}: this policy needs them every step, got None")
            return None
        check_same_modalities(stats.keys(), self.modalities, where=where)
        checked: Stats = {}
        for modality in self.modalities:
            row = stats[modality]
            missing = [n for n in names if n not in row]
            if missing:
                raise ValueError(f"{where}[{modality!r}] lacks {missing}; expected {list(names)}")
            values = {n: float(row[n]) for n in names}
            bad = {n: v for n, v in values.items() if not math.isfinite(v)}
            if bad:
                raise ValueError(
                    f"{where}[{modality!r}] has non-finite values {bad} (a diverged model, or an overflow); "
                    "lower the learning rate or check the inputs"
                )
            checked[modality] = values
        return checked

    def coefficients(
        self,
        *,
        step: int = 0,
        epoch: int = 0,
        logits: Mapping[str, ArrayLike] | None = None,
        labels: ArrayLike | None = None,
    ) -> dict[str, float]:
        """The overall factor on each fused-loss gradient at the last step (1 before the first); what the
        policy needs (logits included) reaches it through :meth:`transform`, so ``logits`` are ignored."""
        return self.modulation(step=step, epoch=epoch).coefficients

    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        """The overall factor on each fused-loss gradient at the last step (1 before the first): for logs."""
        if self._last is None:
            return Modulation(self._all(1.0))
        return Modulation({m: self._last.coefficient(m) for m in self.modalities})

    def unimodal_loss_weight(self, epoch: int) -> float:
        """The one weight every modality's unimodal loss gets at ``epoch`` (what
        :meth:`unimodal_loss_weights` gives per modality, the one name loops should read): 1 when the policy
        :attr:`~pdmp.CoefficientPolicy.uses_unimodal_losses` (unless the method sets it, as ARL does), else 0."""
        return 1.0 if self.uses_unimodal_losses else 0.0

    def unimodal_loss_weights(self, *, step: int = 0, epoch: int = 0) -> dict[str, float]:
        """:meth:`unimodal_loss_weight` for every modality (what the adapters apply to the losses they get)."""
        return self._all(float(self.unimodal_loss_weight(epoch)))

    @property
    def last_transform(self) -> GradientTransform | None:
        """The transform of the last step (None before the first)."""
        return self._last
