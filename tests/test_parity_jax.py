"""Keras on JAX trains like Keras on TensorFlow and like the NumPy core says (float64).

Keras fixes its backend when it is imported, so the JAX runs happen in one subprocess
(``KERAS_BACKEND=jax``, ``JAX_ENABLE_X64=1`` so that the model of :mod:`parity_models` is float64
there too): each case is trained with :func:`parity_models.train_keras` (``ModulatedModel.fit``,
unshuffled, the same NumPy weights and batches) and every step's parameters and coefficients come
back. This process trains the same cases on TensorFlow. Both must follow the core's coefficients and
agree with each other step by step. TensorFlow is checked against torch in ``test_parity_training.py``
and ``test_parity_adaptive.py``, so this closes the loop core - torch - TF - JAX. The GradientPolicies (AGM,
MMPareto, InfoReg, ARL) are trained on both backends as ``test_parity_transforms.py`` trains them against torch,
and every step's transform and parameters compared.

The model is the two-MLP one with ReLU encoders: on JAX, Keras 3.15 computes ``tanh`` (the float64
input promotes through float32) and ``GlobalAveragePooling2D`` of a float64 model to float32 precision
only, which would leave float32 rounding differences that have nothing to do with the adapter.

Tolerances: the two backends run the same float64 arithmetic in a different summation order, so
``EXACT`` (1e-9 relative over 24 steps) as for torch vs TF; OGM-GE's coefficients are float32 in the
adapter (``backends/keras/_ogm.py``) and float32 rounding may differ between backends by an ulp, hence
``OGM``; the adaptive policy's coefficients come from float64 scores, so 1e-12.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pdmp.backends.keras  # noqa: F401  (loads triton before TensorFlow; see pdmp.backends._coexistence)

tf = pytest.importorskip("tensorflow")
pytest.importorskip("jax")
try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:  # already initialised by another test module
    pass

from parity_models import (  # noqa: E402
    Trace,
    compare_traces,
    compare_transforms,
    flatten,
    initial_weights,
    make_data,
    names_of,
    train_keras_rebalancing,
    train_keras_transform,
    unimodal_head_weights,
)
from parity_models import train_keras as train_keras_tf  # noqa: E402

from pdmp import (  # noqa: E402  # noqa: E402
    AGM,
    ARL,
    MLA,
    OGMGE,
    PDMP,
    PMR,
    AdaptivePDMP,
    DiagnosingRelearning,
    GBlending,
    InfoReg,
    MMPareto,
    policy_from_config,
)

EPOCHS, BATCH, N = 4, 16, 96  # 24 steps
LR = 2.0**-5
EXACT = {"rtol": 1e-9, "atol": 1e-12}
ACTIVATION = "relu"
TWO = (("audio", "mlp", (6,)), ("image", "mlp", (5,)))  # parity_models' spec format
OGM = {"rtol": 1e-6, "atol": 1e-7}
NAMES = names_of(TWO)
CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "pdmp-warmup-grad": (PDMP(NAMES, "audio", 4.0, 0.5, warmup=1), {}),
    "pdmp-step-ramp-grad": (PDMP(NAMES, "image", 4.0, 0.5, unit="step", warmup=3, ramp=4), {}),
    "pdmp-lr-adam": (PDMP(NAMES, "audio", 4.0, 0.5, warmup=1), {"mode": "lr", "optimizer": "adam", "lr": 2.0**-8}),
    "ogmge-no-noise": (OGMGE(NAMES, alpha=0.8, noise=False), {}),
    "adaptive-grad": (AdaptivePDMP(NAMES, {"audio": 0.9, "image": 0.3}, horizon=4.0), {"epochs": 3}),
    "adaptive-auxiliary-grad": (
        AdaptivePDMP(NAMES, {"audio": 0.9, "image": 0.3}, horizon=4.0, auxiliary=4.0),
        {"epochs": 3},
    ),
}

#: GradientPolicies (trained with parity_models.train_keras_transform, wired as in test_parity_transforms.py):
#: (policy, epochs). InfoReg runs three epochs with a one-epoch window, so its anchors are retaken and it stops.
TRANSFORM_CASES: dict[str, tuple[Any, int]] = {
    "AGM": (AGM(NAMES), 2),
    "MMPareto": (MMPareto(NAMES), 2),
    "InfoReg": (InfoReg(NAMES, window=1), 3),
    "ARL": (ARL(NAMES, gamma=1.0, warmup=1), 2),
}
TRANSFORM_N = 64  # 4 steps per epoch
#: RebalancingPolicies (parity_models.train_keras_rebalancing), each with its epoch-boundary work due within the run.
REBALANCING_CASES: dict[str, Any] = {
    "GBlending": GBlending(NAMES, super_epoch=1),
    "PMR": PMR(NAMES, alpha=2.0, prototype_fraction=2),
    "DiagnosingRelearning": DiagnosingRelearning(NAMES, every=1, count=1),
    "MLA": MLA(NAMES, projection="code"),  # the projection on: the full arithmetic
}

# Runs in the subprocess: trains every case on Keras-on-JAX and pickles the traces.
JAX_RUNNER = """
import json, pickle, sys
import jax, keras
assert keras.backend.backend() == "jax" and jax.config.jax_enable_x64
from parity_models import initial_weights, make_data, train_keras, train_keras_transform, unimodal_head_weights
from parity_models import train_keras_rebalancing
from pdmp import policy_from_config
given, out = json.loads(sys.stdin.read()), sys.argv[1]
TWO, cases = [(name, kind, tuple(shape)) for name, kind, shape in given["spec"]], given["cases"]
traces = {}
for name, (config, options) in cases.items():
    x, y = make_data(TWO, options.pop("n"))
    if options.pop("rebalancing", False):
        held = make_data(TWO, options.pop("held"), seed=4)
        trace = train_keras_rebalancing(TWO, x, y, held, policy_from_config(config), **options)
    elif options.pop("transform", False):
        weights = {**initial_weights(TWO), **unimodal_head_weights(TWO)}
        trace = train_keras_transform(TWO, weights, x, y, policy_from_config(config), **options)
    else:
        trace = train_keras(TWO, initial_weights(TWO), x, y, policy_from_config(config), **options)
    traces[name] = (trace.params, trace.coefficients, trace.unimodal_weights, trace.transforms, trace.predictions)
