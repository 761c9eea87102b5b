"""G-Blending, PMR, Diagnosing & Re-learning and MLA: the torch ``Rebalancer`` and Keras's ``ModulatedModel`` train
identically (float64, per step).

The models of :mod:`parity_models` (two MLP encoders) are built in both frameworks from the same NumPy weights and
trained with SGD + momentum on the same unshuffled batches for 3 epochs (9 steps), each method's epoch-boundary
work due within the run: G-Blending's held-out checkpoints every epoch, PMR's prototypes (from the first of three
batches), a Diagnosing & Re-learning re-initialisation after epoch 1, MLA's two passes per step through the
projected shared head. Every parameter after every step is compared (:func:`parity_models.compare_traces`).

Tolerance: float64 rounding (1e-9 relative) for all four. Guards G-Blending's fused term: Keras 3.15's compiled
loss is float32 even for a float64 model, which rounded the term's weight (1/3, not a power of two) and the
checkpoints' fused losses to float32 (4e-9 absolute off torch after 5 steps); the adapter computes the term with
the compiled ``keras.losses.Loss`` in its own dtype.
"""

from __future__ import annotations

from typing import Any

import pytest
from parity_setup import parity_frameworks

torch, tf = parity_frameworks()

from parity_models import (  # noqa: E402
    compare_traces,
    make_data,
    names_of,
    train_keras_rebalancing,
    train_torch_rebalancing,
)

from pdmp import MLA, PMR, DiagnosingRelearning, GBlending  # noqa: E402

SPEC = (("audio", "mlp", (6,)), ("image", "mlp", (5,)))
NAMES = names_of(SPEC)
OPTIONS = {"epochs": 3, "batch_size": 16, "lr": 2.0**-5}
EXACT = {"rtol": 1e-9, "atol": 1e-12}
CASES: dict[str, tuple[Any, dict[str, float]]] = {
    "GBlending": (lambda: GBlending(NAMES, super_epoch=1), EXACT),
    "PMR": (lambda: PMR(NAMES, alpha=2.0, prototype_fraction=2), EXACT),
    "DiagnosingRelearning": (lambda: DiagnosingRelearning(NAMES, every=1, count=1), EXACT),
    "MLA": (lambda: MLA(NAMES, projection="code"), EXACT),  # the projection on: the full arithmetic
}


@pytest.mark.parametrize("case", list(CASES))
def test_torch_and_keras_train_the_rebalancing_methods_identically(case: str) -> None:
    factory, tolerance = CASES[case]
    x, y = make_data(SPEC, 48)
    held = make_data(SPEC, 30, seed=4)
    torch_trace = train_torch_rebalancing(SPEC, x, y, held, factory(), **OPTIONS)
    keras_trace = train_keras_rebalancing(SPEC, x, y, held, factory(), **OPTIONS)
    assert len(torch_trace.params) == 9
    compare_traces(keras_trace, torch_trace, **tolerance, what=f"{case}: keras vs torch")
    first, last = torch_trace.params[0], torch_trace.params[-1]
    assert max(abs(last[k] - first[k]).max() for k in first) > 0.01, (
        "the run must train for the comparison to mean anything"
    )
