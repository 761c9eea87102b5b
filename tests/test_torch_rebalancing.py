"""pdmp.backends.torch.Rebalancer: G-Blending, PMR, Diagnosing & Re-learning and MLA in PyTorch.

Every number the adapter applies is checked against a hand transcription of what the core's declarations
ask for (the loss sums, the prototype logits, the re-initialisation, MLA's passes and projection), on tiny
float64 models.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import pdmp  # noqa: E402
from pdmp.backends.torch import Modulator, Rebalancer, training_step  # noqa: E402
from pdmp.rebalancing import FUSED, HeadProjector, entropy_fusion_weights, gblending_weights  # noqa: E402

pytestmark = pytest.mark.torch

NAMES = ("audio", "image")
CLASSES, N, BATCH, WIDTH = 3, 24, 6, 4
ce = nn.functional.cross_entropy


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def batches(seed: int, *, noise_labels: bool = False):
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % CLASSES
    onehot = nn.functional.one_hot(y, CLASSES).double()
    x = {
        "audio": torch.randn(N, 6, generator=generator) + 1.5 * torch.cat([onehot, onehot], 1),
        "image": torch.randn(N, 5, generator=generator) + 0.5 * torch.cat([onehot, onehot[:, :2]], 1),
    }
    if noise_labels:
        y = torch.randint(0, CLASSES, (N,), generator=generator)
    return [({m: v[i : i + BATCH] for m, v in x.items()}, y[i : i + BATCH]) for i in range(0, N, BATCH)]


class Net(nn.Module):
    """Encoders of equal width, a concat head, unimodal heads and a shared head (MLA)."""

    def __init__(self, *, norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)

        def encoder(n_in: int) -> nn.Module:
            layers: list[nn.Module] = [nn.Linear(n_in, WIDTH)]
            if norm:
                layers.append(nn.BatchNorm1d(WIDTH))
            layers += [nn.Tanh(), nn.Dropout(dropout)]
            return nn.Sequential(*layers)

        self.encoders = nn.ModuleDict({"audio": encoder(6), "image": encoder(5)})
        self.head = nn.Linear(2 * WIDTH, CLASSES)
        self.shared = nn.Linear(WIDTH, CLASSES)
        self.unimodal_heads = nn.ModuleDict({m: nn.Linear(WIDTH, CLASSES) for m in NAMES})

    def encode(self, inputs):
        return {m: self.encoders[m](inputs[m]) for m in NAMES}

    def fuse(self, features):
        return self.head(torch.cat([features[m] for m in NAMES], 1))


def rebalancer(model: Net, policy, **options) -> Rebalancer:
    parts = {"encode": model.encode, "fuse": model.fuse, "unimodal_heads": model.unimodal_heads}
    if policy.uses_training_passes:
        parts["head"] = model.shared
    return Rebalancer(policy, dict(model.encoders.items()), num_classes=CLASSES, **{**parts, **options})


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)


def to_numpy(t):
    return t.detach().numpy()


# ---------------------------------------------------------------------------------------------- PMR


def hand_prototypes(model: Net, data, count: int, old=None, momentum=0.0, epoch=0):
    """Class means of the first ``count`` batches' eval-mode features, the reference's momentum mix."""
    model.eval()
    with torch.no_grad():
        feats = [model.encode(x) for x, _ in data[:count]]
    model.train()
    labels = torch.cat([y for _, y in data[:count]]).numpy()
    out = {}
    for m in NAMES:
        z = torch.cat([f[m] for f in feats]).numpy()
        means = np.stack([z[labels == k].mean(0) for k in range(CLASSES)])
        out[m] = means if old is None or epoch == 0 else (1 - momentum) * means + momentum * old[m]
    return out


def hand_pmr_loss(model: Net, policy, x, y, epoch: int):
    features = model.encode(x)
    fused = ce(model.fuse(features), y)
    protos = policy.prototypes()
    logits = {m: -((features[m][:, None, :] - torch.tensor(protos[m])[None]) ** 2).sum(-1).sqrt() for m in NAMES}
    terms = policy.loss_terms(epoch=epoch, prototype_logits={m: to_numpy(v) for m, v in logits.items()}, labels=y)
    total = terms.fused * fused
    for m in NAMES:
        total = total + terms.prototype.get(m, 0.0) * ce(logits[m], y)
        p = torch.softmax(logits[m], 1)
        entropy = -(p * torch.log_softmax(logits[m], 1)).sum(1).mean()
        total = total - terms.prototype_entropy.get(m, 0.0) * entropy
    return total, terms


def test_pmr_prototypes_are_eval_mode_class_means_of_the_first_batches():
    model = Net(dropout=0.5)  # train-mode features would differ: the prototypes must come from eval mode
    data = batches(0)
    policy = pdmp.PMR(NAMES, momentum=0.2, prototype_fraction=2)  # 4 batches -> the first 2
    reb = rebalancer(model, policy)
    reb.start(data)
    expected = hand_prototypes(model, data, 2)
    for m in NAMES:
        np.testing.assert_allclose(policy.prototypes()[m], expected[m], rtol=0, atol=1e-12)
    assert model.training  # the mode is restored
    reb.end_epoch(1, data)  # momentum applies after epoch >= 1
    mixed = hand_prototypes(model, data, 2, old=expected, momentum=0.2, epoch=1)
    for m in NAMES:
        np.testing.assert_allclose(policy.prototypes()[m], mixed[m], rtol=0, atol=1e-12)
    assert [e for e in reb.events if e[0] == "prototypes"] == [("prototypes", 0), ("prototypes", 1)]


def test_boundary_work_gives_every_submodule_back_its_own_mode():
    # A batch-norm layer the user froze in eval mode inside a training model stays frozen after the
    # eval-mode prototype pass (restoring only the top module's mode would switch it back to training).
    model = Net(norm=True).train()
    frozen = model.encoders["audio"][1]
    frozen.eval()
    reb = rebalancer(model, pdmp.PMR(NAMES))
    reb.start(batches(0))
    assert model.training and model.encoders["image"][1].training
    assert not frozen.training


@pytest.mark.parametrize("entropy", [0.0, 0.5])
def test_pmr_loss_is_the_weighted_sum_of_the_core(entropy):
    model = Net()
    data = batches(1)
    options = {"entropy_weight": entropy, "entropy_end_epoch": 3} if entropy else {}
    policy = pdmp.PMR(NAMES, alpha=2.0, **options)
    reb = rebalancer(model, policy)
    reb.start(data)
    x, y = data[0]
    loss, _, fused = reb.loss(x, y)
    expected, terms = hand_pmr_loss(model, policy, x, y, 0)
    assert any(w > 0 for w in terms.prototype.values())  # a prototype term is active: the test can fail
    if entropy:
        assert any(w > 0 for w in terms.prototype_entropy.values())
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(fused, ce(model.fuse(model.encode(x)), y).detach(), rtol=0, atol=1e-12)
    # The prototype logits are differentiable: the gradient is the hand sum's.
    grads = torch.autograd.grad(loss, list(model.encoders.parameters()))
    hand = torch.autograd.grad(expected, list(model.encoders.parameters()))
    for a, b in zip(grads, hand, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_pmr_training_step_equals_hand_loop_over_two_epochs():
    data = batches(2)
    model, twin = Net(), Net()
    policy, twin_policy = pdmp.PMR(NAMES, alpha=2.0), pdmp.PMR(NAMES, alpha=2.0)
    opt, twin_opt = sgd(model), sgd(twin)
    reb = rebalancer(model, policy)
    reb.start(data)
    twin_policy_start(twin, twin_policy, data, 0)
    for epoch in range(2):
        reb.set_epoch(epoch)
        for x, y in data:
            training_step(reb, opt, x, y, encode=model.encode, fuse=model.fuse)
            twin_opt.zero_grad()
            hand_pmr_loss(twin, twin_policy, x, y, epoch)[0].backward()
            twin_opt.step()
        reb.end_epoch(epoch, data)
        twin_policy_start(twin, twin_policy, data, epoch)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert reb.step_count == 8


def twin_policy_start(model, policy, data, epoch):
    model.eval()
    with torch.no_grad():
        for x, y in data[: policy.prototype_batches(len(data))]:
            policy.accumulate({m: to_numpy(v) for m, v in model.encode(x).items()}, y.numpy(), num_classes=CLASSES)
    model.train()
    policy.close_prototypes(epoch)


# --------------------------------------------------------------------------------------- G-Blending


def hand_term_means(model: Net, data):
    model.eval()
    sums, count = dict.fromkeys((*NAMES, FUSED), 0.0), 0
    with torch.no_grad():
        for x, y in data:
            f = model.encode(x)
            sums[FUSED] += float(ce(model.fuse(f), y)) * len(y)
            for m in NAMES:
                sums[m] += float(ce(model.unimodal_heads[m](f[m]), y)) * len(y)
            count += len(y)
    model.train()
    return {k: v / count for k, v in sums.items()}


def test_gblending_checkpoints_at_due_epochs_with_per_term_means_and_their_weights_in_the_loss():
    model, data, held = Net(), batches(3), batches(4, noise_labels=True)
    policy = pdmp.GBlending(NAMES, super_epoch=2)
    calls = []
    original = policy.checkpoint

    def recording(epochs_done, train, held_out):
        hand = (hand_term_means(model, data), hand_term_means(model, held))
        calls.append((epochs_done, dict(train), dict(held_out), *hand))
        return original(epochs_done, train, held_out)

    policy.checkpoint = recording  # type: ignore[method-assign]
    reb = rebalancer(model, policy)
    opt = sgd(model)
    reb.start(data, held_out=held)
    for epoch in range(4):
        reb.set_epoch(epoch)
        for x, y in data:
            training_step(reb, opt, x, y, encode=model.encode, fuse=model.fuse)
        reb.end_epoch(epoch, data, held_out=held)
        if epoch == 1:  # the second checkpoint (after 2 epochs) set new weights: the next loss uses them
            first, second = calls[0], calls[1]
            weights = gblending_weights(first[1], first[2], second[1], second[2], floor=policy.floor)
            assert weights != policy.weights  # the estimate moved the weights: the check below can fail
            x, y = data[0]
            f = model.encode(x)
            expected = weights[FUSED] * ce(model.fuse(f), y) + sum(
                weights[m] * ce(model.unimodal_heads[m](f[m]), y) for m in NAMES
            )
            torch.testing.assert_close(reb.loss(x, y)[0], expected, rtol=0, atol=1e-12)
    assert [c[0] for c in calls] == [0, 2, 4]
    for _, train, held_out, hand_train, hand_held in calls:
        for k in (*NAMES, FUSED):
            assert train[k] == pytest.approx(hand_train[k], abs=1e-12)
            assert held_out[k] == pytest.approx(hand_held[k], abs=1e-12)


def test_gblending_first_super_epoch_loss_uses_the_initial_weights():
    model, data = Net(), batches(3)
    policy = pdmp.GBlending(NAMES, weights={"audio": 0.5, "image": 0.2, FUSED: 0.3})
    reb = rebalancer(model, policy)
    reb.start(data, held_out=data)
    x, y = data[1]
    f = model.encode(x)
    expected = 0.3 * ce(model.fuse(f), y) + 0.5 * ce(model.unimodal_heads["audio"](f["audio"]), y)
    expected = expected + 0.2 * ce(model.unimodal_heads["image"](f["image"]), y)
    torch.testing.assert_close(reb.loss(x, y)[0], expected, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- Diagnosing & Re-learning


def test_dr_reinitialises_parameters_not_buffers_and_keeps_the_optimizer_state():
    model, data, held = Net(norm=True), batches(5), batches(6, noise_labels=True)
    policy = pdmp.DiagnosingRelearning(NAMES, every=1, count=1)
    seen = []
    original = policy.parameter_events

    def recording(**inputs):
        events = original(**inputs)
        seen.append((inputs, events))
        return events

    policy.parameter_events = recording  # type: ignore[method-assign]
    reb = rebalancer(model, policy)
    opt = sgd(model)
    initial = {m: [p.detach().clone() for p in model.encoders[m].parameters()] for m in NAMES}
    reb.start(data, held_out=held)
    for epoch in range(2):
        reb.set_epoch(epoch)
        for x, y in data:
            training_step(reb, opt, x, y, encode=model.encode, fuse=model.fuse)
        if epoch == 1:
            before = {m: [p.detach().clone() for p in model.encoders[m].parameters()] for m in NAMES}
            buffers = {name: b.clone() for name, b in model.named_buffers()}
            momentum = {id(p): opt.state[p]["momentum_buffer"] for p in model.encoders.parameters()}
            momentum_values = {k: v.clone() for k, v in momentum.items()}
            hand_train = {m: to_numpy(v) for m, v in eval_features(model, data).items()}
        reb.end_epoch(epoch, data, held_out=held)
    assert [inputs["epoch"] for inputs, _ in seen] == [1]  # asked only when due: features cost a pass
    inputs, events = seen[-1]
    assert inputs["epoch"] == 1 and len(events) == 2
    for m in NAMES:
        np.testing.assert_allclose(inputs["train_features"][m], hand_train[m], rtol=0, atol=1e-12)
    mixes = {e.modality: e.mix for e in events}
    assert any(mix > 0 for mix in mixes.values())  # something was re-initialised: the check can fail
    for m in NAMES:
        for param, init, current in zip(model.encoders[m].parameters(), initial[m], before[m], strict=True):
            torch.testing.assert_close(param.detach(), mixes[m] * init + (1 - mixes[m]) * current, rtol=0, atol=1e-12)
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name  # running statistics untouched
    for p in model.encoders.parameters():
        assert opt.state[p]["momentum_buffer"] is momentum[id(p)]
        assert torch.equal(opt.state[p]["momentum_buffer"], momentum_values[id(p)])
    assert ("reinit", 1, mixes) in reb.events


def eval_features(model, data):
    model.eval()
    with torch.no_grad():
        feats = [model.encode(x) for x, _ in data]
    model.train()
    return {m: torch.cat([f[m] for f in feats]) for m in NAMES}


def test_dr_no_event_before_a_due_epoch():
    model, data = Net(), batches(5)
    policy = pdmp.DiagnosingRelearning(NAMES, every=3, count=1)
    reb = rebalancer(model, policy)
    reb.start(data, held_out=data)
    before = [p.detach().clone() for p in model.parameters()]
    for epoch in range(3):
        reb.set_epoch(epoch)
        reb.end_epoch(epoch, data, held_out=data)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not [e for e in reb.events if e[0] == "reinit"]


# ---------------------------------------------------------------------------------------------- MLA


def hand_mla_step(model: Net, opt, projector: HeadProjector | None, x, y, batch_index, n_batches):
    """MLA's reference step: per modality, its encoder and the shared head only, G <- G @ P.T, a step."""
    grads = []
    for m in NAMES:
        opt.zero_grad(set_to_none=True)
        z = model.encoders[m](x[m])
        ce(model.shared(z), y).backward()
        if projector is not None:
            p = projector.step(to_numpy(z), batch_index=batch_index, n_batches=n_batches)
            if p is not None:
                model.shared.weight.grad = model.shared.weight.grad @ torch.tensor(p).T
        grads.append(model.shared.weight.grad.clone())
        opt.step()
    return grads


