"""What a verdict prints, pinned exactly: tests that kill the surviving mutants of the verdict code (NumPy only).

``nox -s mutation`` mutates pdmp/stats.py, pdmp/compare.py and pdmp/search.py (one small change at a time:
``<`` for ``<=``, ``3`` for ``2``, a string for another) and runs the core tests against each mutant. A
mutant that changed a printed verdict, interval, p-value, table cell, a search's choice or a resume
refusal and still passed them is killed here; benchmarks/reported/mutation/summary.md lists the rest
and why they change nothing observable. Expected numbers are worked out in the comments.
"""

from __future__ import annotations

import json
import math
import sys
import warnings

import numpy as np
import pytest

import pdmp
from pdmp.compare import (
    APPLIED_KEY,
    AppliedRecord,
    Candidate,
    Study,
    StudyError,
    _cpu,
    _framework_threads,
    compare,
    environment_signature,
    run_environment,
)
from pdmp.policies import NoModulation
from pdmp.search import gamma_grid, search_gammas
from pdmp.stats import PairedDifference, paired_difference, seeds_needed, sign_flip_p_value, student_t_quantile

RANKING = pdmp.Ranking(order=("audio", "image"), scores={"audio": 0.8, "image": 0.5})
T_4 = 2.7764451051977987  # t_{0.975, 4}
T_2 = 4.302652729749464  # t_{0.975, 2}


# -- stats: the verdict, its interval, its p-value and its reason --------------------------------------------


def test_a_better_verdict_pins_interval_p_value_reason_and_cell():
    # d = (5, 6, 3, 5, 6) / 100: mean 0.05, sd sqrt(6 / 4) / 100, half-width t_4 sd / sqrt(5).
    diff = paired_difference([0.75, 0.78, 0.74, 0.74, 0.79], [0.70, 0.72, 0.71, 0.69, 0.73])
    half = T_4 * math.sqrt(1.5) / 100 / math.sqrt(5)
    assert diff.mean == pytest.approx(0.05, abs=1e-12)
    assert diff.sd == pytest.approx(math.sqrt(1.5) / 100, abs=1e-12)
    assert diff.n == 5 and diff.confidence == 0.95
    assert diff.interval == pytest.approx((0.05 - half, 0.05 + half), abs=1e-10)
    assert diff.p_sign_flip == 2 / 32
    assert diff.verdict == "better" and diff.significant and not diff.distribution_free
    assert diff.reason == (
        "the 95% paired t-interval excludes 0; the sign-flip test does not confirm it (p=0.062, its minimum "
        "at n=5 is 0.062)"
    )
    assert diff.format() == "+5.0 [+3.5, +6.5] **better** (p=0.062, n=5)"
    assert diff.format(scale=1.0, digits=3) == "+0.050 [+0.035, +0.065] **better** (p=0.062, n=5)"
    assert PairedDifference.from_dict(diff.to_dict()) == diff


def test_a_worse_verdict_and_a_loss():
    a, b = [0.70, 0.72, 0.71, 0.69, 0.73], [0.75, 0.78, 0.74, 0.74, 0.79]
    worse = paired_difference(a, b)
    assert worse.verdict == "worse" and worse.significant
    assert worse.format() == "-5.0 [-6.5, -3.5] **worse** (p=0.062, n=5)"
    # For a loss a lower value wins: the same numbers read the other way round.
    assert paired_difference(a, b, higher_is_better=False).verdict == "better"
    assert paired_difference(b, a, higher_is_better=False).verdict == "worse"


def test_no_significant_difference_pins_reason_and_cell():
    # d = (4, -1, 2, 1, -1) / 100: mean 0.01, sd sqrt(4.5) / 100; sign flips with |sum| >= 5 are 16 of 32.
    diff = paired_difference([0.74, 0.71, 0.73, 0.70, 0.72], [0.70, 0.72, 0.71, 0.69, 0.73])
    assert diff.verdict == "no significant difference" and not diff.significant
    assert diff.reason == "the 95% paired t-interval contains 0"
    assert diff.p_sign_flip == 0.5
    assert diff.format() == "+1.0 [-1.6, +3.6] n.s. (p=0.5, n=5)"


def test_six_seeds_confirmed_by_the_sign_flip_test_add_nothing_to_the_reason():
    diff = paired_difference([0.9, 0.91, 0.92, 0.93, 0.94, 0.95], [0.8, 0.8, 0.81, 0.8, 0.82, 0.8])
    assert diff.p_sign_flip == 2 / 64 and diff.distribution_free
    assert diff.reason == "the 95% paired t-interval excludes 0"


def test_a_p_value_exactly_at_the_level_confirms_the_verdict():
    # confidence 0.75: the level is 0.25 = 2/8, the smallest p at n=3; "p <= level" is distribution-free.
    diff = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], confidence=0.75)
    assert diff.p_sign_flip == 0.25 and diff.distribution_free
    assert diff.verdict == "better"
    assert diff.reason == "the 75% paired t-interval excludes 0"
    # t_{0.875, 2} = 1.6035675 (scipy.stats.t.ppf(0.875, 2)): a narrower interval than at 95%.
    half = 1.6035674514745464 * 1.0 / math.sqrt(3)
    assert diff.interval == pytest.approx((2.0 - half, 2.0 + half), abs=1e-9)


def test_no_verdict_cells_and_reasons():
    one = paired_difference([0.5], [0.4])
    reason = "1 paired seed: no spread to estimate; a verdict needs >= 3"
    assert one == PairedDifference(pytest.approx(0.1), None, 1, 0.95, None, 1.0, "too few seeds", reason)
    assert one.format() == "+10.0 no verdict: too few seeds (n=1)"
    assert PairedDifference.from_dict(one.to_dict()) == one

    two = paired_difference([0.60, 0.70], [0.50, 0.5999])
    assert (two.sd, two.n, two.confidence, two.p_sign_flip) == (pytest.approx(0.0001 / math.sqrt(2)), 2, 0.95, 0.5)
    assert two.verdict == "too few seeds" and two.reason == "2 paired seeds; a verdict needs >= 3"
    # d = (0.1, 0.1001): mean 0.10005, sd 0.0001 / sqrt(2), half-width t_1 sd / sqrt(2) = 12.706 * 0.00005.
    assert two.interval == pytest.approx((0.10005 - 12.706204736 * 0.00005, 0.10005 + 12.706204736 * 0.00005))
    assert two.format() == "+10.0 [+9.9, +10.1] no verdict: too few seeds (n=2)"

    flat = paired_difference([0.625, 0.75, 0.875], [0.5, 0.625, 0.75])  # d = 0.125 exactly on every seed
    reason = "the difference is the same on every seed (zero spread): the interval has no width to test"
    assert flat == PairedDifference(0.125, 0.0, 3, 0.95, (0.125, 0.125), 0.25, "zero spread", reason)
    old = flat.to_dict()
    del old["reason"]  # files written before reasons existed
    assert PairedDifference.from_dict(old).reason == ""
    assert flat.format() == "+12.5 [+12.5, +12.5] no verdict: zero spread (n=3)"


