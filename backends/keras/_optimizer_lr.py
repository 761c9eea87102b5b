"""``lr`` mode's one workaround: per-variable learning rates for a stock Keras optimizer.

Keras 3 optimizers have no parameter groups, but every one of them updates a variable through
``update_step(gradient, variable, learning_rate)``, and the TensorFlow backend calls it once per
variable (per device under ``tf.distribute``; the JAX backend inside its stateless ``apply``) with the
current learning rate. Wrapping that method
on the optimizer instance to pass ``k_m * learning_rate`` for modality m's variables is exactly a
per-modality learning-rate multiplier for any optimizer (Adam, AdamW, RMSprop, SGD with momentum,
...), without copying optimizer state. A ``LossScaleOptimizer`` delegates to its inner optimizer,
which is the one wrapped.

What it does not scale: Keras applies decoupled ``weight_decay`` separately, with the base learning
rate, so decay is not multiplied (torch parameter groups would multiply it). Keras's SGD folds the
learning rate into its momentum buffer (``m = mu * m - lr * g``), so a change of ``k`` affects new
gradients only, where torch's SGD rescales the whole buffer; both agree while ``k`` is constant.

That path is a Keras implementation detail, so it is checked: the wrapper counts the modality
variables it scales (:func:`scaled_count`, at trace time in a traced step), and ``ModulatedModel``
raises if an optimizer step updated modality variables without going through it. The multiplier is
the model's business (``lookup``): inside its train step it is the step's coefficients, a value of the
step itself, which a stateless JAX step must use (its variables are not read there).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

Lookup = Callable[[Any], Any]

_MARK = "_pdmp_lr_lookup"
_COUNT = "_pdmp_lr_scaled"


def _float_bits(dtype: Any) -> int:
    """The width of a float dtype (``"float64"`` -> 64, ``"bfloat16"`` -> 16), 0 for other dtypes."""
    match = re.fullmatch(r"b?float(\d+)\w*", keras.backend.standardize_dtype(dtype))
    return int(match.group(1)) if match else 0


def scaled_count(optimizer: Any) -> int:
    """How often the installed wrapper has scaled a modality variable's learning rate (0 if never)."""
    target = getattr(optimizer, "inner_optimizer", optimizer)
    return int(getattr(target, _COUNT, 0))


def install(optimizer: keras.optimizers.Optimizer, lookup: Lookup) -> None:
    """Make ``optimizer`` multiply its learning rate by ``lookup(variable)`` when that is not None.

    Idempotent for the same lookup; a second model binding the same optimizer replaces the lookup.
    """
    target = getattr(optimizer, "inner_optimizer", optimizer)
    if getattr(target, _MARK, None) is lookup:
        return
    original = type(target).update_step

    def update_step(gradient: Any, variable: Any, learning_rate: Any) -> Any:
        multiplier = lookup(variable)
        if multiplier is not None:
            object.__setattr__(target, _COUNT, scaled_count(target) + 1)
            rate = ops.convert_to_tensor(learning_rate)
            if _float_bits(variable.dtype) > _float_bits(rate.dtype):
                rate = ops.cast(rate, variable.dtype)  # a float64 variable gets k * lr in float64, as torch computes it
            learning_rate = rate * ops.cast(multiplier, rate.dtype)
        return original(target, gradient, variable, learning_rate)

    # object.__setattr__: keep Keras's attribute tracking away from a plain function.
    object.__setattr__(target, "update_step", update_step)
    object.__setattr__(target, _MARK, lookup)
