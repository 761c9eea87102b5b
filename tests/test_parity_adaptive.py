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

from parity_models import TWO, compare_traces, flatten, names_of, run_both  # noqa: E402

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
