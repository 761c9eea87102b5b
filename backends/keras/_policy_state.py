"""A learning policy's state as a fixed-size float64 vector, so that it lives in a Keras variable.

Keras restores a model's *variables* everywhere a run can resume (``.keras`` files, ``load_weights``,
``BackupAndRestore``, ``EarlyStopping(restore_best_weights=True)``, ``set_weights``), but none of them
restores Python attributes. A policy that learns during training (:attr:`CoefficientPolicy.observes_scores`)
therefore keeps its :meth:`~pdmp.CoefficientPolicy.state_dict` in a variable, encoded here: the numbers
of the state, in the order of a template state, as float64 (exact for floats and for integers up to
2**53). Where the backend has no float64 (JAX without ``jax_enable_x64``) the variable holds the same
float64 numbers' bit patterns as pairs of int32 (:func:`pack`), so the state is still exact. Nothing
policy-specific: any state made of dicts and lists of numbers whose shape does not
change during training fits (:class:`pdmp.AdaptivePDMP`'s moving averages and update count do).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_EXACT_INT = 2**53
#: The variable's dtype, and int32 words per number, for each dtype the backend gives wide floats.
STORAGE = {"float64": "float64", "float32": "int32"}
WORDS = {"float64": 1, "float32": 2}


def pack(vector: np.ndarray, wide_float: str) -> np.ndarray:
    """The float64 ``vector`` as the variable stores it (see :data:`STORAGE`)."""
    vector = np.asarray(vector, dtype=np.float64)
    return vector if wide_float == "float64" else vector.astype("<f8").view("<i4")


def unpack(stored: Any) -> np.ndarray:
    """The float64 vector a variable's value holds (float64 as is; int32 words as float64 bit patterns)."""
    array = np.asarray(stored)
    if array.dtype.kind == "i":
        return np.ascontiguousarray(array, dtype="<i4").view("<f8")
    return array.astype(np.float64)


class StateLayout:
    """Where each number of a policy's state sits in the vector; built from a template state."""

    def __init__(self, template: Mapping[str, Any], *, owner: str) -> None:
        self.owner = owner
        self.template = _check_tree(template, path="state", owner=owner)
        self.size = len(list(_leaves(self.template)))

    def encode(self, state: Mapping[str, Any]) -> np.ndarray:
        """The state's numbers as a float64 vector; raises if its shape differs from the template's."""
        _same_shape(state, self.template, path="state", owner=self.owner)
        values = [float(value) for value in _leaves(state)]
        if not all(math.isfinite(value) for value in values):
            raise ValueError(
                f"{self.owner}.state_dict() holds non-finite numbers {dict(state)!r}; a state must be finite"
            )
        return np.asarray(values, dtype=np.float64)

    def decode(self, vector: Any) -> Any:
        """The state the vector encodes, with the template's structure and number types."""
        array = np.asarray(vector, dtype=np.float64).reshape(-1)
        if array.size != self.size:
            raise ValueError(f"{self.owner} state vector has {array.size} numbers, the policy's state {self.size}")
        values = iter(array.tolist())
        return _rebuild(self.template, values)


def _check_tree(node: Any, *, path: str, owner: str) -> Any:
    if isinstance(node, Mapping):
        for key in node:
            if not isinstance(key, str):
                raise TypeError(f"{owner}.state_dict(): {path} has a non-string key {key!r}; use string keys")
        return {key: _check_tree(value, path=f"{path}[{key!r}]", owner=owner) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_check_tree(value, path=f"{path}[{index}]", owner=owner) for index, value in enumerate(node)]
    if isinstance(node, (bool, np.bool_)):
        return bool(node)
    if isinstance(node, (int, np.integer)):
        return int(node)
    if isinstance(node, (float, np.floating)):
        return float(node)
    raise TypeError(
        f"{owner}.state_dict(): {path} is {type(node).__name__} {node!r}; the Keras adapter keeps a learning "
        "policy's state in a float64 variable, so the state must be dicts and lists of numbers"
    )


def _leaves(node: Any) -> Any:
    if isinstance(node, Mapping):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _leaves(value)
    else:
        yield node


def _same_shape(node: Any, template: Any, *, path: str, owner: str) -> None:
    fix = "the Keras adapter stores the state in a fixed-size variable, so its keys and list lengths must stay fixed"
    if isinstance(template, dict):
        if not isinstance(node, Mapping) or list(node) != list(template):
            keys = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise ValueError(f"{owner}.state_dict(): {path} has keys {keys}, expected {list(template)}; {fix}")
        for key in template:
            _same_shape(node[key], template[key], path=f"{path}[{key!r}]", owner=owner)
    elif isinstance(template, list):
        if not isinstance(node, Sequence) or isinstance(node, str) or len(node) != len(template):
            raise ValueError(f"{owner}.state_dict(): {path} is {node!r}, expected {len(template)} entries; {fix}")
        for index, (value, expected) in enumerate(zip(node, template, strict=True)):
            _same_shape(value, expected, path=f"{path}[{index}]", owner=owner)
    else:
        if isinstance(node, str) or not isinstance(node, (int, float, np.integer, np.floating, np.bool_)):
            raise ValueError(f"{owner}.state_dict(): {path} is {node!r}, expected a number; {fix}")
        if isinstance(template, int) and not isinstance(template, bool) and abs(int(node)) >= _EXACT_INT:
            raise ValueError(f"{owner}.state_dict(): {path} = {node!r} is too large to keep exactly in float64")


def _rebuild(template: Any, values: Any) -> Any:
    if isinstance(template, dict):
        return {key: _rebuild(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [_rebuild(value, values) for value in template]
    value = next(values)
    if isinstance(template, bool):
        return bool(value)
    if isinstance(template, int):
        return round(value)
    return value
