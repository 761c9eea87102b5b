"""ModulatedModel under tf.distribute.MirroredStrategy on 2 logical CPU devices.

Logical devices must be configured before TensorFlow initialises, so the scenario runs in a fresh
Python process and reports JSON; the assertions are here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.keras

SCRIPT = r"""
import json, os
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import keras
import numpy as np
from pdmp import OGMGE, PDMP, AdaptivePDMP, modality_scores
from pdmp.backends.keras import ConcatHead, ModulatedModel

NAMES, ENCODERS = ["audio", "visual"], {"audio": "audio_enc", "visual": "visual_enc"}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(1)
x = {"a": 2 * rng.normal(size=(16, 3)).astype("float32"), "v": rng.normal(size=(16, 4)).astype("float32")}
y = rng.integers(0, 3, 16)


def build():
    keras.utils.set_random_seed(0)
    a, v = keras.Input((3,), name="a"), keras.Input((4,), name="v")
    fa = keras.layers.Dense(6, activation="tanh", name="audio_enc")(a)
    fv = keras.layers.Dense(6, activation="tanh", name="visual_enc")(v)
    return keras.Model({"a": a, "v": v}, keras.layers.Dense(3, name="head")(keras.layers.Concatenate()([fa, fv])))


def make(policy, optimizer, **options):
    model = ModulatedModel(build(), ENCODERS, policy, **options)
    model.compile(optimizer(), LOSS, jit_compile=False)
    return model


def replicas(variable):
    return [np.asarray(component.numpy()).tolist() for component in variable.value.values]


def weights(model):
    return {v.path: v.numpy() for v in model.inner_model.trainable_weights}


report = {"replicas": strategy.num_replicas_in_sync}
OPTIMIZERS = {"grad": lambda: keras.optimizers.SGD(0.1, momentum=0.9), "lr": lambda: keras.optimizers.Adam(0.01)}
for mode, optimizer in OPTIMIZERS.items():
    policy = PDMP(NAMES, "audio", gamma_p=4.0, gamma_r=0.5, warmup=1)
    with strategy.scope():
        mirrored = make(policy, optimizer, mode=mode)
    mirrored.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    single = make(policy, optimizer, mode=mode)
    single.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    report[mode] = {
        "coefficients": replicas(mirrored.pdmp_coefficients),
        "max_difference_to_single_device": max(
            float(np.abs(weights(mirrored)[p] - w).max()) for p, w in weights(single).items()
        ),
        "replica_weights_equal": all(
            np.array_equal(*[c.numpy() for c in v.value.values]) for v in mirrored.inner_model.trainable_weights
        ),
    }

# OGM-GE: one step with lr 0 on a global batch of 8 (4 per replica); scores must be the global batch's.
spec = ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"})
policy = OGMGE(NAMES, alpha=0.6)
with strategy.scope():
    ogm = make(policy, lambda: keras.optimizers.SGD(0.0), modality_logits=spec)
inner = ogm.inner_model
fa = np.tanh(x["a"][:8] @ inner.get_layer("audio_enc").kernel.numpy() + inner.get_layer("audio_enc").bias.numpy())
fv = np.tanh(x["v"][:8] @ inner.get_layer("visual_enc").kernel.numpy() + inner.get_layer("visual_enc").bias.numpy())
kernel, bias = inner.get_layer("head").kernel.numpy(), inner.get_layer("head").bias.numpy()
logits = {"audio": fa @ kernel[:6] + bias / 2, "visual": fv @ kernel[6:] + bias / 2}
first = {k: v[:8] for k, v in x.items()}
ogm.fit(first, y[:8], batch_size=8, epochs=1, shuffle=False, verbose=0)
report["ogm"] = {
    "scores": replicas(ogm.pdmp_scores),
    "coefficients": replicas(ogm.pdmp_coefficients),
    "expected_scores": [modality_scores(logits, y[:8])[n] for n in NAMES],
    "half_batch_scores": [modality_scores({n: l[:4] for n, l in logits.items()}, y[:4])[n] for n in NAMES],
    "expected_coefficients": [policy.coefficients(logits=logits, labels=y[:8])[n] for n in NAMES],
}

# AdaptivePDMP: scores summed over replicas, so both replicas (and a single device) learn the same.
class Seen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        self.seen.append([float(c) for c in self.model.pdmp_coefficients.numpy()])


runs = {}
for where in ("mirrored", "single"):
    adaptive = AdaptivePDMP(NAMES, {"audio": 0.9, "visual": 0.3}, horizon=2.0)
    if where == "mirrored":
        with strategy.scope():
            model = make(adaptive, lambda: keras.optimizers.SGD(0.1), modality_logits=spec)
    else:
        model = make(adaptive, lambda: keras.optimizers.SGD(0.1), modality_logits=spec)
    seen = Seen()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[seen])
    runs[where] = (model, seen.seen)
mirrored, seen = runs["mirrored"]
report["adaptive"] = {
    "seen": seen,
    "single_seen": runs["single"][1],
    "state_replicas": replicas(mirrored.pdmp_policy_state),
    "score_replicas": replicas(mirrored.pdmp_scores),
    "coefficient_replicas": replicas(mirrored.pdmp_coefficients),
}
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report() -> dict:
    pytest.importorskip("tensorflow")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT ") :])


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_mirrored_training_matches_single_device_with_identical_coefficients(report: dict, mode: str) -> None:
    assert report["replicas"] == 2
    result = report[mode]
    assert result["coefficients"] == [[4.0, 0.5], [4.0, 0.5]]  # both replicas, after warm-up
    assert result["replica_weights_equal"]
    assert result["max_difference_to_single_device"] < 1e-5


def test_ogm_scores_are_reduced_across_replicas_before_use(report: dict) -> None:
    ogm = report["ogm"]
    scores, coefficients = ogm["scores"], ogm["coefficients"]
    assert scores[0] == scores[1] and coefficients[0] == coefficients[1]  # identical on both replicas
    assert scores[0] == pytest.approx(ogm["expected_scores"], rel=1e-5)  # the global batch of 8, not a half
    assert ogm["half_batch_scores"] != pytest.approx(ogm["expected_scores"], rel=1e-2)
    assert coefficients[0] == pytest.approx(ogm["expected_coefficients"], rel=1e-4)
    assert min(coefficients[0]) < 1.0


def test_adaptive_policy_learns_the_same_on_every_replica_as_on_one_device(report: dict) -> None:
    adaptive = report["adaptive"]
    for name in ("state_replicas", "score_replicas", "coefficient_replicas"):
        assert adaptive[name][0] == adaptive[name][1], name
    assert len(adaptive["seen"]) == 4 and adaptive["seen"][0] == [1.0, 1.0]
    assert adaptive["seen"][-1] != [1.0, 1.0]
    np.testing.assert_allclose(adaptive["seen"], adaptive["single_seen"], rtol=1e-5)
