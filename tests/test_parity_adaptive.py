"""AdaptivePDMP: the torch ``Modulator`` and Keras's ``ModulatedModel`` train identically (float64).

The model of :mod:`parity_models` (MLP and CNN encoders, concat fusion, linear head) is built in both
frameworks from the same NumPy float64 weights and trained on the same unshuffled batches. Torch feeds
the policy through ``Modulator.observe`` in a plain loop; Keras computes the batch scores in the
graph and folds them in before the next step. Every step's coefficients, which are learnt from the
batches before it and so differ at every step, must agree to float64 rounding, and so must every
parameter after every step, in ``grad`` mode (SGD with momentum) and ``lr`` mode (Adam; under SGD
with momentum the two frameworks' ``lr`` modes differ by design when a coefficient changes, see
``tests/test_parity_training.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from parity_setup import parity_frameworks

torch, tf = parity_frameworks()

from parity_models import (  # noqa: E402
    TWO,
    compare_traces,
    flatten,
    initial_weights,
    make_data,
    names_of,
    run_both,
    train_torch,
)

from pdmp import AdaptivePDMP  # noqa: E402

EPOCHS, BATCH, N = 3, 16, 96  # 18 steps
NAMES = names_of(TWO)
#: Targets far from the shares the model starts with, so the coefficients leave 1 early and move every step.
ACCURACIES = {"audio": 0.9, "image": 0.3}
CASES = {
    "grad-sgd-momentum": {"mode": "grad", "lr": 2.0**-5},
    "lr-adam": {"mode": "lr", "optimizer": "adam", "lr": 2.0**-8},
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_adaptive_coefficients_and_weights_every_step(case: str) -> None:
    factory = lambda: AdaptivePDMP(NAMES, ACCURACIES, horizon=4.0)  # noqa: E731
    torch_trace, keras_trace = run_both(TWO, factory, epochs=EPOCHS, batch_size=BATCH, n=N, **CASES[case])
    want, got = flatten(torch_trace.coefficients, NAMES), flatten(keras_trace.coefficients, NAMES)
    assert len(want) == EPOCHS * N // BATCH
    np.testing.assert_array_equal(want[0], [1.0, 1.0])  # nothing observed before the first step
    assert (want[1:] != 1.0).any(axis=1).all(), "the policy must modulate from the second step on"
    assert len({tuple(row) for row in want}) == len(want), "the coefficients must change every step"
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"{case}: adaptive coefficients per step")
    compare_traces(torch_trace, keras_trace, rtol=1e-9, atol=1e-12, what=f"adaptive {case}: torch vs keras")
    moved = max(np.abs(torch_trace.params[-1][k] - torch_trace.params[0][k]).max() for k in torch_trace.params[0])
    assert moved > 0.01, "the run must actually train for the comparison to mean anything"


@pytest.mark.parametrize("case", list(CASES))
def test_auxiliary_unimodal_losses_agree_every_step(case: str) -> None:
    """``auxiliary``: each step's unimodal-loss weights (learnt from the batches before it) and the weights of
    a run whose loss adds them, torch's loop against Keras's ``unimodal_logits=``."""
    factory = lambda: AdaptivePDMP(NAMES, ACCURACIES, horizon=4.0, auxiliary=4.0)  # noqa: E731
    torch_trace, keras_trace = run_both(TWO, factory, epochs=EPOCHS, batch_size=BATCH, n=N, **CASES[case])
    want = flatten(torch_trace.unimodal_weights, NAMES)
    got = flatten(keras_trace.unimodal_weights, NAMES)
    assert len(want) == EPOCHS * N // BATCH
    np.testing.assert_array_equal(want[0], [0.0, 0.0])  # nothing observed before the first step
    # The dominant modality starts under its target share, gets an auxiliary loss, and reaches the target.
    assert (want[1:6, 0] > 0.1).all() and len(set(want[1:6, 0])) == 5, want[:, 0]
    assert want[-1, 0] < 0.5 * want[:, 0].max(), want[:, 0]  # and falls as the share gap closes
    np.testing.assert_array_equal(want[:, 1], 0.0)  # scope "dominant": never the other one
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg="auxiliary weights per step")
    compare_traces(torch_trace, keras_trace, rtol=1e-9, atol=1e-12, what=f"adaptive auxiliary {case}: torch vs keras")
    plain = train_torch(
        TWO, initial_weights(TWO), *make_data(TWO, N, seed=1), AdaptivePDMP(NAMES, ACCURACIES, horizon=4.0),
        epochs=1, batch_size=BATCH, **CASES[case],
    )  # fmt: skip
    key = next(k for k in plain.params[0] if k.startswith("audio"))
    assert np.abs(plain.params[-1][key] - torch_trace.params[N // BATCH - 1][key]).max() > 1e-6, (
        "the auxiliary loss must change the dominant encoder's training"
    )