def test_a_spread_below_one_billionth_of_the_difference_is_zero_spread():
    nearly = paired_difference([1.0 + 1e-12, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert nearly.verdict == "zero spread"
    # A real spread, however small against the values, is tested: d = 1e-6 * (1, 2, 3).
    small = paired_difference([1e-6, 2e-6, 3e-6], [0.0, 0.0, 0.0])
    assert small.verdict == "no significant difference"
    # The threshold is relative: d = 1e-3 (1, 1 + 1e-8, 1 - 1e-8) has sd 1e-11, above 1e-9 * 1e-3.
    tight = paired_difference([1e-3, 1e-3 * (1 + 1e-8), 1e-3 * (1 - 1e-8)], [0.0, 0.0, 0.0])
    assert tight.verdict == "better" and tight.sd == pytest.approx(1e-11, rel=1e-3)
    # All-zero differences: no spread and no difference.
    assert paired_difference([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]).verdict == "zero spread"


def test_at_most_twenty_seeds_get_the_exact_p_value(monkeypatch):
    # 2^20 sign patterns are too many for a unit test: count the calls instead.
    calls = []

    def fake(d):
        calls.append(len(d))
        return 0.125

    monkeypatch.setattr("pdmp.stats.sign_flip_p_value", fake)
    rng = np.random.default_rng(0)
    twenty = paired_difference(rng.normal(1.0, 0.1, 20), np.zeros(20))
    assert calls == [20] and twenty.p_sign_flip == 0.125
    twenty_one = paired_difference(rng.normal(1.0, 0.1, 21), np.zeros(21))
    assert calls == [20] and math.isnan(twenty_one.p_sign_flip) and twenty_one.verdict == "better"


def test_sign_flip_p_value_refuses_more_than_twenty_and_counts_ties():
    with pytest.raises(ValueError, match="n=21 > 20"):
        sign_flip_p_value(np.ones(21))
    for bad in ([], [[1.0, 2.0]]):
        with pytest.raises(ValueError, match="differences must be a non-empty 1-D sequence"):
            sign_flip_p_value(bad)
    with pytest.raises(ValueError, match="differences contains 1 non-finite"):
        sign_flip_p_value([1.0, float("inf")])
    # Every |mean| ties with the observed one when d is all zero (p = 1); two opposite differences of
    # equal size: the patterns (+, +) and (-, -) give |mean| 0, the other two 1: p = 1 for d = (1, -1).
    assert sign_flip_p_value([0.0, 0.0, 0.0]) == 1.0
    assert sign_flip_p_value([1.0, -1.0]) == 1.0
    assert sign_flip_p_value([1.0, 1.0]) == 0.5
    # Exact rational differences: the observed pattern is counted even though d.mean() and the pattern's
    # mean are computed differently.
    assert sign_flip_p_value([0.1, 0.2, 0.3, 0.4]) == 2 / 16


def test_twenty_differences_are_enumerated(monkeypatch):
    # 2^20 patterns take too long for a unit test: stop at the enumeration, which 20 differences must reach.
    class Enumerated(Exception):
        pass

    def product(*args, **kwargs):
        raise Enumerated

    monkeypatch.setattr("pdmp.stats.itertools.product", product)
    with pytest.raises(Enumerated):
        sign_flip_p_value(np.ones(20))


def test_student_t_quantile_refusals_and_symmetry():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"^probability must be in \(0, 1\), got {bad!r}$"):
            student_t_quantile(bad, 3)
    for bad_df in (0, -1):
        with pytest.raises(ValueError, match="degrees of freedom"):
            student_t_quantile(0.9, bad_df)
    assert student_t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-10)
    assert student_t_quantile(0.975, 4) == pytest.approx(T_4, abs=1e-9)
    assert student_t_quantile(0.025, 2) == pytest.approx(-T_2, abs=1e-9)
    # A quantile far in the tail (the bracket must keep doubling): t_{0.9995, 1} = 636.619.
    assert student_t_quantile(0.9995, 1) == pytest.approx(636.6192487687196, rel=1e-9)


def test_seeds_needed_boundaries():
    # mean 1, sd 1: n = 7 (test_core_compare); with max_seeds 7 it is still found, with 6 it is not.
    assert seeds_needed(1.0, 1.0, max_seeds=7) == 7
    assert seeds_needed(1.0, 1.0, max_seeds=6) is None
    assert seeds_needed(-1.0, 1.0) == 7
    # No spread: two seeds suffice.
    assert seeds_needed(0.01, 0.0) == 2
    # At 99% more seeds are needed: t_{0.995, n-1} / sqrt(n) < 1 first at n = 11 (t_9 3.250 / sqrt(10) > 1,
    # t_10 3.169 / sqrt(11) < 1).
    assert seeds_needed(1.0, 1.0, confidence=0.99) == 11
    for mean, sd in ((float("nan"), 1.0), (1.0, float("inf")), (1.0, -0.1)):
        with pytest.raises(ValueError, match=r"mean and sd must be finite \(sd >= 0\), got mean="):
            seeds_needed(mean, sd)


