"""A :class:`pdmp.rebalancing.RebalancingPolicy` (G-Blending, PMR, Diagnosing & Re-learning, MLA) in ``ModulatedModel``.

The core decides every number; what happens here is chosen by the policy's capability flags only
(``pdmp.rebalancing``'s module docstring lists what an adapter does per flag):

* every step: the policy's :class:`~pdmp.rebalancing.LossTerms` come back from one host call as
  :meth:`pdmp.rebalancing.LossTerms.vector`, and :func:`combine` builds the loss in
  ``keras.ops`` (the twin of :meth:`pdmp.rebalancing.LossTerms.combine`, tested
  against it), from the losses the model can give: the compiled (fused) loss, each modality's unimodal
  loss, and for ``uses_prototypes`` the prototype cross-entropy and entropy of :func:`prototype_logits`;
* ``uses_training_passes``: the passes of :meth:`~pdmp.rebalancing.RebalancingPolicy.training_passes`,
  one optimizer step each on the pass's encoders and the shared head only (the backends' trainers);
* epoch boundaries (:class:`RebalancingCallback`, which ``ModulatedModel.fit`` adds): held-out
  checkpoints (``needs_held_out_losses``), prototypes (``uses_prototypes``), re-initialisations
  (``uses_parameter_events``);
* ``uses_fusion_weights``: the prediction outside training is ``sum_m w[m] * head(z_m)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from pdmp._boundary import EpochBoundary
from pdmp.rebalancing import LossTerms, RebalancingPolicy

#: The kinds of :class:`LossTerms`, in :meth:`LossTerms.vector`'s order after the fused weight.
KINDS = ("unimodal", "prototype", "prototype_entropy")


def combine(weights: Any, count: int, fused: Any, losses: Mapping[str, Sequence[Any] | None]) -> Any:
    """``LossTerms.from_vector(weights).combine(...)`` in ``keras.ops``: ``weights`` is the vector (a tensor)
    of :meth:`LossTerms.vector` for ``count`` modalities; ``losses[kind]`` each modality's loss of that kind
    in the modalities' order, or None where the model cannot give it (the host call refuses a nonzero
    weight there, see :func:`host_loss_terms`). The entropy enters with a minus sign."""
    given = [v for values in losses.values() if values is not None for v in values]
    # In the widest dtype given: Keras's compiled (fused) loss is float32 even for a float64 model.
    dtype = "float64" if any(keras.backend.standardize_dtype(v.dtype) == "float64" for v in given) else None
    total: Any = 0.0
    if fused is not None:
        fused = ops.cast(fused, dtype or fused.dtype)
        total = ops.cast(weights[0], fused.dtype) * fused
    for k, kind in enumerate(KINDS):
        values = losses.get(kind)
        if values is None:
            continue
        sign = -1.0 if kind == "prototype_entropy" else 1.0
        for m, value in enumerate(values):
            value = ops.cast(value, dtype or value.dtype)
            total = total + sign * ops.cast(weights[1 + k * count + m], value.dtype) * value
    return total


def check_available(terms: LossTerms, available: Mapping[str, bool], who: str) -> None:
    """Refuse terms the model cannot compute (``available``: kind -> whether the step computes it)."""
    if terms.fused != 0.0 and not available.get("fused", True):
        raise ValueError(f"{who}: a training pass weights the fused loss ({terms.fused}), which a pass cannot compute")
    fixes = {
        "unimodal": "pass unimodal_logits= (each modality's own head: SumHeads or fn(model, x, training)) or "
        "shared_head=",
        "prototype": "pass modality_features=",
        "prototype_entropy": "pass modality_features=",
    }
    for kind, names in terms.needed().items():
        if names and not available[kind]:
            raise ValueError(
                f"{who} weights the {kind} loss of {list(names)} ({getattr(terms, kind)}), which this model cannot "
                f"compute: {fixes[kind]}"
            )


def host_loss_terms(
    policy: RebalancingPolicy, available: Mapping[str, bool], wide_float: str
) -> Callable[..., np.ndarray]:
    """The host side of a step's loss: ``(step, epoch, labels[, prototype_logits]) -> LossTerms.vector``."""
    modalities = policy.modalities

    def run(step: Any, epoch: Any, labels: Any, *prototype: Any) -> np.ndarray:
        logits = None
        if prototype:
            stacked = np.asarray(prototype[0], dtype=np.float64)
            logits = {m: stacked[i] for i, m in enumerate(modalities)}
        terms = policy.loss_terms(
            step=int(np.asarray(step)),
            epoch=int(np.asarray(epoch)),
            prototype_logits=logits,
            labels=None if logits is None else np.asarray(labels),
        )
        check_available(terms, available, type(policy).__name__)
        return terms.vector(modalities).astype(wide_float)

    return run


