"""The benchmark pipeline end to end on a tiny slice of the real data, in both backends.

Numbers from two epochs on 8% of the data mean nothing; this checks the machinery: every run writes
its JSON (config, seed, per-epoch metrics, dependency, coefficients, environment), methods of one
seed share their initial weights and data order, the ranking file is written, and the table, the
paired differences and the plots come out.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.run import main
from pdmp import RankingFileError


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("smoke")
    assert main(["--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    return out


def _runs(folder) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]


def test_every_run_writes_a_complete_json(smoke) -> None:
    runs = _runs(smoke)
    # 2 backends x 2 encoders x 2 seeds x (2 unimodal + joint, OGM-GE, PDMP, symmetric)
    assert len(runs) == 2 * 2 * 2 * 6
    for run in runs:
        assert len(run["history"]) == 2
        assert {"config", "seed", "environment", "final", "best_val", "wall_time_s"} <= set(run)
        assert 0.0 <= run["final"]["test"]["acc"] <= 1.0
        # The test split is read only after training, not epoch by epoch.
        assert all("test" not in epoch for epoch in run["history"])
        if run["best_val"]["epoch"] == run["final"]["epoch"]:
            assert run["best_val"]["test"] == run["final"]["test"]
    multimodal = [r for r in runs if r["method"]["kind"] != "unimodal"]
    assert all(set(r["history"][-1]["val"]["dependency"]) == {"image", "audio"} for r in multimodal)
    pdmp_runs = [r for r in runs if r["method"]["name"] == "pdmp"]
    for run in pdmp_runs:
        dominant = run["ranking"]["order"][0]
        assert run["history"][0]["coefficients"][dominant] == 1.0  # warm-up epoch
        assert run["history"][1]["coefficients"][dominant] == 10.0
    assert {r["backend"] for r in runs} == {"torch", "keras"}


def test_adamw_settings_modulate_learning_rates(smoke) -> None:
    """Under AdamW a gradient factor is normalised away, so PDMP runs in ``lr`` mode; OGM-GE's noise keeps
    it in ``grad`` mode; SGD runs use ``grad`` mode."""
    modes = {
        (r["config"]["optimizer"], r["method"]["name"]): r["modulation_mode"]
        for r in _runs(smoke)
        if r["method"]["kind"] != "unimodal"
    }
    assert modes[("adamw", "pdmp")] == modes[("adamw", "symmetric")] == "lr"
    assert modes[("adamw", "ogm_ge")] == modes[("sgd", "pdmp")] == modes[("sgd", "ogm_ge")] == "grad"


def test_methods_of_a_seed_start_from_the_same_point(smoke) -> None:
    """Joint and PDMP share everything during PDMP's warm-up epoch, so epoch 0 must be identical."""
    runs = _runs(smoke)
    for backend in ("torch", "keras"):
        for encoder in ("cnn", "transformer"):
            for seed in (0, 1):
                joint, pdmp = (
                    next(
                        r
                        for r in runs
                        if (r["backend"], r["encoder"], r["seed"], r["method"]["name"]) == (backend, encoder, seed, m)
                    )
                    for m in ("joint", "pdmp")
                )
                assert joint["history"][0]["val"]["acc"] == pytest.approx(pdmp["history"][0]["val"]["acc"], abs=1e-6)
                assert joint["history"][0]["train_loss"] == pytest.approx(pdmp["history"][0]["train_loss"], rel=1e-5)


def test_summary_ranking_and_plots(smoke) -> None:
    summary = (smoke / "summary.md").read_text()
    assert "| pdmp | 2 |" in summary and "vs joint:" in summary and "## Cheap ranking" in summary
    assert "AdamW lr" in summary
    # One ranking per backend and encoder (fusion does not enter unimodal training).
    assert len(list(smoke.glob("ranking_*.json"))) == 4
    assert len(list(smoke.glob("*.png"))) == 4