def test_paired_difference_refusals():
    with pytest.raises(ValueError, match="empty"):
        paired_difference([], [])
    for confidence in (0.0, 1.0, 95, "0.95"):
        with pytest.raises(ValueError, match="confidence must be in"):
            paired_difference([0.1, 0.2, 0.3], [0.0, 0.0, 0.0], confidence=confidence)
    with pytest.raises(ValueError, match="1-D and paired"):
        paired_difference([[0.1, 0.2]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match=r"^no paired results to compare: a and b are empty$"):
        paired_difference([], [])
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), e.g. 0.95, got 2"):
        paired_difference([0.1, 0.2, 0.3], [0.0, 0.0, 0.0], confidence=2)
    with pytest.raises(ValueError, match=r"^a contains 1 non-finite"):
        paired_difference([0.1, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"^b contains 1 non-finite"):
        paired_difference([0.1, 0.2], [0.1, float("nan")])


# -- the table --------------------------------------------------------------------------------------------

ENV_A = {"cpu": "CPU-A", "cpu_features": ["avx", "avx2"], "cpus": 8, "numpy": "2.0", "frameworks": {"torch": "2.5"}}
ENV_B = {"cpu": "CPU-B", "cpus": 4, "numpy": "2.1"}
IDLE = {"coefficients": {"audio": [1.0, 1.0], "image": [1.0, 1.0]}, "unimodal_loss_weights": {}}


def four_candidate_study() -> Study:
    """joint, pdmp, uniform, inverse and a joint variant with a missing control, 5 seeds, two environments."""
    lr = Candidate("lr", NoModulation(RANKING.order), {"lr_scale": 2.0}, controls=("absent",))
    study = Study([*pdmp.default_candidates(RANKING), lr], [0, 1, 2, 3, 4])
    values = {
        "joint": [0.70, 0.72, 0.71, 0.69, 0.73],
        "pdmp": [0.75, 0.78, 0.74, 0.74, 0.79],
        "uniform": [0.74, 0.71, 0.73, 0.70, 0.72],
        "inverse": [0.66, 0.69, 0.67, 0.66, 0.70],
        "lr": [0.71, 0.72, 0.72, 0.69, 0.73],
    }
    times = {"joint": 10.0, "pdmp": 12.0, "uniform": 11.0, "inverse": 12.5, "lr": 9.0}
    for name, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            run = {"metrics": {"val_acc": value + 0.01, "test_acc": value}, "wall_time_s": times[name] + seed}
            run["environment"] = ENV_B if (name, seed) == ("lr", 4) else ENV_A
            if name == "lr":
                run["applied"] = IDLE
            study.runs[(name, seed)] = run
    return study


CAPTION = (
    "Paired by seed; interval: paired Student-t, 5 seed(s); p: exact two-sided sign-flip permutation test (its "
    "smallest possible value is 2/2^n, so it needs >= 6 seeds to fall below 0.05). A verdict needs >= 3 paired "
    "seeds and differences that are not identical on every seed (else 'no verdict'). 'seeds for a verdict': how "
    "many seeds would make the observed mean difference significant if its spread stayed the same."
)
NOTES = [
    "**lr is not set against its control(s) absent**: they are not in the study, so the table cannot tell its "
    "mechanism from what they control for (e.g. a larger step for every encoder).",
    "",
    "**Applied nothing:** lr kept every coefficient at 1 and every auxiliary-loss weight at 0 on every recorded "
    "run, so trained as joint training does (a rule that never fired, or a policy not wired into the loop).",
    "",
    "**Runs from 2 environments.** The same code and seed can give other numbers on another CPU or library "
    "build, and wall times are not comparable across them; a difference between candidates run in different "
    "environments includes that. CPU-A (avx+avx2), 8 cpus, numpy 2.0, torch 2.5: 24 run(s) of inverse, joint, "
    "lr, pdmp, uniform (seeds 0, 1, 2, 3, 4); CPU-B, 4 cpus, numpy 2.1: 1 run(s) of lr (seeds 4).",
]


def test_the_table_of_a_five_seed_study_cell_by_cell():
    # pdmp - joint = (5, 6, 3, 5, 6): +5.0 [+3.5, +6.5]; uniform - joint = (4, -1, 2, 1, -1): n.s., and
    # t_{n-1} sd / sqrt(n) < 1 point first at n = 20 (sd 2.12); wall times: means 12 / 14 / 13 / 14.5 / 11.
    study = four_candidate_study()
    expected = [
        "| candidate | seeds | test_acc | minus joint [95% paired t-interval] | seeds for a verdict | wall time |",
        "|---|---|---|---|---|---|",
        "| joint | 5 | 71.0 ± 1.6 | (reference) | — | 1.00x |",
        "| pdmp | 5 | 76.0 ± 2.3 | +5.0 [+3.5, +6.5] **better** (p=0.062, n=5) | — | 1.17x |",
        "| uniform | 5 | 72.0 ± 1.6 | +1.0 [-1.6, +3.6] n.s. (p=0.5, n=5) | ~20 | 1.08x |",
        "| inverse | 5 | 67.6 ± 1.8 | -3.4 [-4.1, -2.7] **worse** (p=0.062, n=5) | — | 1.21x |",
        "| lr | 5 | 71.4 ± 1.5 | +0.4 [-0.3, +1.1] n.s. (p=0.5, n=5) | ~10 | 0.92x |",
        "",
        "| candidate | minus its control [95% paired t-interval] |",
        "|---|---|",
        "| pdmp | minus uniform: +4.0 [+0.3, +7.7] **better** (p=0.062, n=5) |",
        "| pdmp | minus inverse: +8.4 [+7.3, +9.5] **better** (p=0.062, n=5) |",
        "",
        CAPTION,
        "",
        *NOTES,
    ]
    assert study.to_markdown("test_acc").split("\n") == expected
    # The first metric the runs returned is the default.
    assert study.to_markdown() == study.to_markdown("val_acc")


def test_the_table_against_another_reference_for_a_loss():
    study = four_candidate_study()
    expected = [
        "| candidate | seeds | test_acc | minus uniform [95% paired t-interval] | seeds for a verdict | wall time |",
        "|---|---|---|---|---|---|",
        "| joint | 5 | 0.710 ± 0.016 | -0.010 [-0.036, +0.016] n.s. (p=0.5, n=5) | ~20 | 0.92x |",
        "| pdmp | 5 | 0.760 ± 0.023 | +0.040 [+0.003, +0.077] **worse** (p=0.062, n=5) | — | 1.08x |",
        "| uniform | 5 | 0.720 ± 0.016 | (reference) | — | 1.00x |",
        "| inverse | 5 | 0.676 ± 0.018 | -0.044 [-0.076, -0.012] **better** (p=0.062, n=5) | — | 1.12x |",
        "| lr | 5 | 0.714 ± 0.015 | -0.006 [-0.027, +0.015] n.s. (p=0.69, n=5) | ~33 | 0.85x |",
        "",
        "| candidate | minus its control [95% paired t-interval] |",
        "|---|---|",
        "| pdmp | minus inverse: +0.084 [+0.073, +0.095] **worse** (p=0.062, n=5) |",
        "",
        CAPTION,
        "",
        *NOTES,
    ]
    table = study.to_markdown("test_acc", reference="uniform", scale=1.0, digits=3, higher_is_better=False)
    assert table.split("\n") == expected


def test_the_table_of_unfinished_and_degenerate_candidates():
    # 3 seeds; values are exact binary fractions, so "identical on every seed" and "mean exactly 0" hold exactly.
    # The reference's wall time is 0, so no ratio can be given. flat - joint = (+12.5, -12.5, 0): mean 0,
    # "never"; tiny - joint = (25, -25, 4.6801): mean / sd = 0.06204, between t_{0.975, 1000} / sqrt(1001) =
    # 0.062024 and t_{0.975, 999} / sqrt(1000) = 0.062055: 1001 seeds would do, one more than are tried.
    extra = [
        Candidate("flat", NoModulation(RANKING.order), {"lr_scale": 1.0}),
        Candidate("tiny", NoModulation(RANKING.order), {"lr_scale": 1.5}),
        Candidate("one", NoModulation(RANKING.order), {"lr_scale": 3.0}),
    ]
    study = Study([*pdmp.default_candidates(RANKING), *extra], [0, 1, 2])
    values = {
        "joint": [0.5, 0.5, 0.5],
        "pdmp": [0.75, 0.625],
        "uniform": [0.625, 0.625, 0.625],
        "flat": [0.625, 0.375, 0.5],
        "tiny": [0.75, 0.25, 0.546801],
        "one": [0.5625],
    }
    for name, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            study.runs[(name, seed)] = {"metrics": {"acc": value}, "wall_time_s": 0.0 if name == "joint" else 1.0}
    expected = [
        "| candidate | seeds | acc | minus joint [95% paired t-interval] | seeds for a verdict | wall time |",
        "|---|---|---|---|---|---|",
        "| joint | 3 | 50.0 ± 0.0 | (reference) | — | — |",
        "| pdmp | 2 | 68.8 ± 8.8 | +18.8 [-60.7, +98.2] no verdict: too few seeds (n=2) | — | — |",
        "| uniform | 3 | 62.5 ± 0.0 | +12.5 [+12.5, +12.5] no verdict: zero spread (n=3) | — | — |",
        "| inverse | 0 | — | — | — | — |",
        "| flat | 3 | 50.0 ± 12.5 | +0.0 [-31.1, +31.1] n.s. (p=1, n=3) | never | — |",
        "| tiny | 3 | 51.6 ± 25.1 | +1.6 [-60.9, +64.0] n.s. (p=1, n=3) | > 1000 | — |",
        "| one | 1 | 56.2 | +6.2 no verdict: too few seeds (n=1) | — | — |",
        "",
        "| candidate | minus its control [95% paired t-interval] |",
        "|---|---|",
        "| pdmp | minus uniform: +6.2 [-73.2, +85.7] no verdict: too few seeds (n=2) |",
        "| pdmp | minus inverse: — (no seed finished both) |",
        "",
        CAPTION.replace("5 seed(s)", "3 seed(s)"),
    ]
    assert study.to_markdown().split("\n") == expected


# -- the search's choice ------------------------------------------------------------------------------------

# Validation accuracy by candidate and budget: the leader of the first rung is not the final choice, and the
# candidate dropped after the first rung would win the last one.
SEARCH_SCORES = {
    "uniform[g=0.5]": {1: 0.60, 2: 0.70, 3: 0.90},
    "uniform[g=2]": {1: 0.70, 2: 0.72, 3: 0.70},
    "uniform[g=3]": {1: 0.65, 2: 0.75, 3: 0.80},
    "uniform[g=5]": {1: 0.10, 2: 0.10, 3: 0.10},
    "joint[lr*1]": {1: 0.50, 2.5: 0.55, 3: 0.55},
    "joint[lr*2]": {1: 0.52, 2.5: 0.54, 3: 0.54},
}


def search_families(uniform: tuple[float, ...] = (0.5, 2.0, 3.0)) -> dict[str, list[Candidate]]:
    grid = gamma_grid(RANKING, gamma_p=(2.0,), gamma_r=(0.5,), uniform=uniform, lr_scales=(1.0, 2.0))
    return {"uniform": grid["uniform"], "joint_lr": grid["joint_lr"]}


def scripted_train(families: dict[str, list[Candidate]], calls: list, metric: str = "val_acc", sign: float = 1.0):
    """Returns SEARCH_SCORES (times ``sign``) for the candidate whose policy and options it is given."""

    def key(config: dict, options: dict) -> str:
        return json.dumps([config, options], sort_keys=True)

    names = {key(c.policy.get_config(), c.options): c.name for family in families.values() for c in family}

    def train(policy, seed, budget, **options):
        name = names[key(policy.get_config(), options)]
        calls.append((name, seed, budget))
        return {metric: sign * SEARCH_SCORES[name][budget] + 0.01 * seed, "test_acc": 0.0}

    return train


def test_successive_halving_keeps_the_best_ceil_n_over_eta_and_chooses_at_the_last_rung():
    families, calls = search_families(), []
    result = search_gammas(
        scripted_train(families, calls), families, [0, 2], metric="val_acc", budgets=(1, 3), eta=2, progress=False
    )
    # uniform: rung 1 keeps ceil(3 / 2) = 2 (g=2 at 0.70 and g=3 at 0.65), and g=3 wins at budget 3 (0.80 > 0.70);
    # g=0.5 (0.90 at budget 3) was dropped at rung 1. joint_lr keeps ceil(2 / 2) = 1: lr*2.
    assert {family: c.name for family, c in result.best.items()} == {
        "uniform": "uniform[g=3]",
        "joint_lr": "joint[lr*2]",
    }
    assert all(c.tuned_on == (0, 2) for c in result.candidates())
    assert [(name, budget) for name, seed, budget in calls if seed == 0] == [
        ("uniform[g=0.5]", 1),
        ("uniform[g=2]", 1),
        ("uniform[g=3]", 1),
        ("uniform[g=2]", 3),
        ("uniform[g=3]", 3),
        ("joint[lr*1]", 1),
        ("joint[lr*2]", 1),
        ("joint[lr*2]", 3),
    ]
    assert all(type(budget) is int for _, _, budget in calls)
    assert result.score("uniform") == pytest.approx(0.81) and result.score("joint_lr") == pytest.approx(0.55)
    cost = result.cost("uniform")
    assert (cost["runs"], cost["budget"]) == (10.0, 3 * 2 * 1 + 2 * 2 * 3.0)
    assert cost["wall_time_s"] == pytest.approx(
        sum(run["wall_time_s"] for study in result.rungs["uniform"] for run in study.runs.values())
    )
    assert [study.names for study in result.rungs["uniform"]] == [
        ["uniform[g=0.5]", "uniform[g=2]", "uniform[g=3]"],
        ["uniform[g=2]", "uniform[g=3]"],
    ]
    assert result.to_markdown().split("\n") == [
        "| family | chosen | val_acc (tuning seeds [0, 2], last rung) | runs | budget units | wall time |",
        "|---|---|---|---|---|---|",
        "| uniform | uniform[g=3] | 81.0 | 10 | 18 | 0 s |",
        "| joint_lr | joint[lr*2] | 55.0 | 6 | 10 | 0 s |",
        "",
        "Successive halving within each family over budgets [1.0, 3.0]; chosen on val_acc of the tuning seeds "
        "only. Compare the choices on other seeds (pdmp.compare).",
    ]
    assert (
        result.to_markdown(scale=1.0, digits=3).split("\n")[2] == "| uniform | uniform[g=3] | 0.810 | 10 | 18 | 0 s |"
    )


def test_a_search_on_a_loss_keeps_the_lowest():
    families, calls = search_families(), []
    result = search_gammas(
        scripted_train(families, calls, metric="val_loss"),
        {"joint_lr": families["joint_lr"]},
        [0],
        metric="val_loss",
        budgets=(1, 2.5),
        eta=2,
        higher_is_better=False,
        progress=False,
    )
    # Loss 0.50 (lr*1) < 0.52 (lr*2) at budget 1: lr*1 goes on, to budget 2.5 passed as a float.
    assert result.best["joint_lr"].name == "joint[lr*1]" and result.higher_is_better is False
    assert calls == [("joint[lr*1]", 0, 1), ("joint[lr*2]", 0, 1), ("joint[lr*1]", 0, 2.5)]
    assert result.budgets == (1.0, 2.5) and result.score("joint_lr") == pytest.approx(0.55)
    # eta 1 would keep everything: refused.
    with pytest.raises(ValueError, match="eta must be an integer >= 2"):
        search_gammas(scripted_train(families, []), families, [0], metric="val_acc", budgets=(1,), eta=1)


# -- what a policy applied ------------------------------------------------------------------------------------


def test_applied_record_keeps_each_modalitys_smallest_and_largest_value():
    record = AppliedRecord()
    record.update({"audio": 2.0, "image": 1.0})
    record.update({"audio": 5.0, "image": 0.5}, {"audio": 0.25})
    record.update({"audio": 3.0, 7: 1.0}, None)
    assert record.to_dict() == {
        "coefficients": {"audio": [2.0, 5.0], "image": [0.5, 1.0], "7": [1.0, 1.0]},
        "unimodal_loss_weights": {"audio": [0.25, 0.25]},
    }
    with pytest.raises(ValueError, match=r"coefficients\['audio'\] = nan is not finite"):
        record.update({"audio": float("nan")})
    with pytest.raises(ValueError, match=r"unimodal_loss_weights\['image'\] = inf is not finite"):
        record.update({"audio": 1.0}, {"image": float("inf")})


@pytest.mark.parametrize(
    ("applied", "match"),
    [
        ([1.0, 1.0], r"\(kind -> modality -> \[min, max\]\), got \[1.0, 1.0\]"),
        ({"gains": {}}, r"got the entry 'gains': \{\} \(kinds: coefficients, unimodal_loss_weights\)"),
        ({"coefficients": [1.0, 1.0]}, r"got the entry 'coefficients': \[1.0, 1.0\]"),
        ({"coefficients": {1: [1.0, 1.0]}}, r"got coefficients\[1\] = \[1.0, 1.0\]"),
        ({"coefficients": {"audio": 1.0}}, r"got coefficients\['audio'\] = 1.0"),
        ({"coefficients": {"audio": "12"}}, r"got coefficients\['audio'\] = '12'"),
        ({"coefficients": {"audio": [1.0]}}, r"got coefficients\['audio'\] = \[1.0\]"),
        ({"coefficients": {"audio": [1.0, 1.0, 1.0]}}, r"= \[1.0, 1.0, 1.0\]"),
        ({"coefficients": {"audio": [1.0, "2"]}}, r"= \[1.0, '2'\]"),
        ({"coefficients": {"audio": [True, 1.0]}}, r"= \[True, 1.0\]"),
        (
            {"unimodal_loss_weights": {"audio": [0.0, float("nan")]}},
            r"got unimodal_loss_weights\['audio'\] = \[0.0, nan\]",
        ),
        ({"coefficients": {"audio": [2.0, 1.0]}}, r"= \[2.0, 1.0\]"),
    ],
)
def test_a_malformed_applied_record_is_refused(applied, match):
    def train(policy, seed, **options):
        return {"acc": 0.5, APPLIED_KEY: applied}

    candidates = [Candidate("joint", NoModulation(RANKING.order))]
    with pytest.raises(StudyError, match=r"train\(...\) for candidate 'joint', seed 0: 'applied' must be .*" + match):
        compare(train, candidates, [0], progress=False)


def test_which_candidates_applied_nothing():
    candidates = [
        Candidate("joint", NoModulation(RANKING.order)),
        Candidate("joint_lr", NoModulation(RANKING.order), {"lr_scale": 2.0}),
        Candidate("weighted", NoModulation(RANKING.order), {"lr_scale": 3.0}),
        Candidate("once", NoModulation(RANKING.order), {"lr_scale": 4.0}),
        Candidate("unrecorded", NoModulation(RANKING.order), {"lr_scale": 5.0}),
        Candidate("bare", NoModulation(RANKING.order), {"lr_scale": 6.0}),
    ]
    study = Study(candidates, [0, 1])
    applied = {
        "joint": {"coefficients": {"audio": [1.0, 1.0]}},
        "joint_lr": {"coefficients": {"audio": [1, 1], "image": [1.0, 1.0]}},  # no auxiliary-loss entry at all
        "weighted": {"coefficients": {"audio": [1.0, 1.0]}, "unimodal_loss_weights": {"audio": [0.0, 0.5]}},
        "bare": {"unimodal_loss_weights": {"audio": [0.0, 0.0]}},  # no coefficients entry at all
    }
    for name in study.names:
        for seed in (0, 1):
            run = {"metrics": {"acc": 0.5}, "wall_time_s": 1.0}
            if name in applied:
                run["applied"] = applied[name]
            if name == "once":  # one run of two moved a coefficient
                run["applied"] = {"coefficients": {"audio": [1.0, 2.0 if seed else 1.0]}}
            study.runs[(name, seed)] = run
    # joint (no options) is joint training by definition; unrecorded returned no record.
    assert study.applied_nothing() == ["joint_lr", "bare"]
    assert "**Applied nothing:** joint_lr, bare kept every coefficient at 1" in study.to_markdown()


def test_the_default_eta_keeps_a_third_and_the_score_is_the_last_rungs(capsys):
    families, calls = search_families(uniform=(0.5, 2.0, 3.0, 5.0)), []
    families = {"uniform": families["uniform"]}
    result = search_gammas(scripted_train(families, calls), families, [0], metric="val_acc", budgets=(1, 2, 3))
    # ceil(4 / 3) = 2 after budget 1 (g=2, g=3), then ceil(2 / 3) = 1 after budget 2 (g=3 at 0.75).
    assert [len(study.names) for study in result.rungs["uniform"]] == [4, 2, 1]
    assert result.best["uniform"].name == "uniform[g=3]" and result.score("uniform") == pytest.approx(0.80)
    # Progress goes to stderr by default, from the search and from each rung's comparison.
    err = capsys.readouterr().err
    assert "search uniform: rung 0, budget 1, 4 candidate(s)" in err
    assert "search uniform: rung 2, budget 3, 1 candidate(s)" in err
    assert "[1/4] uniform[g=0.5], seed 0: val_acc=0.6, test_acc=0" in err


def test_search_refusals_name_the_problem(tmp_path):
    families = search_families()
    train = scripted_train(families, [])
    for metric in (5, ""):
        with pytest.raises(ValueError, match="metric must name a validation metric"):
            search_gammas(train, families, [0], metric=metric, budgets=(1,), progress=False)
    with pytest.raises(ValueError, match=r"choose gammas on validation .*, never on the test split"):
        search_gammas(train, families, [0], metric="Test_acc", budgets=(1,), progress=False)
    with pytest.raises(ValueError, match=r"^budgets "):
        search_gammas(train, families, [0], metric="val_acc", budgets=(0, 1), progress=False)
    with pytest.raises(ValueError, match=r"budgets must be a non-empty increasing sequence.*got \[1.0, 1.0\]"):
        search_gammas(train, families, [0], metric="val_acc", budgets=(1, 1), progress=False)
    with pytest.raises(ValueError, match="non-empty increasing"):
        search_gammas(train, families, [0], metric="val_acc", budgets=(), progress=False)
    for eta in (2.0, True, 1):
        with pytest.raises(ValueError, match="eta must be an integer >= 2"):
            search_gammas(train, families, [0], metric="val_acc", budgets=(1,), eta=eta, progress=False)
    for bad in (["uniform"], {}):
        with pytest.raises(
            ValueError,
            match=r"^families must be a non-empty dict: family name -> candidates \(see pdmp.search.gamma_grid\)$",
        ):
            search_gammas(train, bad, [0], metric="val_acc", budgets=(1,), progress=False)
    folder = tmp_path / "search"
    joint = {"joint_lr": families["joint_lr"]}
    search_gammas(train, joint, [0, 1], metric="val_acc", budgets=(1,), folder=folder, progress=False)
    path = folder / "joint_lr-rung0.json"
    with pytest.raises(
        ValueError, match=f"search file '{path}' was made on tuning seeds \\[0, 1\\], this search uses \\[1\\]"
    ):
        search_gammas(train, joint, [1], metric="val_acc", budgets=(1,), folder=folder, progress=False)
    # The same seeds in another order resume.
    again = search_gammas(train, joint, [1, 0], metric="val_acc", budgets=(1,), folder=folder, progress=False)
    assert again.best["joint_lr"].name == "joint[lr*2]"


def test_a_candidate_without_the_metric_is_named_with_what_it_returned():
    families = search_families()

    def train(policy, seed, budget, **options):
        if options.get("lr_scale") == 2.0:
            return {"accuracy": 0.9, "loss": 0.1}  # forgot val_acc
        return {"val_acc": 0.5, "f1": 0.5}

    with pytest.raises(
        StudyError,
        match=r"'joint\[lr\*2\]' has no 'val_acc' on tuning seed\(s\) \[0\] \(its train function returned "
        r"accuracy, loss\); return 'val_acc' from every run",
    ):
        search_gammas(train, {"joint_lr": families["joint_lr"]}, [0], metric="val_acc", budgets=(1,), progress=False)


# -- the table's corners -------------------------------------------------------------------------------------


def test_rows_default_to_higher_is_better_and_name_seeds_needed():
    rows = {row["candidate"]: row for row in four_candidate_study().rows("test_acc")}
    assert rows["pdmp"]["difference"]["verdict"] == "better" and rows["pdmp"]["seeds_needed"] is None
    assert rows["uniform"]["difference"]["verdict"] == "no significant difference"
    assert rows["uniform"]["seeds_needed"] == 20
    assert rows["joint"]["difference"] is None and rows["joint"]["relative_wall_time"] == 1.0
    assert rows["pdmp"]["relative_wall_time"] == pytest.approx(14.0 / 12.0)
    assert rows["pdmp"]["mean"] == pytest.approx(0.76) and rows["pdmp"]["sd"] == pytest.approx(
        np.std([0.75, 0.78, 0.74, 0.74, 0.79], ddof=1)
    )


def test_a_candidate_with_no_seed_in_common_with_the_reference_gets_no_difference():
    candidates = pdmp.default_candidates(RANKING)[:2]
    study = Study(candidates, [0, 1, 2, 3])
    for seed in (0, 1):
        study.runs[("joint", seed)] = {"metrics": {"acc": 0.5}, "wall_time_s": 1.0}
    for seed in (2, 3):
        study.runs[("pdmp", seed)] = {"metrics": {"acc": 0.6}, "wall_time_s": 3.0}
    row = study.rows("acc")[1]
    assert (row["n"], row["difference"], row["seeds_needed"], row["relative_wall_time"]) == (2, None, None, 3.0)
    assert "| pdmp | 2 | 60.0 ± 0.0 | — | — | 3.00x |" in study.to_markdown().split("\n")
    with pytest.raises(ValueError, match=r"^the study has no finished runs yet$"):
        Study(candidates, [0]).to_markdown()
    with pytest.raises(ValueError, match="unknown metric 'f1'; the train function returned acc"):
        study.to_markdown("f1")


def test_paired_defaults_and_refusal():
    study = four_candidate_study()
    assert study.paired("inverse", "test_acc").verdict == "worse"
    assert study.paired("inverse", "test_acc", higher_is_better=False).verdict == "better"
    assert (
        study.paired("pdmp", "test_acc", reference="inverse").format() == "+8.4 [+7.3, +9.5] **better** (p=0.062, n=5)"
    )
    study.runs = {key: run for key, run in study.runs.items() if key != ("joint", 2)}
    assert study.paired("pdmp", "test_acc").n == 4  # only the seeds both finished
    del study.runs[("pdmp", 0)]
    assert study.paired("pdmp", "test_acc").n == 3
    empty = Study(pdmp.default_candidates(RANKING), [0])
    empty.runs[("joint", 0)] = {"metrics": {"acc": 0.5}, "wall_time_s": 1.0}
    with pytest.raises(ValueError, match="no seed has finished runs of both 'pdmp' and 'joint' with metric 'acc'"):
        empty.paired("pdmp", "acc")


def test_only_pdmp_itself_is_set_against_the_controls_without_asking():
    class TunedPDMP(pdmp.PDMP):  # a user's variant: its controls are its own to declare
        kind = "TunedPDMP"

    variant = TunedPDMP.from_ranking(RANKING, gamma_p=5.0)
    candidates = [*pdmp.default_candidates(RANKING), Candidate("variant", variant)]
    assert Study(candidates, [0]).decisive_pairs() == [("pdmp", "uniform"), ("pdmp", "inverse")]


def test_gamma_grid_passes_the_schedule_to_every_policy_and_names_bad_values():
    grid = gamma_grid(RANKING, gamma_p=(0.5,), gamma_r=(0.1,), uniform=(2.0,), lr_scales=(3.0,), ramp=2)
    configs = {family: [c.policy.get_config() for c in candidates] for family, candidates in grid.items()}
    # gamma_p below 1 is a legitimate grid point: PDMP is built with allow_inverse.
    assert configs["pdmp"][0]["allow_inverse"] is True and configs["pdmp"][0]["gamma_p"] == 0.5
    assert (configs["pdmp"][0]["gamma_r"], configs["inverse"][0]["gamma_p"], configs["inverse"][0]["gamma_r"]) == (
        0.1,
        0.5,
        0.1,
    )
    for family in ("pdmp", "uniform", "inverse"):
        assert (configs[family][0]["warmup"], configs[family][0]["ramp"]) == (1, 2), family
    assert grid["joint_lr"][0].options == {"lr_scale": 3.0}
    assert gamma_grid(RANKING, uniform=(2.0,), warmup=0)["uniform"][0].policy.get_config()["warmup"] == 0
    with pytest.raises(TypeError, match="gamma_r must be a list or tuple such as"):
        gamma_grid(RANKING, gamma_r=0.5)
    with pytest.raises(ValueError, match=r"^gamma_p "):
        gamma_grid(RANKING, gamma_p=(0.0,))
    with pytest.raises(ValueError, match=r"^gamma_r "):
        gamma_grid(RANKING, gamma_r=(-1.0,))
    with pytest.raises(ValueError, match=r"^lr_scales "):
        gamma_grid(RANKING, lr_scales=(float("inf"),))


def test_default_candidates_share_one_schedule():
    configs = {c.name: c.policy.get_config() for c in pdmp.default_candidates(RANKING, ramp=3)}
    assert (configs["pdmp"]["gamma_p"], configs["pdmp"]["gamma_r"]) == (10.0, 0.5)
    assert configs["uniform"]["gamma"] == 10.0
    assert (configs["inverse"]["gamma_p"], configs["inverse"]["gamma_r"]) == (10.0, 0.5)
    for name in ("pdmp", "uniform", "inverse"):
        assert (configs[name]["warmup"], configs[name]["ramp"]) == (0, 3), name
    custom = {c.name: c.policy.get_config() for c in pdmp.default_candidates(RANKING, gamma_p=4.0, gamma_r=0.25)}
    assert (custom["inverse"]["gamma_p"], custom["inverse"]["gamma_r"], custom["uniform"]["gamma"]) == (4.0, 0.25, 4.0)
    assert (custom["pdmp"]["gamma_p"], custom["pdmp"]["gamma_r"]) == (4.0, 0.25)


def test_environments_are_listed_in_seed_order():
    candidates = [Candidate("a", NoModulation(RANKING.order)), Candidate("b", NoModulation(RANKING.order), {"x": 1})]
    study = Study(candidates, [0, 1])
    study.runs[("a", 1)] = {"metrics": {"acc": 0.5}, "wall_time_s": 1.0, "environment": ENV_A}
    study.runs[("b", 0)] = {"metrics": {"acc": 0.5}, "wall_time_s": 1.0, "environment": ENV_B}
    study.runs[("b", 1)] = {"metrics": {"acc": 0.5}, "wall_time_s": 1.0}
    assert list(study.environments().items()) == [
        ("CPU-B, 4 cpus, numpy 2.1", [("b", 0)]),
        ("CPU-A (avx+avx2), 8 cpus, numpy 2.0, torch 2.5", [("a", 1)]),
        ("unrecorded", [("b", 1)]),
    ]
    assert environment_signature({"cpus": 2}) == "?, 2 cpus, numpy ?"
    assert environment_signature({"cpu": "C", "frameworks": {"torch": "2.5", "jax": "0.4"}}) == (
        "C, ? cpus, numpy ?, jax 0.4 torch 2.5"
    )
    with pytest.raises(ValueError, match="unknown metric 'f1'; the train function returned val_acc, test_acc"):
        four_candidate_study().to_markdown("f1")


# -- resume refusals ----------------------------------------------------------------------------------------


def constant_train(policy, seed, **options):
    return {"acc": 0.5 + 0.01 * seed}


def test_a_resume_refusal_names_the_first_differing_run_by_seed_and_the_differing_options(tmp_path):
    path = tmp_path / "study.json"
    candidates = pdmp.default_candidates(RANKING)
    compare(constant_train, candidates, [0, 1], path=path, progress=False, train_options={"budget": 3})
    saved = json.loads(path.read_text())
    for run in saved["runs"]:
        if (run["candidate"], run["seed"]) == ("inverse", 0):
            run["train_options"] = {"budget": 10}  # as this call will pass
    path.write_text(json.dumps(saved))
    expected = (
        f"study file '{path}': the run of 'joint' on seed 0 was made with train_options {{'budget': 3}}, this call "
        "passes {'budget': 10} (differs in: budget); its score would be reported under the new options. Resume "
        "with the same train_options, or use a new path"
    )
    with pytest.raises(ValueError) as refused:
        compare(constant_train, candidates, [0, 1], path=path, progress=False, train_options={"budget": 10})
    assert str(refused.value) == expected


@pytest.mark.parametrize(
    ("stored", "passed", "differing"),
    [
        ({"budget": 3}, {"budget": 3, "fraction": None}, "fraction"),
        ({"budget": 3, "fraction": None}, {"budget": 3}, "fraction"),
        ({"budget": 3, "fraction": 0.5}, {"budget": 3, "fraction": 0.25}, "fraction"),
        ({"budget": 3, "fraction": 0.5}, {"budget": 4, "fraction": 0.25}, "budget, fraction"),
    ],
)
def test_a_resume_refusal_lists_exactly_the_options_that_differ(tmp_path, stored, passed, differing):
    path = tmp_path / "study.json"
    candidates = pdmp.default_candidates(RANKING)[:1]
    compare(constant_train, candidates, [0], path=path, progress=False, train_options=stored)
    with pytest.raises(ValueError, match=rf"\(differs in: {differing}\); its score"):
        compare(constant_train, candidates, [0], path=path, progress=False, train_options=passed)


def test_runs_saved_without_train_options_are_counted_in_the_note(tmp_path):
    path = tmp_path / "study.json"
    candidates = pdmp.default_candidates(RANKING)[:2]
    compare(constant_train, candidates, [0, 1], path=path, progress=False)
    saved = json.loads(path.read_text())
    for run in saved["runs"][:3]:
        del run["train_options"]
    path.write_text(json.dumps(saved))
    messages: list[str] = []
    compare(constant_train, candidates, [0, 1], path=path, progress=messages.append)
    assert messages[0] == (
        f"note: 3 run(s) in '{path}' were saved without their train_options, so whether they were made under "
        "these cannot be checked; they are reused as they are"
    )
    assert messages[1] == f"resuming '{path}': 4 run(s) already finished, 0 to go"


# -- the study file -----------------------------------------------------------------------------------------


def test_a_saved_study_prints_the_same_table_after_loading(tmp_path):
    study = four_candidate_study()
    study.reference = "uniform"  # not the first candidate: the file must keep it
    study.candidates[1] = Candidate(
        "pdmp", study.candidates[1].policy, controls=("uniform", "inverse"), tuned_on=(7, 8)
    )
    path = study.save(tmp_path / "new" / "folder" / "study.json")  # folders are created
    saved = json.loads(path.read_text())
    assert [(run["candidate"], run["seed"]) for run in saved["runs"][:6]] == [
        ("inverse", 0),
        ("joint", 0),
        ("lr", 0),
        ("pdmp", 0),
        ("uniform", 0),
        ("inverse", 1),
    ]
    loaded = Study.load(path)
    assert loaded.reference == "uniform" and loaded.candidate("pdmp").tuned_on == (7, 8)
    assert loaded.runs == study.runs
    assert loaded.to_markdown("test_acc") == study.to_markdown("test_acc")
    assert "**Applied nothing:** lr" in loaded.to_markdown("test_acc")
    with pytest.raises(ValueError, match="unknown candidate 'x'; candidates: joint, pdmp, uniform, inverse, lr"):
        loaded.candidate("x")


def test_a_candidate_saved_before_options_and_tuned_on_existed_loads():
    policy = NoModulation(RANKING.order).get_config()
    candidate = Candidate.from_dict({"name": "joint", "policy": policy})
    assert (candidate.options, candidate.tuned_on, candidate.controls) == ({}, (), ())
    with pytest.raises(TypeError, match=r"a candidate must be a dict, got \['joint'\]"):
        Candidate.from_dict(["joint"])


def study_file(tmp_path, edit) -> str:
    path = tmp_path / "study.json"
    compare(constant_train, pdmp.default_candidates(RANKING)[:2], [0], path=path, progress=False)
    saved = json.loads(path.read_text())
    edit(saved)
    path.write_text(json.dumps(saved))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(format="other"), "ValueError(\"not a pdmp study (format 'other')\")"),
        (lambda s: s.update(runs={}), "ValueError('runs must be a list, got dict')"),
        (lambda s: s["runs"].append(3), "ValueError('a run must be a dict, got 3')"),
        (lambda s: s["runs"][0].update(seed=-1), "ValueError('run seed must be an integer >= 0, got -1')"),
        (
            lambda s: s["runs"][0]["metrics"].update(acc="high"),
            "StudyError(\"train(...) for candidate 'joint', seed 0 returned acc='high', which is not a number\")",
        ),
        (lambda s: s["runs"][0].update(wall_time_s=-1.0), "ValueError(\"run ('joint', 0): wall_time_s must be"),
        (lambda s: s["runs"][0].update(applied=[1]), "StudyError(\"run ('joint', 0): 'applied' must be"),
    ],
)
def test_a_corrupt_study_file_is_named_with_what_is_wrong(tmp_path, edit, message):
    path = study_file(tmp_path, edit)
    with pytest.raises(ValueError) as refused:
        Study.load(path)
    assert str(refused.value).startswith(f"cannot read study file '{path}': {message}")
    assert str(refused.value).endswith("; fix the entry named there, or move the file away to start the study afresh")


