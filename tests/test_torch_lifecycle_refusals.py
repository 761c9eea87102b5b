"""A policy's NaN, infinite or negative coefficient (or a GradientPolicy's non-finite transform) is refused
by the core checks the torch Modulator calls, before any gradient or weight sees it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch_helpers import groups, make_two_tower  # noqa: E402

from pdmp.backends.torch import Modulator  # noqa: E402
from pdmp.policies import CoefficientPolicy, Modulation, check_modulation, register_policy  # noqa: E402
from pdmp.transforms import GradientPolicy, GradientTransform, Stats, check_transform  # noqa: E402

NAMES = ("audio", "image")
BAD = [math.nan, math.inf, -1.0]


@register_policy
class Fixed(CoefficientPolicy):
    """Coefficient 1 until ``from_step``, then ``value`` for the audio encoder."""

    kind = "TestFixedBad"

    def __init__(self, modalities: Any, value: float, from_step: int = 1) -> None:
        super().__init__(modalities)
        self.value, self.from_step = value, from_step

    def modulation(self, *, step: int, epoch: int, scores: Mapping[str, float] | None = None) -> Modulation:
        return Modulation({"audio": self.value if step >= self.from_step else 1.0, "image": 1.0})

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "modalities": list(self.modalities), "value": self.value}


@register_policy
class BadTransform(GradientPolicy):
    """The identity at step 0, then ``value`` in ``field`` of the audio encoder."""

    kind = "TestBadTransform"

    def __init__(self, modalities: Any, field: str, value: float) -> None:
        super().__init__(modalities)
        self.field, self.value = field, value

    def compute_transform(
        self, *, step: int, epoch: int, logit_stats: Stats | None, gradient_stats: Stats | None
    ) -> GradientTransform:
        if step == 0:
            return GradientTransform(fused=self._all(1.0))
        fields: dict[str, Any] = {"fused": self._all(1.0)}
        fields[self.field] = {**fields.get(self.field, {}), "audio": self.value}
        return GradientTransform(**fields)

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "modalities": list(self.modalities), "field": self.field, "value": self.value}


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=generator), torch.randn(8, 5, generator=generator), torch.arange(8) % 3


def _one_step(model: nn.Module, opt: torch.optim.Optimizer, mod: Modulator, seed: int) -> None:
    a, v, y = _batch(seed)
    opt.zero_grad()
    nn.functional.cross_entropy(model(a, v), y).backward()
    opt.step()
    mod.step()


@pytest.mark.parametrize(("mode", "path"), [("grad", "hooks"), ("grad", "fused"), ("lr", "auto")])
@pytest.mark.parametrize("value", BAD)
def test_a_bad_coefficient_names_policy_modality_value_and_fix(value: float, mode: str, path: str) -> None:
    model = make_two_tower()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mod = Modulator(groups(model), Fixed(NAMES, value), mode=mode, optimizer=opt, path=path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Fixed\.modulation\(step=1, epoch=0\) gives modality 'audio'") as info:
        _one_step(model, opt, mod, 0)
    assert repr(value) in str(info.value) and "finite number >= 0" in str(info.value)
    assert "Fix the policy" in str(info.value)
    assert mod.coefficients == {"audio": 1.0, "image": 1.0}  # the bad value was never taken


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_a_bad_coefficient_at_construction_is_refused(mode: str) -> None:
    model = make_two_tower()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="gives modality 'audio' the coefficient nan"):
        Modulator(groups(model), Fixed(NAMES, math.nan, from_step=0), mode=mode, optimizer=opt)  # type: ignore[arg-type]


def test_zero_freezes_and_is_allowed() -> None:
    model = make_two_tower()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mod = Modulator(groups(model), Fixed(NAMES, 0.0, from_step=0), optimizer=opt)
    before = [p.detach().clone() for p in model.audio.parameters()]
    _one_step(model, opt, mod, 0)
    assert all(torch.equal(b, p) for b, p in zip(before, model.audio.parameters(), strict=True))
    state = mod.state_dict()  # a 0 coefficient is a valid state, so it loads again
    mod.remove()
    again = Modulator(groups(model), Fixed(NAMES, 0.0, from_step=0), optimizer=opt)
    again.load_state_dict(state)


@pytest.mark.parametrize("field", ["fused", "unimodal", "anchor", "magnitude"])
@pytest.mark.parametrize("value", BAD)
def test_a_bad_transform_is_refused_before_the_gradients_change(field: str, value: float) -> None:
    model = make_two_tower()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mod = Modulator(groups(model), BadTransform(NAMES, field, value), optimizer=opt)
    mod.set_epoch(0)
    _one_step(model, opt, mod, 0)
    a, v, y = _batch(1)
    opt.zero_grad()
    nn.functional.cross_entropy(model(a, v), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    expected = rf"BadTransform's transform at step 1, epoch 0 sets '{field}' of modality 'audio'"
    with pytest.raises(ValueError, match=expected):
        opt.step()
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))


def test_core_checks_refuse_unknown_keys_and_wrong_types() -> None:
    policy = Fixed(NAMES, 1.0)
    with pytest.raises(ValueError, match="modulation coefficients"):
        check_modulation(policy, Modulation({"audio": 1.0}), step=0, epoch=0)
    with pytest.raises(TypeError, match=r"must return pdmp\.Modulation"):
        check_modulation(policy, {"audio": 1.0, "image": 1.0}, step=0, epoch=0)
    with pytest.raises(ValueError, match="coefficient True"):
        check_modulation(policy, Modulation({"audio": True, "image": 1.0}), step=0, epoch=0)
    gradient_policy = BadTransform(NAMES, "fused", 1.0)
    with pytest.raises(ValueError, match=r"unknown modalities \['audoi'\]"):
        check_transform(gradient_policy, GradientTransform(fused={"audoi": 2.0}), step=3, epoch=1)
    with pytest.raises(TypeError, match="GradientTransform"):
        check_transform(gradient_policy, {"fused": {}}, step=0, epoch=0)
    ok = GradientTransform(fused={"audio": 0.5}, floor_to_sum={"image": True})
    assert check_transform(gradient_policy, ok, step=0, epoch=0) is ok


# -- capability flags drive the loop ------------------------------------------------------------------


def _flag_driven_step(model: nn.Module, opt: torch.optim.Optimizer, mod: Modulator, seed: int) -> None:
    """One step of a loop that wires only what the policy's generic flags ask for."""
    from pdmp.backends.torch import concat_head_logits

    a, v, y = _batch(seed)
    features = model.features(a, v)
    loss = nn.functional.cross_entropy(model.head(torch.cat(list(features.values()), 1)), y)
    parts = concat_head_logits(model.head, features, detach=False)
    if mod.policy.needs_logits:
        mod.observe({m: p.detach() for m, p in parts.items()}, y)
    if mod.policy.uses_unimodal_losses:
        weights = mod.unimodal_loss_weights
        loss = loss + sum(weights[m] * nn.functional.cross_entropy(p, y) for m, p in parts.items())
    opt.zero_grad()
    loss.backward()
    opt.step()
    mod.step()


@pytest.mark.parametrize("kind", ["ARL", "InfoReg"])
def test_a_loop_branching_on_the_flags_adds_the_unimodal_losses(kind: str) -> None:
    import pdmp

    policy = pdmp.ARL(NAMES, gamma=3.0, warmup=1) if kind == "ARL" else pdmp.InfoReg(NAMES, window=1)
    model = make_two_tower()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mod = Modulator(groups(model), policy, optimizer=opt)
    read = []
    for epoch in range(2):
        mod.set_epoch(epoch)
        for index in range(2):
            read.append(mod.unimodal_loss_weights["audio"])
            _flag_driven_step(model, opt, mod, 2 * epoch + index)
    assert read == ([1.0, 1.0, 3.0, 3.0] if kind == "ARL" else [1.0] * 4)