def test_cheap_ranking_compares_with_the_benchmarks_own_ranking(smoke) -> None:
    (rows,) = json.loads((smoke / "cheap_ranking.json").read_text()).values()
    reference = json.loads((smoke / "ranking_av_digits-image_dominant_cnn.json").read_text())
    assert rows[0]["source"].startswith("stage 1") and rows[0]["order"] == reference["order"]
    stage1 = [
        r["wall_time_s"]
        for r in _runs(smoke)
        if r["method"]["kind"] == "unimodal" and r["seed"] == 0 and (r["backend"], r["encoder"]) == ("torch", "cnn")
    ]
    assert rows[0]["seconds"] == pytest.approx(sum(stage1))
    assert all(row["agrees_with_full"] == (row["order"] == reference["order"]) for row in rows)


def test_more_seeds_reuse_an_earlier_ranking(smoke, tmp_path) -> None:
    args = ["--preset", "smoke", "--only", "image", "--seeds", "5", "--epochs", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path), "--ranking-dir", str(smoke)]) == 0
    for path in smoke.glob("ranking_*.json"):
        assert json.loads((tmp_path / path.name).read_text()) == json.loads(path.read_text())
    assert {r["seed"] for r in _runs(tmp_path)} == {5}
    with pytest.raises(RankingFileError, match="does not exist"):
        main([*args, "--out", str(tmp_path / "again"), "--ranking-dir", str(tmp_path / "nowhere")])


def test_tuning_path_chooses_on_a_seed_that_is_never_evaluated(tmp_path) -> None:
    """The controls preset's tuning runs end to end: candidates train on the tuning seed only, the tuned
    methods are evaluated on the other seeds, and the report leaves the tuning seed out."""
    args = ["--preset", "controls", "--epochs", "1", "--seeds", "0", "--subset", "0.05"]
    assert main([*args, "--only", "under_optimization", "--out", str(tmp_path), "--no-progress", "--threads", "1"]) == 0
    runs = _runs(tmp_path)
    candidates = [r for r in runs if "[" in r["method"]["name"]]
    tuned = [r for r in runs if r["method"]["name"].endswith("_tuned")]
    assert len(candidates) == 12 and {r["seed"] for r in candidates} == {100}
    assert {r["method"]["name"] for r in tuned} == {"pdmp_tuned", "ogm_ge_tuned", "joint_lr_tuned"}
    assert {r["seed"] for r in tuned} == {0}
    # Each tuned method is a candidate with the best validation accuracy on the tuning seed (ties possible).
    for family, kind in (("pdmp", "pdmp"), ("ogm_ge", "ogmge")):
        chosen = next(r for r in tuned if r["method"]["name"] == f"{family}_tuned")
        pool = [r for r in candidates if r["method"]["kind"] == kind]
        top = max(r["best_val"]["val"]["acc"] for r in pool)
        assert chosen["method"]["options"] in [
            r["method"]["options"] for r in pool if r["best_val"]["val"]["acc"] == top
        ]
    summary = (tmp_path / "summary.md").read_text()
    assert "pdmp_tuned" in summary and "paired Student-t" in summary


def test_baselines_benchmark_runs_every_method_and_reports_against_pdmp(tmp_path) -> None:
    """``benchmarks.baselines --rebalancing`` trains every method, the four rebalancing ones included, on
    every seed in one study and reports accuracy and macro-F1 paired against PDMP."""
    from benchmarks import baselines

    out = tmp_path / "baselines"
    argv = ["--regime", "audio_dominant", "--subset", "0.05", "--epochs", "2", "--seeds", "0", "--out", str(out)]
    assert baselines.main([*argv, "--rebalancing"]) == 0
    stored = json.loads((out / "evaluation.json").read_text())
    names = ("joint", "pdmp", "ogmge", "agm", "mmpareto", "inforeg", "arl", "gblending", "pmr", "relearning", "mla",
             "mla_projected")  # fmt: skip
    assert sorted(run["candidate"] for run in stored["runs"]) == sorted(names)
    assert all(0.0 <= run["metrics"][m] <= 1.0 for run in stored["runs"] for m in ("test_acc", "test_f1"))
    assert not (out / "rebalancing.json").exists()  # one study: every pair within one file
    summary = (out / "summary.md").read_text()
    assert all(f"| {name} |" in summary for name in names)
    assert "minus pdmp" in summary and "minus joint" in summary and "macro-F1" in summary