def test_a_study_file_that_is_not_a_dict_or_has_a_zero_wall_time(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(ValueError, match=r"not a pdmp study \(format None\)"):
        Study.load(listed)
    path = study_file(tmp_path, lambda s: s["runs"][0].update(wall_time_s=0))
    assert Study.load(path).runs[("joint", 0)]["wall_time_s"] == 0.0


# -- what a run records about its environment -------------------------------------------------------------


def test_the_cpu_is_read_from_the_first_model_name_and_flags(monkeypatch):
    import io

    cpuinfo = (
        "processor\t: 0\nmodel name\t: Vendor CPU @ 2.20GHz: rev 2\nflags\t\t: fpu avx2 sse4_2 avx512f\n\n"
        "processor\t: 1\nmodel name\t: Other CPU\nflags\t\t: fpu\n"
    )
    module = sys.modules["pdmp.compare"]  # pdmp.compare is also the name of the function
    monkeypatch.setattr(module, "open", lambda *args, **kwargs: io.StringIO(cpuinfo), raising=False)
    assert _cpu() == ("Vendor CPU @ 2.20GHz: rev 2", ["sse4_2", "avx2", "avx512f"])
    arm = "processor\t: 0\nFeatures\t: fp asimd sve\nCPU part\t: 0xd0c\n"
    monkeypatch.setattr(module, "open", lambda *args, **kwargs: io.StringIO(arm), raising=False)
    monkeypatch.setattr("platform.processor", lambda: "proc")
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert _cpu() == ("proc", ["asimd", "sve"])
    monkeypatch.setattr("platform.processor", lambda: "")
    assert _cpu() == ("aarch64", ["asimd", "sve"])


def test_a_run_records_the_frameworks_already_imported(monkeypatch):
    import platform
    import types

    monkeypatch.setitem(sys.modules, "jax", types.SimpleNamespace(__version__="0.4.1"))
    monkeypatch.setitem(sys.modules, "lightning", types.SimpleNamespace())
    monkeypatch.setattr("os.cpu_count", lambda: None)
    environment = run_environment()
    assert set(environment) == {
        "cpu", "cpu_features", "cpus", "platform", "python", "numpy", "frameworks", "host", "arithmetic_variables"
    }  # fmt: skip
    assert environment["frameworks"]["jax"] == "0.4.1" and environment["frameworks"]["lightning"] == "unknown"
    assert environment["cpus"] == 0
    assert (environment["platform"], environment["python"]) == (platform.platform(), platform.python_version())


# -- the comparison harness: its messages, its refusals, what a run records ---------------------------------


class FakeClock:
    """time.perf_counter for compare(): each run takes 2 s more than the one before (2, 4, 6, ...)."""

    def __init__(self) -> None:
        self.now, self.calls = 100.0, 0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # the reading after train(...)
            self.now += self.calls
        return self.now


def test_compare_reports_each_run_and_records_its_wall_time(monkeypatch, capsys):
    monkeypatch.setattr(sys.modules["pdmp.compare"].time, "perf_counter", FakeClock())
    record = AppliedRecord()
    record.update({"audio": 1.0, "image": 1.0})

    def train(policy, seed, **options):
        return {APPLIED_KEY: record.to_dict(), "acc": 0.5 + 0.125 * seed, "f1": 0.25}

    candidates = pdmp.default_candidates(RANKING)[:2]
    study = compare(train, candidates, [0, 1])
    assert [run["wall_time_s"] for run in study.runs.values()] == [2.0, 4.0, 6.0, 8.0]
    assert study.runs[("joint", 0)]["applied"] == record.to_dict()
    assert study.runs[("joint", 0)]["metrics"] == {"acc": 0.5, "f1": 0.25}
    assert capsys.readouterr().err.split("\n") == [
        "[1/4] joint, seed 0: acc=0.5, f1=0.25 (2.0 s)",
        "[2/4] pdmp, seed 0: acc=0.5, f1=0.25 (4.0 s)",
        "[3/4] joint, seed 1: acc=0.625, f1=0.25 (6.0 s)",
        "[4/4] pdmp, seed 1: acc=0.625, f1=0.25 (8.0 s)",
        "",
    ]


def test_a_resume_from_another_environment_says_so_only_when_runs_are_left(tmp_path):
    path = tmp_path / "study.json"
    candidates = pdmp.default_candidates(RANKING)[:2]
    compare(constant_train, candidates, [0], path=path, progress=False)
    saved = json.loads(path.read_text())
    for run in saved["runs"]:
        run["environment"] = ENV_B if run["candidate"] == "joint" else ENV_A
    path.write_text(json.dumps(saved))
    messages: list[str] = []
    compare(constant_train, candidates, [0], path=path, progress=messages.append)
    assert messages == [f"resuming '{path}': 2 run(s) already finished, 0 to go"]
    messages.clear()
    compare(constant_train, candidates, [0, 1], path=path, progress=messages.append)
    here = environment_signature(run_environment())
    assert messages[1] == (
        "note: finished runs come from another environment (CPU-A (avx+avx2), 8 cpus, numpy 2.0, torch 2.5; CPU-B, "
        f"4 cpus, numpy 2.1) than this one ({here}); "
        "the same seed can give other numbers there, so the table will say the runs are mixed"
    )


def test_a_train_function_that_raises_is_reported_with_what_is_saved(tmp_path):
    def train(policy, seed, **options):
        if seed == 1:
            raise RuntimeError("out of memory")
        return {"acc": 0.5}

    candidates = pdmp.default_candidates(RANKING)[:1]
    path = tmp_path / "study.json"
    with pytest.raises(StudyError) as failed:
        compare(train, candidates, [0, 1], path=path, progress=False)
    assert str(failed.value) == (
        f"train(...) raised for candidate 'joint', seed 1: RuntimeError('out of memory'); the 1 finished run(s) "
        f"are saved in '{path}'"
    )
    with pytest.raises(StudyError) as failed:
        compare(train, candidates, [1], progress=False)
    assert str(failed.value) == "train(...) raised for candidate 'joint', seed 1: RuntimeError('out of memory')"


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([0.5], "returned [0.5]; it must return a non-empty dict of metric name -> number, e.g. {'val_acc': 0.81, "
         "'test_acc': 0.79}"),
        ({1: 0.5}, "returned a metric named 1; metric names must be strings"),
        ({"acc": [0.5]}, "returned acc=[0.5], which is not a number"),
        ({"acc": True}, "returned acc=True, which is not a number"),
        ({"acc": float("nan")}, "returned acc=nan; metrics must be finite (a diverged run should report its "
         "accuracy, not a NaN loss)"),
        ({APPLIED_KEY: {}}, "returned no metric beside 'applied'; return e.g. {'val_acc': 0.81}"),
    ],
)  # fmt: skip
def test_unusable_metrics_are_refused_with_the_run_named(returned, message):
    candidates = pdmp.default_candidates(RANKING)[:1]
    with pytest.raises(StudyError) as refused:
        compare(lambda policy, seed: returned, candidates, [3], progress=False)
    assert str(refused.value) == f"train(...) for candidate 'joint', seed 3 {message}"


