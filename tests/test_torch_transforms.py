"""GradientPolicy in the torch Modulator: the gradients the optimizer receives equal the NumPy reference
``pdmp.transforms.apply_transform`` applied to fused / unimodal gradients computed independently here,
and the statistics handed to the policy equal ``gradient_statistics`` / ``logit_statistics``.

One toy policy per capability (logits, unimodal gradients, anchors, gradient statistics) and one using
all of them (gradient accumulation, GradScaler, resume, DDP on 2 CPU processes)."""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import pdmp  # noqa: E402
from pdmp.backends.torch import Modulator  # noqa: E402
from pdmp.transforms import (  # noqa: E402
    GradientPolicy,
    GradientTransform,
    Stats,
    apply_transform,
    gradient_statistics,
    logit_statistics,
)

torch.set_num_threads(1)

MODALITIES = ("audio", "image")
F = nn.functional


# ------------------------------------------------------------------------------------ toy policies


class _Toy(GradientPolicy):
    """Records what it was given; a running average as its state, so that resume is tested."""

    kind = "_ToyBase"

    def __init__(self, modalities: Any = MODALITIES) -> None:
        super().__init__(modalities)
        self.seen: list[dict[str, Any]] = []
        self.running = 0.0

    def get_config(self) -> dict[str, Any]:
        return {"type": self.kind, "modalities": list(self.modalities)}

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"running"}:
            raise ValueError(f"{type(self).__name__} state needs exactly 'running', got {sorted(state)}")
        self.running = float(state["running"])

    def compute_transform(
        self, *, step: int, epoch: int, logit_stats: Stats | None, gradient_stats: Stats | None
    ) -> GradientTransform:
        self.seen.append({"step": step, "epoch": epoch, "logits": logit_stats, "grads": gradient_stats})
        return self.make(step, epoch, logit_stats, gradient_stats)

    def make(self, step: int, epoch: int, logits: Stats | None, grads: Stats | None) -> GradientTransform:
        raise NotImplementedError


@pdmp.register_policy
class LogitToy(_Toy):
    """The better-fitting modality (lower mean cross-entropy) is slowed, the other sped up."""

    kind = "_LogitToy"
    uses_logits = True

    def make(self, step: int, epoch: int, logits: Stats | None, grads: Stats | None) -> GradientTransform:
        assert logits is not None
        ce = {m: logits[m]["cross_entropy"] / logits[m]["count"] for m in self.modalities}
        self.running = 0.5 * self.running + 0.5 * ce["audio"]
        return GradientTransform(
            fused={m: 0.5 + ce[m] for m in self.modalities}, magnitude={"image": 1.0 + self.running}
        )


@pdmp.register_policy
class UnimodalToy(_Toy):
    """MMPareto-like: fused + weighted unimodal gradient, floored to the plain sum's norm."""

    kind = "_UnimodalToy"
    uses_unimodal_gradients = True
    uses_gradient_stats = True

    def make(self, step: int, epoch: int, logits: Stats | None, grads: Stats | None) -> GradientTransform:
        assert grads is not None
        weight = {m: 0.3 if grads[m]["dot"] > 0 else 0.7 for m in self.modalities}
        return GradientTransform(
            fused={m: 1.0 - weight[m] for m in self.modalities},
            unimodal=weight,
            floor_to_sum={"audio": True, "image": True},
        )


@pdmp.register_policy
class AnchorToy(_Toy):
    """InfoReg-like: a pull towards the epoch-start weights, growing with the epoch."""

    kind = "_AnchorToy"
    uses_anchor = True

    def make(self, step: int, epoch: int, logits: Stats | None, grads: Stats | None) -> GradientTransform:
        return GradientTransform(
            fused={"audio": 1.0, "image": 1.0}, anchor={"audio": 0.5 * (epoch + 1)}, magnitude={"audio": 0.8}
        )


