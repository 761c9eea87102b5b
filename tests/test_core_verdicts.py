"""The verdict rule, run identity on resume, and the study file's integrity (NumPy only).

Each test here failed on the code before the rule it checks existed: a zero-width interval called
"better", a resumed study or search reusing runs made under another budget or other tuning seeds, a
study file holding one run twice, a candidate without the search metric chosen with a NaN mean.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import pdmp
from pdmp.compare import APPLIED_KEY, AppliedRecord, Candidate, Study, StudyError, compare, default_candidates
from pdmp.search import gamma_grid, search_gammas
from pdmp.stats import MIN_SEEDS_FOR_VERDICT, paired_difference, sign_flip_p_value

RANKING = pdmp.Ranking(order=("audio", "image"), scores={"audio": 0.8, "image": 0.5})


def noisy_train(calls: list | None = None):
    """'Accuracy' rising with the dominant coefficient and with ``lr_scale`` and ``budget``, plus seed noise."""

    def train(policy, seed, budget=1, **options):
        if calls is not None:
            calls.append((policy.get_config()["type"], seed, budget, options))
        k = policy.coefficients(epoch=5)
        rng = np.random.default_rng(seed)
        score = 0.6 + 0.02 * math.log(k["audio"]) + 0.01 * options.get("lr_scale", 1.0) + 0.001 * budget
        score += rng.normal(0, 0.01)
        return {"val_acc": score + 0.001, "test_acc": score}

    return train


# -- the verdict rule ------------------------------------------------------------------------------------


def test_identical_differences_get_no_verdict_however_many_seeds():
    # +0.05 on every seed: the t-interval has zero width; it used to say "better".
    for n in (2, 3, 6):
        diff = paired_difference([0.55 + 0.1 * i for i in range(n)], [0.5 + 0.1 * i for i in range(n)])
        assert diff.verdict in ("too few seeds", "zero spread") and not diff.significant, (n, diff)
        assert "no verdict" in diff.format()
    assert paired_difference([0.55, 0.65, 0.75], [0.5, 0.6, 0.7]).verdict == "zero spread"
    assert "same on every seed" in paired_difference([0.55, 0.65, 0.75], [0.5, 0.6, 0.7]).reason


def test_two_seeds_never_give_a_verdict_even_when_the_interval_excludes_zero():
    assert MIN_SEEDS_FOR_VERDICT == 3
    diff = paired_difference([0.60, 0.70], [0.50, 0.5999])  # interval [+?, +?] may exclude 0 at t_1
    assert diff.verdict == "too few seeds" and diff.interval is not None
    assert "a verdict needs >= 3" in diff.reason
    assert "no verdict: too few seeds" in diff.format()


def test_a_verdict_says_when_the_sign_flip_test_cannot_confirm_it():
    better = paired_difference([0.9, 0.91, 0.92, 0.93, 0.94], [0.8, 0.8, 0.81, 0.8, 0.82])
    assert better.verdict == "better" and not better.distribution_free
    assert "sign-flip test does not confirm" in better.reason and "0.062" in better.reason
    six = paired_difference([0.9, 0.91, 0.92, 0.93, 0.94, 0.95], [0.8, 0.8, 0.81, 0.8, 0.82, 0.8])
    assert six.verdict == "better" and six.distribution_free and "does not confirm" not in six.reason
    # from_dict keeps the reason; files written before it existed still load
    assert type(six).from_dict(six.to_dict()) == six
    old = six.to_dict()
    del old["reason"]
    assert type(six).from_dict(old).verdict == "better"


def test_sign_flip_p_value_is_scale_free():
    # A fixed absolute tolerance of 1e-15 made every pattern "as extreme" for tiny differences (p = 1).
    for scale in (1.0, 1e-10, 1e-16, 1e-200):
        assert sign_flip_p_value(np.array([1.0, 2.0, 3.0]) * scale) == pytest.approx(2 / 8)
        assert sign_flip_p_value(np.array([1.0, 2.0, -0.5]) * scale) == pytest.approx(0.5)
    assert sign_flip_p_value([0.0, 0.0, 0.0]) == 1.0


@pytest.mark.parametrize("flag", ["false", "True", 0, 1, None])
def test_higher_is_better_must_be_a_bool(flag):
    with pytest.raises(TypeError, match="higher_is_better must be True or False"):
        paired_difference([0.1, 0.2, 0.3], [0.1, 0.1, 0.1], higher_is_better=flag)
    with pytest.raises(TypeError, match="higher_is_better must be True or False"):
        search_gammas(noisy_train(), gamma_grid(RANKING), [0], metric="val_acc", budgets=(1,), higher_is_better=flag)


# -- the table: intervals, pairing and decisive comparisons ------------------------------------------------


def test_table_intervals_are_the_paired_t_interval_of_the_per_seed_differences(tmp_path):
    """Recomputed by hand (t quantile from a table), pairing checked against shuffled seeds."""
    joint = Candidate("joint", pdmp.NoModulation(RANKING.order))
    larger_lr = Candidate("joint_lr2", pdmp.NoModulation(RANKING.order), {"lr_scale": 2.0})
    study = compare(noisy_train(), [joint, larger_lr], seeds=[3, 1, 2], progress=False)
    a, b = study.values("joint_lr2", "test_acc"), study.values("joint", "test_acc")
    d = np.array([a[s] - b[s] for s in (3, 1, 2)])
    assert d == pytest.approx(np.full(3, 0.01), abs=1e-12)  # the lr_scale term is live, the noise paired away
    t_2 = 4.3026527  # t_{0.975, 2}
    half = t_2 * d.std(ddof=1) / math.sqrt(3)
    diff = study.paired("joint_lr2", "test_acc")
    assert diff.interval == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)
    # Unpaired (shifted) seeds would give a much wider spread: the harness pairs by seed.
    shifted = np.array([a[3] - b[1], a[1] - b[2], a[2] - b[3]])
    assert shifted.std(ddof=1) > 100 * d.std(ddof=1)


def test_pdmp_is_set_against_uniform_scaling_and_inverse_without_asking():
    study = compare(noisy_train(), default_candidates(RANKING), seeds=[0, 1, 2], progress=False)
    assert ("pdmp", "uniform") in study.decisive_pairs() and ("pdmp", "inverse") in study.decisive_pairs()
    table = study.to_markdown("test_acc")
    expected = study.paired("pdmp", "test_acc", reference="uniform").format()
    assert f"| pdmp | minus uniform: {expected} |" in table
    # A PDMP candidate without declared controls is still set against any uniform candidate present.
    plain = [
        Candidate("joint", pdmp.NoModulation(RANKING.order)),
        Candidate("mine", pdmp.PDMP.from_ranking(RANKING, gamma_p=5.0)),
        Candidate("uni5", pdmp.UniformScaling(RANKING.order, 5.0)),
    ]
    assert compare(noisy_train(), plain, seeds=[0, 1, 2], progress=False).decisive_pairs() == [("mine", "uni5")]


def test_an_automatic_control_is_one_trained_with_the_same_options():
    # PDMP without dropout is not set against uniform scaling with dropout (two effects mixed), only against
    # the uniform candidate trained like it; a declared control is kept whatever its options.
    plain = [
        Candidate("pdmp", pdmp.PDMP.from_ranking(RANKING, gamma_p=5.0)),
        Candidate("uniform", pdmp.UniformScaling(RANKING.order, 5.0)),
        Candidate("pdmp+dropout", pdmp.PDMP.from_ranking(RANKING, gamma_p=5.0), {"lr_scale": 2.0}),
        Candidate("uniform+dropout", pdmp.UniformScaling(RANKING.order, 5.0), {"lr_scale": 2.0}),
        Candidate("pdmp_declared", pdmp.PDMP.from_ranking(RANKING, gamma_p=5.0), controls=("uniform+dropout",)),
    ]
    pairs = compare(noisy_train(), plain, seeds=[0, 1, 2], progress=False).decisive_pairs()
    assert pairs == [
        ("pdmp", "uniform"),
        ("pdmp+dropout", "uniform+dropout"),
        ("pdmp_declared", "uniform+dropout"),
        ("pdmp_declared", "uniform"),
    ]


def test_a_missing_control_is_named_in_the_table():
    study = compare(noisy_train(), default_candidates(RANKING)[:2], seeds=[0, 1, 2], progress=False)
    assert "**pdmp is not set against its control(s) uniform, inverse**" in study.to_markdown("test_acc")


def test_the_same_configuration_under_two_names_is_announced():
    twins = [
        Candidate("joint", pdmp.NoModulation(RANKING.order)),
        Candidate("baseline", pdmp.NoModulation(RANKING.order)),
    ]
    messages: list[str] = []
    with pytest.warns(UserWarning, match="'joint', 'baseline' have the same policy and options"):
        compare(noisy_train(), twins, seeds=[0], progress=messages.append)
    assert any("same policy and options" in m for m in messages)


def test_a_policy_that_applied_nothing_is_flagged():
    def train(policy, seed, **options):
        record = AppliedRecord()
        for step in range(3):
            # A "rule" that never fires: coefficients stay 1, no auxiliary loss.
            coefficients = {m: 1.0 for m in RANKING.order} if policy.kind != "PDMP" else policy.coefficients(epoch=step)
            record.update(coefficients, {m: 0.0 for m in RANKING.order})
        return {"test_acc": 0.5 + 0.01 * seed + 0.001 * len(policy.kind), APPLIED_KEY: record.to_dict()}

    candidates = [
        Candidate("joint", pdmp.NoModulation(RANKING.order)),
        Candidate("rule", pdmp.UniformScaling(RANKING.order, 1.0)),
        Candidate("pdmp", pdmp.PDMP.from_ranking(RANKING, warmup=0)),
    ]
    study = compare(train, candidates, seeds=[0, 1], progress=False)
    assert study.applied_nothing() == ["rule"]
    assert "**Applied nothing:** rule" in study.to_markdown("test_acc")
    assert study.runs[("pdmp", 0)]["applied"]["coefficients"]["audio"] == [10.0, 10.0]
    with pytest.raises(StudyError, match="applied"):
        compare(lambda policy, seed: {"acc": 1.0, APPLIED_KEY: {"coefficients": {"audio": [2, 1]}}}, candidates, [0])


# -- run identity on resume ---------------------------------------------------------------------------------


def test_resume_with_other_train_options_is_refused_and_loses_nothing(tmp_path):
    path = tmp_path / "study.json"
    compare(noisy_train(), default_candidates(RANKING), seeds=[0, 1], path=path, progress=False,
            train_options={"budget": 3})  # fmt: skip
    before = path.read_text()
    calls: list = []
    with pytest.raises(ValueError, match=r"made with train_options \{'budget': 3\}.*differs in: budget"):
        compare(noisy_train(calls), default_candidates(RANKING), seeds=[0, 1, 2], path=path, progress=False,
                train_options={"budget": 10})  # fmt: skip
    assert calls == [] and path.read_text() == before
    with pytest.raises(ValueError, match=r"differs in: budget"):  # dropping the option is a change too
        compare(noisy_train(), default_candidates(RANKING), seeds=[0, 1], path=path, progress=False)
    again = compare(noisy_train(calls), default_candidates(RANKING), seeds=[0, 1, 2], path=path, progress=False,
                    train_options={"budget": 3})  # fmt: skip
    assert {seed for _, seed, _, _ in calls} == {2} and again.complete


def test_search_resumed_with_other_budgets_or_fewer_tuning_seeds_is_refused(tmp_path):
    families = {"pdmp": gamma_grid(RANKING)["pdmp"][:3]}
    search_gammas(noisy_train(), families, [7, 8], metric="val_acc", budgets=(1, 2), folder=tmp_path, progress=False)
    with pytest.raises(ValueError, match="differs in: budget"):
        search_gammas(noisy_train(), families, [7, 8], metric="val_acc", budgets=(3, 5), folder=tmp_path,
                      progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"made on tuning seeds \[7, 8\], this search uses \[8\]"):
        search_gammas(noisy_train(), families, [8], metric="val_acc", budgets=(1, 2), folder=tmp_path,
                      progress=False)  # fmt: skip


def test_a_search_candidate_without_the_metric_is_refused_not_chosen():
    def train(policy, seed, budget, **options):
        if policy.coefficients(epoch=5)["audio"] == 10.0:
            return {"accuracy": 0.99}  # forgot val_acc
        return {"val_acc": 0.5, "accuracy": 0.5}

    with pytest.raises(StudyError, match=r"no 'val_acc' on tuning seed\(s\) \[0\].*returned accuracy"):
        search_gammas(train, {"pdmp": gamma_grid(RANKING)["pdmp"]}, [0], metric="val_acc", budgets=(1,),
                      progress=False)  # fmt: skip


def test_gamma_grid_refuses_a_bare_number():
    with pytest.raises(TypeError, match=r"gamma_p must be a list or tuple such as gamma_p=\(10\.0,\), got float 10\.0"):
        gamma_grid(RANKING, gamma_p=10.0)
    with pytest.raises(TypeError, match=r"uniform must be a list or tuple such as uniform=\(2\.0, 5\.0\), got str '5'"):
        gamma_grid(RANKING, uniform="5")
    with pytest.raises(ValueError, match="lr_scales is empty"):
        gamma_grid(RANKING, lr_scales=())


# -- the study file ------------------------------------------------------------------------------------------


def saved_study(tmp_path, **kwargs):
    path = tmp_path / "study.json"
    compare(noisy_train(), default_candidates(RANKING), seeds=[0, 1], path=path, progress=False, **kwargs)
    return path, json.loads(path.read_text())


def test_a_study_file_with_one_run_twice_is_refused(tmp_path):
    path, saved = saved_study(tmp_path)
    duplicate = dict(saved["runs"][0], metrics={"val_acc": 0.1, "test_acc": 0.1})
    saved["runs"].append(duplicate)
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"candidate 'inverse', seed 0 appears twice; keep one"):
        Study.load(path)


def test_a_study_file_with_runs_on_a_candidates_tuning_seed_is_refused(tmp_path):
    path, saved = saved_study(tmp_path)
    saved["candidates"][1]["tuned_on"] = [1]  # hand-edited: pdmp was tuned on seed 1, which it has a run on
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"'pdmp' has a run on seed 1, which it was tuned on"):
        Study.load(path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s["runs"][0].update(wall_time_s="12"), "wall_time_s must be a number"),
        (lambda s: s["runs"][0].update(train_options="budget=3"), "train_options must be a dict"),
        (lambda s: s["runs"][0]["metrics"].update(test_acc=True), "not a number"),
        (lambda s: s["candidates"][0].update(tuned_on=5), "tuned_on must be a sequence"),
        (lambda s: s["candidates"][1].update(controls="uniform"), "controls must be a sequence"),
        (lambda s: s.update(runs={}), "runs must be a list"),
    ],
)
def test_loosely_typed_study_files_are_refused(tmp_path, edit, match):
    path, saved = saved_study(tmp_path)
    edit(saved)
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=match):
        Study.load(path)


def test_runs_record_their_train_options_and_old_files_resume_with_a_note(tmp_path):
    path, saved = saved_study(tmp_path, train_options={"budget": 2})
    assert all(run["train_options"] == {"budget": 2} for run in saved["runs"])
    for run in saved["runs"]:
        del run["train_options"]
    path.write_text(json.dumps(saved))
    messages: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare(noisy_train(), default_candidates(RANKING), seeds=[0, 1], path=path, progress=messages.append,
                train_options={"budget": 5})  # fmt: skip
    assert any("8 run(s)" in m and "saved without their train_options" in m for m in messages), messages


def test_a_run_records_thread_counts_kernel_level_and_arithmetic_variables(monkeypatch):
    """The same seed gives other numbers at another thread count or kernel level (benchmarks.reproduce):
    both are recorded and name the environment, so a study mixing them says so."""
    import sys
    import types

    from pdmp.compare import environment_signature, run_environment

    fake_torch = types.SimpleNamespace(
        __version__="2.14.1",
        get_num_threads=lambda: 2,
        get_num_interop_threads=lambda: 1,
        backends=types.SimpleNamespace(cpu=types.SimpleNamespace(get_cpu_capability=lambda: "AVX512")),
    )
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    environment = run_environment()
    assert environment["torch_threads"] == 2 and environment["torch_interop_threads"] == 1
    assert environment["torch_cpu_capability"] == "AVX512"
    assert environment["arithmetic_variables"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    one_thread = {**environment, "torch_threads": 1}
    assert environment_signature(environment) != environment_signature(one_thread)
    assert "torch 2 thread(s), AVX512" in environment_signature(environment)
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in environment_signature(environment)


def test_a_candidate_without_runs_shows_no_wall_time_ratio():
    """'nanx' was printed for a candidate with no finished run while the reference had some."""
    study = Study(default_candidates(RANKING), [0, 1, 2])
    for seed in (0, 1, 2):
        for name in ("joint", "pdmp"):
            study.runs[(name, seed)] = {"metrics": {"test_acc": 0.5 + 0.01 * seed + (name == "pdmp") * 0.001 * seed},
                                        "wall_time_s": 1.0}  # fmt: skip
    table = study.to_markdown("test_acc")
    assert "nan" not in table
    assert "| uniform | 0 | — | — | — | — |" in table
