"""pdmp._boundary.EpochBoundary, the backend-neutral epoch-boundary work of the rebalancing policies, with fake
batch functions (NumPy only): which passes run at the start and at which epoch ends for each policy, over
which batches, inside the evaluation context; the sample-weighted mean of the term losses; the events; the
errors for empty batches and missing parts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from pdmp._boundary import EpochBoundary
from pdmp.rebalancing import FUSED, MLA, PMR, DiagnosingRelearning, GBlending

MODALITIES = ("a", "b")
CLASSES = 2


def make_batches(sizes: list[int], *, offset: int = 0, seed: int = 0) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Batches ``(inputs, target)``; ``inputs`` carries the batch's id, its features and its fake term losses."""
    rng = np.random.default_rng(seed)
    batches = []
    for i, n in enumerate(sizes):
        target = np.arange(n) % CLASSES
        inputs = {
            "id": offset + i,
            "a": rng.normal(size=(n, 3)) + 10.0 * (offset + i),  # each batch far from the others
            "b": rng.normal(size=(n, 2)),
            "losses": {"a": 1.0 + i, "b": 2.0 * (i + 1), FUSED: 0.5 * (i + 1)},
        }
        batches.append((inputs, target))
    return batches


class Backend:
    """The fake callables, each logging its calls (with whether it ran inside the evaluation context)."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.inside = False
        self.written: list[dict[str, np.ndarray]] = []
        self.applied: list[list[Any]] = []

    def features(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        self.log.append(("features", inputs["id"], self.inside))
        return {m: inputs[m] for m in MODALITIES}

    def labels(self, target: np.ndarray) -> np.ndarray:
        return np.asarray(target, dtype=np.int64)

    def term_losses(self, inputs: dict[str, Any], target: np.ndarray) -> dict[str, float]:
        self.log.append(("losses", inputs["id"], self.inside))
        return dict(inputs["losses"])

    def write_prototypes(self, prototypes: dict[str, np.ndarray]) -> None:
        self.log.append(("write",))
        self.written.append(prototypes)

    def apply_parameter_events(self, events: list[Any]) -> None:
        self.log.append(("apply",))
        self.applied.append(events)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        self.inside = True
        try:
            yield
        finally:
            self.inside = False

    def boundary(self, policy: Any) -> EpochBoundary:
        names = ("features", "labels", "term_losses", "write_prototypes", "apply_parameter_events", "evaluating")
        return EpochBoundary(policy, num_classes=lambda: CLASSES, **{name: getattr(self, name) for name in names})


def test_pmr_prototypes_from_the_first_batches_at_start_and_every_epoch_end() -> None:
    backend = Backend()
    policy = PMR(MODALITIES, prototype_fraction=2, momentum=0.0)
    boundary = backend.boundary(policy)
    train = make_batches([4, 4, 4, 4])
    boundary.start(train)
    # 4 batches // prototype_fraction 2: the first two, in evaluation mode; then the prototypes are written.
    assert backend.log == [("features", 0, True), ("features", 1, True), ("write",)]
    rows = {m: np.concatenate([train[0][0][m], train[1][0][m]]) for m in MODALITIES}
    y = np.concatenate([train[0][1], train[1][1]])
    for m in MODALITIES:
        expected = np.stack([rows[m][y == k].mean(axis=0) for k in range(CLASSES)])
        np.testing.assert_allclose(policy.prototypes()[m], expected, rtol=1e-12)
        np.testing.assert_array_equal(backend.written[0][m], policy.prototypes()[m])
    for epoch in range(3):
        boundary.end_epoch(epoch, train)
    assert boundary.events == [("prototypes", 0), ("prototypes", 0), ("prototypes", 1), ("prototypes", 2)]
    assert len(backend.written) == 4 and not [e for e in backend.log if e[0] in ("losses", "apply")]


def test_gblending_checkpoints_when_due_with_sample_weighted_means() -> None:
    backend = Backend()
    policy = GBlending(MODALITIES, super_epoch=2)
    boundary = backend.boundary(policy)
    train, held = make_batches([3, 1]), make_batches([1, 2, 5], offset=10)
    boundary.start(train, held)
    # Batch means weighted by batch size: train a = (3*1 + 1*2) / 4, not the batch average 1.5.
    last = policy.state_dict()["last"]
    assert last["epoch"] == 0
    assert last["train"] == pytest.approx({"a": 5 / 4, "b": 10 / 4, FUSED: 2.5 / 4}, rel=1e-15)
    assert last["held_out"] == pytest.approx({"a": 20 / 8, "b": 40 / 8, FUSED: 10 / 8}, rel=1e-15)
    assert [e[:2] for e in backend.log] == [("losses", i) for i in (0, 1, 10, 11, 12)]
    assert all(e[2] for e in backend.log)  # in evaluation mode
    backend.log.clear()
    boundary.end_epoch(0, train, held)  # 1 epoch done: not a multiple of super_epoch
    assert backend.log == [] and len(boundary.events) == 1
    boundary.end_epoch(1, train, held)  # 2 epochs done
    assert [e[0] for e in boundary.events] == ["checkpoint", "checkpoint"]
    assert [e[1] for e in boundary.events] == [0, 2]
    assert boundary.events[1][2] == policy.state_dict()["weights"]
    assert policy.state_dict()["last"]["epoch"] == 2
    assert not [e for e in backend.log if e[0] in ("features", "write", "apply")]


def test_the_weighted_mean_of_term_losses() -> None:
    boundary = Backend().boundary(GBlending(MODALITIES))
    means = boundary.mean_term_losses(make_batches([2, 6]))
    assert means == pytest.approx({"a": (2 * 1 + 6 * 2) / 8, "b": (2 * 2 + 6 * 4) / 8, FUSED: (2 * 0.5 + 6 * 1) / 8})
    assert list(means) == [*MODALITIES, FUSED]


def test_diagnosing_relearning_diagnoses_when_due_on_all_features() -> None:
    backend = Backend()
    policy = DiagnosingRelearning(MODALITIES, every=2, count=1)
    twin = DiagnosingRelearning(MODALITIES, every=2, count=1)
    boundary = backend.boundary(policy)
    train, held = make_batches([4, 6], seed=1), make_batches([3, 5], offset=10, seed=2)
    boundary.start(train, held)
    boundary.end_epoch(0, train, held)
    boundary.end_epoch(1, train, held)
    assert backend.log == [] and boundary.events == []  # not due before epoch 2
    boundary.end_epoch(2, train, held)
    assert [e[:2] for e in backend.log] == [("features", 0), ("features", 1), ("features", 10), ("features", 11),
                                            ("apply",)]  # fmt: skip
    assert all(e[2] for e in backend.log[:-1])
    expected = twin.parameter_events(
        epoch=2,
        train_features={m: np.concatenate([b[0][m] for b in train]) for m in MODALITIES},
        train_labels=np.concatenate([b[1] for b in train]),
        held_features={m: np.concatenate([b[0][m] for b in held]) for m in MODALITIES},
        held_labels=np.concatenate([b[1] for b in held]),
        num_classes=CLASSES,
    )
    assert [(e.modality, e.mix) for e in backend.applied[0]] == [(e.modality, e.mix) for e in expected]
    assert boundary.events == [("reinit", 2, {e.modality: e.mix for e in expected})]
    boundary.end_epoch(4, train, held)  # count=1: no second diagnosis
    assert len(boundary.events) == 1 and len(backend.applied) == 1


def test_mla_does_no_boundary_work() -> None:
    backend = Backend()
    boundary = backend.boundary(MLA(MODALITIES))
    train = make_batches([2, 2])
    boundary.start(train)
    for epoch in range(3):
        boundary.end_epoch(epoch, train)
    assert backend.log == [] and boundary.events == []


def test_empty_batches_and_missing_parts_are_refused_clearly() -> None:
    boundary = Backend().boundary(GBlending(MODALITIES))
    with pytest.raises(ValueError, match="batches are empty; a mean loss needs at least one sample"):
        boundary.mean_term_losses([])
    with pytest.raises(ValueError, match="batches are empty; a mean loss"):
        boundary.start(make_batches([2]), [])
    with pytest.raises(ValueError, match="batches are empty; the diagnosis needs features"):
        Backend().boundary(DiagnosingRelearning(MODALITIES)).gather_features([])
    with pytest.raises(ValueError, match=r"GBlending measures held-out .* give held_out="):
        boundary.start(make_batches([2]))
    backend = Backend()
    with pytest.raises(ValueError, match="give term_losses="):
        EpochBoundary(GBlending(MODALITIES), num_classes=lambda: 2, features=backend.features, labels=backend.labels)
    with pytest.raises(ValueError, match="give apply_parameter_events="):
        EpochBoundary(DiagnosingRelearning(MODALITIES), num_classes=lambda: 2, features=backend.features,
                      labels=backend.labels)  # fmt: skip
    with pytest.raises(TypeError, match="RebalancingPolicy, got"):
        EpochBoundary(object(), num_classes=lambda: 2, features=backend.features, labels=backend.labels)  # type: ignore[arg-type]


def test_term_losses_must_name_every_term() -> None:
    backend = Backend()
    boundary = EpochBoundary(
        GBlending(MODALITIES),
        num_classes=lambda: CLASSES,
        features=backend.features,
        labels=backend.labels,
        term_losses=lambda inputs, target: {"a": 1.0, "b": 1.0},
    )
    with pytest.raises(ValueError, match="term_losses"):
        boundary.mean_term_losses(make_batches([2]))
