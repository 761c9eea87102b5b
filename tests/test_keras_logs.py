"""PDMPLogger: each modality's coefficient (epoch mean) and dependency share in fit()'s logs.

History and CSVLogger must show ``pdmp/coef_<m>`` and ``pdmp/share_<m>`` whatever the callbacks' order;
the values are checked against the schedule (coefficients) and against shares recomputed in the core
from each batch's logits (the float64 model of ``test_keras_adaptive``).
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from keras_helpers import keras
from test_keras_adaptive import BATCH, NAMES, SPEC, Recorder, build, compile_, data, wrap

from pdmp import OGMGE, PDMP, modality_scores
from pdmp.backends.keras import ModulatedModel, PDMPLogger

pytestmark = pytest.mark.keras

ENCODERS = {"audio": "audio_enc", "image": "image_enc"}


def test_history_and_csv_logger_show_mean_coefficients_and_shares(tmp_path: object) -> None:
    x, y = data()
    # 4 steps per epoch; gamma reached at step 2: epoch 0 averages 1, 1, 4, 4.
    policy = PDMP(NAMES, "audio", gamma_p=4.0, gamma_r=0.5, unit="step", warmup=2)
    model = compile_(ModulatedModel(build(), ENCODERS, policy, modality_logits=SPEC))
    path = os.path.join(str(tmp_path), "log.csv")
    recorder = Recorder(x, y)
    # CSVLogger first: fit() runs the PDMPLogger before it anyway.
    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.CSVLogger(path), PDMPLogger(), recorder],
    )
    assert history.history["pdmp/coef_audio"] == pytest.approx([2.5, 4.0])
    assert history.history["pdmp/coef_image"] == pytest.approx([0.75, 0.5])
    for epoch in range(2):
        steps = range(4 * epoch, 4 * epoch + 4)
        totals = {name: 0.0 for name in NAMES}
        for step in steps:
            for name, score in modality_scores(recorder.logits[step], recorder.labels[step]).items():
                totals[name] += score
        want = {name: value / sum(totals.values()) for name, value in totals.items()}
        got = {name: history.history[f"pdmp/share_{name}"][epoch] for name in NAMES}
        assert got == pytest.approx(want, rel=1e-10)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and {f"pdmp/{k}_{n}" for k in ("coef", "share") for n in NAMES} <= set(rows[0])
    assert float(rows[0]["pdmp/coef_audio"]) == pytest.approx(2.5)
    assert float(rows[1]["pdmp/share_image"]) == pytest.approx(history.history["pdmp/share_image"][1])


def test_without_modality_logits_only_coefficients_are_logged() -> None:
    x, y = data()
    model = compile_(ModulatedModel(build(), ENCODERS, PDMP(NAMES, "image", gamma_p=3.0, warmup=1)))
    history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[PDMPLogger()])
    assert history.history["pdmp/coef_image"] == pytest.approx([1.0, 3.0])
    assert not any(key.startswith("pdmp/share") for key in history.history)


def test_ogm_and_adaptive_log_the_coefficients_they_trained_with() -> None:
    x, y = data()

    class AtBatchEnd(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[dict[str, float]] = []

        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            self.seen.append(self.model.coefficients)

    for model in (
        compile_(ModulatedModel(build(), ENCODERS, OGMGE(NAMES, alpha=0.5, noise=False), modality_logits=SPEC)),
        compile_(wrap()),
    ):
        seen = AtBatchEnd()
        history = model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[seen, PDMPLogger()])
        for epoch in range(2):
            for name in NAMES:
                want = np.mean([row[name] for row in seen.seen[4 * epoch : 4 * epoch + 4]])
                assert history.history[f"pdmp/coef_{name}"][epoch] == pytest.approx(want, rel=1e-12)
        assert min(history.history["pdmp/coef_image"] + history.history["pdmp/coef_audio"]) < 1.0
        assert sum(history.history[f"pdmp/share_{name}"][1] for name in NAMES) == pytest.approx(1.0)


def test_a_plain_model_is_refused_with_the_fix() -> None:
    x, y = data()
    plain = build()
    plain.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(TypeError, match=r"PDMPLogger logs a ModulatedModel's coefficients.*ModulatedModel\(model"):
        plain.fit(x, y, epochs=1, verbose=0, callbacks=[PDMPLogger()])
