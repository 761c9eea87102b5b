"""The README's Keras quick start, executed as written (paste QUICKSTART into the README verbatim)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:
    pass

pytestmark = pytest.mark.keras

QUICKSTART = """\
import keras
import numpy as np

from pdmp import PDMP
from pdmp.backends.keras import ModulatedModel, rank_unimodal

# Toy paired data: "audio" shows the class clearly, "visual" only faintly.
rng = np.random.default_rng(0)
y = rng.integers(0, 3, 600)
x = {
    "audio": (rng.normal(size=(600, 8)) + 2.0 * np.eye(3, 8)[y]).astype("float32"),
    "visual": (rng.normal(size=(600, 8)) + 0.5 * np.eye(3, 8)[y]).astype("float32"),
}
train = {name: (x[name][:400], y[:400]) for name in x}
val = {name: (x[name][400:], y[400:]) for name in x}


def encoder(name):
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu")], name=f"{name}_encoder")


# Stage 1: rank the modalities with small unimodal models (encoder + own head), on a budget.
ranking = rank_unimodal(
    {name: (lambda name=name: keras.Sequential([encoder(name), keras.layers.Dense(3)])) for name in x},
    train, val, epochs=3, subset=0.5, lr=1e-2, progress=False,
)
print(ranking.order, ranking.scores)  # ('audio', 'visual'): audio is performance-dominant

# Stage 2: train the fused model with fit(); the dominant encoder's gradients are scaled by gamma_p,
# the other's by gamma_r, after a one-epoch warm-up. The head is not modulated.
inputs = {name: keras.Input((8,), name=name) for name in x}
encoders = {name: encoder(name) for name in x}
fused = keras.layers.Concatenate()([encoders[name](inputs[name]) for name in x])
model = ModulatedModel(
    keras.Model(inputs, keras.layers.Dense(3, name="head")(fused)),
    modalities=encoders,  # each modality's encoder: layers, layer names or variables
    policy=PDMP.from_ranking(ranking, gamma_p=10.0, gamma_r=0.5, warmup=1),
)
model.compile(
    optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit({n: a[:400] for n, a in x.items()}, y[:400], epochs=3, batch_size=32,
          validation_data=({n: a[400:] for n, a in x.items()}, y[400:]))
print(model.coefficients)  # {'audio': 10.0, 'visual': 0.5}
model.save("fused.keras")  # policy, clock and coefficients are saved with the model
"""


def readme_keras_blocks() -> list[str]:
    """The README's copy, once pasted under ``<!-- readme-test: keras -->`` (none before that)."""
    try:
        from readme_blocks import readme_blocks

        return readme_blocks("keras")
    except (ImportError, AssertionError, OSError):
        return []


@pytest.mark.parametrize(
    "code", [QUICKSTART, *readme_keras_blocks()], ids=lambda c: "readme" if c != QUICKSTART else "quickstart"
)
def test_keras_quickstart_runs(code: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(str(tmp_path))
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    ranking, model = namespace["ranking"], namespace["model"]
    assert ranking.dominant == "audio" and ranking.budget["backend"] == "keras"  # type: ignore[attr-defined]
    assert model.coefficients == {"audio": 10.0, "visual": 0.5}  # type: ignore[attr-defined]
    loaded = keras.saving.load_model(os.path.join(str(tmp_path), "fused.keras"))
    assert loaded.policy == model.policy and loaded.coefficients == model.coefficients  # type: ignore[attr-defined]