@pdmp.register_policy
class StatsToy(_Toy):
    """Normalises each encoder's gradient by a running estimate of its Fisher trace."""

    kind = "_StatsToy"
    uses_gradient_stats = True

    def make(self, step: int, epoch: int, logits: Stats | None, grads: Stats | None) -> GradientTransform:
        assert grads is not None
        self.running = 0.9 * self.running + 0.1 * grads["audio"]["fisher"]
        return GradientTransform(
            fused={m: 1.0 / (1.0 + np.sqrt(grads[m]["fused_sq"])) for m in self.modalities},
            magnitude={"audio": 1.0 + self.running},
        )


@pdmp.register_policy
class AllToy(_Toy):
    """Every capability at once."""

    kind = "_AllToy"
    uses_logits = uses_unimodal_gradients = uses_anchor = uses_gradient_stats = True

    def make(self, step: int, epoch: int, logits: Stats | None, grads: Stats | None) -> GradientTransform:
        assert logits is not None and grads is not None
        prob = {m: logits[m]["true_prob"] / logits[m]["count"] for m in self.modalities}
        self.running = 0.8 * self.running + 0.2 * prob["audio"]
        cosine = {
            m: grads[m]["dot"] / np.sqrt(grads[m]["fused_sq"] * grads[m]["unimodal_sq"] + 1e-30)
            for m in self.modalities
        }
        return GradientTransform(
            fused={m: 1.0 + prob[m] for m in self.modalities},
            unimodal={m: 0.5 * (1.0 - cosine[m]) for m in self.modalities},
            anchor={"image": 0.2 + self.running},
            magnitude={"audio": 1.0 / (1.0 + grads["audio"]["fisher"])},
            floor_to_sum={"audio": True},
        )


POLICIES: dict[str, type[_Toy]] = {
    "logits": LogitToy,
    "unimodal": UnimodalToy,
    "anchor": AnchorToy,
    "stats": StatsToy,
    "all": AllToy,
}


# ------------------------------------------------------------------------------------ model and data


class Net(nn.Module):
    """Two encoders, a concat fusion head and one unimodal head per modality."""

    def __init__(self) -> None:
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8))
        self.image = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.head = nn.Linear(16, 3)
        self.heads = nn.ModuleDict({"audio": nn.Linear(8, 3), "image": nn.Linear(8, 3)})

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = {"audio": self.audio(a), "image": self.image(v)}
        fused = self.head(torch.cat([features["audio"], features["image"]], dim=1))
        return fused, {m: self.heads[m](features[m]) for m in MODALITIES}


def make_model() -> Net:
    torch.manual_seed(0)
    return Net()


def encoders(model: Net) -> dict[str, nn.Module]:
    return {"audio": model.audio, "image": model.image}


def batch(seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(size, 6, generator=g),
        torch.randn(size, 5, generator=g),
        torch.randint(0, 3, (size,), generator=g),
    )