def test_the_applied_record_may_come_first():
    def train(policy, seed, **options):
        return {APPLIED_KEY: {"coefficients": {"audio": [1.0, 1.0]}}, "acc": 0.5}

    study = compare(train, pdmp.default_candidates(RANKING)[:1], [0], progress=False)
    assert study.runs[("joint", 0)]["metrics"] == {"acc": 0.5}


def test_compare_refusals_name_the_problem(tmp_path):
    candidates = pdmp.default_candidates(RANKING)
    with pytest.raises(TypeError, match=r"^train must be a function train\(policy, seed, \*\*options\) -> metrics"):
        compare("train", candidates, [0], progress=False)
    for options in (["budget"], {1: 2}):
        with pytest.raises(TypeError, match=r"^train_options must be a dict with string keys, e.g. \{'budget': 10\}"):
            compare(constant_train, candidates, [0], progress=False, train_options=options)
    with pytest.raises(TypeError, match=r"^train_options \{'lr': nan\} are not JSON-serialisable .*; use numbers"):
        compare(constant_train, candidates, [0], progress=False, train_options={"lr": float("nan")})
    tuned = [candidates[0], Candidate("tuned", candidates[1].policy, tuned_on=(1, 2))]
    with pytest.raises(ValueError) as refused:
        compare(constant_train, tuned, [0, 1, 2], progress=False)
    assert str(refused.value) == (
        "candidate 'tuned' was tuned on seed(s) [1, 2], which are also evaluation seeds; evaluate on seeds it was "
        "not tuned on (its tuning runs are optimistically biased)"
    )
    with pytest.raises(ValueError, match=r"^no candidates to compare; e.g. pdmp.default_candidates\(ranking\)$"):
        compare(constant_train, [], [0], progress=False)
    with pytest.raises(ValueError, match=r"^no seeds given; pass e.g. seeds=range\(5\) \(3-10 seeds for a verdict\)$"):
        compare(constant_train, candidates, [], progress=False)
    with pytest.raises(ValueError, match=r"^seed must be an integer >= 0, got -1"):
        compare(constant_train, candidates, [-1], progress=False)
    with pytest.raises(
        ValueError, match=r"^unknown reference candidate 'x'; candidates: joint, pdmp, uniform, inverse$"
    ):
        compare(constant_train, candidates, [0], reference="x", progress=False)
    path = tmp_path / "study.json"
    compare(constant_train, candidates[:2], [0], path=path, progress=False)
    changed = [candidates[0], Candidate("pdmp", candidates[2].policy)]
    with pytest.raises(ValueError) as refused:
        compare(constant_train, changed, [0], path=path, progress=False)
    assert str(refused.value) == (
        f"study file '{path}' holds another candidate set (differs in: pdmp); resume with the same candidates "
        "(new ones may be added), or use a new path"
    )