def host_pass_terms(
    policy: RebalancingPolicy, traced: Sequence[Any], available: Mapping[str, bool], wide_float: str
) -> Callable[..., np.ndarray]:
    """The host side of the passes of a step: ``(step, epoch) -> one LossTerms.vector per pass``. The passes'
    structure (modalities, projection) was read when the step was traced; a policy that changes it between
    steps is refused (the step cannot change shape without a retrace)."""
    modalities = policy.modalities
    shape = [(p.modalities, p.project_shared_head) for p in traced]

    def run(step: Any, epoch: Any) -> np.ndarray:
        step_, epoch_ = int(np.asarray(step)), int(np.asarray(epoch))
        passes = policy.training_passes(step=step_, epoch=epoch_)
        now = [(p.modalities, p.project_shared_head) for p in passes]
        if now != shape:
            raise ValueError(
                f"{type(policy).__name__}.training_passes(step={step_}, epoch={epoch_}) gives passes {now}, but the "
                f"compiled step runs {shape}; ModulatedModel needs the same passes (modalities, projection) at every "
                "step (their loss weights may change)"
            )
        for p in passes:
            who = f"{type(policy).__name__} training pass {p.modalities}"
            check_available(p.terms, available, who)
            outside = sorted(set(p.terms.needed()["unimodal"]) - set(p.modalities))
            if outside:
                raise ValueError(f"{who} weights the unimodal loss of {outside}, whose encoders the pass does not run")
        return np.stack([p.terms.vector(modalities) for p in passes]).astype(wide_float)

    return run


def host_projection(policy: Any, state: dict[str, Any], dim: int) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """The host side of a pass's head projection: ``(features, batch_index) -> (P, 1)``, or ``(I, 0)`` where
    the policy leaves the gradient alone (``head_projection`` returned None)."""

    def run(features: Any, batch_index: Any) -> tuple[np.ndarray, np.ndarray]:
        n_batches = state.get("n_batches")
        if not n_batches:
            raise RuntimeError(
                f"{type(policy).__name__}'s head projection needs the number of batches per epoch, which "
                "ModulatedModel.fit() records; train with fit()"
            )
        matrix = policy.head_projection(
            np.asarray(features, dtype=np.float64), batch_index=int(np.asarray(batch_index)), n_batches=n_batches
        )
        if matrix is None:
            return np.eye(dim), np.asarray(0, dtype=np.int32)
        return np.asarray(matrix, dtype=np.float64), np.asarray(1, dtype=np.int32)

    return run


def host_fusion_weights(policy: RebalancingPolicy, wide_float: str) -> Callable[[Any], np.ndarray]:
    """The host side of the fused prediction: ``stacked logits (M, batch, classes) -> w`` (NaN where the
    policy gives none: the model's own output is used then)."""
    modalities = policy.modalities

    def run(stacked: Any) -> np.ndarray:
        values = np.asarray(stacked, dtype=np.float64)
        weights = policy.fusion_weights({m: values[i] for i, m in enumerate(modalities)})
        if weights is None:
            return np.full(len(modalities), np.nan, dtype=wide_float)
        return np.asarray([weights[m] for m in modalities], dtype=wide_float)

    return run


def prototype_logits(features: Any, prototypes: Any) -> Any:
    """``-||z - c||`` (Euclidean, not squared; the direct difference, as the core's NumPy), ``(batch, classes)``,
    differentiable in ``features``."""
    z = ops.convert_to_tensor(features)
    c = ops.cast(ops.convert_to_tensor(prototypes), z.dtype)
    squared = ops.sum(ops.square(z[:, None, :] - c[None, :, :]), axis=-1)
    # A sample equal to its class's prototype (a class seen once in the prototype batches) has distance 0, where
    # sqrt's gradient is infinite and the step would turn NaN; the gradient there is 0 (torch's cdist gives 0 too).
    positive = ops.greater(squared, 0.0)
    return -ops.where(positive, ops.sqrt(ops.where(positive, squared, ops.ones_like(squared))), ops.zeros_like(squared))


def cross_entropy(logits: Any, labels: Any) -> Any:
    """The mean sparse categorical cross-entropy from logits (a sum over the count: see ``_transforms``)."""
    from pdmp.backends.keras._transforms import unimodal_loss

    return unimodal_loss(logits, labels)