@pytest.mark.parametrize("projection", ["code", "rls", "off"])
def test_mla_passes_equal_the_hand_transcription(projection):
    data = batches(7)
    model, twin = Net(), Net()
    opt, twin_opt = sgd(model), sgd(twin)
    policy = pdmp.MLA(NAMES, projection=projection)
    reb = rebalancer(model, policy)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(model.shared.weight.grad.clone()))
    reb.start(data)
    projector = None if projection == "off" else HeadProjector("rls" if projection == "rls" else "code")
    hand_grads = []
    for epoch in range(2):
        reb.set_epoch(epoch)
        for index, (x, y) in enumerate(data):
            out = training_step(reb, opt, x, y, encode=model.encode, fuse=model.fuse, head=model.shared)
            hand_grads += hand_mla_step(twin, twin_opt, projector, x, y, index, len(data))
        reb.end_epoch(epoch, data)
    assert len(seen) == 2 * 2 * len(data)  # one optimizer step per modality per batch
    for a, b in zip(seen, hand_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert out.logits.shape == (BATCH, CLASSES)


def test_mla_pass_moves_only_its_encoder_and_the_head():
    data = batches(8)
    model = Net()
    opt = sgd(model)  # momentum and weight decay: a zero gradient would still move a parameter
    policy = pdmp.MLA(NAMES, projection="code")  # the projected head, too, leaves the other encoder alone
    reb = rebalancer(model, policy)
    reb.start(data)
    snapshots = []

    def snapshot(optimizer, args, kwargs):
        snapshots.append(
            {
                "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
                "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            }
        )

    opt.register_step_pre_hook(snapshot)
    for x, y in data[:2]:
        training_step(reb, opt, x, y, encode=model.encode, fuse=model.fuse, head=model.shared)
    # Pass order audio, image: in each, the other encoder, the concat head and the unimodal heads get None.
    for index, snap in enumerate(snapshots):
        active = NAMES[index % 2]
        for name, grad in snap["grads"].items():
            owned = name.startswith(f"encoders.{active}.") or name.startswith("shared.")
            assert (grad is not None) == owned, (index, name)
    # The image pass left the audio encoder where the audio pass put it.
    for name in snapshots[1]["params"]:
        if name.startswith("encoders.audio."):
            assert torch.equal(snapshots[1]["params"][name], snapshots[2]["params"][name])


def test_mla_projection_is_g_times_p_transposed():
    data = batches(9)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    policy = pdmp.MLA(NAMES, projection="code")
    reb = rebalancer(model, policy)
    reb.start(data)
    x, y = data[0]
    # The image pass (the second of training) is projected; rebuild its raw gradient and P by hand.
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    twin_opt.zero_grad()
    ce(twin.shared(twin.encoders["audio"](x["audio"])), y).backward()
    projector = HeadProjector("code")
    assert projector.step(to_numpy(twin.encoders["audio"](x["audio"])), batch_index=0, n_batches=4) is None
    twin_opt.step()
    twin_opt.zero_grad(set_to_none=True)
    z = twin.encoders["image"](x["image"])
    ce(twin.shared(z), y).backward()
    raw = twin.shared.weight.grad.clone()
    p = torch.tensor(projector.step(to_numpy(z), batch_index=0, n_batches=4))
    grads = []
    opt.register_step_pre_hook(lambda o, a, k: grads.append(model.shared.weight.grad.clone()))
    training_step(reb, opt, x, y, encode=model.encode, fuse=model.fuse, head=model.shared)
    assert not torch.allclose(raw, raw @ p.T)  # the projection changes the gradient: the test can fail
    torch.testing.assert_close(grads[1], raw @ p.T, rtol=0, atol=1e-12)


def test_mla_predicts_with_entropy_fusion_weights():
    data = batches(10)
    model = Net()
    policy = pdmp.MLA(NAMES)
    reb = rebalancer(model, policy)
    x, _ = data[0]
    with torch.no_grad():
        logits = {m: model.shared(model.encoders[m](x[m])) for m in NAMES}
    w = entropy_fusion_weights({m: to_numpy(v) for m, v in logits.items()})
    assert abs(w["audio"] - w["image"]) > 1e-6  # unequal weights: the check can fail
    torch.testing.assert_close(reb.predict(x), w["audio"] * logits["audio"] + w["image"] * logits["image"])
    fixed = rebalancer(model, pdmp.MLA(NAMES, fusion="fixed", weights={"audio": 0.8, "image": 0.2}))
    torch.testing.assert_close(fixed.predict(x), 0.8 * logits["audio"] + 0.2 * logits["image"])


# ------------------------------------------------------------------------------------ bad input


def test_missing_held_out_data_is_refused_with_the_fix():
    model, data = Net(), batches(0)
    for policy in (pdmp.GBlending(NAMES), pdmp.DiagnosingRelearning(NAMES)):
        with pytest.raises(ValueError, match=r"held_out=None.*|held_out=<validation"):
            rebalancer(model, policy).start(data)


def test_missing_unimodal_heads_are_refused_with_the_fix():
    model = Net()
    with pytest.raises(ValueError, match=r"unimodal_heads lacks \['image'\].*unimodal_heads="):
        rebalancer(model, pdmp.GBlending(NAMES), unimodal_heads={"audio": model.unimodal_heads["audio"]})


def test_non_shared_head_for_mla_is_refused_with_the_shapes_and_the_fix():
    model, data = Net(), batches(0)
    reb = rebalancer(model, pdmp.MLA(NAMES), head=model.head)  # the concat head: input size 8, features 4
    reb.start(data)
    x, y = data[0]
    before = [p.detach().clone() for p in model.parameters()]
    shapes = r"input size 8, got feature sizes \{'audio': 4\}.*shared nn.Linear\(d, classes\)"
    with pytest.raises(ValueError, match=shapes):
        training_step(reb, sgd(model), x, y, encode=model.encode, fuse=model.fuse)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # nothing moved
    with pytest.raises(ValueError, match=r"head= \(an nn.Linear\(d, classes\)"):
        rebalancer(model, pdmp.MLA(NAMES), head=None)


def test_misuse_is_explained():
    model, data = Net(), batches(0)
    reb = rebalancer(model, pdmp.PMR(NAMES))
    x, y = data[0]
    with pytest.raises(RuntimeError, match=r"before Rebalancer.start"):
        training_step(reb, sgd(model), x, y, encode=model.encode, fuse=model.fuse)
    mla = rebalancer(model, pdmp.MLA(NAMES))
    mla.start(data)
    with pytest.raises(ValueError, match=r"training_step\(rebalancer"):
        mla.loss(x, y)
    with pytest.raises(ValueError, match=r"zero_grad=True and optimizer_step=True"):
        training_step(mla, sgd(model), x, y, encode=model.encode, fuse=model.fuse, optimizer_step=False)
    with pytest.raises(TypeError, match=r"use Modulator|Modulator"):
        pdmp_policy = pdmp.PDMP(list(NAMES), "audio", 10.0, 0.5)
        Rebalancer(pdmp_policy, dict(model.encoders.items()), num_classes=3, encode=model.encode)
    with pytest.raises(TypeError, match=r"length"):
        rebalancer(model, pdmp.PMR(NAMES)).start(iter(data))


def test_modulator_refuses_a_rebalancing_policy_before_touching_the_model():
    model = Net()
    opt = sgd(model)
    with pytest.raises(TypeError, match=r"Rebalancer"):
        Modulator(dict(model.encoders.items()), pdmp.PMR(NAMES), optimizer=opt)
    # Nothing was left behind: another Modulator may claim the encoders, the optimizer steps as before.
    with Modulator(dict(model.encoders.items()), pdmp.NoModulation(list(NAMES)), optimizer=opt):
        pass
    assert type(opt).step is torch.optim.SGD.step and "step" not in vars(opt)


# ------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["pmr", "gblending", "dr", "mla"])
def test_a_resumed_run_continues_exactly(name):
    """Two epochs straight equal one epoch, a checkpoint (model, optimizer, Rebalancer), one more epoch."""
    make = {
        "pmr": lambda: pdmp.PMR(NAMES, alpha=2.0, prototype_fraction=2),
        "gblending": lambda: pdmp.GBlending(NAMES, super_epoch=1),
        "dr": lambda: pdmp.DiagnosingRelearning(NAMES, every=1, count=1),
        "mla": lambda: pdmp.MLA(NAMES, projection="code"),  # the projector's state is resumed
    }[name]
    data, held = batches(11), batches(12, noise_labels=True)

    def epoch_of(model, opt, reb, epoch):
        reb.set_epoch(epoch)
        for x, y in data:
            training_step(reb, opt, x, y, encode=model.encode, fuse=model.fuse)
        reb.end_epoch(epoch, data, held_out=held)

    straight = Net()
    opt = sgd(straight)
    reb = rebalancer(straight, make())
    reb.start(data, held_out=held)
    epoch_of(straight, opt, reb, 0)
    saved = copy.deepcopy((straight.state_dict(), opt.state_dict(), reb.state_dict()))
    epoch_of(straight, opt, reb, 1)

    resumed = Net()
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)  # another starting point: the initial parameters must come from the checkpoint
    resumed.load_state_dict(saved[0])
    opt2 = sgd(resumed)
    opt2.load_state_dict(saved[1])
    reb2 = rebalancer(resumed, make())
    reb2.load_state_dict(saved[2])
    epoch_of(resumed, opt2, reb2, 1)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert reb2.step_count == reb.step_count == 2 * len(data)


def test_a_mismatched_state_is_refused_and_changes_nothing():
    model, data = Net(), batches(0)
    reb = rebalancer(model, pdmp.PMR(NAMES))
    reb.start(data)
    state = reb.state_dict()
    dr = rebalancer(model, pdmp.DiagnosingRelearning(NAMES))
    with pytest.raises(ValueError, match=r"state\['initial'\] is missing.*same policy"):
        dr.load_state_dict(state)
    with pytest.raises(ValueError, match=r"unknown|extra|'clock'"):
        reb.load_state_dict({**state, "clock": 3})
