"""The rebalancing methods (G-Blending, PMR, Diagnosing & Re-learning, MLA) in the benchmark runner.

Each trains on 5% of the built-in audio-dominant AV-digits data for one epoch (two for Diagnosing &
Re-learning, whose first diagnosis comes after epoch 1); the run records accuracy and macro-F1, and what
the method did shows in its per-epoch ``rebalancing`` record.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import pdmp  # noqa: E402
from benchmarks import baselines, train_torch  # noqa: E402
from benchmarks.models_torch import FusionNet, SharedHeadNet, WidthAdapter, make_encoder  # noqa: E402
from benchmarks.protocol import TrainConfig  # noqa: E402
from benchmarks.run import load_dataset  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def data():
    return load_dataset("av_digits:audio_dominant", 0, 0.05)


def run(data, policy, epochs: int = 1) -> dict:
    torch.set_num_threads(1)
    config = TrainConfig(epochs=epochs, lr=0.05, batch_size=64)
    result = train_torch.train_run(data, tuple(data.modalities), config, 0, policy=policy)
    for part in ("final", "best_val"):
        for split in ("val", "test"):
            metrics = result[part][split]
            assert 0.0 <= metrics["acc"] <= 1.0 and 0.0 <= metrics["f1"] <= 1.0, (part, split)
    assert len(result["history"]) == epochs
    return result


def test_gblending_estimates_new_weights_from_the_held_out_checkpoints(data) -> None:
    names = tuple(data.modalities)
    result = run(data, pdmp.GBlending(names, super_epoch=1))
    record = result["history"][0]["rebalancing"]
    assert record["loss_weights"] == pytest.approx({"fused": 1 / 3, **{f"unimodal/{m}": 1 / 3 for m in names}})
    (event,) = record["events"]
    assert event[:2] == ["checkpoint", 1]
    weights = event[2]
    assert math.isclose(sum(weights.values()), 1.0) and weights != pytest.approx(dict.fromkeys(weights, 1 / 3))


def test_pmr_adds_a_prototype_loss(data) -> None:
    result = run(data, pdmp.PMR(tuple(data.modalities)))
    record = result["history"][0]["rebalancing"]
    assert max(v for k, v in record["loss_weights"].items() if k.startswith("prototype/")) > 0.0
    assert record["events"] == [["prototypes", 0]]


def test_relearning_reinitialises_at_a_due_epoch(data) -> None:
    names = tuple(data.modalities)
    result = run(data, pdmp.DiagnosingRelearning(names, every=1, count=1), epochs=2)
    assert result["history"][0]["rebalancing"]["events"] == []  # epoch 0 is never diagnosed
    ((kind, epoch, mixes),) = result["history"][1]["rebalancing"]["events"]
    assert (kind, epoch, set(mixes)) == ("reinit", 1, set(names))
    assert any(mix > 0.0 for mix in mixes.values())


def test_mla_trains_the_shared_head_and_predicts_with_fusion_weights(data) -> None:
    names = tuple(data.modalities)
    result = run(data, pdmp.MLA(names))
    record = result["history"][0]["rebalancing"]
    weights = record["fusion_weights"]
    assert set(weights) == set(names) and math.isclose(sum(weights.values()), 1.0)
    assert all(0.0 < w < 1.0 for w in weights.values()) and weights[names[0]] != weights[names[1]]
    config = TrainConfig(epochs=1)
    assert isinstance(train_torch.build_model(data, names, config, 0, shared_head=True), SharedHeadNet)


def test_shared_head_model_refuses_unequal_widths() -> None:
    encoders = {"a": make_encoder("cnn", (4,), width=8), "b": make_encoder("cnn", (4,), width=6)}
    with pytest.raises(ValueError, match=r"one width.*\{'a': 8, 'b': 6\}"):
        SharedHeadNet(encoders, 3)


def test_the_study_candidates_are_the_four_methods() -> None:
    ranking = pdmp.Ranking(("audio", "image"), {"audio": 0.9, "image": 0.5})
    candidates = baselines.rebalancing_candidates(ranking)
    assert [c.name for c in candidates] == ["gblending", "pmr", "relearning", "mla", "mla_projected"]
    kinds = [type(c.policy) for c in candidates]
    assert kinds == [pdmp.GBlending, pdmp.PMR, pdmp.DiagnosingRelearning, pdmp.MLA, pdmp.MLA]
    # MLA as the published code runs (its projection never fires), and with the projection firing
    assert [c.policy.projection for c in candidates[3:]] == ["off", "code"]
    assert candidates[0].policy.super_epoch == baselines.GBLENDING_SUPER_EPOCH == 2
    assert candidates[2].policy.every == baselines.RELEARNING_EVERY == 2


def test_shared_head_model_maps_wider_encoders_to_the_narrowest_width() -> None:
    """Under-optimization: a 512-wide image MLP and a 32-wide audio CNN; MLA's shared head takes 32."""
    data = load_dataset("av_digits:under_optimization", 0, 0.05)
    names = tuple(data.modalities)
    config = TrainConfig(epochs=1, encoder_overrides={"image": "wide_mlp"})
    model = train_torch.build_model(data, names, config, 0, shared_head=True)
    assert isinstance(model, SharedHeadNet)
    image, audio = model.encoders["image"], model.encoders["audio"]
    assert isinstance(image, WidthAdapter) and image.encoder.width == 512 and image.width == 32
    assert not isinstance(audio, WidthAdapter) and audio.width == 32
    assert model.head.in_features == 32
    batch = {m: torch.as_tensor(data.train.inputs[m][:4]) for m in names}
    assert model.encode(batch)["image"].shape == (4, 32)
    # The map is part of the image encoder's parameters, so MLA's image pass trains it.
    assert any(p is image.project.weight for p in model.encoders["image"].parameters())
    assert isinstance(train_torch.build_model(data, names, config, 0), FusionNet)
