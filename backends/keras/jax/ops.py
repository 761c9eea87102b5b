"""The operations the shared step needs that JAX does its own way (same names in ``tensorflow/ops.py``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import keras

#: JAX has float64 (and int64) only with ``jax_enable_x64``; without it a float64 variable would silently
#: hold float32, so the model asks for float32/int32 variables instead (see ``ModulatedModel``).
FLOAT64 = bool(jax.config.jax_enable_x64)


def variable_keys(variable: keras.Variable) -> list[int]:
    """Identities under which the optimizer hands ``variable`` to ``update_step``: the Keras variable itself.

    (Not its ``value``: a JAX array is replaced at every step, and a freed array's id can be reused.)
    """
    return [id(variable)]


def all_reduce_sum(values: Any) -> Any:
    """The identity: a jitted JAX step computes on the whole (global) batch, so there is nothing to sum."""
    return values


def replica_count() -> int:
    """1: a jitted JAX step computes the whole batch's loss (``keras.distribution`` is refused)."""
    return 1


def _raise_if(bad: Any, message: str) -> None:
    if bool(bad):
        raise ValueError(message)


def checked_labels(labels: Any, classes: Any, message: str) -> Any:
    """``labels`` (int32 class indices); an out-of-range one fails the step with ``message``.

    JAX gathers out of range silently (clamped or NaN), and a jitted step cannot raise on a value, so a
    host callback raises instead (the error surfaces as a ``JaxRuntimeError`` quoting the message).
    """
    jax.debug.callback(_raise_if, jnp.any(labels < 0), f"{message} a negative (or NaN) label")
    jax.debug.callback(_raise_if, jnp.any(labels >= classes), f"{message} a label >= the logits' width")
    return labels


def stateless_normal(shape: Any, seed: int, step: Any, position: int) -> Any:
    """Float32 standard normal noise determined by (seed, step, position) alone."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), jnp.asarray(step, jnp.uint32)), position)
    return jax.random.normal(key, tuple(shape), dtype=jnp.float32)


def densify(gradient: Any) -> Any:
    """JAX gradients are dense already."""
    return gradient


def scale_gradient(gradient: Any, k: Any) -> Any:
    return gradient * k


def inside_traced_function() -> bool:
    """False: a value traced by JAX cannot reach the Python side of the adapter (reading it fails)."""
    return False


def update_step_may_be_skipped() -> bool:
    """False: the JAX optimizer calls ``update_step`` for every variable on every path (``lax.cond``
    traces both branches of a skipped loss-scaled or gradient-accumulation step)."""
    return False


#: ``jax.pure_callback`` (the host call) runs inside a jitted step.
HOST_CALL_BLOCKS_XLA = False
#: Under ``gradient_accumulation_steps`` a GradientPolicy sums a step's logit statistics (and ``U``) over its
#: micro-batches. Keras's stateless JAX step carries only the model's and the optimizer's variables from step
#: to step, so the sums are weights of the model here (not free variables, which would be trace constants).
STEP_SUMS_ARE_WEIGHTS = True


def host_call(
    fn: Any, inputs: list[Any], outputs: list[tuple[tuple[int, ...], str]], *, stateful: bool = False
) -> list[Any]:
    """``fn(*inputs)`` run by Python on the host in the middle of the (jitted) step; ``outputs``: each result's
    (shape, dtype). ``jax.pure_callback``: right because ``fn`` is a function of its inputs (a policy's state
    goes in and comes out as an array), so JAX may run it again or drop an unused call without harm.

    Every output must have at least one element: XLA may alias a zero-size result buffer with another one,
    and Keras's jitted step, which donates its state, then fails ("donate the same buffer twice"); the model
    keeps a stateless policy's empty state out of the call for this reason.

    ``stateful``: ``fn`` changes Python state (MLA's head projector advances once per call), so it must run
    exactly once per step, in order: ``jax.experimental.io_callback(ordered=True)``.
    """
    if any(0 in shape for shape, _ in outputs):
        raise ValueError(f"host_call outputs {outputs}: a zero-size output may be aliased by XLA; leave it out")
    specs = tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in outputs)
    if stateful:
        from jax.experimental import io_callback

        return list(io_callback(fn, specs, *inputs, ordered=True))
    return list(jax.pure_callback(fn, specs, *inputs))


def after(values: list[Any], dependency: Any) -> list[Any]:
    """``values`` as they are: a jitted JAX step that raises updates nothing (the TensorFlow twin orders them)."""
    return values
