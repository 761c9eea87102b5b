"""The epoch-boundary work of a :class:`~pdmp.rebalancing.RebalancingPolicy`, written once for every backend.

Which passes over the data happen, and when, is decided here from the policy's flags and its ``*_due``
answers (``pdmp.rebalancing``'s module docstring lists them per flag): PMR's prototype pass over the first
``policy.prototype_batches(n)`` training batches, G-Blending's checkpoint of every term's sample-weighted mean
loss on training and held-out batches, and Diagnosing & Re-learning's diagnosis on the training and held-out
features. :class:`EpochBoundary` runs them and records what it did in :attr:`EpochBoundary.events`; a backend
gives it only small callables on one batch (its features and term losses as NumPy and floats, its labels as
integers) and the calls that write into the model (prototypes, re-initialisations).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from pdmp._validation import check_non_negative_int, check_same_modalities
from pdmp.rebalancing import FUSED, ParameterEvent, RebalancingPolicy

__all__ = ["EpochBoundary"]

#: Re-iterable batches ``(inputs, target)``: each boundary pass iterates them anew.
Batches = Iterable[tuple[Any, Any]]


class EpochBoundary:
    """Before training (:meth:`start`) and after each epoch (:meth:`end_epoch`), the boundary work a
    :class:`~pdmp.rebalancing.RebalancingPolicy` declares and says is due, with the backend's batch functions.

    Args:
        policy: the core policy.
        num_classes: ``() -> int``, read when a pass needs it (after the pass's first batch: Keras learns the
            number from the first prediction).
        features: ``features(inputs) -> {modality: (batch, dim) ndarray}``, evaluation mode (prototypes, diagnosis).
        labels: ``labels(target) -> integer (batch,) ndarray`` (also gives each batch's sample count).
        term_losses: ``term_losses(inputs, target) -> {modality: mean loss, FUSED: mean loss}`` of one batch,
            evaluation mode (``needs_held_out_losses``).
        write_prototypes: called with the prototypes each prototype pass closes, where the backend keeps a
            copy in the model (Keras's variables); None where it reads ``policy.prototypes()`` itself.
        apply_parameter_events: ``apply(events)`` moves the encoders as the diagnosis says
            (``uses_parameter_events``).
        evaluating: ``() -> context manager`` entered around each pass over batches (torch's eval mode and no
            gradient); the default does nothing.
        length: the number of batches of the training batches (the prototype pass's share).
    """

    def __init__(
        self,
        policy: RebalancingPolicy,
        *,
        num_classes: Callable[[], int],
        features: Callable[[Any], Mapping[str, np.ndarray]],
        labels: Callable[[Any], np.ndarray],
        term_losses: Callable[[Any, Any], Mapping[str, float]] | None = None,
        write_prototypes: Callable[[dict[str, np.ndarray]], None] | None = None,
        apply_parameter_events: Callable[[list[ParameterEvent]], None] | None = None,
        evaluating: Callable[[], AbstractContextManager[Any]] = nullcontext,
        length: Callable[[Any], int] = len,
    ) -> None:
        if not isinstance(policy, RebalancingPolicy):
            raise TypeError(f"EpochBoundary runs a pdmp.rebalancing.RebalancingPolicy, got {type(policy).__name__}")
        if policy.needs_held_out_losses and term_losses is None:
            raise ValueError(f"{policy.kind} checkpoints every term's mean loss: give term_losses=")
        if policy.uses_parameter_events and apply_parameter_events is None:
            raise ValueError(f"{policy.kind} re-initialises encoders: give apply_parameter_events=")
        self.policy = policy
        self._num_classes, self._features, self._labels = num_classes, features, labels
        self._term_losses, self._write_prototypes = term_losses, write_prototypes
        self._apply_parameter_events, self._evaluating, self._length = apply_parameter_events, evaluating, length
        #: What the boundary work did, in order: ``("prototypes", epoch)``, ``("checkpoint", epochs_done,
        #: weights)``, ``("reinit", epoch, {modality: mix})``. For logs and tests.
        self.events: list[tuple[Any, ...]] = []

    @property
    def needs_held_out(self) -> bool:
        """Whether the policy measures anything on held-out batches."""
        return self.policy.needs_held_out_losses or self.policy.uses_parameter_events

    def start(self, train: Batches, held_out: Batches | None = None) -> None:
        """Before the first epoch: the first prototypes (``uses_prototypes``) and, where due after 0 epochs,
        the first checkpoint (``needs_held_out_losses``)."""
        self._require_held_out(held_out)
        if self.policy.uses_prototypes:
            self._prototypes(train, 0)
        self._checkpoint(0, train, held_out)

    def end_epoch(self, epoch: int, train: Batches, held_out: Batches | None = None) -> None:
        """After training epoch ``epoch`` (0-based): new prototypes, a checkpoint after ``epoch + 1`` epochs and
        a diagnosis, each where the policy declares it and says it is due, in that order."""
        epoch = check_non_negative_int(epoch, name="epoch")
        self._require_held_out(held_out)
        policy: Any = self.policy
        if policy.uses_prototypes:
            self._prototypes(train, epoch)
        self._checkpoint(epoch + 1, train, held_out)
        if policy.uses_parameter_events and policy.diagnosis_due(epoch):
            self._parameter_events(epoch, train, held_out)

    # ---------------------------------------------------------------------------------- the passes

    def _prototypes(self, train: Batches, epoch: int) -> None:
        """Accumulate the first ``prototype_batches(n)`` training batches' features and close the prototypes."""
        policy: Any = self.policy
        count = policy.prototype_batches(self._length(train))
        with self._evaluating():
            for index, (inputs, target) in enumerate(train):
                if index >= count:
                    break
                policy.accumulate(self._features(inputs), self._labels(target), num_classes=self._num_classes())
        prototypes = policy.close_prototypes(epoch)
        if self._write_prototypes is not None:
            self._write_prototypes(prototypes)
        self.events.append(("prototypes", epoch))

    def _checkpoint(self, epochs_done: int, train: Batches, held_out: Batches | None) -> None:
        policy: Any = self.policy
        if not (policy.needs_held_out_losses and policy.checkpoint_due(epochs_done)):
            return
        assert held_out is not None  # _require_held_out
        weights = policy.checkpoint(epochs_done, self.mean_term_losses(train), self.mean_term_losses(held_out))
        self.events.append(("checkpoint", epochs_done, dict(weights)))

    def mean_term_losses(self, batches: Batches) -> dict[str, float]:
        """Every term's mean loss over the batches, each batch's mean weighted by its number of samples."""
        assert self._term_losses is not None  # checked at construction for the policies that call this
        keys = (*self.policy.modalities, FUSED)
        sums = dict.fromkeys(keys, 0.0)
        count = 0
        with self._evaluating():
            for inputs, target in batches:
                n = int(np.shape(self._labels(target))[0])
                losses = self._term_losses(inputs, target)
                check_same_modalities(losses.keys(), keys, where="term_losses(inputs, target)")
                for key in keys:
                    sums[key] += float(losses[key]) * n
                count += n
        if count == 0:
            raise ValueError("the held-out or training batches are empty; a mean loss needs at least one sample")
        return {k: v / count for k, v in sums.items()}

    def gather_features(self, batches: Batches) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every batch's features (modality -> all rows) and integer labels, concatenated in batch order."""
        parts: dict[str, list[np.ndarray]] = {m: [] for m in self.policy.modalities}
        labels: list[np.ndarray] = []
        with self._evaluating():
            for inputs, target in batches:
                features = self._features(inputs)
                for m in self.policy.modalities:
                    parts[m].append(features[m])
                labels.append(self._labels(target))
        if not labels:
            raise ValueError("the held-out or training batches are empty; the diagnosis needs features")
        return {m: np.concatenate(v) for m, v in parts.items()}, np.concatenate(labels)

    def _parameter_events(self, epoch: int, train: Batches, held_out: Batches | None) -> None:
        assert held_out is not None and self._apply_parameter_events is not None  # checked before
        train_features, train_labels = self.gather_features(train)
        held_features, held_labels = self.gather_features(held_out)
        events: Sequence[ParameterEvent] = self.policy.parameter_events(
            epoch=epoch,
            train_features=train_features,
            train_labels=train_labels,
            held_features=held_features,
            held_labels=held_labels,
            num_classes=self._num_classes(),
        )
        self._apply_parameter_events(list(events))
        self.events.append(("reinit", epoch, {event.modality: event.mix for event in events}))

    def _require_held_out(self, held_out: Batches | None) -> None:
        if held_out is None and self.needs_held_out:
            raise ValueError(
                f"{self.policy.kind} measures held-out losses or features at epoch boundaries: give held_out= "
                "(re-iterable validation batches (inputs, target)), got None"
            )
