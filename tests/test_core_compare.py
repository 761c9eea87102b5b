"""Controls, the policy registry, paired statistics, the comparison harness and the gamma search (NumPy only)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import pdmp
from pdmp.compare import (
    _KERNEL_FEATURES,
    Candidate,
    Study,
    StudyError,
    compare,
    default_candidates,
    environment_signature,
)
from pdmp.controls import InversePDMP, UniformScaling
from pdmp.policies import POLICIES, CoefficientPolicy, Modulation, policy_from_config, register_policy
from pdmp.search import gamma_grid, search_gammas
from pdmp.stats import paired_difference, seeds_needed, sign_flip_p_value, student_t_quantile

RANKING = pdmp.Ranking(order=("audio", "image", "text"), scores={"audio": 0.8, "image": 0.5, "text": 0.4})


# -- controls ----------------------------------------------------------------------------------------


def test_uniform_scaling_gives_every_modality_the_same_schedule():
    policy = UniformScaling(["audio", "image"], 4.0, warmup=1, ramp=2, end=5)
    got = [policy.coefficients(epoch=e) for e in range(6)]
    # Literal schedule: warm-up, a two-epoch ramp from 1 to 4, the plateau, back to 1 at `end`.
    expected = [1.0, 2.5, 4.0, 4.0, 4.0, 1.0]
    assert got == [{"audio": k, "image": k} for k in expected]


def test_inverse_pdmp_prioritises_the_weakest_modality():
    policy = InversePDMP.from_ranking(RANKING, gamma_p=10.0, gamma_r=0.5, warmup=1)
    assert policy.weakest == "text"
    assert policy.coefficients(epoch=0) == {"audio": 1.0, "image": 1.0, "text": 1.0}
    assert policy.coefficients(epoch=1) == {"audio": 0.5, "image": 0.5, "text": 10.0}


@pytest.mark.parametrize(
    ("policy", "config"),
    [
        (
            UniformScaling(["a", "b"], 3.0, warmup=2, unit="step", ramp=4, end=9),
            {
                "type": "UniformScaling",
                "modalities": ["a", "b"],
                "gamma": 3.0,
                "warmup": 2,
                "unit": "step",
                "ramp": 4,
                "end": 9,
            },
        ),
        (
            InversePDMP(["a", "b"], "b", 5.0, 0.1, warmup=1, ramp=3, end=8),
            {
                "type": "InversePDMP",
                "modalities": ["a", "b"],
                "weakest": "b",
                "gamma_p": 5.0,
                "gamma_r": 0.1,
                "warmup": 1,
                "unit": "epoch",
                "ramp": 3,
                "end": 8,
            },
        ),
    ],
)
def test_control_configs_are_literal_and_round_trip_behaviour(policy, config):
    assert policy.get_config() == config
    rebuilt = policy_from_config(json.loads(json.dumps(config)))
    for t in range(12):
        assert rebuilt.coefficients(step=t, epoch=t) == policy.coefficients(step=t, epoch=t)


def test_controls_refuse_bad_gammas():
    with pytest.raises(ValueError, match=r"UniformScaling gamma must be a finite number > 0, got 0\.0"):
        UniformScaling(["a", "b"], 0.0)
    with pytest.raises(ValueError, match="unknown modality 'z'"):
        InversePDMP(["a", "b"], "z")


# -- registry ------------------------------------------------------------------------------------------


class Halve(CoefficientPolicy):
    kind: ClassVar[str] = "test-Halve"

    def __init__(self, modalities, factor: float = 0.5) -> None:
        super().__init__(modalities)
        self.factor = factor

    def modulation(self, *, step, epoch, scores=None) -> Modulation:
        return Modulation(self._all(self.factor))

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "modalities": list(self.modalities), "factor": self.factor}


def test_a_registered_user_policy_round_trips_and_an_unregistered_one_says_how():
    config = Halve(["a", "b"], 0.25).get_config()
    POLICIES.pop(Halve.kind, None)
    with pytest.raises(ValueError, match="register_policy"):
        policy_from_config(config)
    try:
        assert register_policy(Halve) is Halve
        assert register_policy(Halve) is Halve  # twice: harmless
        assert policy_from_config(config).coefficients() == {"a": 0.25, "b": 0.25}
    finally:
        POLICIES.pop(Halve.kind, None)


def test_register_policy_refuses_a_taken_kind_and_non_policies():
    class Impostor(Halve):
        kind = "PDMP"

    with pytest.raises(ValueError, match="already registered"):
        register_policy(Impostor)
    assert POLICIES["PDMP"] is pdmp.PDMP
    with pytest.raises(TypeError, match="CoefficientPolicy subclass"):
        register_policy(dict)

    class NoKind(Halve):
        pass

    with pytest.raises(ValueError, match="'kind'"):
        register_policy(NoKind)


# -- statistics ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "quantile"), [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572), (30, 2.0422725)]
)
def test_student_t_quantile_matches_tables(df, quantile):
    assert student_t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-6)
    assert student_t_quantile(0.025, df) == pytest.approx(-quantile, abs=1e-6)


def test_student_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 7, 12, 50, 200):
        for p in (0.6, 0.9, 0.95, 0.975, 0.995):
            assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8)


def test_paired_t_interval_of_the_transformer_run_is_wide():
    # benchmarks/reported/transformer, audio-dominant, final test accuracy of seeds 0-2: PDMP and symmetric.
    # A percentile bootstrap gave [+0.1, +44.7] ("better"); the paired t-interval is [-33.8, +77.3].
    diff = paired_difference([0.6952, 0.6688, 0.6352], [0.6944, 0.4640, 0.1880])
    assert diff.mean == pytest.approx(0.21760, abs=1e-5)
    assert diff.interval[0] == pytest.approx(-0.3378, abs=5e-4)
    assert diff.interval[1] == pytest.approx(0.7730, abs=5e-4)
    assert diff.verdict == "no significant difference"
    assert diff.p_sign_flip == pytest.approx(0.25)


def test_paired_difference_verdicts_and_direction():
    better = paired_difference([0.9, 0.91, 0.92, 0.93], [0.8, 0.8, 0.81, 0.8])
    assert better.verdict == "better" and better.interval[0] > 0
    assert paired_difference([0.9, 0.91, 0.92, 0.93], [0.8, 0.8, 0.81, 0.8], higher_is_better=False).verdict == "worse"
    assert paired_difference([0.5], [0.4]).verdict == "too few seeds"
    with pytest.raises(ValueError, match="paired"):
        paired_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="non-finite"):
        paired_difference([0.1, float("nan")], [0.1, 0.2])


def test_sign_flip_test_is_exact():
    assert sign_flip_p_value([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert sign_flip_p_value([1.0] * 6) == pytest.approx(2 / 64)
    # d = (1, 2, -0.5), |sum| = 2.5: the sign patterns with |sum| >= 2.5 are (+,+,+), (+,+,-) and their
    # negations, 4 of 8.
    assert sign_flip_p_value([1.0, 2.0, -0.5]) == pytest.approx(0.5)


def test_seeds_needed():
    # mean 1, sd 1: t_{n-1} / sqrt(n) < 1 first at n = 7 (t_5=2.571/2.449=1.05; t_6=2.447/2.646=0.925).
    assert seeds_needed(1.0, 1.0) == 7
    assert seeds_needed(0.0, 1.0) is None


# -- the comparison harness ------------------------------------------------------------------------------


def toy_train(calls: list | None = None):
    """Validation/test 'accuracy' that rises with the dominant modality's coefficient, plus seed noise."""

    def train(policy, seed, **options):
        if calls is not None:
            calls.append((policy.get_config()["type"], seed, options))
        k = policy.coefficients(epoch=5)
        rng = np.random.default_rng(seed)
        base = 0.6 + 0.02 * math.log(k["audio"]) - 0.01 * math.log(max(k["image"], 1e-3) / k["audio"]) ** 2
        base += 0.05 * (options.get("lr_scale", 1.0) - 1.0) + rng.normal(0, 0.01)
        return {"val_acc": base + 0.001, "test_acc": base}

    return train