def test_baseline_wiring_applies_each_transform(tmp_path) -> None:
    """AGM's and ARL's coefficients move off 1 after their warm-up, MMPareto's agreeing gradients get its
    1.5 (times 2 x 1/2), InfoReg scales nothing (it adds a pull): the loop hands each policy what it needs."""
    import pdmp
    from benchmarks import train_torch
    from benchmarks.protocol import TrainConfig
    from benchmarks.run import load_dataset

    data = load_dataset("av_digits:audio_dominant", 0, 0.05)
    config = TrainConfig(epochs=2, lr=0.05, batch_size=64)
    names = tuple(data.modalities)
    runs = {
        policy.kind: train_torch.train_run(data, names, config, 0, policy=policy)
        for policy in (pdmp.AGM(names), pdmp.ARL(names, warmup=1), pdmp.MMPareto(names), pdmp.InfoReg(names))
    }
    last = {kind: run["history"][-1]["coefficients"] for kind, run in runs.items()}
    assert all(value != 1.0 for value in last["AGM"].values())
    assert runs["ARL"]["history"][0]["coefficients"] == dict.fromkeys(names, 1.0)  # warm-up
    assert all(1.0 < value < 2.0 for value in last["ARL"].values())
    assert all(0.0 < value <= 1.5 * 2 for value in last["MMPareto"].values())
    assert last["InfoReg"] == dict.fromkeys(names, 1.0)


