"""The default recipe and MSLR through Keras's ModulatedModel, unchanged: the recipe's boost schedule
and auxiliary-loss weights, MSLR's coefficients (lr mode) against a core replay of the same logits."""

from __future__ import annotations

import numpy as np
import pytest
from keras_helpers import keras
from test_keras_adaptive import BATCH, NAMES, SPEC, build, compile_, data, fit

import pdmp
from pdmp.backends.keras import ModulatedModel
from pdmp.diagnostics import modality_scores

pytestmark = pytest.mark.keras

ENCODERS = {"audio": "audio_enc", "image": "image_enc"}


class Weights(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, float]] = []

    def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
        self.seen.append(self.model.unimodal_loss_weights)


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_recipe_boosts_after_the_warmup_and_adds_the_unimodal_losses(mode: str) -> None:
    x, y = data()
    policy = pdmp.Recipe(NAMES, "audio", boost=3.0, auxiliary=4.0, auxiliary_scope="dominant", warmup=1)
    model = compile_(ModulatedModel(build(), ENCODERS, policy, mode=mode, unimodal_logits=SPEC), mode)
    weights = Weights()
    record = fit(model, x, y, epochs=2, callbacks=[weights])
    steps = len(y) // BATCH
    assert record.seen[:steps] == [{"audio": 1.0, "image": 1.0}] * steps
    assert record.seen[steps:] == [{"audio": 3.0, "image": 1.0}] * steps
    assert weights.seen == [{"audio": 4.0, "image": 0.0}] * (2 * steps)
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_weights)


def test_mslr_dynamic_in_lr_mode_follows_the_core_replay() -> None:
    x, y = data()
    make = lambda: pdmp.MSLR(NAMES, {"audio": 2.0, "image": 0.5}, strategy="dynamic", history=2)  # noqa: E731
    model = compile_(ModulatedModel(build(), ENCODERS, make(), mode="lr", modality_logits=SPEC), "lr")
    record = fit(model, x, y, epochs=5)
    replay, steps = make(), len(y) // BATCH
    for index, (used, logits, labels) in enumerate(zip(record.seen, record.logits, record.labels, strict=True)):
        assert used == pytest.approx(replay.coefficients(epoch=index // steps), rel=1e-12)
        replay.update(modality_scores(logits, labels))
    assert record.seen[0] == {"audio": 2.0, "image": 0.5}
    assert record.seen[-1] != record.seen[0]  # epochs 2 and 4 closed: the rates moved


def test_mslr_keep_needs_no_logits_and_holds_its_rates() -> None:
    x, y = data()
    model = compile_(ModulatedModel(build(), ENCODERS, pdmp.MSLR(NAMES, {"audio": 5.0, "image": 1.0}), mode="lr"), "lr")
    record = fit(model, x, y, epochs=2)
    assert all(seen == {"audio": 5.0, "image": 1.0} for seen in record.seen)