def test_compare_runs_candidates_by_seed_and_reports_paired_intervals(tmp_path):
    calls: list = []
    candidates = default_candidates(RANKING, gamma_p=10.0, gamma_r=0.5, warmup=1)
    assert [c.name for c in candidates] == ["joint", "pdmp", "uniform", "inverse"]
    study = compare(toy_train(calls), candidates, seeds=[0, 1, 2], path=tmp_path / "s.json", progress=False)
    assert [(kind, seed) for kind, seed, _ in calls][:4] == [
        ("NoModulation", 0),
        ("PDMP", 0),
        ("UniformScaling", 0),
        ("InversePDMP", 0),
    ]
    assert len(calls) == 12 and study.complete
    diff = study.paired("pdmp", "test_acc")
    pdmp_values = np.array(list(study.values("pdmp", "test_acc").values()))
    joint_values = np.array(list(study.values("joint", "test_acc").values()))
    assert diff.mean == pytest.approx(float(np.mean(pdmp_values - joint_values)))
    table = study.to_markdown("test_acc")
    assert "| pdmp | 3 |" in table and "paired Student-t" in table and "(reference)" in table
    against_uniform = study.to_markdown("test_acc", reference="uniform")
    assert "minus uniform" in against_uniform and "| uniform | 3 |" in against_uniform
    assert f"{100 * study.paired('pdmp', 'test_acc', reference='uniform').mean:+.1f}" in against_uniform
    saved = json.loads((tmp_path / "s.json").read_text())
    assert len(saved["runs"]) == 12 and saved["reference"] == "joint"