def test_adaptive_rules_select_then_evaluate_with_the_tuned_learning_rate(tmp_path, monkeypatch) -> None:
    """``benchmarks.adaptive_rules`` (mfeat: no gamma-search evaluation): ``select`` trains joint, every
    rule variant and joint at other learning rates on the tuning seed; ``evaluate`` refuses to run before
    it, then trains joint, the tuned learning rate, PDMP, the plain adaptive rule, the chosen rule and the
    PDMP / uniform choices of a search-only gamma search on other seeds."""
    from benchmarks import adaptive_rules, gamma_search

    searched = tmp_path / "gamma-search"
    search = ["--regime", "mfeat", "--subset", "0.1", "--budgets", "1", "--threads", "1", "--search-only"]
    assert gamma_search.main([*search, "--families", "pdmp", "uniform", "--out", str(searched / "mfeat")]) == 0
    chosen = json.loads((searched / "mfeat" / "chosen.json").read_text())
    assert [c["name"] for c in chosen] == ["pdmp_tuned", "uniform_tuned"]
    assert all(c["tuned_on"] == [100] for c in chosen)
    assert not (searched / "mfeat" / "evaluation.json").exists()  # --search-only trains nothing else
    (searched / "mfeat" / "summary.md").unlink()
    rebuilt = ["--families", "pdmp", "uniform", "--out", str(searched / "mfeat"), "--report-only"]
    assert gamma_search.main([*search, *rebuilt]) == 0  # from the saved rungs, no training
    assert "pdmp_tuned = PDMP(" in (searched / "mfeat" / "summary.md").read_text()
    monkeypatch.setattr(adaptive_rules, "GAMMA_SEARCH", searched)

    out = tmp_path / "mfeat"
    common = ["--setting", "mfeat", "--subset", "0.1", "--budget", "1", "--out", str(out), "--threads", "1"]
    with pytest.raises(SystemExit):
        adaptive_rules.main(["evaluate", *common])
    assert adaptive_rules.main(["select", *common]) == 0
    selected = json.loads((out / "select.json").read_text())
    assert {run["seed"] for run in selected["runs"]} == {100}
    assert {"joint", "adaptive_aux", "adaptive_aux_only", "adaptive_aux_all", "joint[lr*5]"} <= {
        run["candidate"] for run in selected["runs"]
    }
    assert adaptive_rules.main(["evaluate", *common, "--seeds", "0", "1"]) == 0
    evaluated = json.loads((out / "evaluate.json").read_text())
    names = {"joint", "joint_lr_tuned", "pdmp", "adaptive", adaptive_rules.CHOSEN, "dominant_loss_x4"}
    names |= {"pdmp_tuned", "uniform_tuned"}
    assert {run["candidate"] for run in evaluated["runs"]} == names
    assert {run["seed"] for run in evaluated["runs"]} == {0, 1}
    report = (out / "evaluate.md").read_text()
    assert "minus joint_lr_tuned" in report and f"| {adaptive_rules.CHOSEN} |" in report
    assert adaptive_rules.main(["report", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| mfeat | 2 |" in summary and "| under_optimization | not run |" in summary
    assert "worse in:" in summary and "better in:" in summary


def test_adaptive_rules_trains_the_gamma_search_references_on_new_seeds(tmp_path) -> None:
    """``evaluate --references``: the gamma search study's candidates (its tuned learning rate included)
    train beside the rule and the control on seeds the search never evaluated; unknown names are refused."""
    from benchmarks import adaptive_rules

    common = ["evaluate", "--setting", "under_optimization", "--subset", "0.05", "--budget", "1", "--seeds", "5"]
    with pytest.raises(SystemExit):
        adaptive_rules.main([*common, "--references", "joint", "nope", "--out", str(tmp_path)])
    assert adaptive_rules.main([*common, "--references", "joint", "joint_lr_tuned", "--out", str(tmp_path)]) == 0
    evaluated = json.loads((tmp_path / "evaluate.json").read_text())
    names = {"joint", "joint_lr_tuned", adaptive_rules.CHOSEN, adaptive_rules.CONTROL}
    assert {run["candidate"] for run in evaluated["runs"]} == names
    assert {run["seed"] for run in evaluated["runs"]} == {5}
    tuned = next(c for c in evaluated["candidates"] if c["name"] == "joint_lr_tuned")
    assert tuned["tuned_on"] == [100] and tuned["options"]["lr_scale"] != 1.0
    assert "References from the gamma search's study" in (tmp_path / "evaluate.md").read_text()


def test_a_corrupt_choices_file_names_the_file_and_the_fix(tmp_path) -> None:
    from benchmarks.gamma_search import load_choices

    assert load_choices(tmp_path) == []  # no search there: nothing to add
    (tmp_path / "chosen.json").write_text('[{"name": "pdmp_tuned"}]')
    with pytest.raises(ValueError, match=r"chosen.json is not a gamma search's choices.*rerun benchmarks.gamma_search"):
        load_choices(tmp_path)


def test_merge_seeds_folds_another_process_seeds_in_and_refuses_another_study(tmp_path) -> None:
    import pdmp
    from benchmarks.study_cli import merge_seeds
    from pdmp.compare import Candidate, Study

    def study(seeds: list[int], gamma: float = 10.0) -> Study:
        candidates = [
            Candidate("joint", pdmp.NoModulation(["a", "b"])),
            Candidate("pdmp", pdmp.PDMP(["a", "b"], "a", gamma)),
        ]
        made = Study(candidates, seeds, "joint")
        for seed in seeds:
            for name in ("joint", "pdmp"):
                made.runs[(name, seed)] = {"metrics": {"test_acc": 0.5 + seed / 100}, "wall_time_s": 1.0}
        return made

    study([0, 1]).save(tmp_path / "main.json")
    study([2]).save(tmp_path / "other.json")
    merged = merge_seeds(tmp_path / "main.json", [tmp_path / "other.json"])
    assert merged.seeds == [0, 1, 2] and Study.load(tmp_path / "main.json").values("pdmp", "test_acc")[2] == 0.52
    study([3], gamma=5.0).save(tmp_path / "changed.json")
    with pytest.raises(ValueError, match="other candidates"):
        merge_seeds(tmp_path / "main.json", [tmp_path / "changed.json"])
    assert Study.load(tmp_path / "main.json").seeds == [0, 1, 2]  # nothing written
