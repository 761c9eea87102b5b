"""grad mode's two paths: per-tensor hooks and the fused per-step multiply give the same updates
where their semantics agree, and differ exactly as documented where they do not."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch_helpers import TwoTower, groups, make_two_tower  # noqa: E402

from pdmp import OGMGE, PDMP, CoefficientPolicy  # noqa: E402
from pdmp.backends.torch import Modulator, concat_head_logits  # noqa: E402

torch.set_num_threads(1)

PATHS = ("hooks", "fused")
State = dict[str, torch.Tensor]


def make_model() -> TwoTower:
    return make_two_tower(deep_audio=True)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)


def ramp() -> PDMP:
    """Coefficients that change every step (warm-up, then a ramp): each step must use its own."""
    return PDMP(["audio", "image"], "audio", 10.0, 0.5, warmup=1, ramp=3, unit="step")


def constant() -> PDMP:
    return PDMP(["audio", "image"], "audio", 10.0, 0.5, unit="step")


def ogm_without_noise() -> OGMGE:
    return OGMGE(["audio", "image"], alpha=2.0, noise=False)


def plain_grads(model: nn.Module, seeds: list[int], micro: int = 1) -> list[State]:
    """Unmodulated gradient of each micro-batch (a copy of ``model``, so nothing is hooked or changed)."""
    copy_ = copy.deepcopy(model)
    result = []
    for seed in seeds:
        copy_.zero_grad(set_to_none=True)
        a, v, y = batch(seed)
        (nn.functional.cross_entropy(copy_(a, v), y) / micro).backward()
        result.append({name: p.grad.clone() for name, p in copy_.named_parameters()})
    return result


def train(
    path: str,
    policy: Callable[[], CoefficientPolicy] = ramp,
    *,
    steps: int = 4,
    micro: int = 1,
    clip: float | None = None,
    closure: bool = False,
    zero_grad: bool = True,
    amp: bool = False,
) -> tuple[State, list[State], list[list[dict[str, float]]]]:
    """Train ``steps`` SGD steps; returns the final weights, the gradients the optimizer used at each
    step, and the coefficients in effect at each micro-batch's backward."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=amp)
    mod = Modulator(groups(model), policy(), optimizer=opt, path=path)  # type: ignore[arg-type]
    assert mod.path == path
    mod.set_epoch(0)
    used: list[State] = []
    # Registered after the Modulator's hooks: the gradients as the optimizer used them (SGD leaves .grad as is).
    opt.register_step_post_hook(lambda *_: used.append({name: p.grad.clone() for name, p in model.named_parameters()}))
    coefficients: list[list[dict[str, float]]] = []

    def compute(step: int) -> torch.Tensor:
        if zero_grad:
            opt.zero_grad(set_to_none=True)
        coefficients.append([])
        for m in range(micro):
            a, v, y = batch(step * micro + m)
            if mod.policy.needs_logits:
                mod.observe(concat_head_logits(model.head, model.features(a, v)), y)
            coefficients[-1].append(mod.coefficients)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                loss = nn.functional.cross_entropy(model(a, v).float(), y) / micro
            scaler.scale(loss).backward()
        if clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        return loss

    for step in range(steps):
        if closure:
            opt.step(lambda step=step: compute(step))  # type: ignore[misc]
        else:
            compute(step)
            scaler.step(opt)
            scaler.update()
        mod.step()
    return model.state_dict(), used, coefficients


def assert_states_equal(left: State, right: State) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def scaled(grads: State, factors: dict[str, float]) -> State:
    """``grads`` with each modality's parameters multiplied by its factor (the head unscaled)."""
    return {name: g * factors.get(name.split(".")[0], 1.0) for name, g in grads.items()}


# --------------------------------------------------------------------------- choosing the path


def test_auto_takes_the_fused_path_only_where_it_gives_the_hooks_updates() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def path_of(policy: CoefficientPolicy, **kwargs: object) -> str | None:
        mod = Modulator(groups(model), policy, **kwargs)  # type: ignore[arg-type]
        mod.remove()
        return mod.path

    assert path_of(constant(), optimizer=opt) == "fused"
    assert path_of(constant()) == "hooks"  # no optimizer: no pre-step hook to scale in
    assert path_of(OGMGE(["audio", "image"]), optimizer=opt) == "hooks"  # noise per backward pass
    assert path_of(ogm_without_noise(), optimizer=opt) == "hooks"  # coefficients per micro-batch
    assert path_of(ogm_without_noise(), optimizer=opt, path="fused") == "fused"  # on request
    assert path_of(constant(), optimizer=opt, path="hooks") == "hooks"
    assert path_of(constant(), optimizer=opt, mode="lr") is None
    mod = Modulator(groups(model), constant(), optimizer=opt)
    assert "path='fused'" in repr(mod)
    mod.remove()