def test_compare_resumes_an_interrupted_study(tmp_path):
    path = tmp_path / "study.json"
    candidates = default_candidates(RANKING)
    calls: list = []
    inner = toy_train(calls)

    def flaky(policy, seed, **options):
        if len(calls) == 5:
            raise RuntimeError("preempted")
        return inner(policy, seed, **options)

    with pytest.raises(StudyError, match=r"candidate 'pdmp', seed 1.*5 finished run\(s\) are saved"):
        compare(flaky, candidates, seeds=[0, 1], path=path, progress=False)
    assert len(json.loads(path.read_text())["runs"]) == 5
    calls.clear()
    study = compare(toy_train(calls), candidates, seeds=[0, 1, 2], path=path, progress=False)
    assert [(kind, seed) for kind, seed, _ in calls] == [
        ("PDMP", 1),
        ("UniformScaling", 1),
        ("InversePDMP", 1),
        ("NoModulation", 2),
        ("PDMP", 2),
        ("UniformScaling", 2),
        ("InversePDMP", 2),
    ]
    assert study.complete and len(study.runs) == 12


def test_every_run_records_its_environment_and_a_study_from_two_says_so(tmp_path):
    """The same code and seed gave other numbers on another machine (the transformer study): runs carry
    their CPU and versions, a resumed study elsewhere is announced, and the table names the mix."""
    path = tmp_path / "study.json"
    candidates = default_candidates(RANKING)
    compare(toy_train(), candidates, seeds=[0], path=path, progress=False)
    saved = json.loads(path.read_text())
    here = pdmp.run_environment()
    assert all(run["environment"] == here for run in saved["runs"])
    assert here["numpy"] == np.__version__ and here["cpus"] >= 1 and here["cpu"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # Linux: the features are the kernel-selecting ones among the CPU's flags
        flags = next(
            line for line in cpuinfo.read_text().splitlines() if line.split(":")[0].strip() in ("flags", "Features")
        )
        assert here["cpu_features"] == [f for f in _KERNEL_FEATURES if f in flags.split(":", 1)[1].split()]
    assert set(here["frameworks"]) <= set(sys.modules)  # versions of what train imported, nothing imported here
    one = Study.load(path)
    assert len(one.environments()) == 1 and "Runs from" not in one.to_markdown("test_acc")

    for run in saved["runs"]:  # as if seed 0 had run on another CPU
        run["environment"] = {**run["environment"], "cpu": "Another CPU 9000", "host": "elsewhere"}
    path.write_text(json.dumps(saved))
    messages: list[str] = []
    study = compare(toy_train(), candidates, seeds=[0, 1], path=path, progress=messages.append)
    assert any("another environment (Another CPU 9000" in m for m in messages), messages
    groups = study.environments()
    assert len(groups) == 2
    assert sorted(groups[environment_signature(saved["runs"][0]["environment"])]) == sorted(
        (c.name, 0) for c in candidates
    )
    table = study.to_markdown("test_acc")
    assert "**Runs from 2 environments.**" in table and "Another CPU 9000" in table and "(seeds 1)" in table
    reloaded = Study.load(path)
    assert reloaded.environments() == groups  # the record survives the file

    saved["runs"][0]["environment"] = "a string"
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"environment must be a dict.*move the file away to start the study afresh"):
        Study.load(path)


