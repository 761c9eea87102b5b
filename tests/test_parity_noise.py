"""OGM-GE's Gaussian enhancement in torch and in Keras: reproducible per backend, same scale in both.

The noise cannot match sample by sample across frameworks (torch draws from a ``torch.Generator``,
Keras from ``tf.random.stateless_normal``), so parity here is in law: for every modulated parameter
the noise, measured as ``modulated gradient - k * gradient``, has mean 0 and standard deviation
``std(g) + 1e-8``, where ``std`` is the sample standard deviation of that parameter's gradient as the
OGM-GE reference code takes it (``torch.Tensor.std``, Bessel-corrected). Each backend with a fixed
seed reproduces its noise, and so its training run, exactly; another seed changes it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from parity_setup import parity_frameworks

torch, tf = parity_frameworks()
keras = pytest.importorskip("keras")

from parity_models import TWO, initial_weights, make_data, names_of, train_keras, train_torch  # noqa: E402

from pdmp import OGMGE  # noqa: E402
from pdmp.policies import OGM_NOISE_EPS  # noqa: E402

NAMES = ["audio", "visual"]
INPUTS = {"audio": 64, "visual": 32}
HIDDEN, FEATURES, CLASSES = 128, 2, 3
DRAWS = 300  # noise draws per parameter, pooled; the 2-element biases then give 600 samples


def data(n: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, n)
    x = {name: rng.normal(size=(n, width)) + np.eye(CLASSES, width)[y] for name, width in INPUTS.items()}
    return x, y


def reference_std(gradient: np.ndarray) -> float:
    """``std(g) + 1e-8`` as OGM-GE's reference code computes it (sample std, ``ddof=1``; 0 for one element)."""
    std = float(np.std(gradient, ddof=1)) if gradient.size > 1 else 0.0
    return std + OGM_NOISE_EPS


def check_law(noise: dict[str, np.ndarray], raw: dict[str, np.ndarray], backend: str) -> dict[str, float]:
    """Each parameter's pooled noise: mean 0 and std ``reference_std`` within 5 standard errors."""
    ratios = {}
    for key, samples in noise.items():
        expected = reference_std(raw[key])
        count = samples.size
        ratio = float(samples.std()) / expected
        ratios[key] = ratio
        assert abs(ratio - 1.0) < 5.0 / math.sqrt(2 * count), (
            f"{backend}: noise std of {key!r} is {ratio:.4f} x std(g) + 1e-8 (expected 1 within "
            f"{5.0 / math.sqrt(2 * count):.4f}; {count} samples, gradient of {raw[key].size} elements)"
        )
        assert abs(float(samples.mean())) < 5.0 * expected / math.sqrt(count), f"{backend}: noise of {key!r} has a mean"
    return ratios


# -- torch ---------------------------------------------------------------------------------------------------


def torch_model() -> tuple[object, dict[str, object]]:
    from torch import nn

    torch.manual_seed(0)
    encoders = nn.ModuleDict(
        {
            name: nn.Sequential(nn.Linear(width, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, FEATURES), nn.Tanh())
            for name, width in INPUTS.items()
        }
    ).double()
    head = nn.Linear(FEATURES * len(NAMES), CLASSES).double()
    return encoders, {"head": head}


