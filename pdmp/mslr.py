"""MSLR, modality-specific learning rates (Yao & Mihalcea, "Modality-specific Learning Rates for Effective
Multimodal Additive Late-fusion", Findings of ACL 2022).

A fused model trained at one global learning rate can leave a modality whose unimodal model wants
another rate nearly untrained. MSLR gives each modality's encoder its own learning rate: the rate at
which that modality's *unimodal* model trained best. It is PDMP's closest prior art: under SGD a
per-encoder learning-rate factor is PDMP's gradient factor, chosen per modality from unimodal tuning
instead of from the ranking.

Strategies (:class:`MSLR` ``strategy=``):

* ``"keep"`` (the paper's fixed strategy): modality m's learning rate is ``lr * lr_scales[m]`` for
  the whole run, ``lr_scales[m]`` the factor its unimodal model did best at (:meth:`MSLR.choose_scales`
  picks it from unimodal validation scores per scale).
* ``"dynamic"`` (an adaptive strategy, as re-implemented by others): every ``history`` epochs (and
  not after the first), each modality's factor is multiplied by ``current / mean(last history
  epochs)`` of that modality's score, the current epoch included in the mean: a modality still
  improving speeds up, one that has stalled or regressed slows down.

Source: the authors' code could not be found (searched the public code index and the web); the
arithmetic of ``"dynamic"`` follows a public re-implementation (a ``MSLRTrainer`` written "based on
the paper" by others; a cycle buffer of the last ``history_length`` (5) validation accuracies per
modality; after validation of epoch e with e % 5 == 0 and e > 0, ``lr_m *= acc_m(e) / mean(buffer_m)``,
the buffer including acc_m(e)), and ``"keep"`` follows the paper's abstract and that code's fixed
per-encoder learning rates. ``tests/test_core_mslr.py`` checks both against a transcription of that
arithmetic. The paper investigates three strategies (its abstract); its full text was not available
here, so only these two are implemented, and "dynamic" may differ from the paper's adaptive ones.

Departures, and why:

* The score is the training batches' *true-class softmax mass* of the modality's decomposed fusion
  logits (OGM-GE's batch score, what the adapters already hand every learning policy through
  ``observe``), averaged per step over the epoch, instead of each modality's validation accuracy: a
  policy sees no validation data, and this keeps it running through both adapters unchanged.
* Scores belong to the epoch of the coefficients last asked for (the adapters ask for a step's
  coefficients before handing over its scores); an update made after epoch e acts from epoch e + 1
  on, as in the re-implementation (its update follows that epoch's validation). Asking for
  coefficients changes no state, so Keras, which restores the state from a variable before each
  step, computes the same as torch.
* The paper starts late fusion from fine-tuned unimodal models; here the fused model trains from
  scratch like every other candidate, with the unimodal learning rates only.
* The coefficient multiplies the encoder's learning rate on top of the run's schedule (the adapters'
  ``lr`` mode; under plain SGD ``grad`` mode is the same). Fusion/head parameters keep the global rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pdmp._validation import (
    check_non_negative_int,
    check_positive_finite,
    check_positive_int,
    check_same_modalities,
)
from pdmp.policies import CoefficientPolicy, Modulation, register_policy

Strategy = Literal["keep", "dynamic"]
_STRATEGIES: tuple[str, ...] = ("keep", "dynamic")


@register_policy
class MSLR(CoefficientPolicy):
    """Modality-specific learning rates (see the module docstring).

    Args:
        modalities: modality names.
        lr_scales: per modality, the factor on the global learning rate at which its unimodal model
            trained best (:meth:`choose_scales`); 1 for every modality is joint training.
        strategy: ``"keep"`` (fixed factors) or ``"dynamic"`` (factors follow each modality's progress).
        history: ``"dynamic"``: epochs in the moving window, and the period of the updates.
    """

    kind = "MSLR"

    def __init__(
        self,
        modalities: Sequence[str],
        lr_scales: Mapping[str, float] | None = None,
        strategy: Strategy = "keep",
        history: int = 5,
    ) -> None:
        super().__init__(modalities)
        if strategy not in _STRATEGIES:
            raise ValueError(f"MSLR strategy={strategy!r}; use one of {list(_STRATEGIES)}")
        self.strategy: Strategy = strategy
        scales = dict.fromkeys(self.modalities, 1.0) if lr_scales is None else dict(lr_scales)
        check_same_modalities(scales.keys(), self.modalities, where="MSLR lr_scales")
        self.lr_scales = {m: check_positive_finite(scales[m], name=f"MSLR lr_scales[{m!r}]") for m in self.modalities}
        self.history = check_positive_int(history, name="MSLR history")
        self.reset()

    @property
    def observes_scores(self) -> bool:  # type: ignore[override]
        return self.strategy == "dynamic"

    @staticmethod
    def choose_scales(validation: Mapping[str, Mapping[float, float]]) -> dict[str, float]:
        """Per modality, the learning-rate factor whose unimodal model scored best on validation
        (``validation[m][scale]``, higher is better; ties go to the factor closest to 1)."""
        if not isinstance(validation, Mapping) or not validation:
            raise ValueError(f"MSLR.choose_scales needs {{modality: {{scale: validation score}}}}, got {validation!r}")
        chosen: dict[str, float] = {}
        for name, by_scale in validation.items():
            if not isinstance(by_scale, Mapping) or not by_scale:
                raise ValueError(f"MSLR.choose_scales: validation[{name!r}] must map scale -> score, got {by_scale!r}")
            chosen[name] = max(by_scale, key=lambda s: (float(by_scale[s]), -abs(math.log(float(s)))))
        return chosen

    # -- state ("dynamic") ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget what was observed: factors back to ``lr_scales``."""
        self._factors = dict(self.lr_scales)
        self._epoch = 0  # the epoch whose scores are being accumulated
        self._sums = dict.fromkeys(self.modalities, 0.0)
        self._count = 0
        # The last ``history`` closed epochs' mean scores, oldest first, ``_filled`` of them real: a
        # fixed shape, so that Keras can keep the state in a variable.
        self._window = {m: [0.0] * self.history for m in self.modalities}
        self._filled = 0
        # The epoch of the last coefficients asked for: the epoch the next scores belong to. Not state:
        # the adapters ask for a step's coefficients before they hand over its scores.
        self._asked_epoch = 0

    def update(self, scores: Mapping[str, float]) -> None:
        """Fold in one step's batch scores (``"dynamic"``; ignored by ``"keep"``): they belong to the
        epoch of the coefficients last asked for; the epochs before it are closed first."""
        if self.strategy != "dynamic":
            return
        check_same_modalities(scores.keys(), self.modalities, where="MSLR.update scores")
        values = {m: float(scores[m]) for m in self.modalities}
        bad = {m: v for m, v in values.items() if not math.isfinite(v) or v < 0.0}
        if bad:
            raise ValueError(f"MSLR.update: scores {bad} are not finite sums of probabilities >= 0")
        (self._factors, self._epoch, self._sums, self._count, self._window, self._filled) = self._closed(
            self._asked_epoch
        )
        for m in self.modalities:
            self._sums[m] += values[m]
        self._count += 1

    def _closed(self, epoch: int) -> tuple[dict[str, float], int, dict[str, float], int, dict[str, list[float]], int]:
        """The state once every epoch before ``epoch`` is closed (a copy: asking for coefficients
        changes nothing, so an adapter that restores the state before each step sees the same)."""
        factors, sums, count = dict(self._factors), dict(self._sums), self._count
        window, filled, current = {m: list(v) for m, v in self._window.items()}, self._filled, self._epoch
        while current < epoch:
            if count:
                for m in self.modalities:
                    window[m] = [*window[m][1:], sums[m] / count]
                filled = min(filled + 1, self.history)
                if current % self.history == 0 and current > 0:
                    for m in self.modalities:
                        recent = window[m][self.history - filled :]
                        mean = sum(recent) / len(recent)
                        if mean > 0.0:
                            factors[m] *= recent[-1] / mean
            sums, count = dict.fromkeys(self.modalities, 0.0), 0
            current += 1
        return factors, current, sums, count, window, filled

    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        if self.strategy != "dynamic":
            return Modulation(dict(self._factors))
        self._asked_epoch = max(check_non_negative_int(epoch, name="epoch"), self._epoch)
        return Modulation(self._closed(self._asked_epoch)[0])

    def state_dict(self) -> dict[str, Any]:
        if self.strategy != "dynamic":
            return {}
        return {
            "factors": dict(self._factors),
            "epoch": self._epoch,
            "sums": dict(self._sums),
            "count": self._count,
            "window": {m: list(values) for m, values in self._window.items()},
            "filled": self._filled,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; everything is checked before anything is assigned."""
        if self.strategy != "dynamic":
            super().load_state_dict(state)
            return
        keys = {"factors", "epoch", "sums", "count", "window", "filled"}
        if not isinstance(state, Mapping) or set(state) != keys:
            raise ValueError(f"MSLR state must be a dict with keys {sorted(keys)}, got {state!r}")
        try:
            factors = {m: check_positive_finite(state["factors"][m], name=f"factors[{m!r}]") for m in self.modalities}
            sums = {m: float(state["sums"][m]) for m in self.modalities}
            window = {m: [float(v) for v in state["window"][m]] for m in self.modalities}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"MSLR state {state!r} does not hold numbers for every modality {list(self.modalities)}"
            ) from error
        if any(len(values) != self.history for values in window.values()):
            raise ValueError(f"MSLR state['window'] must hold {self.history} values per modality, got {window!r}")
        epoch = check_non_negative_int(state["epoch"], name="MSLR state['epoch']")
        count = check_non_negative_int(state["count"], name="MSLR state['count']")
        filled = check_non_negative_int(state["filled"], name="MSLR state['filled']")
        if filled > self.history:
            raise ValueError(f"MSLR state['filled'] is {filled}, above history {self.history}")
        self._factors, self._sums, self._window = factors, sums, window
        self._epoch, self._count, self._filled = epoch, count, filled

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "lr_scales": dict(self.lr_scales),
            "strategy": self.strategy,
            "history": self.history,
        }