def test_a_study_saved_before_environments_were_recorded_still_loads(tmp_path):
    path = tmp_path / "old.json"
    compare(toy_train(), default_candidates(RANKING), seeds=[0, 1], path=path, progress=False)
    saved = json.loads(path.read_text())
    for run in saved["runs"]:
        del run["environment"]
    path.write_text(json.dumps(saved))
    study = Study.load(path)
    assert list(study.environments()) == ["unrecorded"] and "Runs from" not in study.to_markdown("test_acc")


def test_compare_refuses_a_resumed_study_with_another_candidate_set(tmp_path):
    path = tmp_path / "study.json"
    compare(toy_train(), default_candidates(RANKING), seeds=[0], path=path, progress=False)
    before = path.read_text()
    with pytest.raises(ValueError, match=r"another candidate set \(differs in: inverse, pdmp, uniform\)"):
        compare(toy_train(), default_candidates(RANKING, gamma_p=5.0), seeds=[0], path=path, progress=False)
    assert path.read_text() == before
    fewer = default_candidates(RANKING)[:2]
    with pytest.raises(ValueError, match=r"another candidate set \(differs in: inverse, uniform\)"):
        compare(toy_train(), fewer, seeds=[0], path=path, progress=False)
    assert path.read_text() == before


def test_compare_resumes_a_study_with_candidates_added(tmp_path):
    path = tmp_path / "study.json"
    first = compare(toy_train(), default_candidates(RANKING), seeds=[0, 1], path=path, progress=False)
    calls: list = []
    added = Candidate("pdmp_strong", pdmp.PDMP.from_ranking(RANKING, gamma_p=20.0))
    study = compare(toy_train(calls), [*default_candidates(RANKING), added], seeds=[0, 1], path=path, progress=False)
    assert [(kind, seed) for kind, seed, _ in calls] == [("PDMP", 0), ("PDMP", 1)]  # only the new candidate ran
    assert study.complete and len(study.runs) == 10
    assert all(study.runs[key] == run for key, run in first.runs.items())


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        (None, "non-empty dict"),
        ({}, "non-empty dict"),
        ({"val_acc": float("nan")}, "must be finite"),
        ({"val_acc": "high"}, "not a number"),
    ],
)
def test_compare_refuses_unusable_metrics_and_records_nothing(tmp_path, returned, match):
    path = tmp_path / "s.json"
    with pytest.raises(StudyError, match=match):
        compare(lambda policy, seed: returned, default_candidates(RANKING), seeds=[0], path=path, progress=False)
    assert not path.exists()


def test_compare_bad_arguments(tmp_path):
    candidates = default_candidates(RANKING)
    with pytest.raises(ValueError, match="unknown reference candidate 'jiont'"):
        compare(toy_train(), candidates, seeds=[0], reference="jiont", progress=False)
    with pytest.raises(ValueError, match="duplicate candidate name"):
        compare(toy_train(), candidates + candidates[:1], seeds=[0], progress=False)
    with pytest.raises(ValueError, match="duplicate seeds"):
        compare(toy_train(), candidates, seeds=[0, 0], progress=False)
    with pytest.raises(TypeError, match=r"pdmp\.Candidate"):
        compare(toy_train(), ["pdmp"], seeds=[0], progress=False)
    with pytest.raises(TypeError, match="train must be a function"):
        compare("train", candidates, seeds=[0], progress=False)
    tuned = Candidate("pdmp_tuned", candidates[1].policy, tuned_on=(0,))
    with pytest.raises(ValueError, match=r"tuned on seed\(s\) \[0\]"):
        compare(toy_train(), [candidates[0], tuned], seeds=[0, 1], progress=False)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        Candidate("x", candidates[0].policy, {"lr": object()})
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        compare(toy_train(), candidates, seeds=[0], progress=False).to_markdown("acc")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read study file"):
        Study.load(tmp_path / "bad.json")