def losses(model: nn.Module, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    a, v, y = batch(seed)
    out, unimodal = model(a, v)
    loss = F.cross_entropy(out, y) * scale
    return loss, {m: F.cross_entropy(unimodal[m], y) * scale for m in MODALITIES}, (unimodal, y)


def numpy(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().double().numpy() for t in tensors]


def encoder_params(model: Net, modality: str) -> list[nn.Parameter]:
    return list(getattr(model, modality).parameters())


def other_params(model: Net) -> list[nn.Parameter]:
    return [*model.head.parameters(), *model.heads.parameters()]


class Recorder:
    """An optimizer pre-step hook registered after the Modulator's: the gradients the optimizer gets."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: Net) -> None:
        self.model = model
        self.steps: list[dict[str, list[torch.Tensor]]] = []
        optimizer.register_step_pre_hook(self)

    def __call__(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        record = {m: [p.grad.clone() for p in encoder_params(self.model, m)] for m in MODALITIES}
        record["params"] = [p.detach().clone() for m in MODALITIES for p in encoder_params(self.model, m)]
        record["other"] = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in other_params(self.model)]
        self.steps.append(record)


# ----------------------------------------------------------------------------- equal to the reference


def train_and_check(kind: str, *, micro: int = 1, separate: bool | None = None, steps: int = 4) -> None:
    """Train ``steps`` steps (2 epochs) and check every step against the NumPy reference."""
    model = make_model()
    policy = POLICIES[kind]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mod = Modulator(encoders(model), policy, optimizer=optimizer)
    recorder = Recorder(optimizer, model)
    own = policy.uses_unimodal_gradients  # U kept apart; otherwise G is the gradient of all that is backpropagated
    separate = own if separate is None else separate
    anchors: dict[str, list[np.ndarray]] = {}
    for step in range(steps):
        if step % 2 == 0:
            mod.set_epoch(step // 2)
            anchors = {m: numpy(encoder_params(model, m)) for m in MODALITIES}
        optimizer.zero_grad()
        G = {m: [np.zeros(p.shape) for p in encoder_params(model, m)] for m in MODALITIES}
        U = copy.deepcopy(G)
        other = [np.zeros(p.shape) for p in other_params(model)]
        logit_stats: dict[str, dict[str, float]] = {}
        for k in range(micro):
            loss, unimodal, (logits, y) = losses(model, 100 * step + k, scale=1.0 / micro)
            total = loss + sum(unimodal.values()) if separate else loss
            for m in MODALITIES:  # the reference gradients, independently of the Modulator
                params = encoder_params(model, m)
                for i, g in enumerate(torch.autograd.grad(loss if own else total, params, retain_graph=True)):
                    G[m][i] += g.double().numpy()
                if own:
                    for i, u in enumerate(torch.autograd.grad(unimodal[m], params, retain_graph=True)):
                        U[m][i] += u.double().numpy()
            for i, g in enumerate(
                torch.autograd.grad(total, other_params(model), retain_graph=True, allow_unused=True)
            ):
                other[i] += 0.0 if g is None else g.double().numpy()
            for m, row in logit_statistics({m: t.detach().numpy() for m, t in logits.items()}, y.numpy()).items():
                logit_stats[m] = {n: logit_stats.get(m, {}).get(n, 0.0) + v for n, v in row.items()}
            mod.observe({m: t.detach() for m, t in logits.items()}, y)
            if separate:
                mod.backward(loss, unimodal)
            elif (step + k) % 2:
                loss.backward()  # plain backward keeps working for policies without unimodal gradients
            else:
                mod.backward(loss)
        optimizer.step()
        assert mod.step()
        seen = policy.seen[-1]
        assert (seen["step"], seen["epoch"]) == (step, step // 2)
        assert len(policy.seen) == step + 1  # exactly one transform per optimizer step
        if policy.uses_logits:
            for m in MODALITIES:
                assert seen["logits"][m] == pytest.approx(logit_stats[m], rel=1e-12)
        else:
            assert seen["logits"] is None
        if policy.uses_gradient_stats:
            for m in MODALITIES:
                expected = gradient_statistics(G[m], U[m] if own else None)
                assert seen["grads"][m] == pytest.approx(expected, rel=1e-5, abs=1e-9), (step, m)
        else:
            assert seen["grads"] is None
        record = recorder.steps[-1]
        flat = iter(numpy(record["params"]))
        transform = policy.last_transform
        assert transform is not None
        for m in MODALITIES:
            params = [next(flat) for _ in G[m]]
            expected = apply_transform(
                transform,
                m,
                G[m],
                U[m] if own else None,
                params if policy.uses_anchor else None,
                anchors[m] if policy.uses_anchor else None,
            )
            for got, want in zip(numpy(record[m]), expected, strict=True):
                np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"{kind} step {step} {m}")
        for got, want in zip(numpy(record["other"]), other, strict=True):  # heads: the ordinary gradient
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        assert mod.coefficients == {m: transform.coefficient(m) for m in MODALITIES}


@pytest.mark.parametrize("kind", list(POLICIES))
def test_optimizer_receives_the_reference_transform(kind: str) -> None:
    train_and_check(kind)


@pytest.mark.parametrize("kind", ["all", "logits", "stats"])
def test_gradient_accumulation_sums_micro_batches(kind: str) -> None:
    train_and_check(kind, micro=2, steps=2)


def test_unimodal_losses_of_other_policies_are_plain_backward() -> None:
    # G is then the gradient of everything backpropagated, the unimodal losses included.
    train_and_check("stats", separate=True, steps=2)


def test_policy_transform_changes_the_gradients() -> None:
    # Control for the tests above: the transform is not the identity on these policies.
    for kind in POLICIES:
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        mod = Modulator(encoders(model), POLICIES[kind](), optimizer=optimizer)
        recorder = Recorder(optimizer, model)
        mod.set_epoch(0)
        with torch.no_grad():
            model.audio[0].weight.add_(0.1)  # away from the anchor
            model.image[0].weight.add_(0.1)
        loss, unimodal, (logits, y) = losses(model, 0)
        mod.observe(logits, y)
        mod.backward(loss, unimodal)
        plain = {m: [p.grad.clone() for p in encoder_params(model, m)] for m in MODALITIES}
        optimizer.step()
        changed = [
            not torch.allclose(a, b) for m in MODALITIES for a, b in zip(recorder.steps[0][m], plain[m], strict=True)
        ]
        assert any(changed), kind


# ------------------------------------------------------------------------------------------ resume


def run_all(steps: range, state: dict[str, Any] | None = None, *, micro: int = 1) -> dict[str, Any]:
    """AllToy for ``steps`` (3 per epoch), from scratch or from a saved ``state``."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    policy = AllToy()
    mod = Modulator(encoders(model), policy, optimizer=optimizer)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        mod.load_state_dict(state["modulator"])
    saved: dict[str, Any] = {}
    for step in steps:
        if step % 3 == 0 or step == steps.start:
            mod.set_epoch(step // 3)  # a resumed run re-announces its epoch
        optimizer.zero_grad()
        for k in range(micro):
            loss, unimodal, (logits, y) = losses(model, 10 * step + k)
            mod.observe(logits, y)
            mod.backward(loss / micro, {m: u / micro for m, u in unimodal.items()})
        optimizer.step()
        mod.step()
        saved[f"after{step}"] = copy.deepcopy(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "modulator": mod.state_dict()}
        )
    return {"weights": {k: v.clone() for k, v in model.state_dict().items()}, "saved": saved, "policy": policy}


@pytest.mark.parametrize("stop", [3, 4])  # mid-epoch 1, and the end of epoch 0 (epoch 1 starts afresh)
def test_resume_is_bit_identical(stop: int) -> None:
    full = run_all(range(7))
    buffer = io.BytesIO()
    torch.save(full["saved"][f"after{stop - 1}"], buffer)  # tensors and plain values: a weights-only load
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = run_all(range(stop, 7), state)
    for name, value in full["weights"].items():
        assert torch.equal(resumed["weights"][name], value), name
    assert resumed["policy"].seen == full["policy"].seen[stop:]


def test_state_dict_holds_anchors_and_policy_state() -> None:
    full = run_all(range(4))
    state = full["saved"]["after3"]["modulator"]
    assert state["policy_state"] == {"running": full["policy"].running}
    assert state["anchor_epoch"] == 1
    assert [tuple(t.shape) for t in state["anchors"]["image"]] == [(8, 5), (8,)]
    weights = full["saved"]["after2"]["model"]  # the anchor of epoch 1 = the weights after step 2
    assert torch.equal(state["anchors"]["audio"][0], weights["audio.0.weight"])


# ----------------------------------------------------------------------------------------- GradScaler


@pytest.mark.parametrize("optimizer", ["sgd", "adam-fused"])
def test_grad_scaler_gives_the_unscaled_transform(optimizer: str) -> None:
    """fp32 model, GradScaler on: the loss scale is a power of two, so the updates are the same."""

    def run(enabled: bool, inf_at: int | None = None) -> tuple[dict[str, torch.Tensor], _Toy, list[bool]]:
        model = make_model()
        opt: torch.optim.Optimizer = (
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            if optimizer == "sgd"
            else torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
        )
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=enabled)
        policy = AllToy()
        mod = Modulator(encoders(model), policy, optimizer=opt, scaler=scaler)
        mod.set_epoch(0)
        taken = []
        for step in range(3):
            opt.zero_grad()
            loss, unimodal, (logits, y) = losses(model, step)
            if step == inf_at:
                loss = loss * float("inf")
            mod.observe(logits, y)
            mod.backward(loss, unimodal)
            scaler.step(opt)
            scaler.update()
            taken.append(mod.step())
        return {k: v.clone() for k, v in model.state_dict().items()}, policy, taken

    plain, plain_policy, _ = run(False)
    scaled, scaled_policy, _ = run(True)
    for name, value in plain.items():
        torch.testing.assert_close(scaled[name], value, rtol=1e-6, atol=1e-7)
    for a, b in zip(plain_policy.seen, scaled_policy.seen, strict=True):
        for m in MODALITIES:
            assert a["grads"][m] == pytest.approx(b["grads"][m], rel=1e-5, abs=1e-12)
    _, skipped_policy, taken = run(True, inf_at=1)
    assert taken == [True, False, True]
    assert [s["step"] for s in skipped_policy.seen] == [0, 1]  # the skipped step has no transform


