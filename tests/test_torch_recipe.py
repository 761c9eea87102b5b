"""The default recipe and MSLR through the torch Modulator, unchanged: the recipe's boost and
auxiliary losses, MSLR's per-encoder learning rates in lr mode (fixed and dynamic)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pdmp
from pdmp.backends.torch import Modulator, concat_head_logits
from pdmp.diagnostics import modality_scores


class Fused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.audio = nn.Linear(6, 8)
        self.image = nn.Linear(5, 8)
        self.head = nn.Linear(16, 3)

    def features(self, a: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"audio": torch.relu(self.audio(a)), "image": torch.relu(self.image(v))}


def batches(count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        y = torch.randint(0, 3, (16,), generator=generator)
        image = torch.randn(16, 5, generator=generator) + 2.0 * nn.functional.one_hot(y, 5).float()
        yield torch.randn(16, 6, generator=generator), image, y


def step(mod: Modulator, model: Fused, optimizer, a, v, y) -> dict[str, float]:
    """One training step as the benchmark wires it; returns the unimodal-loss weights it used."""
    features = model.features(a, v)
    logits = model.head(torch.cat([features["audio"], features["image"]], dim=1))
    parts = concat_head_logits(model.head, features, detach=False)
    mod.observe({m: p.detach() for m, p in parts.items()}, y)
    weights = mod.unimodal_loss_weights
    loss = nn.functional.cross_entropy(logits, y)
    loss = loss + sum(w * nn.functional.cross_entropy(parts[m], y) for m, w in weights.items() if w)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    mod.step()
    return weights


def test_recipe_gradients_are_the_boosted_fused_plus_auxiliary_losses():
    ranking = pdmp.Ranking(order=("audio", "image"), scores={"audio": 0.8, "image": 0.4})
    policy = pdmp.Recipe(ranking.order, "audio", boost=3.0, auxiliary=4.0, auxiliary_scope="all", warmup=1)
    torch.manual_seed(0)
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    (a, v, y), *_ = batches(1)
    with Modulator({"audio": model.audio, "image": model.image}, policy, mode="grad", optimizer=optimizer) as mod:
        mod.set_epoch(0)
        assert mod.coefficients == {"audio": 1.0, "image": 1.0}
        assert step(mod, model, optimizer, a, v, y) == {"audio": 4.0, "image": 4.0}
        mod.set_epoch(1)
        assert mod.coefficients == {"audio": 3.0, "image": 1.0}
        weights = {k: t.clone() for k, t in model.state_dict().items()}
        step(mod, model, optimizer, a, v, y)
        modulated = {k: weights[k] - t for k, t in model.state_dict().items()}  # lr * scaled gradient
    model.load_state_dict(weights)
    optimizer.zero_grad()
    features = model.features(a, v)
    parts = concat_head_logits(model.head, features, detach=False)
    loss = nn.functional.cross_entropy(model.head(torch.cat([features["audio"], features["image"]], dim=1)), y)
    (loss + sum(4.0 * nn.functional.cross_entropy(p, y) for p in parts.values())).backward()
    for name, factor in (("audio", 3.0), ("image", 1.0)):
        expected = 0.05 * factor * getattr(model, name).weight.grad
        torch.testing.assert_close(modulated[f"{name}.weight"], expected)
    torch.testing.assert_close(modulated["head.weight"], 0.05 * model.head.weight.grad)


def test_recipe_without_reading_the_weights_is_an_error_not_a_silent_joint_run():
    policy = pdmp.Recipe(["audio", "image"], "audio", boost=3.0, auxiliary=4.0)
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    (a, v, y), *_ = batches(1)
    with Modulator({"audio": model.audio, "image": model.image}, policy, optimizer=optimizer) as mod:
        mod.set_epoch(0)
        features = model.features(a, v)
        nn.functional.cross_entropy(model.head(torch.cat(list(features.values()), dim=1)), y).backward()
        optimizer.step()
        with pytest.raises(RuntimeError, match="unimodal_loss_weights"):
            mod.step()


def test_mslr_keep_sets_each_encoder_learning_rate_in_lr_mode():
    torch.manual_seed(0)
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    policy = pdmp.MSLR(["audio", "image"], {"audio": 5.0, "image": 0.5})
    (a, v, y), *_ = batches(1)
    with Modulator({"audio": model.audio, "image": model.image}, policy, mode="lr", optimizer=optimizer) as mod:
        mod.set_epoch(0)
        before = {k: t.clone() for k, t in model.state_dict().items()}
        features = model.features(a, v)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model.head(torch.cat(list(features.values()), dim=1)), y).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        mod.step()
        after = model.state_dict()
    for name, factor in (("audio", 5.0), ("image", 0.5), ("head", 1.0)):
        torch.testing.assert_close(
            before[f"{name}.weight"] - after[f"{name}.weight"], 0.1 * factor * grads[f"{name}.weight"]
        )


def test_mslr_dynamic_through_the_modulator_equals_the_core_replay():
    torch.manual_seed(0)
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    policy = pdmp.MSLR(["audio", "image"], {"audio": 2.0, "image": 1.0}, strategy="dynamic", history=2)
    replay = pdmp.MSLR(["audio", "image"], {"audio": 2.0, "image": 1.0}, strategy="dynamic", history=2)
    used = []
    with Modulator({"audio": model.audio, "image": model.image}, policy, mode="lr", optimizer=optimizer) as mod:
        for epoch in range(5):
            mod.set_epoch(epoch)
            for a, v, y in batches(4, seed=epoch):
                used.append(dict(mod.coefficients))
                assert used[-1] == replay.coefficients(epoch=epoch)
                features = model.features(a, v)
                parts = concat_head_logits(model.head, features)
                replay.update(modality_scores({m: p.numpy() for m, p in parts.items()}, y.numpy()))
                step(mod, model, optimizer, a, v, y)
    assert used[-1] != used[0]  # the dynamic strategy moved the rates (epochs 2 and 4 closed)