def test_each_run_gets_a_fresh_policy():
    seen: list[int] = []

    def train(policy, seed):
        seen.append(id(policy))
        return {"val_acc": 0.5}

    candidate = default_candidates(RANKING)[1]
    compare(train, [candidate], seeds=[0, 1], progress=False)
    assert len(set(seen)) == 2 and id(candidate.policy) not in seen


def test_study_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    study = compare(toy_train(), default_candidates(RANKING), seeds=[0, 1, 2], progress=False)
    path = study.plot(tmp_path / "study.png", "test_acc")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the gamma search ------------------------------------------------------------------------------------


def budget_train(calls: list):
    """Validation accuracy peaks at PDMP (5, 0.1); a larger budget adds a constant: halving finds the peak."""

    def train(policy, seed, budget, **options):
        calls.append((policy.get_config(), seed, budget, options))
        k = policy.coefficients(epoch=10)
        score = -abs(math.log(k["audio"] / 5.0)) - abs(math.log(k["image"] / 0.1)) + 0.01 * budget
        return {"val_acc": score + 0.001 * options.get("lr_scale", 1.0), "test_acc": score}

    return train


def test_search_halves_within_each_family_and_marks_tuning_seeds(tmp_path):
    calls: list = []
    families = gamma_grid(RANKING, lr_scales=(0.5, 2.0))
    assert {name: len(c) for name, c in families.items()} == {"pdmp": 9, "uniform": 9, "inverse": 9, "joint_lr": 2}
    result = search_gammas(
        budget_train(calls),
        families,
        tuning_seeds=[7, 8],
        metric="val_acc",
        budgets=(1, 2, 4),
        folder=tmp_path,
        progress=False,
    )
    assert result.best["pdmp"].name == "pdmp[gp=5,gr=0.1]"
    assert result.best["pdmp"].tuned_on == (7, 8)
    # 9 -> 3 -> 1 candidates at budgets 1, 2, 4, on two seeds each.
    assert result.cost("pdmp") == {
        "runs": 26.0,
        "budget": 9 * 2 * 1 + 3 * 2 * 2 + 1 * 2 * 4.0,
        "wall_time_s": pytest.approx(
            sum(run["wall_time_s"] for study in result.rungs["pdmp"] for run in study.runs.values())
        ),
    }
    assert result.best["joint_lr"].options == {"lr_scale": 2.0}
    assert {seed for _, seed, _, _ in calls} == {7, 8}
    assert "pdmp[gp=5,gr=0.1]" in result.to_markdown()
    # Resuming from the folder repeats nothing.
    calls.clear()
    again = search_gammas(
        budget_train(calls),
        families,
        tuning_seeds=[7, 8],
        metric="val_acc",
        budgets=(1, 2, 4),
        folder=tmp_path,
        progress=False,
    )
    assert calls == [] and again.best == result.best
    # The chosen candidates cannot be evaluated on the tuning seeds.
    with pytest.raises(ValueError, match="tuned on seed"):
        compare(budget_train([]), result.candidates(), seeds=[8, 9], train_options={"budget": 4}, progress=False)


def test_search_bad_arguments():
    families = gamma_grid(RANKING)
    train = budget_train([])
    with pytest.raises(ValueError, match="looks like a test metric"):
        search_gammas(train, families, [0], metric="test_acc", budgets=(1, 2), progress=False)
    with pytest.raises(ValueError, match="increasing"):
        search_gammas(train, families, [0], metric="val_acc", budgets=(2, 1), progress=False)
    with pytest.raises(ValueError, match="eta"):
        search_gammas(train, families, [0], metric="val_acc", budgets=(1,), eta=1, progress=False)
    with pytest.raises(ValueError, match="unknown metric 'val_f1'"):
        search_gammas(train, families, [0], metric="val_f1", budgets=(1,), progress=False)