with open(out, "wb") as handle:
    pickle.dump(traces, handle)
"""


def rebalancing_options() -> dict[str, Any]:
    return {"epochs": 3, "batch_size": BATCH, "n": 48, "held": 30, "lr": LR, "activation": ACTIVATION}


def transform_options(case: str) -> dict[str, Any]:
    return {"epochs": TRANSFORM_CASES[case][1], "batch_size": BATCH, "n": TRANSFORM_N, "lr": LR,
            "activation": ACTIVATION}  # fmt: skip


def options(case: str) -> dict[str, Any]:
    return {"epochs": EPOCHS, "batch_size": BATCH, "n": N, "lr": LR, "activation": ACTIVATION, **CASES[case][1]}


@pytest.fixture(scope="module")
def jax_traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trace]:
    out = tmp_path_factory.mktemp("jax") / "traces.pkl"
    tests = str(Path(__file__).resolve().parent)
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_ENABLE_X64": "1",
        "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
    }
    cases = {name: (policy.get_config(), options(name)) for name, (policy, _) in CASES.items()}
    for name, (policy, _) in TRANSFORM_CASES.items():
        cases[f"transform-{name}"] = (policy.get_config(), {**transform_options(name), "transform": True})
    for name, policy in REBALANCING_CASES.items():
        cases[f"rebalancing-{name}"] = (policy.get_config(), {**rebalancing_options(), "rebalancing": True})
    result = subprocess.run(
        [sys.executable, "-c", JAX_RUNNER, str(out)],
        input=json.dumps({"spec": TWO, "cases": cases}),
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"the Keras-on-JAX runs failed:\n{result.stderr[-4000:]}"
    with open(out, "rb") as handle:
        raw = pickle.load(handle)
    return {
        name: Trace(params, coefficients, transforms=transforms, unimodal_weights=unimodal, predictions=predictions)
        for name, (params, coefficients, unimodal, transforms, predictions) in raw.items()
    }


def tf_trace(case: str) -> Trace:
    settings = options(case)
    x, y = make_data(TWO, settings.pop("n"))
    return train_keras_tf(TWO, initial_weights(TWO), x, y, policy_from_config(CASES[case][0].get_config()), **settings)


@pytest.mark.parametrize("case", [name for name in CASES if name.startswith("pdmp")])
def test_pdmp_on_jax_follows_the_core_schedule_and_trains_like_tensorflow(case: str, jax_traces: dict) -> None:
    policy, settings = CASES[case]
    jax_trace, reference = jax_traces[case], tf_trace(case)
    steps_per_epoch = N // BATCH
    epochs = settings.get("epochs", EPOCHS)
    want = flatten(
        [policy.modulation(step=s, epoch=s // steps_per_epoch).coefficients for s in range(epochs * steps_per_epoch)],
        NAMES,
    )
    np.testing.assert_array_equal(flatten(jax_trace.coefficients, NAMES), want, err_msg=f"{case}: JAX vs core")
    np.testing.assert_array_equal(flatten(reference.coefficients, NAMES), want, err_msg=f"{case}: TF vs core")
    compare_traces(jax_trace, reference, **EXACT, what=f"{case}: keras-jax vs keras-tensorflow")
    moved = max(np.abs(reference.params[-1][k] - reference.params[0][k]).max() for k in reference.params[0])
    assert moved > 0.01, "the run must actually train for the comparison to mean anything"


def test_ogmge_on_jax_slows_the_same_modality_by_the_same_coefficient(jax_traces: dict) -> None:
    jax_trace, reference = jax_traces["ogmge-no-noise"], tf_trace("ogmge-no-noise")
    got, want = flatten(jax_trace.coefficients, NAMES), flatten(reference.coefficients, NAMES)
    np.testing.assert_array_equal(got == 1.0, want == 1.0, err_msg="a different modality was slowed")
    assert (want < 1.0).any(axis=1).all(), "OGM-GE must slow one modality at every step of this run"
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg="OGM-GE coefficients (float32 in both)")
    compare_traces(jax_trace, reference, **OGM, what="ogmge: keras-jax vs keras-tensorflow")


def test_adaptive_pdmp_on_jax_learns_the_same_coefficients_every_step(jax_traces: dict) -> None:
    jax_trace, reference = jax_traces["adaptive-grad"], tf_trace("adaptive-grad")
    got, want = flatten(jax_trace.coefficients, NAMES), flatten(reference.coefficients, NAMES)
    assert (want[1:] != 1.0).any(axis=1).all(), "the policy must modulate from the second step on"
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg="adaptive coefficients per step")
    compare_traces(jax_trace, reference, **EXACT, what="adaptive: keras-jax vs keras-tensorflow")


def test_auxiliary_unimodal_losses_on_jax_weigh_and_train_like_tensorflow(jax_traces: dict) -> None:
    """AdaptivePDMP(auxiliary>0): the dominant modality's unimodal loss joins the differentiated loss with the
    weight the core gives, at every step, on JAX as on TensorFlow, to float64 rounding.

    Guards the unimodal loss's mean: Keras 3.15's ``ops.mean`` on JAX averages float64 in float32, which
    left the parameters ~1e-8 relative per step off TensorFlow's (``_transforms.unimodal_loss`` sums and
    divides instead).
    """
    jax_trace, reference = jax_traces["adaptive-auxiliary-grad"], tf_trace("adaptive-auxiliary-grad")
    got, want = flatten(jax_trace.unimodal_weights, NAMES), flatten(reference.unimodal_weights, NAMES)
    assert len(want) == len(reference.params) and (want[:, 0] > 0).any(), "the auxiliary loss must be on"
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg="unimodal-loss weights per step")
    without = jax_traces["adaptive-grad"]
    assert any(not np.allclose(jax_trace.params[-1][k], without.params[-1][k]) for k in without.params[-1]), (
        "the auxiliary loss must change training"
    )
    compare_traces(jax_trace, reference, **EXACT, what="adaptive with auxiliary losses: keras-jax vs keras-tensorflow")


@pytest.mark.parametrize("case", list(TRANSFORM_CASES))
def test_gradient_policies_on_jax_transform_and_train_like_tensorflow(case: str, jax_traces: dict) -> None:
    """AGM, MMPareto, InfoReg and ARL on Keras-JAX (the host call is ``jax.pure_callback``): every step's
    transform, the coefficients it reports (magnitude * fused) and every parameter equal the TensorFlow run's
    to float64 rounding.

    Defect guarded: GradientPolicies were refused on JAX; enabling them, InfoReg's anchors (taken with
    ``anchor.assign(variable)``) shared the encoders' buffers, and Keras's jitted step, which donates its
    state, failed with "Attempt to donate the same buffer twice".
    """
    policy, _ = TRANSFORM_CASES[case]
    settings = transform_options(case)
    x, y = make_data(TWO, settings.pop("n"))
    weights = {**initial_weights(TWO), **unimodal_head_weights(TWO)}
    reference = train_keras_transform(TWO, weights, x, y, policy_from_config(policy.get_config()), **settings)
    jax_trace = jax_traces[f"transform-{case}"]
    want = compare_transforms(jax_trace, reference, NAMES, what=case)
    compare_traces(jax_trace, reference, **EXACT, what=f"{case}: keras-jax vs keras-tensorflow")
    # The comparison must exercise what the policy does, not the identity transform.
    column = want[:, :, {"AGM": 0, "MMPareto": 1, "InfoReg": 2, "ARL": 0}[case]]
    assert (column != (0.0 if case in ("MMPareto", "InfoReg") else 1.0)).any(), f"{case} never transformed"
    moved = max(np.abs(reference.params[-1][k] - reference.params[0][k]).max() for k in reference.params[0])
    assert moved > 0.01, "the run must actually train for the comparison to mean anything"


@pytest.mark.parametrize("case", list(REBALANCING_CASES))
def test_rebalancing_policies_on_jax_train_like_tensorflow(case: str, jax_traces: dict) -> None:
    """G-Blending (held-out checkpoints every epoch), PMR (prototypes), Diagnosing & Re-learning (a re-initialisation
    after epoch 1) and MLA (two passes per step, the projected shared head): every parameter after every step
    equals the TensorFlow run's (``tests/test_keras_rebalancing.py`` checks that run against the core by hand)."""
    settings = rebalancing_options()
    x, y = make_data(TWO, settings.pop("n"))
    held = make_data(TWO, settings.pop("held"), seed=4)
    policy = policy_from_config(REBALANCING_CASES[case].get_config())
    reference = train_keras_rebalancing(TWO, x, y, held, policy, **settings)
    jax_trace = jax_traces[f"rebalancing-{case}"]
    assert len(reference.params) == 9
    compare_traces(jax_trace, reference, **EXACT, what=f"{case}: keras-jax vs keras-tensorflow")
    moved = max(np.abs(reference.params[-1][k] - reference.params[0][k]).max() for k in reference.params[0])
    assert moved > 0.01, "the run must actually train for the comparison to mean anything"
    # predict(): for MLA the fusion-weighted sum of the shared head's logits (a host call on both backends)
    np.testing.assert_allclose(jax_trace.predictions[0], reference.predictions[0], **EXACT, err_msg=f"{case}: predict")
