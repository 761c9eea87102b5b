"""benchmarks.robustness on a tiny slice of the audio-dominant regime, concat and attention fusion.

Numbers from one epoch on 5% of the data mean nothing (every model is near chance); this checks the
machinery: every candidate trains with and without modality dropout, every run holds every condition's
accuracy and macro-F1, concat runs their dependency shares, the study resumes without retraining, and
the summary comes out."""

from __future__ import annotations

import json

import pytest

from benchmarks import robustness

ARGS = ["--regime", "audio_dominant", "--subset", "0.05", "--epochs", "1", "--seeds", "0", "--threads", "1"]
CONDITIONS = [
    "full",
    *(f"missing[{m}]/{r}" for m in ("audio", "image") for r in ("zeros", "mean")),
    *(f"noise[{m}]/{s}dB" for m in ("audio", "image") for s in (0, 10)),
]


@pytest.fixture(scope="module")
def concat(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("robustness")
    assert robustness.main([*ARGS, "--out", str(out)]) == 0
    return out


def test_every_candidate_and_condition_is_stored(concat) -> None:
    stored = json.loads((concat / "evaluation.json").read_text())
    names = sorted(run["candidate"] for run in stored["runs"])
    base = ("joint", "pdmp", "uniform", "arl", "recipe")
    assert names == sorted([*base, *(f"{n}+dropout" for n in base), "ume"])
    for run in stored["runs"]:
        metrics = run["metrics"]
        for condition in CONDITIONS:
            assert 0.0 <= metrics[f"test:{condition}/acc"] <= 1.0
            assert f"test:{condition}/f1" in metrics
        assert ("share/audio" in metrics) == (run["candidate"] != "ume")
    options = {candidate["name"]: candidate["options"] for candidate in stored["candidates"]}
    assert all(options[f"{n}+dropout"] == {"dropout": robustness.DROPOUT_RATE} for n in base)
    summary = (concat / "summary.md").read_text()
    assert "## Test accuracy per condition" in summary and "missing[image]/zeros" in summary
    assert "Does prioritising the dominant modality (audio)" in summary
    assert "pdmp minus joint, paired over seeds" not in summary  # one seed: no paired line


def test_a_rerun_resumes_and_report_only_rebuilds(concat) -> None:
    before = (concat / "evaluation.json").read_text()
    assert robustness.main([*ARGS, "--out", str(concat)]) == 0
    assert (concat / "evaluation.json").read_text() == before  # nothing retrained
    (concat / "summary.md").unlink()
    assert robustness.main([*ARGS, "--out", str(concat), "--report-only"]) == 0
    assert (concat / "summary.md").exists()
    for other in (["--snrs", "5"], ["--subset", "0.06"]):
        with pytest.raises(ValueError, match="train_options"):
            robustness.main([*ARGS, "--out", str(concat), *other])


def test_attention_fusion_study(tmp_path) -> None:
    out = tmp_path / "attention"
    assert robustness.main([*ARGS, "--fusion", "attention", "--without-dropout", "--out", str(out)]) == 0
    stored = json.loads((out / "evaluation.json").read_text())
    assert sorted(run["candidate"] for run in stored["runs"]) == sorted(["joint", "pdmp", "uniform", "arl", "recipe"])
    assert all("share/audio" not in run["metrics"] for run in stored["runs"])
    assert "attention fusion" in (out / "summary.md").read_text()
