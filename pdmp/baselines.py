"""The balancing methods PDMP is compared against, as :class:`~pdmp.transforms.GradientPolicy` classes.

Each follows its authors' official code; every place where it departs is listed in the class docstring
and in the README's baselines section. What each needs from the training loop (per-modality logits,
unimodal losses, parameter snapshots) is declared by its ``uses_*`` flags and supplied by the adapters.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pdmp._validation import (
    check_known_modality,
    check_modality_names,
    check_non_negative_finite,
    check_non_negative_int,
    check_positive_finite,
    check_positive_int,
    check_same_modalities,
)
from pdmp.policies import register_policy
from pdmp.transforms import GradientPolicy, GradientTransform, Stats


def _per_modality(value: float | Mapping[str, float], modalities: Sequence[str], *, name: str) -> dict[str, float]:
    """One non-negative number for every modality, or a dict with exactly the modalities as keys."""
    if isinstance(value, Mapping):
        check_same_modalities(value.keys(), modalities, where=name)
        return {m: check_non_negative_finite(value[m], name=f"{name}[{m!r}]") for m in modalities}
    number = check_non_negative_finite(value, name=name)
    return dict.fromkeys(modalities, number)


def min_norm_weights(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """The min-norm point of the segment between two vectors (MGDA for two tasks), as the reference solver
    computes it: weights ``(k1, 1 - k1)`` from ``v11 = <a, a>``, ``v12 = <a, b>``, ``v22 = <b, b>``; the
    clamps 0.999 / 0.001 are the reference's for the degenerate cases (one vector's projection covers
    the other)."""
    if v12 >= v11:
        return 0.999, 0.001
    if v12 >= v22:
        return 0.001, 0.999
    k1 = (v22 - v12) / (v11 + v22 - 2.0 * v12)
    return k1, 1.0 - k1


@register_policy
class MMPareto(GradientPolicy):
    """MMPareto (Wei & Hu, ICML 2024): combine each encoder's multimodal and unimodal gradients.

    Per modality, with ``G`` the gradient of the fused loss and ``U`` that of the modality's unimodal loss
    (its own head), over the whole encoder: if ``<G, U> > 0`` (they agree) the weights are 1/2 and 1/2,
    otherwise the min-norm (MGDA) weights :func:`min_norm_weights`. Then per parameter tensor
    ``c = 2 (k_G G + k_U U)``, raised to at least ``||G + U||`` in norm, times ``gamma``. Heads keep the
    plain gradient of the summed loss. Official code: GeWu-Lab/MMPareto_ICML2024 (``code/MMPareto.py``, commit a339db3).

    Departures: a tensor whose combined gradient is exactly 0 stays 0 (the reference divides by its norm
    and gets NaN); the cosine test is decided on the dot product (same sign; the reference's
    ``cosine_similarity`` clamps tiny norms, which only matters for a zero gradient, where both take the
    min-norm branch).
    """

    kind = "MMPareto"
    uses_unimodal_gradients = True
    uses_gradient_stats = True

    def __init__(self, modalities: Sequence[str], gamma: float = 1.5) -> None:
        super().__init__(modalities)
        self.gamma = check_positive_finite(gamma, name="gamma")

    def weights(self, stats: Mapping[str, float]) -> tuple[float, float]:
        """``(k_G, k_U)`` for one modality from its gradient statistics."""
        v11, v12, v22 = stats["fused_sq"], stats["dot"], stats["unimodal_sq"]
        if v12 > 0:
            return 0.5, 0.5
        return min_norm_weights(v11, v12, v22)

    def compute_transform(
        self, *, step: int, epoch: int, logit_stats: Stats | None, gradient_stats: Stats | None
    ) -> GradientTransform:
        assert gradient_stats is not None  # checked by transform()
        fused, unimodal = {}, {}
        for m in self.modalities:
            k_fused, k_unimodal = self.weights(gradient_stats[m])
            fused[m], unimodal[m] = 2.0 * k_fused, 2.0 * k_unimodal
        return GradientTransform(
            fused=fused,
            unimodal=unimodal,
            magnitude=self._all(self.gamma),
            floor_to_sum=dict.fromkeys(self.modalities, True),
        )

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "modalities": list(self.modalities), "gamma": self.gamma}


@register_policy
class InfoReg(GradientPolicy):
    """InfoReg (Huang et al., CVPR 2025): slow the more confident modality during the prime learning window.

    Per step, with ``s_m`` the batch sum of the softmax mass on the true class of modality m's logits
    (its unimodal head, or a slice of the fusion head): the modality with the highest ``s_m`` gets
    ``g += beta_m (theta - theta_epoch_start)`` with ``beta_m = strength_m * exp(tanh(s_m - s_next))``
    (``s_next``: the next highest score), while the window is open: ``k > threshold``, where ``k``, set
    at each epoch start from the Fisher traces ``T(e)`` of ``window_modality``'s encoder (the sum over its
    conv/dense kernels of the mean squared gradient, summed over the epoch's steps), is the relative
    change of their ``window``-epoch moving average,
    ``k = (T(e-1) - T(e-window-1)) / sum_{j=e-window}^{e-1} T(j)`` (``T`` of epochs before 0 is 0; ``k = 1``
    at epoch 0). Official code: GeWu-Lab/InfoReg_CVPR2025 (``main.py``, commit 939b2ed).

    Defaults are the reference's (window 10, threshold 0.05, strengths 0.95 for audio and 0.1 for visual
    on CREMA-D, where audio dominates; here one number for every modality, or a dict). The training
    loss should include each modality's unimodal loss, as the reference's does (the adapters do not add it).

    Departures: the Fisher trace is taken from the gradient before the pull is added (the reference
    squares the gradient after adding it, so the regulariser feeds the window that switches it on); the
    window is driven by ``window_modality`` (default: the first modality; the reference hard-codes audio,
    its first); with more than two modalities the most confident one is compared with the next; an epoch
    whose traces are all 0 closes the window (the reference divides by 0); an exact tie regulates nothing,
    as in the reference.
    """

    kind = "InfoReg"
    uses_logits = True
    uses_unimodal_losses = True  # the reference's training loss adds every modality's unimodal loss
    uses_anchor = True
    uses_gradient_stats = True

    def __init__(
        self,
        modalities: Sequence[str],
        strength: float | Mapping[str, float] = 0.95,
        *,
        threshold: float = 0.05,
        window: int = 10,
        window_modality: str | None = None,
    ) -> None:
        super().__init__(modalities)
        self.strength = _per_modality(strength, self.modalities, name="strength")
        self.threshold = check_non_negative_finite(threshold, name="threshold")
        self.window = check_positive_int(window, name="window")
        self.window_modality = (
            self.modalities[0]
            if window_modality is None
            else check_known_modality(window_modality, self.modalities, where="InfoReg window_modality")
        )
        self.reset()

    def reset(self) -> None:
        """Forget the traces of every epoch."""
        self._epoch = -1  # the epoch whose steps are being summed (-1: none yet)
        self._trace = 0.0  # this epoch's Fisher trace so far
        self._history = [0.0] * (self.window + 1)  # the last window+1 finished epochs' traces, oldest first
        self._k = 1.0

    def window_statistic(self) -> float:
        """``k`` of the current epoch: the relative change of the traces' moving average."""
        return self._k

    def _start_epoch(self, epoch: int) -> None:
        if self._epoch >= 0:
            self._history = [*self._history[1:], self._trace]
            total = sum(self._history[1:])
            self._k = (self._history[-1] - self._history[0]) / total if total > 0 else 0.0
        self._epoch, self._trace = epoch, 0.0

    def compute_transform(
        self, *, step: int, epoch: int, logit_stats: Stats | None, gradient_stats: Stats | None
    ) -> GradientTransform:
        assert logit_stats is not None and gradient_stats is not None  # checked by transform()
        if epoch != self._epoch:
            self._start_epoch(epoch)
        self._trace += gradient_stats[self.window_modality]["fisher"]
        anchor = self._all(0.0)
        if self._k > self.threshold:
            scores = {m: logit_stats[m]["true_prob"] for m in self.modalities}
            ordered = sorted(self.modalities, key=scores.__getitem__, reverse=True)
            top, runner_up = ordered[0], ordered[1]
            if scores[top] > scores[runner_up]:
                anchor[top] = self.strength[top] * math.exp(math.tanh(scores[top] - scores[runner_up]))
        # The pull is the gradient of (beta/2)||theta - theta*||^2: it brings theta back to the anchor.
        return GradientTransform(fused=self._all(1.0), anchor=anchor)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "trace": self._trace, "history": list(self._history), "k": self._k}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; everything is checked before anything is assigned."""
        if not isinstance(state, Mapping) or set(state) != {"epoch", "trace", "history", "k"}:
            raise ValueError(f"InfoReg state must be a dict with 'epoch', 'trace', 'history' and 'k', got {state!r}")
        epoch = state["epoch"]
        if not isinstance(epoch, (int, float)) or epoch != int(epoch) or epoch < -1:
            raise ValueError(f"InfoReg state['epoch'] must be an integer >= -1, got {epoch!r}")
        history = state["history"]
        if not isinstance(history, Sequence) or len(history) != self.window + 1:
            raise ValueError(
                f"InfoReg state['history'] must hold the last {self.window + 1} epochs' traces, got {history!r}"
            )
        values = [check_non_negative_finite(v, name="InfoReg state['history'] entry") for v in history]
        trace = check_non_negative_finite(state["trace"], name="InfoReg state['trace']")
        k = state["k"]
        if not isinstance(k, (int, float)) or not math.isfinite(k):
            raise ValueError(f"InfoReg state['k'] must be a finite number, got {k!r}")
        self._epoch, self._trace, self._history, self._k = int(epoch), trace, values, float(k)

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "strength": dict(self.strength),
            "threshold": self.threshold,
            "window": self.window,
            "window_modality": self.window_modality,
        }


def _shapley_weight(modality: str, subset: frozenset[str], count: int) -> float:
    size = len(subset)
    if modality in subset:
        return math.factorial(size - 1) * math.factorial(count - size) / math.factorial(count)
    return -math.factorial(size) * math.factorial(count - size - 1) / math.factorial(count)


def shapley_responses(outputs: Mapping[Any, Any], modalities: Sequence[str]) -> dict[str, Any]:
    """AGM's mono-modal responses: each modality's Shapley share of the fused output.

    ``outputs`` maps every non-empty subset of ``modalities`` (any iterable of names: a tuple, a
    frozenset) to the fused model's logits with the *other* modalities' inputs masked (the full set:
    the plain output). Returns ``phi_m = sum_S c_m(S) f(S)`` with the Shapley weights, so that the
    responses sum to the full output; for two modalities ``phi_a = (f(a, v) - f(v) + f(a)) / 2``. Works
    on NumPy arrays and framework tensors alike (only ``+`` and ``*`` by a float are used).
    """
    names = check_modality_names(modalities, where="shapley_responses modalities")
    if not isinstance(outputs, Mapping):
        raise TypeError(f"outputs must be a dict subset of modalities -> logits, got {type(outputs).__name__}")
    by_subset: dict[frozenset[str], Any] = {}
    for key, value in outputs.items():
        subset = frozenset([key] if isinstance(key, str) else key)
        unknown = sorted(subset - set(names))
        if unknown or not subset:
            raise ValueError(
                f"outputs key {key!r} is not a non-empty subset of the modalities {list(names)}"
                + (f" (unknown: {unknown})" if unknown else "")
            )
        if subset in by_subset:
            raise ValueError(f"outputs has the subset {sorted(subset)} twice")
        by_subset[subset] = value
    expected = [frozenset(c) for size in range(1, len(names) + 1) for c in itertools.combinations(names, size)]
    missing = [sorted(s) for s in expected if s not in by_subset]
    if missing:
        raise ValueError(
            f"outputs lacks the masked outputs of {missing}; AGM needs the fused model's output for every "
            f"non-empty subset of {list(names)} present (the others masked): {2 ** len(names) - 1} forward passes"
        )
    responses = {}
    for m in names:
        total = None
        for subset in expected:
            term = by_subset[subset] * _shapley_weight(m, subset, len(names))
            total = term if total is None else total + term
        responses[m] = total
    return responses


def mono_modal_responses(forward: Callable[[dict[str, Any]], Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """AGM's masked forward passes and their Shapley combination, for a model fed a dict of inputs.

    ``forward(inputs)`` returns the fused logits; each non-empty subset is run with every other
    modality's input multiplied by 0 (the reference masks raw inputs with zeros). Wrap ``forward``
    yourself in what your framework needs: ``torch.no_grad()`` and ``model.eval()`` (the reference runs
    the masked passes in eval mode), or ``training=False`` in Keras. Costs ``2**M - 1`` forward passes.
    """
    if not isinstance(inputs, Mapping) or not inputs:
        raise TypeError(f"inputs must be a non-empty dict modality -> input, got {type(inputs).__name__}")
    names = check_modality_names(inputs.keys(), where="mono_modal_responses inputs")
    outputs = {}
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(names, size):
            masked = {m: (value if m in subset else value * 0) for m, value in inputs.items()}
            outputs[subset] = forward(masked)
    return shapley_responses(outputs, names)


#: Exponents above this are clamped so that AGM's coefficients stay finite (``exp(700)`` ~ 1e304).
_MAX_EXPONENT = 700.0


def _exp(x: float) -> float:
    """``exp`` that saturates instead of overflowing (the reference's float32 tensors give inf, and then
    inf - inf = NaN once both of AGM's exponentials overflow)."""
    return math.exp(min(x, _MAX_EXPONENT))


@register_policy
class AGM(GradientPolicy):
    """AGM, adaptive gradient modulation (Li et al., ICCV 2023).

    From the mono-modal responses ``phi_m`` (:func:`shapley_responses`: the fused model's outputs with
    the other modalities masked, combined by Shapley weights), passed as the per-modality logits:
    ``s_m`` = mean cross-entropy of ``phi_m`` on this batch, ``S_m`` its running mean over every step
    so far (before this batch), ``K = M / (M - 1)``,
    ``ratio_m = exp(K (mean(s) - s_m))``, ``opt_m = exp(K (mean(S) - S_m))`` and
    ``k_m = exp(alpha * min(opt_m - ratio_m, clip))``: a modality doing better now than its historical
    standing is slowed, one doing worse is boosted. Applied to the encoder's gradient during epochs
    ``start_epoch..end_epoch`` (inclusive, epochs counted from 0 as everywhere in this library); the
    running means are updated every step. Official code: lihong2303/AGM_ICCV2023 (``run/CREMAD_main.py``,
    commit 5a65542; defaults alpha 1, clip 10 on CREMA-D).

    Epochs: the reference counts them from 1 (``for epoch in range(start_epoch, EPOCHS + 1)`` with
    ``start_epoch = 1``) and modulates while ``modulation_starts <= epoch <= modulation_ends``, defaults 0
    and 20: its first 20 epochs. The defaults here, ``start_epoch=0, end_epoch=19``, are the same 20
    epochs; the reference's ``--modulation_starts S --modulation_ends E`` is
    ``start_epoch=max(S - 1, 0), end_epoch=E - 1``.

    Departures: the coefficient multiplies the gradients of the modality's encoder parameters (the
    reference multiplies the gradient flowing into ``phi_m``, which also reaches the encoders through
    the masked passes; for a linear fusion head the two agree up to those passes), and the masked passes
    carry no gradient; outside the window the coefficient is 1 (the reference keeps applying the last
    in-window coefficient); the cross-entropy is not clamped at ``-log(1e-8)``; exponents are capped at
    700, so when the modalities' losses differ by hundreds of nats (large logits) the coefficients stay
    finite: the better modality's tends to 0 and the other's to ``exp(alpha * clip)``, as in the
    reference up to the point where its float32 exponentials overflow to inf and NaN; the reference's extra
    gradient-norm clipping (when the head's gradient leaves [-1, 1]) is left to the training loop.
    """

    kind = "AGM"
    uses_logits = True

    def __init__(
        self,
        modalities: Sequence[str],
        alpha: float = 1.0,
        *,
        clip: float = 10.0,
        start_epoch: int = 0,
        end_epoch: int = 19,
    ) -> None:
        super().__init__(modalities)
        self.alpha = check_positive_finite(alpha, name="alpha")
        self.clip = check_positive_finite(clip, name="clip")
        self.start_epoch = check_non_negative_int(start_epoch, name="start_epoch")
        self.end_epoch = check_non_negative_int(end_epoch, name="end_epoch")
        if self.end_epoch < self.start_epoch:
            raise ValueError(f"end_epoch={end_epoch} must be >= start_epoch={start_epoch}")
        self.reset()

    def reset(self) -> None:
        """Forget the running means."""
        self._running = self._all(0.0)
        self.steps = 0

    def coefficients_for(self, losses: Mapping[str, float]) -> dict[str, float]:
        """``k_m`` from this batch's mean cross-entropies and the running means (no state change)."""
        scale = len(self.modalities) / (len(self.modalities) - 1)
        mean_now = sum(losses.values()) / len(losses)
        mean_before = sum(self._running.values()) / len(self._running)
        result = {}
        for m in self.modalities:
            ratio = _exp(scale * (mean_now - losses[m]))
            optimum = _exp(scale * (mean_before - self._running[m]))
            result[m] = _exp(self.alpha * min(optimum - ratio, self.clip))
        return result

    def compute_transform(
        self, *, step: int, epoch: int, logit_stats: Stats | None, gradient_stats: Stats | None
    ) -> GradientTransform:
        assert logit_stats is not None  # checked by transform()
        losses = {}
        for m in self.modalities:
            count = logit_stats[m]["count"]
            if count <= 0:
                raise ValueError(f"AGM: the batch of {m!r} has {count} samples; observe a non-empty batch")
            losses[m] = logit_stats[m]["cross_entropy"] / count
        coefficients = self.coefficients_for(losses)
        self.steps += 1
        for m in self.modalities:
            self._running[m] += (losses[m] - self._running[m]) / self.steps
        return GradientTransform(fused=coefficients if self.active(epoch) else self._all(1.0))

    def active(self, epoch: int) -> bool:
        """Whether the coefficients modulate at ``epoch`` (counted from 0)."""
        return self.start_epoch <= epoch <= self.end_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"running": dict(self._running), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; everything is checked before anything is assigned."""
        if not isinstance(state, Mapping) or set(state) != {"running", "steps"}:
            raise ValueError(f"AGM state must be a dict with 'running' and 'steps', got {state!r}")
        running = state["running"]
        if not isinstance(running, Mapping):
            raise ValueError(f"AGM state['running'] must be a dict modality -> float, got {running!r}")
        check_same_modalities(running.keys(), self.modalities, where="AGM state['running']")
        values = {
            m: check_non_negative_finite(running[m], name=f"AGM state['running'][{m!r}]") for m in self.modalities
        }
        steps = check_non_negative_int(state["steps"], name="AGM state['steps']")
        self._running, self.steps = values, steps

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "alpha": self.alpha,
            "clip": self.clip,
            "start_epoch": self.start_epoch,
            "end_epoch": self.end_epoch,
        }


@register_policy
class ARL(GradientPolicy):
    """ARL, imbalanced learning (S. Wei, Luo and Luo, ICCV 2025): reinforce the confident, under-used modality.

    From per-modality logits (a concat head's decomposed logits: the head applied to one modality's
    features with the others zeroed) on this batch: dependence ``d_m`` = mean L1 norm of the logits,
    normalised over modalities; ``H_m`` = mean softmax entropy, normalised, floored at ``entropy_floor``;
    ``q_m = 1 / H_m`` normalised; ``w = softmax(temperature * q_m * (1 - d_m))`` (for two modalities the
    reference's ``softmax(T [d_v q_a, d_a q_v])``). After ``warmup`` epochs the modality's encoder
    gradient is multiplied by ``1 + w_m`` (during warm-up by 1). The training loss should be
    ``L_fused + gamma * sum_m L_m`` with the unimodal (decomposed) losses, ``gamma`` from
    :meth:`auxiliary_weight` (1 during warm-up). Official code: shicaiwei123/ICCV2025-ARL
    (``main_arl_variance.py``, commit 358af4f; the paper: gamma 4, T 8 on CREMA-D and 4 elsewhere; warm-up while
    ``epoch <= 5``, i.e. 6 epochs counted from 0).

    Departures: the released code never writes the computed weights back (after warm-up every encoder
    gets 1.5x, the warm-up value 0.5 kept), so this follows the paper's rule; it is this batch's weight
    that scales this batch's gradient (the reference's layer would apply it a step later, had it been
    written); the multiplier acts on the encoder's parameter gradients, which equals the reference's
    multiplier on the encoder output's gradient when the encoder is reached only through that output;
    more than two modalities use ``q_m (1 - d_m)``, which the reference (two modalities) equals; the
    entropy's ``log(p + 1e-16)`` is an exact log-softmax here; the reference's gradient-norm clipping (40)
    is left to the training loop.
    """

    kind = "ARL"
    uses_logits = True
    uses_unimodal_losses = True  # weighted by auxiliary_weight(epoch)

    def __init__(
        self,
        modalities: Sequence[str],
        temperature: float = 4.0,
        *,
        gamma: float = 4.0,
        warmup: int = 6,
        entropy_floor: float = 0.3,
    ) -> None:
        super().__init__(modalities)
        self.temperature = check_positive_finite(temperature, name="temperature")
        self.gamma = check_non_negative_finite(gamma, name="gamma")
        self.warmup = check_non_negative_int(warmup, name="warmup")
        self.entropy_floor = check_non_negative_finite(entropy_floor, name="entropy_floor")

    def auxiliary_weight(self, epoch: int) -> float:
        """ARL's name (its paper's gamma) for :meth:`unimodal_loss_weight`, the unimodal losses' weight at
        ``epoch``: 1 during warm-up, then ``gamma``. Loops read it per modality as ``unimodal_loss_weights``."""
        epoch = check_non_negative_int(epoch, name="epoch")
        return 1.0 if epoch < self.warmup else self.gamma

    def unimodal_loss_weight(self, epoch: int) -> float:
        """:meth:`auxiliary_weight`: what the adapters apply to the unimodal losses they are given."""
        return self.auxiliary_weight(epoch)

    def weights(self, logit_stats: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """``w_m`` from one batch's logit statistics."""
        dependence = {m: logit_stats[m]["logit_abs"] / max(logit_stats[m]["count"], 1.0) for m in self.modalities}
        entropy = {m: logit_stats[m]["entropy"] / max(logit_stats[m]["count"], 1.0) for m in self.modalities}
        dependence = _normalised(dependence)
        entropy = {m: max(v, self.entropy_floor) for m, v in _normalised(entropy).items()}
        confidence = _normalised({m: 1.0 / v if v > 0 else math.inf for m, v in entropy.items()})
        logits = {m: self.temperature * confidence[m] * (1.0 - dependence[m]) for m in self.modalities}
        top = max(logits.values())
        exp = {m: math.exp(v - top) for m, v in logits.items()}
        total = sum(exp.values())
        return {m: v / total for m, v in exp.items()}

    def compute_transform(
        self, *, step: int, epoch: int, logit_stats: Stats | None, gradient_stats: Stats | None
    ) -> GradientTransform:
        assert logit_stats is not None  # checked by transform()
        if epoch < self.warmup:
            return GradientTransform(fused=self._all(1.0))
        return GradientTransform(fused={m: 1.0 + w for m, w in self.weights(logit_stats).items()})

    def get_config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "temperature": self.temperature,
            "gamma": self.gamma,
            "warmup": self.warmup,
            "entropy_floor": self.entropy_floor,
        }


def _normalised(values: Mapping[str, float]) -> dict[str, float]:
    """Divide by the sum (equal shares when the sum is 0 or infinite entries dominate)."""
    infinite = [m for m, v in values.items() if math.isinf(v)]
    if infinite:
        return {m: (1.0 / len(infinite) if m in infinite else 0.0) for m in values}
    total = sum(values.values())
    if total <= 0:
        return {m: 1.0 / len(values) for m in values}
    return {m: v / total for m, v in values.items()}