def test_the_same_configuration_is_announced_whatever_the_order_of_its_options():
    twins = [
        Candidate("a", NoModulation(RANKING.order), {"lr_scale": 2.0, "wd": 0.1}),
        Candidate("b", NoModulation(RANKING.order), {"wd": 0.1, "lr_scale": 2.0}),
    ]
    assert json.loads(twins[0].configuration()) == {
        "policy": NoModulation(RANKING.order).get_config(),
        "options": {"lr_scale": 2.0, "wd": 0.1},
    }
    messages: list[str] = []
    with pytest.warns(UserWarning) as warned:
        compare(constant_train, twins, [0], progress=messages.append)
    text = (
        "candidates 'a', 'b' have the same policy and options: each is trained separately and they differ only "
        "by run-to-run noise; drop all but one unless that is the point"
    )
    assert [str(w.message) for w in warned] == [text]
    assert messages[0] == f"note: {text}"


def test_a_candidate_keeps_its_own_copies_and_refuses_bad_fields():
    options = {"lr_scale": 2.0}
    candidate = Candidate("joint", NoModulation(RANKING.order), options, tuned_on=[3], controls=["other"])
    options["lr_scale"] = 5.0
    assert (candidate.options, candidate.tuned_on, candidate.controls) == ({"lr_scale": 2.0}, (3,), ("other",))
    policy = NoModulation(RANKING.order)
    refusals = [
        ({"name": "  "}, ValueError, "candidate name must be a non-empty string, got '  '"),
        ({"name": 5}, ValueError, "candidate name must be a non-empty string, got 5"),
        ({"policy": "joint"}, TypeError, "candidate 'c': policy must be a pdmp policy (e.g. pdmp.PDMP(...), "
         "pdmp.NoModulation(...)), got str"),
        ({"options": ["lr_scale"]}, TypeError, "candidate 'c': options must be a dict with string keys, got "
         "['lr_scale']"),
        ({"options": {"lr": float("nan")}}, TypeError, "candidate 'c': options {'lr': nan} are not "
         "JSON-serialisable ("),
        ({"tuned_on": "01"}, TypeError, "candidate 'c': tuned_on must be a sequence of seeds, got '01'"),
        ({"tuned_on": [-1]}, ValueError, "c tuned_on seed must be an integer >= 0, got -1"),
        ({"controls": ("",)}, ValueError, "candidate 'c': controls must name other candidates of the study, got ('',)"),
        ({"controls": (5,)}, ValueError, "candidate 'c': controls must name other candidates of the study, got (5,)"),
        ({"controls": ("c",)}, ValueError, "candidate 'c': controls must name other candidates"),
    ]  # fmt: skip
    for fields, error, message in refusals:
        with pytest.raises(error) as refused:
            Candidate(**{"name": "c", "policy": policy, **fields})
        assert str(refused.value).startswith(message), fields
    with pytest.raises(TypeError) as refused:  # json's own words in between differ between Python versions
        Candidate("c", policy, {"lr": float("nan")})
    assert str(refused.value).endswith("); use numbers, strings, lists and dicts")