def mean_entropy(logits: Any) -> Any:
    """The batch mean of the entropy of ``softmax(logits)`` over classes."""
    values = ops.convert_to_tensor(logits)
    shifted = values - ops.max(values, axis=-1, keepdims=True)
    log_p = shifted - ops.log(ops.sum(ops.exp(shifted), axis=-1, keepdims=True))
    per_sample = -ops.sum(ops.exp(log_p) * log_p, axis=-1)
    return ops.sum(per_sample) / ops.cast(ops.shape(per_sample)[0], per_sample.dtype)


# -- epoch boundaries ----------------------------------------------------------------------------------------------


Batches = Callable[[], Iterator[tuple[Any, Any]]]


def batches_of(x: Any, y: Any = None, batch_size: int | None = None) -> tuple[Batches, int]:
    """Re-iterable, unshuffled ``(inputs, labels)`` batches of arrays (a dict of arrays) or of a dataset
    yielding ``(inputs, labels)``, and their count."""
    if y is None and not isinstance(x, (np.ndarray, Mapping, list, tuple)):
        data = x

        def from_dataset() -> Iterator[tuple[Any, Any]]:
            for item in data:
                inputs, labels = item[0], item[1]
                yield inputs, np.asarray(labels)

        try:
            count = len(data)
        except TypeError:
            count = sum(1 for _ in data)
        return from_dataset, int(count)
    if y is None:
        raise ValueError("held-out or training data as arrays needs labels: give (x, y)")
    labels = np.asarray(y)
    n = labels.shape[0]
    size = int(batch_size or 32)

    def rows(value: Any, part: slice) -> Any:
        if isinstance(value, Mapping):
            return {k: np.asarray(v)[part] for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(np.asarray(v)[part] for v in value)
        return np.asarray(value)[part]

    def from_arrays() -> Iterator[tuple[Any, Any]]:
        for start in range(0, n, size):
            part = slice(start, min(start + size, n))
            yield rows(x, part), labels[part]

    return from_arrays, math.ceil(n / size)


class RebalancingCallback(keras.callbacks.Callback):
    """A RebalancingPolicy's epoch-boundary work, which :meth:`ModulatedModel.fit` adds for such a policy.

    Before training (at the first epoch of a run starting at epoch 0) and after every epoch, where the policy
    declares it and says it is due: held-out checkpoints of every term's mean loss (``needs_held_out_losses``,
    inference mode), prototypes from the first ``prototype_batches(n)`` training batches (``uses_prototypes``,
    inference mode), and re-initialisations of the encoders' weights toward their values before training
    (``uses_parameter_events``: trainable weights only, batch-norm moving statistics and optimizer state
    kept). ``train``/``held_out``: batches from :func:`batches_of`. ``events`` records what it did.
    """

    def __init__(self, owner: Any, train: tuple[Batches, int], held_out: tuple[Batches, int] | None) -> None:
        super().__init__()
        self._owner = [owner]  # a list: Keras tracks a Layer attribute
        self.train, self.held_out = train, held_out
        # The boundary passes and their order are the core's; the model gives it the batch functions.
        self._boundary = EpochBoundary(
            owner.policy,
            num_classes=lambda: owner.num_classes,
            features=owner._rebalancing_features,
            labels=_labels,
            term_losses=lambda inputs, labels: owner._term_losses(inputs, _labels(labels)),
            write_prototypes=owner._write_prototypes,
            apply_parameter_events=owner._apply_parameter_events,
        )

    @property
    def events(self) -> list[tuple[Any, ...]]:
        """What the boundary work did, in order (:attr:`pdmp._boundary.EpochBoundary.events`)."""
        return self._boundary.events

    def on_train_begin(self, logs: Any = None) -> None:
        owner = self._owner[0]
        state = owner._rebalancing_state.value
        state["n_batches"] = self.train[1]
        owner._attach_state()
        if owner.epoch == 0 and owner.step_count == 0 and not state.get("started"):
            self._boundary.start(*self._batches())
            state["started"] = True

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._owner[0]._attach_state()  # JAX: the running fit()'s values into the variables
        self._boundary.end_epoch(epoch, *self._batches())

    def _batches(self) -> tuple[_Replay, _Replay | None]:
        return _Replay(*self.train), None if self.held_out is None else _Replay(*self.held_out)


class _Replay:
    """:func:`batches_of`'s ``(batches, count)`` as a re-iterable with a length (what EpochBoundary iterates)."""

    def __init__(self, batches: Batches, count: int) -> None:
        self.batches, self.count = batches, count

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self.batches()

    def __len__(self) -> int:
        return self.count


def _labels(labels: Any) -> np.ndarray:
    """Integer class indices (one-hot labels are turned into indices)."""
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[-1] > 1:
        return np.asarray(array.argmax(axis=-1))
    return array.reshape(-1).astype(np.int64)
