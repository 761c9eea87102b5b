"""The baselines (GradientPolicies): the torch ``Modulator`` and Keras's ``ModulatedModel`` train identically.

The model of :mod:`parity_models` (MLP and CNN encoders, concat fusion, linear head; float64) is built in
both frameworks from the same NumPy weights and trained with SGD + momentum on the same unshuffled
batches, each policy wired as the README's baselines example does (:func:`parity_models.train_torch_transform`,
:func:`parity_models.keras_transform_model`): AGM from masked passes, MMPareto with a unimodal head per
encoder whose gradients are kept apart, InfoReg (three epochs, a one-epoch window, so its anchors are
retaken and its window closes) and ARL from the fusion head's decomposed logits. Every step's transform,
coefficients and parameters must agree to float64 rounding. Keras on JAX is compared with Keras on
TensorFlow for the same four in ``test_parity_jax.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from parity_setup import parity_frameworks

torch, tf = parity_frameworks()

from parity_models import (  # noqa: E402
    TWO,
    compare_traces,
    compare_transforms,
    initial_weights,
    make_data,
    names_of,
    train_keras_transform,
    train_torch_transform,
    unimodal_head_weights,
)

import pdmp  # noqa: E402

BATCH, N, LR = 16, 64, 2.0**-5  # 4 steps per epoch
NAMES = names_of(TWO)
EXACT = {"rtol": 1e-9, "atol": 1e-12}
#: (policy factory, epochs)
CASES = {
    "AGM": (lambda: pdmp.AGM(NAMES), 2),
    "MMPareto": (lambda: pdmp.MMPareto(NAMES), 2),
    "InfoReg": (lambda: pdmp.InfoReg(NAMES, window=1), 3),
    "ARL": (lambda: pdmp.ARL(NAMES, gamma=3.0, warmup=1), 2),  # unimodal losses x1, then x3
}


def run_both(case: str) -> tuple[object, object]:
    factory, epochs = CASES[case]
    weights = {**initial_weights(TWO), **unimodal_head_weights(TWO)}
    x, y = make_data(TWO, N)
    options = {"epochs": epochs, "batch_size": BATCH, "lr": LR}
    return train_torch_transform(TWO, weights, x, y, factory(), **options), train_keras_transform(
        TWO, weights, x, y, factory(), **options
    )


@pytest.mark.parametrize("case", list(CASES))
def test_same_transforms_coefficients_and_weights_every_step(case: str) -> None:
    torch_trace, keras_trace = run_both(case)
    epochs = CASES[case][1]
    assert len(torch_trace.params) == epochs * N // BATCH
    want = compare_transforms(keras_trace, torch_trace, NAMES, what=case)
    compare_traces(torch_trace, keras_trace, **EXACT, what=f"{case}: torch vs keras")
    moved = max(np.abs(torch_trace.params[-1][k] - torch_trace.params[0][k]).max() for k in torch_trace.params[0])
    assert moved > 0.01, "the run must actually train for the comparison to mean anything"
    # The comparison must exercise what the policy does, not the identity transform.
    fields = {"AGM": 0, "MMPareto": 1, "InfoReg": 2, "ARL": 0}
    column = want[:, :, fields[case]]
    assert (column != (0.0 if case in ("MMPareto", "InfoReg") else 1.0)).any(), f"{case} never transformed"
    if case == "InfoReg":
        per_epoch = column.reshape(epochs, -1, len(NAMES))
        assert (per_epoch[1] != 0).any(), "InfoReg must pull towards the epoch-1 anchor"
        assert (per_epoch[2] == 0).all(), "InfoReg's window must close in epoch 2"
