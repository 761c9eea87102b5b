"""benchmarks.default_recipe on a tiny slice of mfeat: select, evaluate, confirm and report run, the
tuned choices come from the tuning seed, UME reuses the unimodal runs, and the summary states the goal.
Numbers from one epoch on 10% of the data mean nothing; this checks the machinery."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import default_recipe
from pdmp.compare import Study

ARGS = ["--setting", "mfeat", "--subset", "0.1", "--epochs", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("default-recipe")
    out = root / "mfeat"
    assert default_recipe.main(["--stage", "select", *ARGS, "--out", str(out)]) == 0
    assert default_recipe.main([*ARGS, "--seeds", "0", "1", "2", "--out", str(out)]) == 0
    return root


def test_select_tunes_on_validation_of_the_tuning_seed_only(folder):
    select = Study.load(folder / "mfeat" / "select.json")
    assert select.seeds == [100]
    names = select.names
    assert {"joint", "joint[lr*0.5]", "joint[lr*10]"} <= set(names)
    assert sum(name.startswith("recipe_") for name in names) <= 3
    assert {"unimodal_pix[lr*5]", "unimodal_fou", "unimodal_mor[lr*2]"} <= set(names)


def test_evaluation_holds_every_candidate_and_ume_is_the_mean_of_the_unimodal_runs(folder):
    study = Study.load(folder / "mfeat" / "evaluate.json")
    expected = {
        "joint", "joint_lr_tuned", "pdmp", "uniform", "uniform_tuned", "arl", "inforeg", "mmpareto", "recipe",
        "mslr_keep", "mslr_dynamic", "unimodal_pix", "unimodal_fou", "unimodal_mor", "ume",
    }  # fmt: skip
    assert set(study.names) == expected
    tuned = {c.name: c.tuned_on for c in study.candidates}
    assert tuned["joint_lr_tuned"] == tuned["mslr_keep"] == tuned["recipe"] == (100,)
    assert {"test_acc", "test_f1", "val_acc"} <= set(study.metrics)
    cache = folder / "mfeat" / "unimodal-logits"
    import pdmp
    from benchmarks.run import load_dataset

    data = load_dataset("mfeat", 0, 0.1)
    parts = {m: np.load(cache / f"{m}-seed1-epochs1-lr1.npz")["test"] for m in ("pix", "fou", "mor")}
    ensemble = pdmp.unimodal_ensemble(parts, inputs="logits")
    assert study.runs[("ume", 1)]["metrics"]["test_acc"] == pytest.approx(pdmp.accuracy(data.test.labels, ensemble))


def test_confirmation_keeps_recipe_joint_best_unimodal_and_best_candidate(folder):
    evaluation = Study.load(folder / "mfeat" / "evaluate.json")
    names = [c.name for c in default_recipe.confirmation_candidates(evaluation)]
    assert {"recipe", "joint"} <= set(names) and 3 <= len(names) <= 4
    assert sum(name.startswith("unimodal_") for name in names) == 1


def test_report_states_the_goal_per_setting(folder):
    assert default_recipe.main(["--stage", "report", "--out", str(folder)]) == 0
    text = (folder / "summary.md").read_text()
    assert "| mfeat | 3 | test_acc |" in text and "| mfeat | 3 | test_f1 |" in text
    assert "| under_optimization | not run |" in text
    assert "| mfeat | " in text.split("The variant's choice")[1] and "Smallest largest regret: **" in text
    assert "recipe − best unimodal" in (folder / "mfeat" / "summary.md").read_text()