def test_student_t_cdf_at_zero_is_one_half():
    from pdmp.stats import student_t_cdf

    for df in (1, 4, 30):
        assert student_t_cdf(0.0, df) == 0.5
    assert student_t_cdf(T_4, 4) == pytest.approx(0.975, abs=1e-12)
    assert student_t_cdf(-T_4, 4) == pytest.approx(0.025, abs=1e-12)


def test_an_applied_range_keeps_its_minimum():
    def train(policy, seed, **options):
        return {"acc": 0.5, APPLIED_KEY: {"coefficients": {"audio": [0.5, 1.0]}}}

    study = compare(train, [Candidate("lowered", NoModulation(RANKING.order), {"x": 1})], [0], progress=False)
    assert study.runs[("lowered", 0)]["applied"] == {"coefficients": {"audio": [0.5, 1.0]}}
    assert study.applied_nothing() == []


def test_recorded_train_options_are_sorted_and_a_silent_search_prints_nothing(capsys):
    study = compare(
        constant_train, pdmp.default_candidates(RANKING)[:1], [0], progress=False, train_options={"b": 1, "a": 2}
    )
    assert list(study.runs[("joint", 0)]["train_options"]) == ["a", "b"]
    families = search_families()
    search_gammas(scripted_train(families, []), families, [0], metric="val_acc", budgets=(1,), progress=False)
    assert capsys.readouterr().err == ""