def test_impossible_paths_are_refused_before_anything_is_hooked() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="needs optimizer="):
        Modulator(groups(model), constant(), path="fused")
    with pytest.raises(ValueError, match=r"noise.*path='hooks'"):
        Modulator(groups(model), OGMGE(["audio", "image"]), optimizer=opt, path="fused")
    with pytest.raises(ValueError, match="mode='grad' only"):
        Modulator(groups(model), constant(), mode="lr", optimizer=opt, path="fused")
    with pytest.raises(ValueError, match="mode='grad' only"):
        Modulator(groups(model), constant(), mode="lr", optimizer=opt, path="hooks")
    with pytest.raises(ValueError, match="unknown path"):
        Modulator(groups(model), constant(), optimizer=opt, path="foreach")  # type: ignore[arg-type]
    Modulator(groups(model), constant(), optimizer=opt).remove()  # nothing was left claimed


# ----------------------------------------------------------------- where the semantics agree


@pytest.mark.parametrize("closure", [False, True], ids=["step", "closure"])
def test_both_paths_give_bit_identical_updates_without_accumulation(closure: bool) -> None:
    hooks, hooks_used, coefficients = train("hooks", closure=closure)
    fused, fused_used, _ = train("fused", closure=closure)
    assert len({str(c) for c in coefficients}) == 4  # a different coefficient at every step
    assert_states_equal(fused, hooks)
    for left, right in zip(fused_used, hooks_used, strict=True):
        assert_states_equal(left, right)


def test_both_paths_give_bit_identical_updates_under_gradscaler() -> None:
    # Unscaling by a power-of-two loss scale is exact, so scaling before or after it is the same.
    hooks, _, _ = train("hooks", amp=True)
    fused, _, _ = train("fused", amp=True)
    assert_states_equal(fused, hooks)


def test_accumulation_with_step_coefficients_agrees_up_to_rounding() -> None:
    # The coefficients are fixed within an optimizer step, so k*c1 + k*c2 (hooks) and k*(c1 + c2)
    # (fused) differ only by float rounding.
    start = make_model().state_dict()
    hooks, _, coefficients = train("hooks", micro=3)
    fused, _, _ = train("fused", micro=3)
    assert all(len({str(c) for c in step}) == 1 for step in coefficients)
    for name in hooks:
        moved = (hooks[name] - start[name]).abs().max()
        assert (fused[name] - hooks[name]).abs().max() <= 1e-5 * moved, name


@pytest.mark.parametrize("when", ["set_epoch", "before-backward"])
def test_both_paths_agree_on_a_layer_unfrozen_mid_training(when: str) -> None:
    """The hooks attach to it (at set_epoch, or just before the step, fixing its gradient in place);
    the fused path scales whatever trainable gradient it finds: the same updates either way."""
    finals = {}
    for path in PATHS:
        model = make_model()
        model.audio[2].requires_grad_(False)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        mod = Modulator(groups(model), ramp(), optimizer=opt, path=path)  # type: ignore[arg-type]
        mod.set_epoch(0)
        for step in range(5):
            if step == 2:
                model.audio[2].requires_grad_(True)
                if when == "set_epoch":
                    mod.set_epoch(0)
            opt.zero_grad(set_to_none=True)
            a, v, y = batch(step)
            nn.functional.cross_entropy(model(a, v), y).backward()
            opt.step()
            mod.step()
        finals[path] = model.state_dict()
    assert not torch.equal(finals["fused"]["audio.2.weight"], make_model().state_dict()["audio.2.weight"])
    assert_states_equal(finals["fused"], finals["hooks"])


