"""pdmp.robustness: test-time conditions, their table, and modality dropout masks (NumPy only)."""

from __future__ import annotations

import numpy as np
import pytest

import pdmp
from pdmp.robustness import (
    FULL,
    Condition,
    ModalityDropout,
    alter,
    evaluate_robustness,
    noised,
    robustness_conditions,
    training_means,
)

NAMES = ("audio", "image")


def data(n: int = 200, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = {
        "audio": (rng.normal(size=(n, 4)) + 3 * np.eye(3, 4)[y]).astype(np.float32),
        "image": rng.normal(size=(n, 2, 3, 3)).astype(np.float32) + 1.0,
    }
    return x, y


def audio_only(x: dict[str, np.ndarray]) -> np.ndarray:
    """A 'model' that reads the audio input only: its class scores are the first three audio features."""
    return x["audio"][:, :3]


def test_conditions_cover_each_modality_and_subset() -> None:
    conditions = robustness_conditions(NAMES, replacements=("zeros", "mean"), snrs_db=(0, 10))
    assert conditions[0] == FULL
    assert [c.name for c in conditions[1:5]] == [
        "missing[audio]/zeros",
        "missing[audio]/mean",
        "noise[audio]/0dB",
        "noise[audio]/10dB",
    ]
    assert len(conditions) == 1 + 2 * 4
    three = robustness_conditions(["a", "b", "c"], replacements=("zeros",), snrs_db=(), subsets=True)
    assert [c.modalities for c in three[1:]] == [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c")]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("missing", ("audio",)), "replacement in"),
        (("missing", ("audio",), "median"), "replacement in"),
        (("noise", ("audio",)), "finite snr_db"),
        (("noise", ("audio",), None, float("inf")), "finite snr_db"),
        (("noise", ()), "needs the modalities"),
        (("full", ("audio",)), "alters nothing"),
        (("lost", ("audio",)), "unknown condition kind"),
    ],
)
def test_bad_conditions_are_refused(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Condition(*arguments)


def test_missing_replacements() -> None:
    x, _ = data()
    means = training_means(x)
    zeros = alter(x, Condition("missing", ("image",), replacement="zeros"))
    assert zeros["image"].dtype == np.float32 and not zeros["image"].any()
    assert zeros["audio"] is x["audio"] or np.array_equal(zeros["audio"], x["audio"])
    mean = alter(x, Condition("missing", ("image",), replacement="mean"), train_means=means)
    np.testing.assert_allclose(mean["image"], np.broadcast_to(means["image"], x["image"].shape), rtol=1e-6)
    token = np.full((2, 1, 1), 7.0)  # broadcasts to one sample's (2, 3, 3)
    tokened = alter(x, Condition("missing", ("image",), replacement="token"), tokens={"image": token})
    assert np.all(tokened["image"] == 7.0)
    with pytest.raises(ValueError, match=r"needs train_means\['image'\]"):
        alter(x, Condition("missing", ("image",), replacement="mean"))
    with pytest.raises(ValueError, match="does not broadcast"):
        alter(x, Condition("missing", ("image",), replacement="token"), tokens={"image": np.zeros(5)})


def test_noise_has_the_requested_snr_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 1.0, size=(50, 4000))
    for snr in (0.0, 10.0, 20.0):
        noisy = noised(x, snr, np.random.default_rng(1))
        noise = noisy - x
        measured = 10 * np.log10(np.mean(x**2, axis=1) / np.mean(noise**2, axis=1))
        assert np.all(np.abs(measured - snr) < 0.3)
    condition = Condition("noise", ("audio",), snr_db=10)
    x2, _ = data()
    first = alter(x2, condition, seed=3)["audio"]
    assert np.array_equal(first, alter(x2, condition, seed=3)["audio"])
    assert not np.array_equal(first, alter(x2, condition, seed=4)["audio"])
    # The noise depends on the condition and modality, not on which other conditions ran before.
    both = Condition("noise", ("audio", "image"), snr_db=10)
    assert not np.array_equal(first, alter(x2, both, seed=3)["audio"])


def test_table_per_condition_and_its_drops() -> None:
    x, y = data()
    conditions = robustness_conditions(NAMES, replacements=("zeros", "mean"), snrs_db=(-10.0,))
    table = evaluate_robustness(audio_only, x, y, conditions=conditions, train_means=training_means(x))
    full = table.row("full").accuracy
    assert full > 0.8
    # The model reads audio only: the image's conditions change nothing, audio's hurt.
    assert table.row("missing[image]/zeros").accuracy == full
    assert table.row("noise[image]/-10dB").accuracy == full
    assert table.drop("missing[audio]/zeros") > 0.4
    assert table.drop("noise[audio]/-10dB") > 0.2
    assert table.row("missing[audio]/zeros").macro_f1 == pytest.approx(pdmp.macro_f1(y, np.zeros((len(y), 3))))
    metrics = table.metrics("test/")
    assert metrics["test/full/acc"] == full and "test/missing[audio]/mean/f1" in metrics
    markdown = table.to_markdown()
    assert "| missing[audio]/zeros | audio | missing (zeros) |" in markdown
    assert f"| full | none | - | {100 * full:.1f} |" in markdown
    assert [row["condition"] for row in table.to_dict()] == [c.name for c in conditions]
    with pytest.raises(KeyError, match="no condition"):
        table.row("missing[text]/zeros")