# ------------------------------------------------------------------------------------------- misuse


def fresh(kind: str = "all", *, epoch: bool = True) -> tuple[Net, torch.optim.Optimizer, Modulator, _Toy]:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    policy = POLICIES[kind]()
    mod = Modulator(encoders(model), policy, optimizer=optimizer)
    if epoch:
        mod.set_epoch(0)
    return model, optimizer, mod, policy


def test_construction_refuses_lr_mode_hooks_and_a_missing_optimizer() -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"AnchorToy is a GradientPolicy.*mode='grad'"):
        Modulator(encoders(model), AnchorToy(), mode="lr", optimizer=optimizer)
    with pytest.raises(ValueError, match=r"AnchorToy is a GradientPolicy.*pass optimizer="):
        Modulator(encoders(model), AnchorToy())
    with pytest.raises(ValueError, match=r"AnchorToy.*path='hooks'"):
        Modulator(encoders(model), AnchorToy(), optimizer=optimizer, path="hooks")
    mod = Modulator(encoders(model), AnchorToy(), optimizer=optimizer)  # nothing was left claimed
    assert mod.path == "fused"


def test_bad_backward_calls_name_the_culprit_and_change_nothing() -> None:
    model, optimizer, mod, _ = fresh("all")
    loss, unimodal, (logits, y) = losses(model, 0)
    bad: list[tuple[Any, Any, type[Exception], str]] = [
        (loss, {"audio": unimodal["audio"]}, ValueError, r"lacks \['image'\].*unimodal head"),
        (loss, {**unimodal, "depth": unimodal["audio"]}, ValueError, r"unknown modalities \['depth'\]"),
        (loss, None, ValueError, r"lacks \['audio', 'image'\]"),
        (loss * torch.ones(2), unimodal, ValueError, r"loss has shape \(2,\).*scalar"),
        (
            loss,
            {**unimodal, "image": unimodal["image"].reshape(1, 1).expand(2, 1)},
            ValueError,
            r"unimodal_losses\['image'\] has shape",
        ),
        (
            loss,
            {**unimodal, "image": unimodal["audio"]},
            ValueError,
            r"unimodal_losses\['image'\] does not depend on modality 'image'",
        ),
        (loss.detach(), unimodal, ValueError, "loss does not require grad"),
        (1.0, unimodal, TypeError, "loss must be a scalar tensor"),
        (loss, [unimodal["audio"]], TypeError, "unimodal_losses must be a dict"),
    ]
    for fused, extra, error, message in bad:
        with pytest.raises(error, match=message):
            mod.backward(fused, extra)
        assert all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError, match=r"AllToy needs each modality's unimodal gradient.*mod\.backward"):
        mod.observe(logits, y)
        loss.backward(retain_graph=True)  # plain backward: no unimodal gradients
        optimizer.step()
    optimizer.zero_grad()
    mod.step()
    # After all that, a correct step equals one in a fresh run.
    mod.observe(logits, y)
    mod.backward(loss, unimodal)
    optimizer.step()
    model2, optimizer2, mod2, _ = fresh("all")
    loss2, unimodal2, (logits2, y2) = losses(model2, 0)
    mod2.observe(logits2, y2)
    mod2.backward(loss2, unimodal2)
    optimizer2.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_step_without_observe_is_refused_and_gradients_untouched() -> None:
    model, optimizer, _mod, _ = fresh("logits")  # its hook refuses the step
    loss, _, _ = losses(model, 0)
    loss.backward()
    before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"LogitToy needs this step's per-modality logits.*mod\.observe"):
        optimizer.step()
    for p, g in zip(model.parameters(), before, strict=True):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def test_observe_is_a_no_op_for_policies_without_logits() -> None:
    _, _, mod, _ = fresh("stats")
    mod.observe({"audio": "not even a tensor"}, None)  # type: ignore[dict-item]


