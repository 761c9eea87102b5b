"""Paired statistics over seeds, valid at the 3-10 seeds a training comparison can afford. NumPy only.

Two runs that share a seed share their initial weights and data order, so methods are compared by
the *per-seed differences* ``d_s = a_s - b_s``:

* :func:`paired_difference` gives the mean difference with a **paired Student-t interval**
  ``mean(d) ± t_{n-1, 1-α/2} · sd(d) / sqrt(n)`` (exact when the differences are normal; at small
  ``n`` it is far wider than a percentile bootstrap, which ignores the uncertainty of ``sd``) and, beside
  it, the **exact sign-flip permutation test** (every one of the ``2^n`` sign patterns; assumes only that
  each difference is symmetric around 0 under the null). The verdict ("better", "worse", "no
  significant difference") follows the t-interval; the permutation p-value is the distribution-free
  check. With ``n`` seeds its smallest possible two-sided p-value is ``2 / 2^n``: it cannot go below
  0.05 with fewer than 6 seeds, whatever the data.
* :func:`seeds_needed` estimates how many seeds would make an observed difference significant.

**When a verdict is given** (the verdict rule). "better" or "worse" needs all of:

1. at least :data:`MIN_SEEDS_FOR_VERDICT` (3) paired seeds: with 2, the t-interval rests on one degree of
   freedom and one estimate of the spread (verdict ``"too few seeds"``);
2. differences that are not identical on every seed: a zero spread gives a zero-width interval that
   would call any constant offset significant, which the data cannot support (verdict ``"zero spread"``;
   e.g. two runs that are bit-identical up to a constant, or a metric that never moved);
3. a t-interval that excludes 0.

Otherwise the verdict is ``"no significant difference"``. :attr:`PairedDifference.reason` says in words
why a verdict was or was not given. Below 6 seeds the sign-flip test cannot reach p < 0.05 whatever the
data, so a verdict there rests on the t-interval's normality assumption alone;
:attr:`PairedDifference.distribution_free` says whether the sign-flip test agrees at the same level.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pdmp._validation import check_bool, check_finite_array, check_state_keys

__all__ = ["MIN_SEEDS_FOR_VERDICT", "PairedDifference", "paired_difference", "seeds_needed", "student_t_quantile"]

#: The fewest paired seeds for which :func:`paired_difference` gives "better" or "worse".
MIN_SEEDS_FOR_VERDICT = 3

#: Verdicts that are not a test result: the numbers cannot support one (see the module docstring).
NO_VERDICT = ("too few seeds", "zero spread")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _regularized_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(probability: float, df: float) -> float:
    """The ``probability`` quantile of Student's t (bisection on :func:`student_t_cdf`; |error| < 1e-10)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability!r}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    if probability < 0.5:
        return -student_t_quantile(1.0 - probability, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < probability:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def sign_flip_p_value(differences: ArrayLike) -> float:
    """Exact two-sided p-value of the sign-flip permutation test of mean(d) = 0 (all 2^n patterns).

    Counts the sign patterns whose |mean| is at least the observed one (the observed pattern included),
    so the smallest possible value is 2 / 2^n. Refused above 20 differences (2^20 patterns).
    """
    d = check_finite_array(differences, name="differences")
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"differences must be a non-empty 1-D sequence, got shape {d.shape}")
    if d.size > 20:
        raise ValueError(f"the exact sign-flip test enumerates 2^n patterns; got n={d.size} > 20 differences")
    observed = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    means = np.abs(signs @ d) / d.size
    # Patterns equal to the observed one up to rounding count as extreme. The tolerance scales with the
    # differences themselves (rounding in ``signs @ d`` is relative to sum |d|), never a fixed absolute
    # one, which would call every pattern extreme for differences below it (p = 1 for d = 1e-16).
    tolerance = 1e-12 * float(np.abs(d).mean())
    return float(np.mean(means >= observed - tolerance))


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over paired seeds: mean, sd, paired Student-t interval, exact sign-flip p-value, verdict."""

    mean: float
    sd: float | None
    n: int
    confidence: float
    #: Paired Student-t interval; None with fewer than 2 seeds (no spread to estimate).
    interval: tuple[float, float] | None
    #: Exact two-sided sign-flip permutation p-value.
    p_sign_flip: float
    #: "better" / "worse" when the verdict rule allows one and the t-interval excludes 0; "no significant
    #: difference"; or no verdict: "too few seeds" (under :data:`MIN_SEEDS_FOR_VERDICT`) or "zero spread".
    verdict: str
    #: Why this verdict, in words (e.g. why none could be given).
    reason: str = ""

    @property
    def significant(self) -> bool:
        return self.verdict in ("better", "worse")

    @property
    def distribution_free(self) -> bool:
        """Whether the sign-flip test is significant at the same level (it cannot be below 6 seeds at 95%)."""
        return self.p_sign_flip <= 1.0 - self.confidence

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "sd": self.sd,
            "n": self.n,
            "confidence": self.confidence,
            "interval": None if self.interval is None else list(self.interval),
            "p_sign_flip": self.p_sign_flip,
            "verdict": self.verdict,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairedDifference:
        """Inverse of :meth:`to_dict`."""
        check_state_keys(
            data,
            required=("mean", "sd", "n", "confidence", "interval", "p_sign_flip", "verdict"),
            optional=("reason",),
            where="PairedDifference dict",
        )
        interval = data["interval"]
        return cls(
            data["mean"],
            data["sd"],
            data["n"],
            data["confidence"],
            None if interval is None else (interval[0], interval[1]),
            data["p_sign_flip"],
            data["verdict"],
            data.get("reason", ""),
        )

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """E.g. ``+4.0 [-0.4, +8.5] n.s. (p=0.19, n=5)``; values multiplied by ``scale`` (accuracy in points).

        Where the verdict rule gives no verdict the cell says why (``no verdict: zero spread``)."""
        mean = f"{scale * self.mean:+.{digits}f}"
        if self.verdict in NO_VERDICT:
            interval = ""
            if self.interval is not None:
                interval = " [" + ", ".join(f"{scale * value:+.{digits}f}" for value in self.interval) + "]"
            return f"{mean}{interval} no verdict: {self.verdict} (n={self.n})"
        assert self.interval is not None  # a verdict needs >= 3 seeds, so an interval
        low, high = (f"{scale * value:+.{digits}f}" for value in self.interval)
        verdict = {"no significant difference": "n.s."}.get(self.verdict, f"**{self.verdict}**")
        return f"{mean} [{low}, {high}] {verdict} (p={self.p_sign_flip:.2g}, n={self.n})"


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, higher_is_better: bool = True
) -> PairedDifference:
    """Mean of ``a - b`` over paired seeds, with a paired Student-t interval and the sign-flip test.

    ``a[i]`` and ``b[i]`` must come from the same seed. See the module docstring for what the interval
    and the test assume. ``higher_is_better=False`` (a loss) turns a significantly positive difference
    into "worse".
    """
    first = check_finite_array(a, name="a")
    second = check_finite_array(b, name="b")
    if first.ndim != 1 or first.shape != second.shape:
        raise ValueError(
            f"a and b must be 1-D and paired (same seeds, same order), got shapes {first.shape} and {second.shape}"
        )
    if first.size == 0:
        raise ValueError("no paired results to compare: a and b are empty")
    if not (isinstance(confidence, float | int) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")
    higher_is_better = check_bool(higher_is_better, name="higher_is_better")
    d = first - second
    n, level = int(d.size), float(confidence)
    mean = float(d.mean())
    p_value = sign_flip_p_value(d) if n <= 20 else float("nan")
    if n < 2:
        reason = f"{n} paired seed: no spread to estimate; a verdict needs >= {MIN_SEEDS_FOR_VERDICT}"
        return PairedDifference(mean, None, n, level, None, p_value, "too few seeds", reason)
    sd = float(d.std(ddof=1))
    half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    interval = (mean - half, mean + half)
    if n < MIN_SEEDS_FOR_VERDICT:
        reason = f"{n} paired seeds; a verdict needs >= {MIN_SEEDS_FOR_VERDICT}"
        return PairedDifference(mean, sd, n, level, interval, p_value, "too few seeds", reason)
    # "Identical on every seed" up to rounding: the spread is negligible against the differences' size.
    if sd <= 1e-9 * max(float(np.abs(d).max()), 1e-300):
        reason = "the difference is the same on every seed (zero spread): the interval has no width to test"
        return PairedDifference(mean, sd, n, level, interval, p_value, "zero spread", reason)
    low, high = interval
    if low > 0 or high < 0:
        improved = (low > 0) == higher_is_better
        verdict = "better" if improved else "worse"
        reason = f"the {100 * level:g}% paired t-interval excludes 0"
        if p_value > 1.0 - level:
            floor = 2 / 2**n
            reason += f"; the sign-flip test does not confirm it (p={p_value:.2g}, its minimum at n={n} is {floor:.2g})"
    else:
        verdict = "no significant difference"
        reason = f"the {100 * level:g}% paired t-interval contains 0"
    return PairedDifference(mean, sd, n, level, interval, p_value, verdict, reason)


def seeds_needed(mean: float, sd: float, *, confidence: float = 0.95, max_seeds: int = 1000) -> int | None:
    """Smallest n whose paired t-interval ``mean ± t_{n-1} sd / sqrt(n)`` would exclude 0, if the observed
    mean and sd held; None when ``mean`` is 0 or more than ``max_seeds`` would be needed."""
    if not (math.isfinite(mean) and math.isfinite(sd) and sd >= 0):
        raise ValueError(f"mean and sd must be finite (sd >= 0), got mean={mean!r}, sd={sd!r}")
    if mean == 0:
        return None
    for n in range(2, max_seeds + 1):
        if student_t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n) < abs(mean):
            return n
    return None
