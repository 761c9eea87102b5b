"""benchmarks.trace_rebalancing: the per-epoch trace that says why a rebalancing method trains badly.

Three variants on 5% of the audio-dominant data for two epochs: the trace keeps every epoch's losses,
accuracies (fused and per modality) and the method's loss weights and events, a finished variant is not
trained again, and a trace of other options is refused instead of being mixed in.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from benchmarks import trace_rebalancing

pytestmark = pytest.mark.torch

ARGS = ["--regime", "audio_dominant", "--subset", "0.05", "--epochs", "2", "--threads", "1"]


def test_trace_records_each_epoch_and_resumes(tmp_path) -> None:
    out = tmp_path / "trace"
    assert trace_rebalancing.main([*ARGS, "--only", "joint", "gblending", "agm", "--out", str(out)]) == 0
    trace = json.loads((out / "trace.json").read_text())
    assert list(trace["variants"]) == ["joint", "gblending", "agm"]
    # A gradient policy's mean coefficients per epoch (AGM's), none for the others.
    assert set(trace["variants"]["agm"]["epochs"][0]["coefficients"]) == {"audio", "image"}
    assert trace["variants"]["gblending"]["epochs"][0]["coefficients"] is None
    blended = trace["variants"]["gblending"]
    assert [row["epoch"] for row in blended["epochs"]] == [0, 1]
    first = blended["epochs"][0]
    assert first["loss_weights"] == pytest.approx({"fused": 1 / 3, "unimodal/audio": 1 / 3, "unimodal/image": 1 / 3})
    assert set(first["val_decomposed_acc"]) == {"audio", "image"}
    # G-Blending's super-epoch is 2: its first checkpoint comes after the second epoch.
    assert blended["epochs"][1]["events"][0][:2] == ["checkpoint", 2]
    assert trace["variants"]["joint"]["epochs"][0]["loss_weights"] is None
    (first_point, second_point) = blended["checkpoints"]  # before training and after epoch 2
    assert (first_point["epochs_done"], second_point["epochs_done"]) == (0, 2)
    assert second_point["weights"] == pytest.approx(blended["epochs"][1]["events"][0][2])
    assert "| 2 | fused |" in (out / "trace.md").read_text()
    markdown = (out / "trace.md").read_text()
    assert "## gblending" in markdown and "| 1 |" in markdown

    before = (out / "trace.json").read_text()
    assert trace_rebalancing.main([*ARGS, "--only", "joint", "--out", str(out)]) == 0
    assert (out / "trace.json").read_text() == before  # nothing trained again


def test_trace_of_other_options_is_refused(tmp_path) -> None:
    out = tmp_path / "trace"
    out.mkdir()
    (out / "trace.json").write_text(json.dumps({"regime": "audio_dominant", "seed": 100, "epochs": 10, "variants": {}}))
    with pytest.raises(SystemExit, match="--out"):
        trace_rebalancing.main([*ARGS, "--only", "joint", "--out", str(out)])


def test_trace_page_says_whether_the_seed_was_a_tuning_or_an_evaluation_seed() -> None:
    trace = {"regime": "audio_dominant", "seed": 100, "epochs": 1, "variants": {}}
    assert "a tuning seed, not an evaluation seed" in trace_rebalancing.markdown(trace, "cmd")
    page = trace_rebalancing.markdown({**trace, "seed": 0}, "cmd")
    assert "Seed 0, an evaluation seed" in page and "tuning seed" not in page


def test_an_unknown_variant_is_refused_with_the_known_names(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        trace_rebalancing.main([*ARGS, "--only", "mla_typo", "--out", str(tmp_path / "trace")])
    assert "invalid choice: 'mla_typo'" in capsys.readouterr().err
    assert not (tmp_path / "trace" / "trace.json").exists()