def test_wall_time_of_a_candidate_without_runs_is_nan_without_a_warning():
    study = Study(pdmp.default_candidates(RANKING), [0])
    study.runs[("joint", 0)] = {"metrics": {"acc": 0.5, "f1": 0.5}, "wall_time_s": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(study.wall_time("pdmp"))
    with pytest.raises(ValueError, match=r"^unknown metric 'x'; the train function returned acc, f1$"):
        study.values("pdmp", "x")


# -- names that become files, and fields a study file may hold -------------------------------------------------


def test_family_names_are_checked_where_they_become_file_names(tmp_path):
    families = search_families()
    train = scripted_train(families, [])
    with pytest.raises(ValueError, match=r"^family name '\.\./x' '\.\./x' contains '/'"):
        search_gammas(train, {"../x": families["joint_lr"]}, [0], metric="val_acc", budgets=(1,), folder=tmp_path)
    with pytest.raises(TypeError, match=r"^family name 3 must be a string"):
        search_gammas(train, {3: families["joint_lr"]}, [0], metric="val_acc", budgets=(1,), progress=False)
    # Without a folder no file is named after a family: any string will do.
    result = search_gammas(
        train, {"lr/joint": families["joint_lr"]}, [0], metric="val_acc", budgets=(1,), progress=False
    )
    assert result.best["lr/joint"].name == "joint[lr*2]"
    with pytest.raises(TypeError, match=r"^budgets must be a list or tuple such as \(3, 10\), got int 5"):
        search_gammas(train, families, [0], metric="val_acc", budgets=5, progress=False)


def test_a_study_file_with_an_unknown_field_or_an_unlisted_seed_is_refused(tmp_path):
    path = study_file(tmp_path / "extra", lambda s: s["runs"][0].update(extra=1))
    with pytest.raises(
        ValueError, match=r"a run has unknown field\(s\) \['extra'\]; known: \['applied', 'candidate', "
    ):
        Study.load(path)
    path = study_file(tmp_path / "seed", lambda s: s["runs"][0].update(seed=5))
    with pytest.raises(ValueError, match=r"run of 'joint' on seed 5, which the study's seeds \[0\] do not list"):
        Study.load(path)
    path.write_text("{")
    with pytest.raises(ValueError) as refused:
        Study.load(path)
    assert f"ValueError('{path} is not valid JSON" in str(refused.value)


def test_a_metric_beyond_float_range_and_a_partial_difference_dict_are_named():
    with pytest.raises(StudyError, match=r"^train\(...\) for candidate 'joint', seed 0 returned acc: metric acc must"):
        compare(lambda policy, seed: {"acc": 10**400}, pdmp.default_candidates(RANKING)[:1], [0], progress=False)
    with pytest.raises(ValueError, match=r"^PairedDifference dict: missing key\(s\) \['sd'"):
        PairedDifference.from_dict({"mean": 1.0})


def test_a_run_records_tensorflows_thread_pools(monkeypatch):
    import types

    threading = types.SimpleNamespace(
        get_intra_op_parallelism_threads=lambda: 2, get_inter_op_parallelism_threads=lambda: 3
    )
    monkeypatch.setitem(
        sys.modules, "tensorflow", types.SimpleNamespace(config=types.SimpleNamespace(threading=threading))
    )
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert _framework_threads() == {"tf_threads": [2, 3]}


def test_the_table_names_a_bad_scale_or_digits():
    study = Study(pdmp.default_candidates(RANKING), [0])
    study.runs[("joint", 0)] = {"metrics": {"acc": 0.5}, "wall_time_s": 1.0}
    with pytest.raises(TypeError, match=r"^scale must be a number, got str 'x'"):
        study.to_markdown(scale="x")
    with pytest.raises(ValueError, match=r"^digits must be an integer >= 0, got -1"):
        study.to_markdown(digits=-1)


def test_thread_counts_and_arithmetic_variables_are_part_of_the_environment_label():
    environment = {
        "cpu": "C",
        "cpus": 2,
        "numpy": "2",
        "torch_threads": 4,
        "torch_cpu_capability": "AVX2",
        "tf_threads": [2, 3],
        "arithmetic_variables": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"},
    }
    assert environment_signature(environment) == (
        "C, 2 cpus, numpy 2, torch 4 thread(s), AVX2, tensorflow threads [2, 3], MKL_NUM_THREADS=2 OMP_NUM_THREADS=1"
    )
    assert environment_signature({"cpu": "C", "cpus": 2, "numpy": "2", "torch_threads": 4}) == (
        "C, 2 cpus, numpy 2, torch 4 thread(s), ?"
    )


def test_candidates_and_seeds_given_as_a_single_value_are_refused_with_the_fix():
    joint = pdmp.default_candidates(RANKING)[0]
    with pytest.raises(TypeError) as refused:
        compare(constant_train, joint, [0], progress=False)
    assert (
        str(refused.value)
        == "candidates must be a list of pdmp.Candidate objects; for one candidate write ['joint' ...]"
    )
    with pytest.raises(TypeError) as refused:
        compare(constant_train, 5, [0], progress=False)
    assert str(refused.value).startswith("candidates must be a list or tuple such as pdmp.default_candidates(ranking)")
    with pytest.raises(TypeError) as refused:
        compare(constant_train, [joint], 3, progress=False)
    assert (
        str(refused.value)
        == "seeds must be a list or tuple such as range(5), got int 3; for a single value write [value]"
    )