def test_evaluate_checks_every_condition_before_predicting() -> None:
    x, y = data()
    calls: list[int] = []

    def predict(inputs: dict[str, np.ndarray]) -> np.ndarray:
        calls.append(1)
        return audio_only(inputs)

    conditions = [FULL, Condition("missing", ("audio",), replacement="mean")]
    with pytest.raises(ValueError, match="needs train_means"):
        evaluate_robustness(predict, x, y, conditions=conditions)
    with pytest.raises(ValueError, match=r"alters \['text'\]"):
        evaluate_robustness(predict, x, y, conditions=[Condition("missing", ("text",), replacement="zeros")])
    with pytest.raises(ValueError, match="conditions repeat"):
        evaluate_robustness(predict, x, y, conditions=[FULL, FULL])
    with pytest.raises(ValueError, match="samples but labels"):
        evaluate_robustness(predict, x, y[:-1])
    assert not calls
    default = evaluate_robustness(predict, x, y)
    assert [r.condition.name for r in default.rows][:3] == ["full", "missing[audio]/zeros", "noise[audio]/0dB"]


def test_dropout_never_drops_every_modality_and_matches_its_effective_rates() -> None:
    dropout = ModalityDropout(["a", "b", "c"], {"a": 0.9, "b": 0.9, "c": 0.5}, seed=0)
    masks = dropout.mask(200_000)
    stacked = np.stack([masks[name] for name in ("a", "b", "c")], axis=1)
    assert not stacked.all(axis=1).any()
    effective = dropout.effective_rates()
    for name in ("a", "b", "c"):
        assert masks[name].mean() == pytest.approx(effective[name], abs=0.004)
    # All-dropped draws (0.405) give back c with probability 0.5 / 0.7, a and b 0.1 / 0.7 each.
    assert effective["c"] == pytest.approx(0.5 - 0.405 * 0.5 / 0.7)
    assert effective["a"] == pytest.approx(0.9 - 0.405 * 0.1 / 0.7)


def test_dropout_is_seeded_and_resumable() -> None:
    first, second = ModalityDropout(NAMES, 0.3, seed=5), ModalityDropout(NAMES, 0.3, seed=5)
    a = [first.mask(16) for _ in range(3)]
    b = [second.mask(16) for _ in range(3)]
    assert all(np.array_equal(p[n], q[n]) for p, q in zip(a, b, strict=True) for n in NAMES)
    state = first.state_dict()
    resumed = ModalityDropout(NAMES, 0.3, seed=5)
    resumed.load_state_dict(state)
    after, expected = resumed.mask(16), first.mask(16)
    assert all(np.array_equal(after[n], expected[n]) for n in NAMES)
    with pytest.raises(ValueError, match="state is of"):
        ModalityDropout(NAMES, 0.4, seed=5).load_state_dict(state)
    only_image = ModalityDropout(NAMES, {"image": 0.5}, seed=0).mask(1000)
    assert not only_image["audio"].any() and 0.4 < only_image["image"].mean() < 0.6


@pytest.mark.parametrize(
    ("rate", "message"),
    [(1.0, "all 1"), (1.5, "probability"), (-0.1, "probability"), ({"text": 0.2}, "names"), (True, "probability")],
)
def test_bad_dropout_is_refused(rate: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModalityDropout(NAMES, rate)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least two"):
        ModalityDropout(["audio"], 0.5)
    with pytest.raises(ValueError, match="unknown replacement"):
        ModalityDropout(NAMES, 0.5, replacement="noise")


def test_drop_modalities_in_numpy() -> None:
    from pdmp.robustness import drop_modalities

    x, _ = data(6)
    mask = {"image": np.array([1, 0, 1, 0, 0, 0], bool)}
    out = drop_modalities(x, mask)
    assert not out["image"][[0, 2]].any() and np.array_equal(out["image"][[1, 3, 4, 5]], x["image"][[1, 3, 4, 5]])
    assert np.array_equal(out["audio"], x["audio"]) and out["image"].dtype == np.float32
    means = training_means(x)
    filled = drop_modalities(x, mask, replacement="mean", train_means=means)
    np.testing.assert_allclose(filled["image"][0], means["image"], rtol=1e-6)
    with pytest.raises(ValueError, match="has shape"):
        drop_modalities(x, {"image": np.zeros(5, bool)})
    with pytest.raises(ValueError, match="not among the inputs"):
        drop_modalities(x, {"text": np.zeros(6, bool)})
