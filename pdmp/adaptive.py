"""Adaptive gammas: prioritise the dominant modality only as much as the fused model needs. Experimental.

:class:`AdaptivePDMP` is a controller on *reliance shares*. The ranking stage says how good each
modality is on its own (validation accuracy ``a_m`` of its unimodal model); that sets a target share
``pi_m = a_m / sum_k a_k``. During training the fused model's actual share ``d_m`` is measured from
the batches it trains on: the softmax mass its decomposed logits put on the true class (OGM-GE's
batch score ``s_m``, see :func:`pdmp.diagnostics.modality_scores`), smoothed by an exponential moving
average of the *sums* over about ``horizon`` steps, ``d_m = EMA(s_m) / sum_k EMA(s_k)``.
With ``u_m = log(pi_m / d_m)`` and a dead band ``tolerance``:

* dominant modality p (the ranking's first): ``gamma_p = clip(exp(gain * (u_p - log tolerance)), 1, gamma_max)``
  — boosted only while the fused model relies on it *less* than its solo accuracy justifies;
* every other modality r: ``gamma_r = clip(exp(gain * (u_r + log tolerance)), gamma_min, 1)``
  — slowed only while the fused model relies on it *more* than its solo accuracy justifies (a weak
  branch that memorises the training set takes a share far above its target).

Properties (tested in ``tests/test_core_adaptive.py``): equal modalities, or a fused model that already
relies on each modality as its accuracy justifies, get 1 everywhere (plain joint training); the
dominant coefficient never falls below 1 and no coefficient leaves ``[gamma_min, gamma_max]``; the
state is a moving average of sums, so coefficients move smoothly and never divide 0 by 0; the state
is a deterministic function of the (all-reduced) batch sums, so every data-parallel replica computes
the same coefficients; it resumes exactly from :meth:`AdaptivePDMP.state_dict`.

Auxiliary losses (``auxiliary`` > 0): scaling a gradient cannot help once the fused loss is near 0 on
the training set (a memorising weak branch leaves the dominant encoder little gradient to scale), so
the controller can also prioritise through the loss: a modality relied on less than its target share
gets its own unimodal loss (the cross-entropy of its decomposed fusion logits) added to the training
loss with weight ``lambda_m = auxiliary * (1 - exp(-gain * max(0, u_m - log tolerance)))`` (0 inside
the dead band, smooth, below ``auxiliary``); ``auxiliary_scope`` says which modalities may get one:
``"dominant"`` (the ranking's first only) or ``"all"``. The adapters fix the weights with the step's
coefficients (:meth:`AdaptivePDMP.unimodal_loss_weights`).

Timing contract with the adapters: the coefficients of step ``t`` come from the batches *before* ``t``
(:meth:`AdaptivePDMP.modulation` reads the state; :meth:`AdaptivePDMP.update` folds in a step's scores
after its coefficients were fixed), so a framework may compute the scores inside its compiled step and
hand them over afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from pdmp._validation import (
    check_mapping,
    check_non_negative_finite,
    check_non_negative_int,
    check_number,
    check_positive_finite,
    check_same_modalities,
    check_state_keys,
)
from pdmp.policies import CoefficientPolicy, Modulation, register_policy
from pdmp.ranking import Ranking

_TINY = float(np.finfo(np.float64).tiny)
AuxiliaryScope = Literal["dominant", "all"]
_SCOPES: tuple[str, ...] = ("dominant", "all")


def _check_clock(step: Any, epoch: Any) -> None:
    """The public per-step methods take the clock directly; ``epoch="1"`` or ``-1`` must not pass silently."""
    check_non_negative_int(step, name="step")
    check_non_negative_int(epoch, name="epoch")


@register_policy
class AdaptivePDMP(CoefficientPolicy):
    """A share controller for ``gamma_p`` and ``gamma_r`` (see the module docstring). Experimental.

    Args:
        modalities: modality names.
        accuracies: each modality's unimodal validation accuracy from the ranking stage (in (0, 1]);
            the highest one is the dominant modality. Use :meth:`from_ranking`.
        gain: how strongly a share gap turns into a coefficient (exponent on the share ratio).
        tolerance: dead band: share ratios within ``[1/tolerance, tolerance]`` of the target change nothing.
        gamma_max: cap on the dominant modality's coefficient.
        gamma_min: floor on the other modalities' coefficients.
        horizon: the moving average's time constant, in steps (decay ``1 - 1/horizon``).
        warmup: epochs at the start with every coefficient 1 and no auxiliary loss (the state is still updated).
        auxiliary: the largest weight of a modality's unimodal loss in the training loss (0: none; the
            training loop then needs no decomposed-logit losses).
        auxiliary_scope: which modalities may get an auxiliary loss: ``"dominant"`` or ``"all"``.
    """

    kind = "AdaptivePDMP"
    observes_scores: ClassVar[bool] = True

    def __init__(
        self,
        modalities: Sequence[str],
        accuracies: Mapping[str, float],
        *,
        gain: float = 4.0,
        tolerance: float = 1.25,
        gamma_max: float = 10.0,
        gamma_min: float = 0.01,
        horizon: float = 20.0,
        warmup: int = 0,
        auxiliary: float = 0.0,
        auxiliary_scope: AuxiliaryScope = "dominant",
    ) -> None:
        super().__init__(modalities)
        if not isinstance(accuracies, Mapping):
            raise TypeError(f"accuracies must be a dict modality -> unimodal validation accuracy, got {accuracies!r}")
        check_same_modalities(accuracies.keys(), self.modalities, where="AdaptivePDMP accuracies")
        self.accuracies = {}
        for name in self.modalities:
            value = check_positive_finite(accuracies[name], name=f"accuracies[{name!r}]")
            if value > 1:
                raise ValueError(
                    f"accuracies[{name!r}]={value} is not an accuracy in (0, 1]; rank with an accuracy-like metric"
                )
            self.accuracies[name] = value
        # The most accurate modality; on a tie the first listed (max keeps the first maximum).
        self.dominant = max(self.modalities, key=self.accuracies.__getitem__)
        self.gain = check_positive_finite(gain, name="gain")
        self.tolerance = check_positive_finite(tolerance, name="tolerance")
        if self.tolerance < 1:
            raise ValueError(f"tolerance must be >= 1 (a dead band around the target share), got {tolerance!r}")
        self.gamma_max = check_positive_finite(gamma_max, name="gamma_max")
        self.gamma_min = check_positive_finite(gamma_min, name="gamma_min")
        if self.gamma_max < 1 or self.gamma_min > 1:
            raise ValueError(f"need gamma_min <= 1 <= gamma_max, got gamma_min={gamma_min!r}, gamma_max={gamma_max!r}")
        self.horizon = check_positive_finite(horizon, name="horizon")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 step, got {horizon!r}")
        self.warmup = check_non_negative_int(warmup, name="warmup")
        self.auxiliary = check_non_negative_finite(auxiliary, name="auxiliary")
        if not isinstance(auxiliary_scope, str) or auxiliary_scope not in _SCOPES:
            raise ValueError(f"auxiliary_scope must be one of {list(_SCOPES)}, got {auxiliary_scope!r}")
        self.auxiliary_scope: AuxiliaryScope = auxiliary_scope
        self.uses_unimodal_losses = self.auxiliary > 0
        total = sum(self.accuracies.values())
        self.target = {name: value / total for name, value in self.accuracies.items()}
        self.reset()

    @classmethod
    def from_ranking(cls, ranking: Ranking, **options: Any) -> AdaptivePDMP:
        """Targets from the ranking's scores (which must be accuracies in (0, 1])."""
        return cls(ranking.order, dict(ranking.scores), **options)

    # -- state -------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every observed batch."""
        self._ema = dict.fromkeys(self.modalities, 0.0)
        self.updates = 0

    def update(self, scores: Mapping[str, float]) -> None:
        """Fold in one step's batch scores ``s_m`` (sums over the batch; all-reduced under data parallelism)."""
        check_mapping(scores, name="AdaptivePDMP.update scores", example="{'audio': 41.2, 'image': 18.9}")
        check_same_modalities(scores.keys(), self.modalities, where="AdaptivePDMP.update scores")
        values = {}
        for name in self.modalities:
            # Strict: a string or a bool is a wiring bug, not a score (float("1") would hide it).
            value = check_number(scores[name], name=f"AdaptivePDMP.update: score of {name!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"AdaptivePDMP.update: score of {name!r} is {scores[name]!r}; scores are sums of "
                    "probabilities >= 0 (check for a diverged model)"
                )
            values[name] = value
        decay = 1.0 - 1.0 / self.horizon
        for name in self.modalities:
            self._ema[name] = decay * self._ema[name] + (1.0 - decay) * values[name]
        self.updates += 1

    def shares(self) -> dict[str, float] | None:
        """The fused model's current reliance shares ``d_m``, or None before any informative batch."""
        total = sum(self._ema.values())
        if self.updates == 0 or total <= _TINY:
            return None
        return {name: value / total for name, value in self._ema.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"ema": dict(self._ema), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; everything is checked before anything is assigned."""
        check_state_keys(state, required=("ema", "updates"), where="AdaptivePDMP state")
        ema = state["ema"]
        if not isinstance(ema, Mapping):
            raise ValueError(f"AdaptivePDMP state['ema'] must be a dict modality -> float, got {ema!r}")
        check_same_modalities(ema.keys(), self.modalities, where="AdaptivePDMP state['ema']")
        # Strict numbers: a saved state holds floats; "0.5" or true means the file was edited or is foreign.
        values = {
            name: check_number(ema[name], name=f"AdaptivePDMP state['ema'][{name!r}]") for name in self.modalities
        }
        if not all(math.isfinite(v) and v >= 0 for v in values.values()):
            raise ValueError(
                f"AdaptivePDMP state['ema'] holds invalid values {ema!r}; they are sums of probabilities >= 0"
            )
        updates = check_non_negative_int(state["updates"], name="AdaptivePDMP state['updates']")
        if updates == 0 and any(values.values()):
            raise ValueError(
                f"AdaptivePDMP state has updates=0 but a non-zero moving average {ema!r}; the two are saved "
                "together by state_dict(), so this state was altered"
            )
        self._ema, self.updates = values, updates

    # -- coefficients ------------------------------------------------------------------------------

    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        """Coefficients from the batches observed so far (``scores`` is ignored: use :meth:`update`)."""
        _check_clock(step, epoch)
        current = self.shares()
        if epoch < self.warmup or current is None:
            return Modulation(self._all(1.0))
        band = math.log(self.tolerance)
        coefficients = {}
        for name in self.modalities:
            gap = math.log(self.target[name] / max(current[name], _TINY))
            if name == self.dominant:
                value = math.exp(min(self.gain * max(0.0, gap - band), math.log(self.gamma_max)))
                coefficients[name] = min(max(value, 1.0), self.gamma_max)
            else:
                value = math.exp(max(self.gain * min(0.0, gap + band), math.log(self.gamma_min)))
                coefficients[name] = min(max(value, self.gamma_min), 1.0)
        return Modulation(coefficients)

    def unimodal_loss_weights(self, *, step: int = 0, epoch: int = 0) -> dict[str, float]:
        """Each modality's auxiliary-loss weight from the batches observed so far (see the module docstring)."""
        _check_clock(step, epoch)
        current = self.shares()
        weights = self._all(0.0)
        if not self.auxiliary or epoch < self.warmup or current is None:
            return weights
        band = math.log(self.tolerance)
        eligible = self.modalities if self.auxiliary_scope == "all" else (self.dominant,)
        for name in eligible:
            deficit = math.log(self.target[name] / max(current[name], _TINY)) - band
            if deficit > 0:
                weights[name] = self.auxiliary * -math.expm1(-self.gain * deficit)
        return weights

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "accuracies": dict(self.accuracies),
            "gain": self.gain,
            "tolerance": self.tolerance,
            "gamma_max": self.gamma_max,
            "gamma_min": self.gamma_min,
            "horizon": self.horizon,
            "warmup": self.warmup,
            "auxiliary": self.auxiliary,
            "auxiliary_scope": self.auxiliary_scope,
        }