def torch_noise(seed: int, draws: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """``draws`` backward passes of one batch under OGM-GE with noise; returns noise samples, raw grads, k."""
    from pdmp.backends.torch import Modulator, concat_head_logits

    encoders, parts = torch_model()
    head = parts["head"]
    x, y = data()
    inputs = {name: torch.from_numpy(value) for name, value in x.items()}
    labels = torch.from_numpy(y)
    params = {f"{name}.{key}": p for name in NAMES for key, p in encoders[name].named_parameters()}

    def forward() -> tuple[object, dict[str, object]]:
        features = {name: encoders[name](inputs[name]) for name in NAMES}
        return head(torch.cat(list(features.values()), dim=1)), features

    out, _ = forward()
    raw = torch.autograd.grad(torch.nn.functional.cross_entropy(out, labels), list(params.values()))
    raw_np = {key: g.numpy().copy() for key, g in zip(params, raw, strict=True)}
    samples: dict[str, list[np.ndarray]] = {key: [] for key in params}
    with Modulator(dict(encoders.items()), OGMGE(NAMES, alpha=0.8, noise=True), seed=seed) as mod:
        mod.set_epoch(0)
        for _ in range(draws):
            out, features = forward()
            mod.observe(concat_head_logits(head, features), labels)
            for p in params.values():
                p.grad = None
            torch.nn.functional.cross_entropy(out, labels).backward()
            k = mod.coefficients
            for key, p in params.items():
                samples[key].append(p.grad.numpy() - k[key.split(".")[0]] * raw_np[key])
            mod.step()
    return {key: np.stack(value) for key, value in samples.items()}, raw_np, k


# -- Keras ---------------------------------------------------------------------------------------------------


def keras_noise(seed: int, draws: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """The same measurement through ``ModulatedModel.modulate_gradients`` (what its ``train_step`` calls)."""
    from pdmp.backends.keras import ConcatHead, ModulatedModel

    keras.utils.set_random_seed(0)
    inputs = {name: keras.Input((width,), name=name, dtype="float64") for name, width in INPUTS.items()}
    features = []
    for name in NAMES:
        h = keras.layers.Dense(HIDDEN, activation="tanh", name=f"{name}_fc1", dtype="float64")(inputs[name])
        features.append(keras.layers.Dense(FEATURES, activation="tanh", name=f"{name}_fc2", dtype="float64")(h))
    out = keras.layers.Dense(CLASSES, name="head", dtype="float64")(keras.layers.Concatenate(dtype="float64")(features))
    inner = keras.Model(inputs, out)
    encoders = {name: [f"{name}_fc1", f"{name}_fc2"] for name in NAMES}
    spec = ConcatHead("head", {name: f"{name}_fc2" for name in NAMES})
    model = ModulatedModel(inner, encoders, OGMGE(NAMES, alpha=0.8, noise=True), modality_logits=spec, seed=seed)
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data()
    variables = [v for name in NAMES for v in model.modality_variables[name]]
    keys = {id(v): f"{layer.name}/{v.name}" for layer in inner.layers for v in layer.trainable_weights}
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    with tf.GradientTape() as tape:
        loss = loss_fn(y, inner(x, training=True))
    raw = tape.gradient(loss, variables)
    tapped = model._tap_model.value(x, training=False)[1]
    coefficients = model.observe(spec.logits(inner, tapped), tf.constant(y))
    k = dict(zip(NAMES, coefficients.numpy().astype(np.float64), strict=True))
    samples: dict[str, list[np.ndarray]] = {keys[id(v)]: [] for v in variables}
    for step in range(draws):
        model.pdmp_step.assign(step)  # the noise is drawn statelessly from (seed, step, variable)
        modulated = model.modulate_gradients(raw, variables, coefficients=coefficients)
        for v, g, m in zip(variables, raw, modulated, strict=True):
            samples[keys[id(v)]].append(m.numpy() - k[keys[id(v)].split("_")[0]] * g.numpy())
    raw_np = {keys[id(v)]: g.numpy() for v, g in zip(variables, raw, strict=True)}
    return {key: np.stack(value) for key, value in samples.items()}, raw_np, k


# -- the tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "keras"])
def test_noise_has_the_specified_scale(backend: str) -> None:
    noise, raw, k = (torch_noise if backend == "torch" else keras_noise)(seed=11, draws=DRAWS)
    assert min(k.values()) < 1.0 == max(k.values()), f"{backend}: one modality should be slowed, got {k}"
    sizes = sorted({value.size for value in raw.values()})
    assert sizes[0] == FEATURES and sizes[-1] >= 8192, sizes  # a 2-element bias up to a 64x128 kernel
    check_law(noise, raw, backend)


@pytest.mark.parametrize("backend", ["torch", "keras"])
def test_fixed_seed_reproduces_the_noise_and_another_seed_changes_it(backend: str) -> None:
    measure = torch_noise if backend == "torch" else keras_noise
    first, _, _ = measure(seed=3, draws=2)
    again, _, _ = measure(seed=3, draws=2)
    other, _, _ = measure(seed=4, draws=2)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=f"{backend}: {key} not reproduced")
        assert not np.array_equal(first[key][0], first[key][1]), f"{backend}: {key}: same noise at two steps"
        assert not np.array_equal(first[key], other[key]), f"{backend}: {key}: seed 4 gave seed 3's noise"


@pytest.mark.parametrize("backend", ["torch", "keras"])
def test_fixed_seed_reproduces_a_noisy_training_run(backend: str) -> None:
    """End to end: the parity model trained with OGM-GE + noise twice (same seed) ends bit-identical."""
    train = train_torch if backend == "torch" else train_keras
    weights = initial_weights(TWO)
    x, y = make_data(TWO, 48)
    options = {"epochs": 2, "batch_size": 16, "lr": 2.0**-5}
    runs = [train(TWO, weights, x, y, OGMGE(names_of(TWO), noise=True), seed=seed, **options) for seed in (5, 5, 6)]
    for key in runs[0].params[-1]:
        np.testing.assert_array_equal(runs[0].params[-1][key], runs[1].params[-1][key], err_msg=f"{backend}: {key}")
    assert any(not np.array_equal(runs[0].params[-1][key], runs[2].params[-1][key]) for key in runs[0].params[-1])
