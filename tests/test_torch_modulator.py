"""Modulator: hooked gradients, lr mode, removal, accumulation, checkpoints, OGM-GE, bad input."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from pdmp import OGMGE, PDMP, NoModulation, Ranking  # noqa: E402
from pdmp.backends.torch import Modulator, concat_head_logits  # noqa: E402

torch.set_num_threads(1)

GAMMA_P, GAMMA_R = 10.0, 0.5


class TwoTower(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(6, width), nn.ReLU())
        self.image = nn.Sequential(nn.Linear(5, width), nn.Tanh())
        self.head = nn.Linear(2 * width, 3)

    def features(self, a: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"audio": self.audio(a), "image": self.image(v)}

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat(list(self.features(a, v).values()), dim=1))


def make_model(seed: int = 0) -> TwoTower:
    torch.manual_seed(seed)
    return TwoTower()


def batch(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def grads_of(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    a, v, y = batch(seed)
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(a, v), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def pdmp(**options: object) -> PDMP:
    return PDMP(["audio", "image"], "audio", GAMMA_P, GAMMA_R, **options)  # type: ignore[arg-type]


def groups(model: TwoTower) -> dict[str, nn.Module]:
    return {"audio": model.audio, "image": model.image}


FACTOR = {"audio": GAMMA_P, "image": GAMMA_R, "head": 1.0}


def test_hooked_gradients_equal_manual_scaling_exactly() -> None:
    reference = grads_of(make_model())
    model = make_model()
    mod = Modulator(groups(model), pdmp())
    assert mod.coefficients == {"audio": GAMMA_P, "image": GAMMA_R}
    hooked = grads_of(model)
    for name, grad in hooked.items():
        expected = reference[name] * FACTOR[name.split(".")[0]]
        assert torch.equal(grad, expected), name
    assert torch.equal(hooked["head.weight"], reference["head.weight"])  # fusion/head untouched


def test_parameters_may_be_given_as_iterables() -> None:
    reference = grads_of(make_model())
    model = make_model()
    Modulator({"audio": list(model.audio.parameters()), "image": model.image[0].weight}, pdmp())
    hooked = grads_of(model)
    assert torch.equal(hooked["audio.0.bias"], reference["audio.0.bias"] * GAMMA_P)
    assert torch.equal(hooked["image.0.weight"], reference["image.0.weight"] * GAMMA_R)
    assert torch.equal(hooked["image.0.bias"], reference["image.0.bias"])  # not given: untouched


def test_warmup_gives_untouched_gradients_then_modulates() -> None:
    reference = grads_of(make_model())
    model = make_model()
    mod = Modulator(groups(model), pdmp(warmup=1))
    mod.set_epoch(0)
    assert mod.coefficients == {"audio": 1.0, "image": 1.0}
    for name, grad in grads_of(model).items():
        assert torch.equal(grad, reference[name]), name
    mod.set_epoch(1)
    assert torch.equal(grads_of(model)["audio.0.weight"], reference["audio.0.weight"] * GAMMA_P)


def train(model: TwoTower, mod: Modulator | None, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    for step in range(steps):
        a, v, y = batch(step)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(a, v), y).backward()
        optimizer.step()
        if mod is not None:
            mod.step()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_grad_mode_equals_lr_mode_under_sgd_without_weight_decay(momentum: float) -> None:
    finals = {}
    for mode in ("grad", "lr"):
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
        with Modulator(groups(model), pdmp(), mode=mode, optimizer=optimizer) as mod:  # type: ignore[arg-type]
            train(model, mod, optimizer)
        finals[mode] = model.state_dict()
    plain = make_model()
    train(plain, None, torch.optim.SGD(plain.parameters(), lr=0.05, momentum=momentum))
    for name, value in finals["grad"].items():
        torch.testing.assert_close(finals["lr"][name], value, rtol=1e-5, atol=1e-6)
    # ... and both differ from unmodulated training, so the comparison is not vacuous.
    assert not torch.allclose(finals["grad"]["audio.0.weight"], plain.state_dict()["audio.0.weight"], atol=1e-3)


def test_lr_mode_prioritises_under_adam_where_grad_mode_barely_does() -> None:
    updates = {}
    for mode in ("none", "grad", "lr"):
        model = make_model()
        before = model.audio[0].weight.detach().clone()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # grad mode under Adam warns that it is a near no-op (tested below)
            mod = None if mode == "none" else Modulator(groups(model), pdmp(), mode=mode, optimizer=optimizer)  # type: ignore[arg-type]
        train(model, mod, optimizer, steps=1)
        updates[mode] = (model.audio[0].weight.detach() - before).abs().mean().item()
    assert updates["grad"] == pytest.approx(updates["none"], rel=1e-3)  # Adam normalises the multiplier away
    assert updates["lr"] == pytest.approx(GAMMA_P * updates["none"], rel=1e-3)


def test_lr_mode_scales_only_during_the_step_and_splits_groups() -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    Modulator(groups(model), pdmp(), mode="lr", optimizer=optimizer)
    assert len(optimizer.param_groups) == 3  # audio, image, the rest (head)
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)  # after the Modulator: fine
    train(model, None, optimizer, steps=1)
    scheduler.step()
    assert sorted(seen[0]) == sorted([0.1 * GAMMA_P, 0.1 * GAMMA_R, 0.1])
    assert [g["lr"] for g in optimizer.param_groups] == [0.05, 0.05, 0.05]  # base lrs, as the scheduler set them


def test_lr_mode_refuses_a_scheduler_created_before_it() -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    with pytest.raises(ValueError, match="create the Modulator first and the LR scheduler after it"):
        Modulator(groups(model), pdmp(), mode="lr", optimizer=optimizer)


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_remove_restores_plain_training(mode: str) -> None:
    plain = make_model()
    train(plain, None, torch.optim.SGD(plain.parameters(), lr=0.05))
    for use_context in (False, True):
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        if use_context:
            with Modulator(groups(model), pdmp(), mode=mode, optimizer=optimizer) as mod:  # type: ignore[arg-type]
                assert mod.active
        else:
            mod = Modulator(groups(model), pdmp(), mode=mode, optimizer=optimizer)  # type: ignore[arg-type]
            mod.remove()
        assert not mod.active
        train(model, None, optimizer)
        for name, value in plain.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), (use_context, name)


def test_gradient_accumulation_scales_each_contribution_once() -> None:
    reference = make_model()
    g1, g2 = grads_of(reference, seed=1), grads_of(reference, seed=2)
    model = make_model()
    Modulator(groups(model), pdmp())
    model.zero_grad()
    for seed in (1, 2):
        a, v, y = batch(seed)
        nn.functional.cross_entropy(model(a, v), y).backward()
    for name, p in model.named_parameters():
        expected = (g1[name] + g2[name]) * FACTOR[name.split(".")[0]]
        torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=0), name


def run_with_checkpoint(policy_factory, steps: int, save_at: int | None, mode: str = "grad"):  # type: ignore[no-untyped-def]
    """Train ``steps`` steps (2 per epoch); optionally checkpoint at ``save_at`` and resume in new objects."""

    def build():  # type: ignore[no-untyped-def]
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        mod = Modulator(groups(model), policy_factory(), mode=mode, optimizer=optimizer, seed=3)  # type: ignore[arg-type]
        return model, optimizer, mod

    model, optimizer, mod = build()
    history = []
    for step in range(steps):
        if save_at is not None and step == save_at:
            buffer = io.BytesIO()
            torch.save({"m": model.state_dict(), "o": optimizer.state_dict(), "mod": mod.state_dict()}, buffer)
            mod.remove()
            buffer.seek(0)
            checkpoint = torch.load(buffer)  # weights_only: the state is plain data
            model, optimizer, mod = build()
            model.load_state_dict(checkpoint["m"])
            optimizer.load_state_dict(checkpoint["o"])
            mod.load_state_dict(checkpoint["mod"])
        if step % 2 == 0:
            mod.set_epoch(step // 2)
        a, v, y = batch(step)
        optimizer.zero_grad()
        out = model(a, v)
        mod.observe(concat_head_logits(model.head, model.features(a, v)), y)
        history.append(mod.coefficients)
        nn.functional.cross_entropy(out, y).backward()
        optimizer.step()
        mod.step()
    return history, model.state_dict()


@pytest.mark.parametrize(
    ("policy_factory", "mode"),
    [
        (lambda: pdmp(warmup=2, ramp=3, unit="step"), "grad"),
        (lambda: pdmp(warmup=1, ramp=2), "lr"),
        (lambda: OGMGE(["audio", "image"], alpha=0.8, start_epoch=1), "grad"),
    ],
    ids=["pdmp-step-ramp", "pdmp-epoch-ramp-lr", "ogmge-noise"],
)
def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run(policy_factory, mode: str) -> None:  # type: ignore[no-untyped-def]
    straight, final = run_with_checkpoint(policy_factory, steps=8, save_at=None, mode=mode)
    resumed, resumed_final = run_with_checkpoint(policy_factory, steps=8, save_at=5, mode=mode)
    assert resumed == straight
    assert len({tuple(c.values()) for c in straight}) > 2  # the schedule really moves
    for name, value in final.items():
        assert torch.equal(resumed_final[name], value), name


def test_load_state_dict_refuses_a_different_policy_or_mode() -> None:
    state = Modulator(groups(make_model()), pdmp()).state_dict()
    with pytest.raises(ValueError, match="pass strict=False"):
        Modulator(groups(make_model()), pdmp(warmup=3)).load_state_dict(state)
    Modulator(groups(make_model()), pdmp(warmup=3)).load_state_dict(state, strict=False)
    model = make_model()
    lr_mod = Modulator(groups(model), pdmp(), mode="lr", optimizer=torch.optim.SGD(model.parameters(), lr=1))
    with pytest.raises(ValueError, match="mode='grad'"):
        lr_mod.load_state_dict(state)
    other = Modulator({"audio": make_model().audio, "video": make_model().image}, PDMP(["audio", "video"], "audio"))
    with pytest.raises(ValueError, match=r"unknown modality\(ies\) \['image'\]"):
        other.load_state_dict(state, strict=False)
    with pytest.raises(ValueError, match="not a Modulator state_dict"):
        other.load_state_dict({"clock": {}})


# ----------------------------------------------------------------------------------------- OGM-GE


def ogm_grads(model: TwoTower, mod: Modulator, seed: int = 0) -> dict[str, torch.Tensor]:
    a, v, y = batch(seed, n=32)
    model.zero_grad(set_to_none=True)
    out = model(a, v)
    mod.observe(concat_head_logits(model.head, model.features(a, v)), y)
    nn.functional.cross_entropy(out, y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_ogmge_coefficients_come_from_the_core_and_scale_gradients() -> None:
    policy = OGMGE(["audio", "image"], alpha=0.8, noise=False)
    model = make_model()
    mod = Modulator(groups(model), policy)
    hooked = ogm_grads(model, mod)
    a, v, y = batch(0, n=32)
    logits = {k: t.numpy() for k, t in concat_head_logits(model.head, model.features(a, v)).items()}
    expected = policy.coefficients(logits=logits, labels=y.numpy())
    assert mod.coefficients == pytest.approx(expected, rel=1e-12)
    assert min(expected.values()) < 1.0 == max(expected.values())  # one modality really is slowed
    plain = make_model()
    a, v, y = batch(0, n=32)
    nn.functional.cross_entropy(plain(a, v), y).backward()
    for name, p in plain.named_parameters():
        factor = expected.get(name.split(".")[0], 1.0)
        torch.testing.assert_close(hooked[name], p.grad * factor, rtol=1e-6, atol=0)


def test_ogmge_noise_uses_the_unscaled_std_and_a_seedable_generator() -> None:
    torch.manual_seed(0)
    model = TwoTower(width=96)
    policy = OGMGE(["audio", "image"], alpha=0.8)
    reference = copy.deepcopy(model)
    with Modulator(groups(reference), OGMGE(["audio", "image"], alpha=0.8, noise=False)) as plain_mod:
        plain = ogm_grads(reference, plain_mod)
        factors = plain_mod.coefficients
    unscaled = {name: g / factors.get(name.split(".")[0], 1.0) for name, g in plain.items()}
    first = ogm_grads(model, Modulator(groups(model), policy, seed=7))
    model2 = copy.deepcopy(reference)
    again = ogm_grads(model2, Modulator(groups(model2), policy, seed=7))
    model3 = copy.deepcopy(reference)
    other = ogm_grads(model3, Modulator(groups(model3), policy, seed=8))
    for name in ("audio.0.weight", "image.0.weight"):  # both modalities get noise, whatever their k
        assert torch.equal(first[name], again[name])
        assert not torch.equal(first[name], other[name])
        noise = first[name] - plain[name]
        expected_std = unscaled[name].std().item()
        assert noise.std().item() == pytest.approx(expected_std, rel=0.1)
        assert abs(noise.mean().item()) < 0.1 * expected_std
    assert torch.equal(first["head.weight"], plain["head.weight"])  # head never gets noise


def test_ogmge_reference_mode_touches_only_conv_kernels() -> None:
    torch.manual_seed(0)
    audio = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    image = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    mod = Modulator({"audio": audio, "image": image}, OGMGE(["audio", "image"], conv_kernels_only=True))
    assert [tuple(p.shape) for p in mod.params["audio"]] == [(2, 1, 3, 3)]
    with pytest.raises(ValueError, match="modulates none of modality 'image'"):
        Modulator({"audio": audio, "image": nn.Linear(2, 2)}, OGMGE(["audio", "image"], conv_kernels_only=True))


def test_ogmge_without_observe_fails_loudly() -> None:
    model = make_model()
    Modulator(groups(model), OGMGE(["audio", "image"]))
    with pytest.raises(RuntimeError, match=r"call mod.observe\(logits, labels\)"):
        grads_of(model)


def test_observe_is_a_no_op_for_policies_without_logits_and_checks_names_otherwise() -> None:
    model = make_model()
    mod = Modulator(groups(model), pdmp())
    mod.observe({"whatever": torch.zeros(1)}, torch.zeros(1))
    assert mod.coefficients == {"audio": GAMMA_P, "image": GAMMA_R}
    ogm = Modulator(groups(make_model()), OGMGE(["audio", "image"]))
    with pytest.raises(ValueError, match=r"unknown modality\(ies\) \['audoi'\]"):
        ogm.observe({"audoi": torch.zeros(2, 3), "image": torch.zeros(2, 3)}, torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------------ bad input


def test_parameter_claimed_by_two_modalities() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="claimed by modalities 'audio' and 'image'"):
        Modulator({"audio": model.audio, "image": [*model.image.parameters(), model.audio[0].weight]}, pdmp())


def test_modality_without_trainable_parameters() -> None:
    model = make_model()
    model.image.requires_grad_(False)
    with pytest.raises(ValueError, match=r"modality 'image' has no trainable parameters \(all 2 are frozen\)"):
        Modulator(groups(model), pdmp())
    with pytest.raises(ValueError, match="modality 'image' has no trainable"):
        Modulator({"audio": model.audio, "image": []}, pdmp())


def sgd_update(model: TwoTower, optimizer: torch.optim.Optimizer, seed: int = 0) -> dict[str, torch.Tensor]:
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    a, v, y = batch(seed)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(a, v), y).backward()
    optimizer.step()
    return {name: p.detach() - before[name] for name, p in model.named_parameters()}


@pytest.mark.parametrize("variant", ["grad-set_epoch", "grad-before-optimizer-step", "lr"])
def test_frozen_then_unfrozen_parameters_are_modulated_once_they_train(variant: str) -> None:
    """Decision: an encoder parameter belongs to its modality whether or not it trains yet."""
    plain = make_model()
    expected = sgd_update(plain, torch.optim.SGD(plain.parameters(), lr=0.1))
    model = make_model()
    frozen = (model.audio[0].bias, model.image[0].weight)
    for param in frozen:
        param.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "frozen parameters skipped" warning any more
        mod = Modulator(groups(model), pdmp(), mode=variant.split("-")[0], optimizer=optimizer)  # type: ignore[arg-type]
    mod.set_epoch(0)
    for param in frozen:
        param.requires_grad_(True)
    if variant == "grad-set_epoch":
        mod.set_epoch(0)  # the usual place to unfreeze: an epoch boundary
    # (otherwise: the optimizer pre-step hook catches them and modulates the gradient already accumulated)
    update = sgd_update(model, optimizer)
    mod.step()
    for name, value in update.items():
        # atol: float32 rounding of p - lr * g; a missing coefficient is off by 50-900% instead.
        torch.testing.assert_close(value, expected[name] * FACTOR[name.split(".")[0]], rtol=1e-4, atol=2e-7)
    # The next step goes through the hooks (or the split parameter groups) like any other parameter.
    unhooked = copy.deepcopy(model)  # same weights now; a deep copy carries no hooks
    expected_next = sgd_update(unhooked, torch.optim.SGD(unhooked.parameters(), lr=0.1), seed=1)
    update_next = sgd_update(model, optimizer, seed=1)
    expected_image = expected_next["image.0.weight"] * GAMMA_R
    torch.testing.assert_close(update_next["image.0.weight"], expected_image, rtol=1e-4, atol=2e-7)


def test_unfrozen_parameters_seen_only_after_the_optimizer_step_warn_then_are_modulated() -> None:
    model = make_model()
    model.audio[0].weight.requires_grad_(False)
    mod = Modulator(groups(model), pdmp())  # no optimizer: nothing runs before the optimizer step
    model.audio[0].weight.requires_grad_(True)
    reference = grads_of(make_model())
    grads_of(model)
    with pytest.warns(UserWarning, match=r"1 parameter\(s\) were unfrozen .*audio.0.weight.*call set_epoch\(\) after"):
        mod.step()
    assert torch.equal(grads_of(model)["audio.0.weight"], reference["audio.0.weight"] * GAMMA_P)


def test_lr_mode_splits_a_parameter_group_added_after_unfreezing() -> None:
    model = make_model()
    model.audio.requires_grad_(False)
    model.audio[0].weight.requires_grad_(True)  # one trainable audio tensor at construction
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    mod = Modulator(groups(model), pdmp(), mode="lr", optimizer=optimizer)
    model.audio[0].bias.requires_grad_(True)
    optimizer.add_param_group({"params": [model.audio[0].bias]})
    plain = make_model()
    expected = sgd_update(plain, torch.optim.SGD(plain.parameters(), lr=0.1))
    update = sgd_update(model, optimizer)
    mod.step()
    torch.testing.assert_close(update["audio.0.bias"], expected["audio.0.bias"] * GAMMA_P, rtol=1e-4, atol=2e-7)
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs == [0.1] * len(lrs)


@pytest.mark.parametrize(
    ("names", "policy", "message"),
    [
        (("audoi", "image"), pdmp(), r"unknown modality\(ies\) \['audoi'\] and missing modality\(ies\) \['audio'\]"),
        (
            ("audio", "image"),
            PDMP.from_ranking(Ranking(order=("audio", "video"), scores={"audio": 0.9, "video": 0.5})),
            r"unknown modality\(ies\) \['image'\]",
        ),
        (("audio", "image"), NoModulation(["audio", "image", "text"]), r"missing modality\(ies\) \['text'\]"),
    ],
    ids=["typo-vs-policy", "differs-from-ranking", "missing"],
)
def test_modality_names_must_match_the_policy(names: tuple[str, str], policy, message: str) -> None:  # type: ignore[no-untyped-def]
    model = make_model()
    with pytest.raises(ValueError, match=message):
        Modulator(dict(zip(names, (model.audio, model.image), strict=True)), policy)


def test_lr_mode_needs_every_modality_parameter_in_the_optimizer() -> None:
    model = make_model()
    optimizer = torch.optim.SGD([*model.head.parameters(), *model.audio.parameters()], lr=0.1)
    with pytest.raises(ValueError, match=r"2 parameter\(s\) of modality 'image' .* are not in the optimizer"):
        Modulator(groups(model), pdmp(), mode="lr", optimizer=optimizer)
    with pytest.raises(ValueError, match="mode='lr' needs optimizer="):
        Modulator(groups(model), pdmp(), mode="lr")


def test_other_bad_arguments_are_named() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="unknown mode 'sgd'"):
        Modulator(groups(model), pdmp(), mode="sgd")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="never by name"):
        Modulator({"audio": "audio.", "image": model.image}, pdmp())  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="adds gradient noise"):
        Modulator(groups(model), OGMGE(["audio", "image"]), mode="lr", optimizer=torch.optim.SGD(model.parameters(), 1))
    with pytest.raises(TypeError, match="CoefficientPolicy"):
        Modulator(groups(model), {"audio": 2.0, "image": 1.0})  # type: ignore[arg-type]


def test_gradients_that_bypass_the_hooks_are_reported() -> None:
    model = make_model()
    mod = Modulator(groups(model), pdmp())
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # e.g. written by a path that never ran autograd on these tensors
    with pytest.raises(RuntimeError, match="did not pass through the Modulator's hooks"):
        mod.step()


def test_step_without_optimizer_counts_every_call_and_clock_is_checked() -> None:
    mod = Modulator(groups(make_model()), pdmp(warmup=2, unit="step"))
    assert mod.coefficients == {"audio": 1.0, "image": 1.0}
    with pytest.warns(UserWarning, match="no gradient has reached the modality parameters"):  # no backward ran
        assert mod.step()
    assert mod.step()
    assert mod.step_count == 2 and mod.coefficients == {"audio": GAMMA_P, "image": GAMMA_R}
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        mod.set_epoch(-1)
    assert np.isfinite(list(mod.coefficients.values())).all()


# ------------------------------------------------------------------- lr mode under exceptions


def failing_closure() -> torch.Tensor:
    raise RuntimeError("CUDA out of memory (simulated)")


@pytest.mark.parametrize("scheduler", [False, True], ids=["plain", "with-lr-scheduler"])
def test_lr_mode_keeps_the_base_lr_when_optimizer_step_raises(scheduler: bool) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mod = Modulator(groups(model), pdmp(), mode="lr", optimizer=optimizer)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5) if scheduler else None
    seen: list[list[float]] = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(sorted(g["lr"] for g in opt.param_groups)))
    weights = copy.deepcopy(model.state_dict())
    for _ in range(3):  # a closure that raises, retried: the scaling must not compound
        with pytest.raises(RuntimeError, match="out of memory"):
            optimizer.step(failing_closure)
        assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.1, 0.1]
    oom = optimizer.register_step_pre_hook(lambda opt, args, kwargs: failing_closure())  # raises after the scaling
    with pytest.raises(RuntimeError, match="out of memory"):
        optimizer.step()
    oom.remove()
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.1, 0.1]
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())
    assert mod.step() is False and mod.step_count == 0  # no step was taken
    train(model, mod, optimizer, steps=1)
    assert seen[-1] == sorted([0.1 * GAMMA_P, 0.1 * GAMMA_R, 0.1])  # scaled exactly once, from the base
    if schedule is not None:
        schedule.step()
    base = 0.05 if scheduler else 0.1
    assert [g["lr"] for g in optimizer.param_groups] == [base, base, base]
    mod.remove()
    assert "step" not in vars(optimizer) or scheduler  # unwrapped unless a scheduler wrapped the guard since


# -------------------------------------------------------------- schedules against literal numbers


def test_step_schedule_and_gradients_match_literal_coefficients() -> None:
    """warmup=2, ramp=3 (steps), gamma 10 / 0.5: k = 1 + (gamma - 1) * min(1, (t - 1) / 3) from t = 2."""
    expected_audio = [1.0, 1.0, 4.0, 7.0, 10.0, 10.0]
    expected_image = [1.0, 1.0, 5 / 6, 2 / 3, 0.5, 0.5]
    reference = grads_of(make_model())
    model = make_model()
    mod = Modulator(groups(model), pdmp(warmup=2, ramp=3, unit="step"))
    for t in range(6):
        assert mod.step_count == t
        assert mod.coefficients["audio"] == expected_audio[t]
        assert mod.coefficients["image"] == pytest.approx(expected_image[t], rel=1e-15, abs=0)
        grads = grads_of(model)  # same weights and batch every time: only the coefficient changes
        torch.testing.assert_close(grads["audio.0.weight"], reference["audio.0.weight"] * expected_audio[t])
        torch.testing.assert_close(grads["image.0.bias"], reference["image.0.bias"] * expected_image[t])
        assert torch.equal(grads["head.weight"], reference["head.weight"])
        mod.step()


# ------------------------------------------------------------------------ lifecycle warnings


def test_forgetting_set_epoch_under_an_epoch_schedule_warns_once() -> None:
    model = make_model()
    mod = Modulator(groups(model), pdmp(warmup=1))  # epoch-unit warm-up
    grads_of(model)
    with pytest.warns(UserWarning, match=r"step\(\) before any set_epoch\(\): PDMP\(.*call mod.set_epoch\(epoch\)"):
        mod.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads_of(model)
        mod.step()  # once only
        for policy in (pdmp(warmup=1, unit="step"), pdmp()):  # nothing depends on the epoch: no warning
            other = make_model()
            quiet = Modulator(groups(other), policy)
            grads_of(other)
            quiet.step()
        called = make_model()
        told = Modulator(groups(called), pdmp(warmup=1))
        told.set_epoch(0)
        grads_of(called)
        told.step()


def test_ogmge_epoch_window_counts_as_an_epoch_schedule() -> None:
    model = make_model()
    mod = Modulator(groups(model), OGMGE(["audio", "image"], start_epoch=2))
    ogm_grads(model, mod)
    with pytest.warns(UserWarning, match=r"step\(\) before any set_epoch\(\): OGMGE"):
        mod.step()


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad])
def test_grad_mode_under_an_adaptive_optimizer_warns_at_construction(optimizer: type) -> None:
    model = make_model()
    name = optimizer.__name__
    with pytest.warns(UserWarning, match=rf"mode='grad' with {name}: .*barely changes training; use mode='lr'"):
        Modulator(groups(model), pdmp(), optimizer=optimizer(model.parameters(), lr=1e-3))


def test_grad_mode_under_sgd_and_lr_mode_under_adam_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = make_model()
        Modulator(groups(model), pdmp(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        other = make_model()
        Modulator(groups(other), pdmp(), mode="lr", optimizer=torch.optim.Adam(other.parameters(), lr=1e-3))


def test_float16_gradients_overflowed_by_a_coefficient_warn_at_step() -> None:
    def backward(model: TwoTower) -> None:
        a, v, y = batch(0)
        # A loss large enough that audio's float16 gradients are finite but overflow when multiplied by 10.
        (nn.functional.cross_entropy(model(a.half(), v.half()).float(), y) * 150000.0).backward()

    plain = make_model().half()
    backward(plain)
    assert all(torch.isfinite(p.grad).all() for p in plain.parameters())
    model = make_model().half()
    mod = Modulator(groups(model), pdmp())  # gamma_p = 10
    backward(model)
    assert torch.isinf(model.audio[0].weight.grad).any()
    with pytest.warns(UserWarning, match=r"float16 gradients by the coefficient \(audio: 10\) overflowed"):
        mod.step()


def test_without_an_optimizer_a_modulator_over_a_copy_warns_at_the_first_step() -> None:
    model = make_model()
    mod = Modulator(groups(copy.deepcopy(model)), pdmp())  # hooks the copy; the model trains unmodulated
    grads_of(model)
    with pytest.warns(UserWarning, match=r"no gradient has reached .*not a copy"):
        mod.step()
