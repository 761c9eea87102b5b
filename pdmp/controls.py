"""Control policies: what PDMP must beat for its *prioritisation* to be what helps.

* :class:`UniformScaling` multiplies every encoder by the same factor. Under SGD that is a larger
  encoder learning rate; if it matches PDMP, the gain came from the larger step, not from favouring
  the dominant modality.
* :class:`InversePDMP` gives PDMP's gammas to the *weakest* modality. If it matches PDMP, the
  direction of the prioritisation does not matter on that data.

Both share PDMP's schedule (warm-up, ramp, end) and need no adapter code: adapters only see
coefficients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pdmp._validation import check_known_modality, check_positive_finite
from pdmp.policies import PDMP, CoefficientPolicy, Modulation, Unit, register_policy
from pdmp.ranking import Ranking


@register_policy
class UniformScaling(CoefficientPolicy):
    """Every modality's encoder gets the same coefficient ``gamma`` (after PDMP's warm-up/ramp schedule).

    With ``gamma`` equal to PDMP's ``gamma_p`` this is the control that separates "prioritising the
    dominant modality" from "training every encoder with a larger learning rate".
    """

    kind = "UniformScaling"

    def __init__(
        self,
        modalities: Sequence[str],
        gamma: float = 10.0,
        *,
        warmup: int = 0,
        unit: Unit = "epoch",
        ramp: int = 0,
        end: int | None = None,
    ) -> None:
        super().__init__(modalities)
        # Checked here so that an error names this class's own argument (PDMP's would say gamma_p).
        gamma = check_positive_finite(gamma, name="UniformScaling gamma")
        # PDMP with gamma_p == gamma_r: the same checks and the same schedule, one implementation.
        self._schedule = PDMP(
            self.modalities, self.modalities[0], gamma, gamma, warmup=warmup, unit=unit, ramp=ramp, end=end
        )
        self.gamma = self._schedule.gamma_p

    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        return Modulation(self._all(1.0 + (self.gamma - 1.0) * self._schedule.progress(step=step, epoch=epoch)))

    def get_config(self) -> dict[str, Any]:
        schedule = self._schedule
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "gamma": self.gamma,
            "warmup": schedule.warmup,
            "unit": schedule.unit,
            "ramp": schedule.ramp,
            "end": schedule.end,
        }


@register_policy
class InversePDMP(CoefficientPolicy):
    """PDMP pointed the other way: ``gamma_p`` for the *weakest* modality, ``gamma_r`` for every other one.

    Build it with :meth:`from_ranking` so the prioritised modality is the ranking's last one.
    """

    kind = "InversePDMP"

    def __init__(
        self,
        modalities: Sequence[str],
        weakest: str,
        gamma_p: float = 10.0,
        gamma_r: float = 0.5,
        *,
        warmup: int = 0,
        unit: Unit = "epoch",
        ramp: int = 0,
        end: int | None = None,
    ) -> None:
        super().__init__(modalities)
        # Checked here so that errors name InversePDMP's arguments; PDMP's would name "dominant" and
        # advise allow_inverse=, which InversePDMP does not take.
        if not isinstance(weakest, str):
            raise TypeError(
                f"InversePDMP weakest must be a modality name (one of {', '.join(self.modalities)}), got {weakest!r}"
            )
        check_known_modality(weakest, self.modalities, where="InversePDMP weakest")
        p = check_positive_finite(gamma_p, name="InversePDMP gamma_p")
        r = check_positive_finite(gamma_r, name="InversePDMP gamma_r")
        if r > p:
            raise ValueError(
                f"InversePDMP: gamma_r={gamma_r} > gamma_p={gamma_p} would slow the weakest modality relative to "
                "the others, which is PDMP's own direction, not the inverse control; swap them (gamma_p is what "
                "the weakest modality gets), or use pdmp.PDMP for that"
            )
        self._pdmp = PDMP(self.modalities, weakest, p, r, warmup=warmup, unit=unit, ramp=ramp, end=end)
        self.weakest = self._pdmp.dominant

    @classmethod
    def from_ranking(cls, ranking: Ranking, **options: Any) -> InversePDMP:
        """Prioritise the ranking's weakest modality."""
        return cls(ranking.order, ranking.weakest, **options)

    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        return self._pdmp.modulation(step=step, epoch=epoch)

    def get_config(self) -> dict[str, Any]:
        pdmp = self._pdmp
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "weakest": self.weakest,
            "gamma_p": pdmp.gamma_p,
            "gamma_r": pdmp.gamma_r,
            "warmup": pdmp.warmup,
            "unit": pdmp.unit,
            "ramp": pdmp.ramp,
            "end": pdmp.end,
        }
