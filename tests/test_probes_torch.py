"""Probes of the torch adapter: bad inputs and faults, each refused with a named error, changing nothing.

Every probe asserts the error type, that the message names the culprit, and that nothing was left
behind: no hook on a parameter, no optimizer hook or wrapper, the optimizer's groups and learning
rates as they were, the modulator's clock, coefficients and generators unchanged, the caller's RNG
untouched and no model trained.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch_helpers import TwoTower, groups, make_two_tower  # noqa: E402

from pdmp import OGMGE, PDMP  # noqa: E402
from pdmp.backends.torch import Modulator, concat_head_logits, rank_unimodal  # noqa: E402

pytestmark = pytest.mark.torch

torch.set_num_threads(1)

NAMES = ["audio", "image"]


def make_model() -> TwoTower:
    return make_two_tower(deep_audio=False)


def pdmp(**options: Any) -> PDMP:
    return PDMP(NAMES, "audio", 10.0, 0.5, **options)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)


def plain_grads(model: TwoTower) -> dict[str, torch.Tensor]:
    a, v, y = batch()
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(a, v), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def optimizer_snapshot(optimizer: torch.optim.Optimizer) -> list[tuple[float, tuple[int, ...]]]:
    return [(group["lr"], tuple(id(p) for p in group["params"])) for group in optimizer.param_groups]


def assert_untouched(model: TwoTower, optimizer: torch.optim.Optimizer | None = None, before: Any = None) -> None:
    """No hook on any parameter, no optimizer hook or step wrapper, gradients plain, groups as before;
    and the parameters are free: a new Modulator can be built on them."""
    for name, param in model.named_parameters():
        assert not getattr(param, "_backward_hooks", None), f"hook left on {name}"
    reference = make_model()
    reference.load_state_dict(model.state_dict())
    expected = plain_grads(reference)
    for name, grad in plain_grads(model).items():
        assert torch.equal(grad, expected[name]), name
    if optimizer is not None:
        assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
        assert "step" not in vars(optimizer)
        if before is not None:
            assert optimizer_snapshot(optimizer) == before
    Modulator(groups(model), pdmp(), optimizer=optimizer).remove()


def modulator_state(mod: Modulator) -> dict[str, Any]:
    state = mod.state_dict()
    state["generators"] = {key: value.clone() for key, value in state["generators"].items()}
    state["coefficients_now"] = mod.coefficients
    return state


def assert_same_state(mod: Modulator, before: dict[str, Any]) -> None:
    after = modulator_state(mod)
    assert after.keys() == before.keys()
    for key in after:
        if key == "generators":
            assert after[key].keys() == before[key].keys()
            assert all(torch.equal(after[key][k], before[key][k]) for k in after[key])
        else:
            assert after[key] == before[key], key


# ------------------------------------------------------------------------ Modulator construction


def _other_policy_names(model: TwoTower, optimizer: torch.optim.Optimizer) -> Any:
    return Modulator({"audoi": model.audio, "image": model.image}, pdmp())


CONSTRUCTION_PROBES: list[tuple[str, Callable[[TwoTower, torch.optim.Optimizer], Any], type, str]] = [
    (
        "policy-not-a-policy",
        lambda m, o: Modulator(groups(m), {"audio": 10.0, "image": 0.5}),  # type: ignore[arg-type]
        TypeError,
        r"policy must be a pdmp CoefficientPolicy .*got dict",
    ),
    (
        "modalities-a-list",
        lambda m, o: Modulator([m.audio, m.image], pdmp()),  # type: ignore[arg-type]
        TypeError,
        r"modalities must be a dict .*got list",
    ),
    ("modality-name-typo", _other_policy_names, ValueError, r"unknown modality\(ies\) \['audoi'\]"),
    ("unknown-mode", lambda m, o: Modulator(groups(m), pdmp(), mode="sgd"), ValueError, "unknown mode 'sgd'"),  # type: ignore[arg-type]
    (
        "optimizer-not-an-optimizer",
        lambda m, o: Modulator(groups(m), pdmp(), optimizer=m),  # type: ignore[arg-type]
        TypeError,
        r"optimizer must be a torch.optim.Optimizer, got TwoTower",
    ),
    ("lr-mode-without-optimizer", lambda m, o: Modulator(groups(m), pdmp(), mode="lr"), ValueError, "needs optimizer="),
    (
        "lr-mode-with-noise",
        lambda m, o: Modulator(groups(m), OGMGE(NAMES), mode="lr", optimizer=o),
        ValueError,
        "adds gradient noise, which mode='lr' cannot apply",
    ),
    ("negative-seed", lambda m, o: Modulator(groups(m), pdmp(), seed=-1), ValueError, r"seed must be an integer >= 0"),
    ("fractional-seed", lambda m, o: Modulator(groups(m), pdmp(), seed=1.5), ValueError, r"seed .* got 1.5"),  # type: ignore[arg-type]
    (
        "scaler-not-a-gradscaler",
        lambda m, o: Modulator(groups(m), pdmp(), scaler=2.0**16),
        TypeError,
        r"scaler must be a torch.amp.GradScaler, got float",
    ),
    (
        "encoder-given-by-name",
        lambda m, o: Modulator({"audio": "audio", "image": m.image}, pdmp()),  # type: ignore[dict-item]
        TypeError,
        r"modality 'audio': expected an nn.Module .*never by name",
    ),
    (
        "non-leaf-tensor",
        lambda m, o: Modulator({"audio": [m.audio[0].weight * 2], "image": m.image}, pdmp()),
        TypeError,
        r"modality 'audio': item 0 is Tensor, not a leaf parameter",
    ),
    (
        "parameter-in-two-modalities",
        lambda m, o: Modulator({"audio": m.audio, "image": [*m.image.parameters(), m.audio[0].bias]}, pdmp()),
        ValueError,
        r"'audio.0.bias' is claimed by modalities 'audio' and 'image'",
    ),
    (
        "conv-kernels-only-without-convs",
        lambda m, o: Modulator(groups(m), OGMGE(NAMES, conv_kernels_only=True)),
        ValueError,
        r"modulates none of modality 'audio'",
    ),
    (
        "deep-copy-of-the-encoders",
        lambda m, o: Modulator(groups(copy.deepcopy(m)), pdmp(), optimizer=o),
        ValueError,
        r"2 parameter\(s\) of modality 'audio' .* are not in the optimizer; .*deep copy",
    ),
    (
        "deep-copy-in-lr-mode",
        lambda m, o: Modulator(groups(copy.deepcopy(m)), pdmp(), mode="lr", optimizer=o),
        ValueError,
        r"modality 'audio' .* are not in the optimizer; mode='lr'",
    ),
]


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [probe[1:] for probe in CONSTRUCTION_PROBES],
    ids=[probe[0] for probe in CONSTRUCTION_PROBES],
)
def test_bad_construction_is_refused_and_leaves_nothing_behind(
    build: Callable[[TwoTower, torch.optim.Optimizer], Any], error: type, message: str
) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = optimizer_snapshot(optimizer)
    with pytest.raises(error, match=message):
        build(model, optimizer)
    assert_untouched(model, optimizer, before)


def test_frozen_modality_is_refused() -> None:
    model = make_model()
    model.image.requires_grad_(False)
    with pytest.raises(ValueError, match=r"modality 'image' has no trainable parameters \(all 2 are frozen\)"):
        Modulator(groups(model), pdmp())
    model.image.requires_grad_(True)
    assert_untouched(model)


def test_lr_mode_refuses_an_earlier_scheduler_without_splitting_groups() -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    before = optimizer_snapshot(optimizer)
    wrapper = vars(optimizer)["step"]  # the scheduler's own wrapper stays as it was
    with pytest.raises(ValueError, match="create the Modulator first and the LR scheduler after it"):
        Modulator(groups(model), pdmp(), mode="lr", optimizer=optimizer)
    assert optimizer_snapshot(optimizer) == before and vars(optimizer)["step"] is wrapper
    assert not optimizer._optimizer_step_pre_hooks
    assert scheduler.get_last_lr() == [0.1]


def test_lr_mode_refuses_a_mixed_group_added_under_a_scheduler_and_steps_nothing() -> None:
    model = make_model()
    model.image.requires_grad_(False)
    model.image[0].weight.requires_grad_(True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    mod = Modulator(groups(model), pdmp(), mode="lr", optimizer=optimizer)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    model.image[0].bias.requires_grad_(True)
    extra = nn.Parameter(torch.zeros(3))  # a head parameter in the same new group: mixes modalities
    optimizer.add_param_group({"params": [model.image[0].bias, extra]})
    before = optimizer_snapshot(optimizer)
    weights = copy.deepcopy(model.state_dict())
    plain_grads(model)
    with pytest.raises(ValueError, match=r"add one parameter group per modality"):
        optimizer.step()
    assert optimizer_snapshot(optimizer) == before
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())
    assert mod.step() is False


def test_a_second_modulator_on_the_same_parameters_is_refused() -> None:
    model = make_model()
    reference = plain_grads(make_model())
    first = Modulator(groups(model), pdmp())
    with pytest.raises(ValueError, match=r"parameter 'audio.0.weight' is already modulated by Modulator\(PDMP"):
        Modulator({"audio": model.audio, "image": model.image}, PDMP(NAMES, "audio", 3.0, 0.5))
    grads = plain_grads(model)  # scaled once, by the first modulator only
    assert torch.equal(grads["audio.0.weight"], reference["audio.0.weight"] * 10.0)
    assert torch.equal(grads["image.0.weight"], reference["image.0.weight"] * 0.5)
    first.remove()  # after removal the parameters are free again
    Modulator(groups(model), PDMP(NAMES, "audio", 3.0, 0.5)).remove()


# ------------------------------------------------------------------------------ lifecycle misuse


@pytest.mark.parametrize(
    ("call", "where"),
    [
        (lambda mod: mod.step(), "step"),
        (lambda mod: mod.set_epoch(3), "set_epoch"),
        (lambda mod: mod.observe({"audio": torch.zeros(2, 3), "image": torch.zeros(2, 3)}, torch.zeros(2)), "observe"),
    ],
    ids=["step", "set_epoch", "observe"],
)
def test_a_removed_modulator_refuses_to_go_on(call: Callable[[Modulator], Any], where: str) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Modulator(groups(model), pdmp(warmup=2), optimizer=optimizer) as mod:
        mod.set_epoch(1)
    with pytest.warns(UserWarning, match="removed .*its coefficients read 1.0"):
        before = modulator_state(mod)
    assert before["coefficients_now"] == {"audio": 1.0, "image": 1.0}  # what is in effect: nothing
    with pytest.raises(RuntimeError, match=rf"Modulator.{where}\(\) after remove\(\) .*no longer modulated"):
        call(mod)
    assert_same_state(mod, before)
    assert_untouched(model, optimizer)


@pytest.mark.parametrize("epoch", [-1, 1.5, True, "2"], ids=["negative", "fraction", "bool", "string"])
def test_bad_epoch_changes_nothing(epoch: Any) -> None:
    mod = Modulator(groups(make_model()), pdmp(warmup=1))
    mod.set_epoch(1)
    before = modulator_state(mod)
    with pytest.raises(ValueError, match=rf"epoch must be an integer >= 0, got {epoch!r}"):
        mod.set_epoch(epoch)
    assert_same_state(mod, before)


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        ({"audoi": torch.zeros(2, 3), "image": torch.zeros(2, 3)}, [0, 1], r"unknown modality\(ies\) \['audoi'\]"),
        ({"audio": torch.zeros(2, 3), "image": torch.zeros(2, 3)}, [0, 3], r"class index 3 but there are 3 classes"),
        ({"audio": torch.full((2, 3), float("nan")), "image": torch.zeros(2, 3)}, [0, 1], r"logits\['audio'\].*NaN"),
        ({"audio": torch.zeros(2, 3), "image": torch.zeros(3, 3)}, [0, 1], r"logits\['image'\] has 3 samples"),
        ([torch.zeros(2, 3), torch.zeros(2, 3)], [0, 1], r"logits must be a dict modality -> tensor, got list"),
    ],
    ids=["typo", "label-out-of-range", "nan-logits", "batch-mismatch", "not-a-dict"],
)
def test_bad_observation_changes_nothing(logits: Any, labels: Any, message: str) -> None:
    mod = Modulator(groups(make_model()), OGMGE(NAMES, alpha=0.8))
    good = {"audio": torch.tensor([[3.0, 0, 0], [0, 3.0, 0]]), "image": torch.zeros(2, 3)}
    mod.observe(good, torch.tensor([0, 1]))
    before = modulator_state(mod)
    with pytest.raises((ValueError, TypeError), match=message):
        mod.observe(logits, torch.tensor(labels))
    assert_same_state(mod, before)


def test_lr_mode_step_without_observation_keeps_lr_and_weights() -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mod = Modulator(groups(model), OGMGE(NAMES, noise=False), mode="lr", optimizer=optimizer)
    mod.set_epoch(0)
    weights = copy.deepcopy(model.state_dict())
    before = optimizer_snapshot(optimizer)
    plain_grads(model)
    with pytest.raises(RuntimeError, match=r"OGMGE needs this batch's per-modality logits before optimizer.step\(\)"):
        optimizer.step()
    assert optimizer_snapshot(optimizer) == before
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())
    assert mod.step() is False and mod.step_count == 0  # the refused step is not counted


def test_gradients_that_bypass_the_hooks_are_reported_before_the_clock_moves() -> None:
    model = make_model()
    mod = Modulator(groups(model), pdmp(unit="step", warmup=1))
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # as from a path that never ran autograd on these tensors
    before = modulator_state(mod)
    with pytest.raises(RuntimeError, match="did not pass through the Modulator's hooks"):
        mod.step()
    assert_same_state(mod, before)


# ------------------------------------------------------------------------- checkpoints (all or nothing)


def trained_modulator(seed: int = 5, steps: int = 3) -> tuple[Modulator, dict[str, Any]]:
    """An OGM-GE modulator some steps in (clock, coefficients and a generator state), and its state."""
    model = make_model()
    mod = Modulator(groups(model), OGMGE(NAMES, alpha=0.8), seed=seed)
    for step in range(steps):
        a, v, y = batch(step)
        mod.set_epoch(step)
        out = model(a, v)
        mod.observe(concat_head_logits(model.head, model.features(a, v)), y)
        nn.functional.cross_entropy(out, y).backward()
        mod.step()
    buffer = io.BytesIO()
    torch.save(mod.state_dict(), buffer)
    buffer.seek(0)
    return mod, torch.load(buffer)


def _bad_state(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    _, state = trained_modulator()
    change(state)
    return state


STATE_PROBES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "generator-state-garbage",
        lambda s: s["generators"].update(cpu=torch.zeros(7, dtype=torch.uint8)),
        r"state\['generators'\]\['cpu'\] is not a valid generator state",
    ),
    (
        "generator-state-not-bytes",
        lambda s: s["generators"].update(cpu=[1, 2, 3]),
        r"state\['generators'\]\['cpu'\] must be a uint8 tensor",
    ),
    ("generators-not-a-dict", lambda s: s.update(generators=[1]), r"state\['generators'\] must be a dict"),
    ("negative-step", lambda s: s["clock"].update(step=-4), r"state\['step'\] must be an integer >= 0, got -4"),
    ("clock-not-a-dict", lambda s: s.update(clock=7), r"state\['clock'\] must be a dict"),
    ("negative-seed", lambda s: s.update(seed=-1), r"state\['seed'\] must be an integer >= 0"),
    (
        "coefficient-nan",
        lambda s: s["coefficients"].update(audio=float("nan")),
        r"\['coefficients'\]\['audio'\] is nan",
    ),
    ("coefficients-missing", lambda s: s["coefficients"].pop("image"), r"missing modality\(ies\) \['image'\]"),
    (
        "unknown-policy-type",
        lambda s: s["policy"].update(type="Nope"),
        r"state\['policy'\] .*unknown policy type 'Nope'",
    ),
    ("other-mode", lambda s: s.update(mode="lr"), r"saved in mode='lr' but this Modulator uses 'grad'"),
    ("other-version", lambda s: s.update(version=99), r"version 99 is not supported"),
    ("missing-key", lambda s: s.pop("seed"), r"Modulator state: missing key\(s\) \['seed'\]"),
    ("not-a-state", lambda s: s.clear(), r"not a Modulator state_dict"),
]


@pytest.mark.parametrize(
    ("change", "message"), [probe[1:] for probe in STATE_PROBES], ids=[probe[0] for probe in STATE_PROBES]
)
def test_bad_checkpoint_is_refused_before_anything_changes(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    target, _ = trained_modulator(seed=9, steps=1)  # differs from the saved state in every field
    target.set_epoch(7)
    before = modulator_state(target)
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(_bad_state(change))
    assert_same_state(target, before)


# --------------------------------------------------------------------------------- heads


def test_concat_head_logits_refuses_a_non_linear_head_and_wrong_widths() -> None:
    model = make_model()
    features = model.features(*batch()[:2])
    with pytest.raises(TypeError, match=r"head must be the nn.Linear .*got Sequential"):
        concat_head_logits(nn.Sequential(model.head), features)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"feature widths \{'audio': 8, 'image': 0\} sum to 8 but head.in_features is 16"
    ):
        concat_head_logits(model.head, {"audio": features["audio"], "image": features["image"][:, :0]})


# -------------------------------------------------------------------------------- rank_unimodal


def data(n: int = 24, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return {"audio": (rng.normal(size=(n, 4)), y), "image": (rng.normal(size=(n, 4)), y)}


class CountingFactory:
    """A model factory that counts how many models were built (0: refused before any work)."""

    def __init__(self, make: Callable[[], nn.Module] = lambda: nn.Linear(4, 3)) -> None:
        self.make, self.calls = make, 0

    def __call__(self) -> nn.Module:
        self.calls += 1
        return self.make()


def _labels(split: str, name: str, values: Any) -> Callable[[dict[str, Any]], None]:
    def change(request: dict[str, Any]) -> None:
        x, _ = request[split][name]
        request[split][name] = (x, values(len(x)))

    return change


RANK_PROBES: list[tuple[str, Callable[[dict[str, Any]], None], str, int]] = [
    (
        "fractional-labels",
        _labels("train", "audio", lambda n: np.linspace(0, 2, n)),
        r"train\['audio'\] labels must hold integer class indices, got dtype float64 with 0.0869",
        0,
    ),
    (
        "ignore-index-labels",
        _labels("train", "image", lambda n: np.r_[np.zeros(n - 1, int), -100]),
        r"train\['image'\] labels contains negative class index -100",
        0,
    ),
    ("2-d-labels", _labels("val", "audio", lambda n: np.zeros((n, 1), int)), r"val\['audio'\] labels must be 1-D", 0),
    (
        "string-labels",
        _labels("val", "image", lambda n: np.array(["a"] * n)),
        r"val\['image'\] labels must hold integer class indices",
        0,
    ),
    (
        "label-out-of-range",
        _labels("train", "audio", lambda n: np.r_[np.zeros(n - 1, int), 3]),
        r"train\['audio'\] labels contain class index 3 but the model of 'audio' outputs 3 logits",
        1,
    ),
    (
        # Caught when the image model is checked (built, one batch scored), before any model trains.
        "other-modality-val-label-out-of-range",
        _labels("val", "image", lambda n: np.r_[np.zeros(n - 1, int), 5]),
        r"val\['image'\] labels contain class index 5 but the model of 'image' outputs 3 logits",
        2,
    ),
    ("unknown-optimizer", lambda r: r.update(optimizer="lion"), "unknown optimizer 'lion'", 0),
    ("unknown-metric", lambda r: r.update(metric="auc"), "unknown metric 'auc'", 0),
    ("zero-batch-size", lambda r: r.update(batch_size=0), "batch_size must be >= 1", 0),
    (
        "pair-expected",
        lambda r: r["train"].update(audio=np.zeros((4, 4))),
        r"train\['audio'\] must be a pair \(X, y\)",
        0,
    ),
    (
        "one-d-model-output",
        lambda r: r["factories"].update(audio=CountingFactory(lambda: nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)))),
        r"the unimodal model of 'audio' returned shape \(8,\); it must return class logits",
        1,
    ),
]


@pytest.mark.parametrize(
    ("change", "message", "models_built"),
    [probe[1:] for probe in RANK_PROBES],
    ids=[probe[0] for probe in RANK_PROBES],
)
def test_rank_unimodal_refuses_bad_input_before_training(
    change: Callable[[dict[str, Any]], None], message: str, models_built: int
) -> None:
    request: dict[str, Any] = {
        "factories": {"audio": CountingFactory(), "image": CountingFactory()},
        "train": data(24, seed=0),
        "val": data(12, seed=1),
        "epochs": 1,
        "lr": 0.1,
        "batch_size": 8,
        "progress": False,
    }
    change(request)
    torch.manual_seed(42)
    rng_before = torch.get_rng_state()
    with pytest.raises((ValueError, TypeError), match=message):
        rank_unimodal(**request)
    assert sum(factory.calls for factory in request["factories"].values()) == models_built
    assert torch.equal(torch.get_rng_state(), rng_before)
