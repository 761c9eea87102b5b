"""Which modality does a fused Keras model rely on? :func:`dependency_shares` over a whole dataset.

It reads each modality's logits the way :class:`~pdmp.backends.keras.ModulatedModel` does for OGM-GE
(a :class:`~pdmp.backends.keras.ConcatHead` / :class:`~pdmp.backends.keras.SumHeads` spec of the
model's layers, or a function), in inference mode, and hands them to the core
(:func:`pdmp.diagnostics.true_class_mass`), so comparing what a model trained with and without PDMP
relies on takes one call per model.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

import keras
import numpy as np

from pdmp._validation import check_positive_int
from pdmp.backends.keras.heads import LayerLogits
from pdmp.backends.keras.model import LogitsFn, ModulatedModel, _tap_model
from pdmp.diagnostics import Dependency, shares, true_class_mass


def dependency_shares(
    model: keras.Model,
    modality_logits: LayerLogits | LogitsFn | None,
    x: Any,
    y: Any = None,
    *,
    batch_size: int = 256,
) -> Dependency:
    """Each modality's dependency mass and share for a fused model, over a dataset.

    Modality m's logits are its part of the model's output (OGM-GE's decomposition: for concat
    fusion ``f_m W_m + b / M``, for summed heads ``head_m(f_m)``); its mass is the mean softmax
    probability they put on the true class, its share the mass over the sum across modalities
    (:func:`pdmp.dependency`).

    Args:
        model: the fused functional model, or a :class:`~pdmp.backends.keras.ModulatedModel` (its
            inner model is read).
        modality_logits: :class:`~pdmp.backends.keras.ConcatHead` / :class:`~pdmp.backends.keras.SumHeads`
            naming the model's layers (checked against its graph, as ``ModulatedModel`` does), or
            ``fn(model, x, training) -> {modality: logits}``; ``None`` takes a ``ModulatedModel``'s own.
        x, y: the inputs as the model takes them (e.g. a dict of arrays keyed by input name) and the
            integer class labels; or ``x`` a ``tf.data.Dataset`` yielding ``(inputs, labels)`` batches
            and ``y`` left out.
        batch_size: batch size for arrays (a dataset keeps its own).

    The model runs in inference mode (``training=False``: dropout off, normalisation statistics
    frozen); nothing is trained or changed. Labels out of range or logits that are not finite raise
    ``ValueError`` naming the batch.
    """
    if isinstance(model, ModulatedModel):
        modality_logits = modality_logits if modality_logits is not None else model._logits.value
        model = model.inner_model
    if not isinstance(model, keras.Model):
        raise TypeError(f"dependency_shares needs the fused keras.Model, got {type(model).__name__}")
    if modality_logits is None:
        raise ValueError(
            "dependency_shares needs per-modality logits: pass modality_logits=ConcatHead(head=..., features={...}), "
            "SumHeads(heads={...}) or a function fn(model, x, training) -> {modality: logits}"
        )
    batch_size = check_positive_int(batch_size, name="batch_size")
    if hasattr(modality_logits, "taps"):
        spec: Any = modality_logits
        tap = _tap_model(model, spec)

        def logits_of(inputs: Any) -> Mapping[str, Any]:
            _, tapped, _ = tap(inputs, training=False)
            return spec.logits(model, tapped)
    elif callable(modality_logits):
        function = modality_logits

        def logits_of(inputs: Any) -> Mapping[str, Any]:
            return function(model, inputs, False)
    else:
        raise TypeError(
            f"modality_logits must be ConcatHead, SumHeads or a function, got {type(modality_logits).__name__}"
        )
    totals: dict[str, float] | None = None
    count = 0
    for index, (inputs, labels) in enumerate(_batches(x, y, batch_size)):
        where = f"dependency_shares batch {index}"
        logits = logits_of(inputs)
        if not isinstance(logits, Mapping):
            raise TypeError(f"{where}: modality_logits gave {type(logits).__name__}; it must give a dict of logits")
        arrays = {name: np.asarray(value, dtype=np.float64) for name, value in logits.items()}
        try:
            masses = true_class_mass(arrays, np.asarray(labels))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if totals is None:
            totals = dict.fromkeys(masses, 0.0)
        elif set(masses) != set(totals):
            raise ValueError(f"{where}: modalities {sorted(masses)} differ from the first batch's {sorted(totals)}")
        for name, mass in masses.items():
            totals[name] += float(mass.sum())
        count += len(np.asarray(labels).reshape(-1))
    if totals is None or count == 0:
        raise ValueError("dependency_shares: the data held no samples; pass at least one")
    mean = {name: total / count for name, total in totals.items()}
    return Dependency(mass=mean, share=shares(mean))


def _batches(x: Any, y: Any, batch_size: int) -> Iterator[tuple[Any, Any]]:
    """``(inputs, labels)`` batches from a ``tf.data.Dataset`` or from whole arrays."""
    tf = sys.modules.get("tensorflow")  # a tf.data.Dataset exists only where TensorFlow was imported
    if tf is not None and isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("dependency_shares: x is a tf.data.Dataset yielding (inputs, labels); leave y out")
        for index, batch in enumerate(x):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise TypeError(
                    f"dependency_shares batch {index}: the dataset must yield (inputs, labels) pairs, got "
                    f"{type(batch).__name__}"
                )
            yield batch[0], np.asarray(batch[1])
        return
    if y is None:
        raise ValueError("dependency_shares: pass the labels y (or a tf.data.Dataset of (inputs, labels) as x)")
    labels = np.asarray(y)
    lengths = {
        str(getattr(leaf, "shape", None)): len(leaf) for leaf in keras.tree.flatten(x) if hasattr(leaf, "__len__")
    }
    if any(length != len(labels) for length in lengths.values()):
        raise ValueError(
            f"dependency_shares: inputs have {sorted(set(lengths.values()))} samples but y has {len(labels)}; "
            "pass the labels of the same samples"
        )
    for start in range(0, len(labels), batch_size):
        rows = slice(start, start + batch_size)
        yield keras.tree.map_structure(lambda value, rows=rows: value[rows], x), labels[rows]


__all__ = ["dependency_shares"]
