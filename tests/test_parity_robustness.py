"""The robustness helpers of torch and Keras give the same table on the float64 parity model with the same
weights: the core alters the inputs (the same noise from the same seed), each backend only runs its forward."""

from __future__ import annotations

import numpy as np
import pytest
from parity_setup import parity_frameworks

torch, tf = parity_frameworks()
keras = pytest.importorskip("keras")

from parity_models import TWO, initial_weights, keras_model, make_data, torch_model  # noqa: E402

import pdmp  # noqa: E402
from pdmp.backends import keras as keras_backend  # noqa: E402
from pdmp.backends import torch as torch_backend  # noqa: E402
from pdmp.robustness import Condition, training_means  # noqa: E402


def test_both_backends_give_the_same_table() -> None:
    weights = initial_weights(TWO)
    x, y = make_data(TWO, 96)
    train_x, _ = make_data(TWO, 64, seed=5)
    means = training_means(train_x)
    tokens = {"audio": np.linspace(-1.0, 1.0, 6), "image": np.full((6, 6, 1), 0.25)}
    conditions = [
        *pdmp.robustness_conditions(["audio", "image"], replacements=("zeros", "mean", "token"), snrs_db=(-5, 0, 10)),
        Condition("noise", ("audio", "image"), snr_db=3.0),
    ]
    net = torch_model(TWO, weights)

    def torch_predict(inputs: dict) -> object:
        # The parity model's torch image encoder is NCHW; the table's inputs are the Keras layout (NHWC).
        return net({"audio": inputs["audio"], "image": inputs["image"].permute(0, 3, 1, 2)})[0]

    options = {"conditions": conditions, "train_means": means, "tokens": tokens, "seed": 11, "batch_size": 32}
    torch_table = torch_backend.evaluate_robustness(torch_predict, x, y, **options)
    keras_table = keras_backend.evaluate_robustness(keras_model(TWO, weights), x, y, **options)
    assert [r["condition"] for r in torch_table.to_dict()] == [c.name for c in conditions]
    assert torch_table.to_dict() == keras_table.to_dict()
    assert torch_table.to_markdown() == keras_table.to_markdown()
    # Not a table of constants: the conditions move the numbers.
    assert len({row.accuracy for row in torch_table.rows}) > 3