def test_gradients_written_outside_autograd_are_scaled_by_the_fused_path() -> None:
    """The hooks never see such gradients (step() reports them); the fused path scales whatever is in .grad."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mod = Modulator(groups(model), constant(), optimizer=opt)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert mod.step()
    assert torch.equal(model.audio[0].weight.grad, torch.full_like(model.audio[0].weight, 10.0))
    assert torch.equal(model.image[0].weight.grad, torch.full_like(model.image[0].weight, 0.5))
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))


def test_frozen_and_gradless_parameters_are_left_alone() -> None:
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    Modulator(groups(model), constant(), optimizer=opt)
    model.audio[2].weight.grad = torch.ones_like(model.audio[2].weight)  # stale, from before the freeze
    model.audio[2].weight.requires_grad_(False)
    model.audio[2].bias.grad = None
    model.audio[0].weight.grad = torch.ones_like(model.audio[0].weight)
    opt.step()
    assert torch.equal(model.audio[2].weight.grad, torch.ones_like(model.audio[2].weight))
    assert model.audio[2].bias.grad is None
    assert torch.equal(model.audio[0].weight.grad, torch.full_like(model.audio[0].weight, 10.0))


def test_a_parameter_unfrozen_later_is_scaled_by_the_fused_path() -> None:
    model = make_model()
    model.audio[2].requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mod = Modulator(groups(model), constant(), optimizer=opt)
    model.audio[2].requires_grad_(True)
    a, v, y = batch(0)
    nn.functional.cross_entropy(model(a, v), y).backward()
    expected = plain_grads(model, [0])[0]
    opt.step()
    mod.step()
    assert torch.equal(model.audio[2].weight.grad, expected["audio.2.weight"] * 10.0)


def test_float16_overflow_warns_on_the_fused_path() -> None:
    model = make_model().half()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mod = Modulator(groups(model), constant(), optimizer=opt)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.audio[0].weight.grad[0, 0] = 30000.0  # finite in float16, but not once multiplied by gamma_p = 10
    model.audio[0].bias.grad[0] = float("inf")  # already inf (an AMP overflow): not the coefficient's doing
    opt.step()
    assert torch.isinf(model.audio[0].weight.grad[0, 0]) and model.audio[0].weight.grad[0, 1] == 10.0
    with pytest.warns(UserWarning, match=r"float16 gradients by the coefficient \(audio: 10\) overflowed"):
        mod.step()
    # Only a finite gradient made inf counts.
    model.audio[0].weight.grad = torch.ones_like(model.audio[0].weight)
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mod._warned.discard("overflow")
        mod.step()


# ---------------------------------------------------------- where they differ, as documented


def test_accumulation_under_per_batch_coefficients_the_fused_path_uses_the_last() -> None:
    """OGM-GE (no noise) with two micro-batches: hooks give k1*c1 + k2*c2, fused k2*(c1 + c2)."""
    c1, c2 = plain_grads(make_model(), [0, 1], micro=2)
    _, hooks_used, coefficients = train("hooks", ogm_without_noise, steps=1, micro=2)
    _, fused_used, fused_coefficients = train("fused", ogm_without_noise, steps=1, micro=2)
    k1, k2 = coefficients[0]
    assert fused_coefficients[0] == [k1, k2] and k1 != k2
    for name in c1:
        factor1, factor2 = (k.get(name.split(".")[0], 1.0) for k in (k1, k2))
        torch.testing.assert_close(hooks_used[0][name], factor1 * c1[name] + factor2 * c2[name], rtol=1e-6, atol=0)
        torch.testing.assert_close(fused_used[0][name], factor2 * (c1[name] + c2[name]), rtol=1e-6, atol=0)
    assert not torch.allclose(hooks_used[0]["audio.0.weight"], fused_used[0]["audio.0.weight"], rtol=1e-3)


def test_clipping_sees_modulated_gradients_with_hooks_and_plain_ones_on_the_fused_path() -> None:
    """Hooks: clip(k * g). Fused: k * clip(g) (the coefficient is a learning-rate multiplier)."""
    (grads,) = plain_grads(make_model(), [0])
    factors = {"audio": 10.0, "image": 0.5}
    max_norm = 0.05

    def clipped(g: State) -> State:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in g.values()]))
        assert norm > max_norm  # the clip is active
        return {name: t * (max_norm / (norm + 1e-6)) for name, t in g.items()}

    _, hooks_used, _ = train("hooks", constant, steps=1, clip=max_norm)
    _, fused_used, _ = train("fused", constant, steps=1, clip=max_norm)
    hooks_expected, fused_expected = clipped(scaled(grads, factors)), scaled(clipped(grads), factors)
    for name in grads:
        torch.testing.assert_close(hooks_used[0][name], hooks_expected[name], rtol=1e-5, atol=0)
        torch.testing.assert_close(fused_used[0][name], fused_expected[name], rtol=1e-5, atol=0)
    assert not torch.allclose(hooks_used[0]["head.weight"], fused_used[0]["head.weight"], rtol=1e-2)


def test_gradients_not_cleared_after_a_step_are_scaled_again_on_the_fused_path() -> None:
    """Without zero_grad: hooks give k*(c1 + c2) at the second step, fused k*(k*c1 + c2)."""
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c1, c2 = plain_grads(model, [0, 1])
    # Learning rate 0 keeps the weights, so the second micro-batch's gradient is c2 on both paths.
    results = {}
    for path in PATHS:
        model = make_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        mod = Modulator(groups(model), constant(), optimizer=opt, path=path)  # type: ignore[arg-type]
        for seed in (0, 1):
            a, v, y = batch(seed)
            nn.functional.cross_entropy(model(a, v), y).backward()
            opt.step()
            mod.step()
        results[path] = model.audio[0].weight.grad
    c1a, c2a = c1["audio.0.weight"], c2["audio.0.weight"]
    torch.testing.assert_close(results["hooks"], 10.0 * c1a + 10.0 * c2a, rtol=1e-6, atol=0)
    torch.testing.assert_close(results["fused"], 10.0 * (10.0 * c1a + c2a), rtol=1e-6, atol=0)