def test_bad_state_is_refused_whole() -> None:
    full = run_all(range(2))
    state = full["saved"]["after1"]["modulator"]
    _, _, mod, _ = fresh("all")
    before = mod.state_dict()
    bad_shape = copy.deepcopy(state)
    bad_shape["anchors"]["image"][0] = torch.zeros(3, 3)
    no_anchors = {k: v for k, v in state.items() if k != "anchors"}
    short = copy.deepcopy(state)
    short["anchors"]["audio"] = short["anchors"]["audio"][:1]
    cases = [
        (bad_shape, r"anchors'\]\['image'\]\[0\] is \(3, 3\).*'image.0.weight'"),
        (no_anchors, r"anchors'\] is NoneType.*AllToy"),
        (short, r"anchors'\]\['audio'\] must be a list of 4 tensors"),
        ({**state, "policy_state": {"other": 1}}, r"policy_state.*running"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            mod.load_state_dict(bad)
        after = mod.state_dict()
        assert after["clock"] == before["clock"] and after["policy_state"] == before["policy_state"]
        for m in MODALITIES:
            for a, b in zip(after["anchors"][m], before["anchors"][m], strict=True):
                assert torch.equal(a, b)


def test_forgetting_set_epoch_warns_for_anchor_policies() -> None:
    model, optimizer, mod, _ = fresh("anchor", epoch=False)
    loss, _, _ = losses(model, 0)
    mod.backward(loss)
    optimizer.step()
    with pytest.warns(UserWarning, match="AnchorToy pulls each encoder.*set_epoch"):
        mod.step()


# --------------------------------------------------------------------------------------------- DDP

WORLD, GLOBAL = 2, 8


def train_ddp(rank: int, world: int) -> dict[str, Any]:
    model = make_model()
    run = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    policy = AllToy()
    mod = Modulator(encoders(model), policy, optimizer=optimizer)
    local = GLOBAL // world
    rows = slice(rank * local, (rank + 1) * local)
    for step in range(4):
        if step % 2 == 0:
            mod.set_epoch(step // 2)
        a, v, y = (t[rows] for t in batch(step, GLOBAL))
        optimizer.zero_grad()
        out, unimodal = run(a, v)
        mod.observe({m: t.detach() for m, t in unimodal.items()}, y)
        mod.backward(F.cross_entropy(out, y), {m: F.cross_entropy(unimodal[m], y) for m in MODALITIES})
        optimizer.step()
        mod.step()
    return {"seen": policy.seen, "state": {k: t.detach().clone() for k, t in model.state_dict().items()}}


def _ddp_worker(rank: int, world: int, directory: str) -> None:
    torch.save(train_ddp(rank, world), f"{directory}/rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_ddp_ranks_apply_the_same_transform_as_one_process(tmp_path: Path) -> None:
    from torch_ddp_helpers import run_ranks

    run_ranks(_ddp_worker, WORLD, str(tmp_path), timeout=120)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert first["seen"] == second["seen"]  # identical statistics, hence identical transforms
    for name, value in first["state"].items():
        assert torch.equal(second["state"][name], value), name
    single = train_ddp(0, 1)  # the global batch in one process
    for ddp, alone in zip(first["seen"], single["seen"], strict=True):
        for m in MODALITIES:
            assert ddp["logits"][m] == pytest.approx(alone["logits"][m], rel=1e-6)  # float32, other shapes
            assert ddp["grads"][m] == pytest.approx(alone["grads"][m], rel=1e-4, abs=1e-9)
    for name, value in first["state"].items():
        torch.testing.assert_close(value, single["state"][name], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------- Lightning


@pdmp.register_policy
class NoUnimodalToy(AllToy):
    """Logits, anchors and gradient statistics: what Lightning's automatic optimization can drive."""

    kind = "_NoUnimodalToy"
    uses_unimodal_gradients = False


def lightning_data() -> torch.utils.data.DataLoader:
    a, v, y = batch(0, size=24)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(a, v, y), batch_size=8)


def hand_loop(kind: str, epochs: int = 2) -> dict[str, torch.Tensor]:
    """What the callback should amount to (Lightning's order: forward, backward, step, zero_grad)."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mod = Modulator(encoders(model), POLICIES[kind](), optimizer=optimizer)
    for epoch in range(epochs):
        mod.set_epoch(epoch)
        for a, v, y in lightning_data():
            out, unimodal = model(a, v)
            mod.observe({m: t.detach() for m, t in unimodal.items()}, y)
            if kind == "unimodal":
                mod.backward(F.cross_entropy(out, y), {m: F.cross_entropy(unimodal[m], y) for m in MODALITIES})
            else:
                F.cross_entropy(out, y).backward()
            optimizer.step()
            optimizer.zero_grad()
            mod.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def lightning_fit(kind: str, *, manual: bool = False, epochs: int = 2) -> dict[str, torch.Tensor]:
    lightning = pytest.importorskip("lightning.pytorch")
    from pdmp.backends.torch.lightning import PDMPCallback

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()
            self.automatic_optimization = not manual

        def training_step(self, data: Any, index: int) -> Any:
            a, v, y = data
            out, unimodal = self.net(a, v)
            loss = F.cross_entropy(out, y)
            if not manual:
                self.pdmp_logits = ({m: t.detach() for m, t in unimodal.items()}, y)
                return loss
            # MMPareto-style policies: manual optimization, the Modulator's own backward.
            modulator = self.trainer.callbacks[0].modulator
            modulator.observe({m: t.detach() for m, t in unimodal.items()}, y)
            modulator.backward(loss, {m: F.cross_entropy(unimodal[m], y) for m in MODALITIES})
            optimizer = self.optimizers()
            optimizer.step()
            optimizer.zero_grad()
            return None

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    module = Module()
    callback = PDMPCallback({"audio": "net.audio", "image": "net.image"}, POLICIES[kind](), log_every=None)
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[callback],
    )
    trainer.fit(module, train_dataloaders=lightning_data())
    return {k: v.clone() for k, v in module.net.state_dict().items()}


POLICIES["no-unimodal"] = NoUnimodalToy


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "manual"), [("no-unimodal", False), ("unimodal", True)])
def test_lightning_callback_equals_the_hand_written_loop(kind: str, manual: bool) -> None:
    expected = hand_loop(kind)
    for name, value in lightning_fit(kind, manual=manual).items():
        assert torch.equal(value, expected[name]), name


def test_lightning_refuses_unimodal_gradients_under_automatic_optimization() -> None:
    with pytest.raises(
        ValueError, match=r"UnimodalToy needs each modality's unimodal gradient.*automatic_optimization"
    ):
        lightning_fit("unimodal", epochs=1)
