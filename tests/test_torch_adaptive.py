"""AdaptivePDMP through the torch Modulator: one-step-lagged coefficients, exact resume, misuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pdmp import AdaptivePDMP
from pdmp.backends.torch import Modulator, concat_head_logits
from pdmp.diagnostics import modality_scores

ACCURACIES = {"audio": 0.71, "image": 0.38}


class Fused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.audio = nn.Linear(6, 8)
        self.image = nn.Linear(5, 8)
        self.head = nn.Linear(16, 3)

    def features(self, a: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"audio": torch.relu(self.audio(a)), "image": torch.relu(self.image(v))}

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.features(a, v)
        return self.head(torch.cat([features["audio"], features["image"]], dim=1)), features


def batches(count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        y = torch.randint(0, 3, (16,), generator=generator)
        image = torch.randn(16, 5, generator=generator) + 3.0 * nn.functional.one_hot(y, 5).float()  # easy: memorised
        yield torch.randn(16, 6, generator=generator), image, y


def train(mod: Modulator, model: Fused, optimizer, data, record: list) -> None:
    for a, v, y in data:
        logits, features = model(a, v)
        record.append(
            (
                dict(mod.coefficients),
                {k: t.detach().numpy() for k, t in concat_head_logits(model.head, features).items()},
                y.numpy(),
            )
        )
        mod.observe(concat_head_logits(model.head, features), y)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mod.step()


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_coefficients_of_a_step_come_from_the_batches_before_it(mode):
    torch.manual_seed(0)
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    policy = AdaptivePDMP(["audio", "image"], ACCURACIES, horizon=5.0)
    record: list = []
    with Modulator({"audio": model.audio, "image": model.image}, policy, mode=mode, optimizer=optimizer) as mod:
        mod.set_epoch(0)
        train(mod, model, optimizer, batches(12), record)
    # Independent replay in the core: coefficients at step t from the scores of steps < t.
    replay = AdaptivePDMP(["audio", "image"], ACCURACIES, horizon=5.0)
    for used, logits, labels in record:
        assert used == pytest.approx(replay.coefficients(), rel=1e-12)
        replay.update(modality_scores(logits, labels))
    assert record[0][0] == {"audio": 1.0, "image": 1.0}
    assert record[-1][0]["image"] < 1.0  # the easy image branch took more than its share


@pytest.mark.parametrize("path", ["hooks", "fused"])
def test_gradients_are_scaled_by_the_adaptive_coefficients(path):
    torch.manual_seed(0)
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    policy = AdaptivePDMP(["audio", "image"], ACCURACIES, horizon=5.0)
    modalities = {"audio": model.audio, "image": model.image}
    with Modulator(modalities, policy, mode="grad", optimizer=optimizer, path=path) as mod:
        mod.set_epoch(0)
        train(mod, model, optimizer, batches(10), [])
        a, v, y = next(batches(1, seed=5))
        logits, features = model(a, v)
        mod.observe(concat_head_logits(model.head, features), y)
        factors = dict(mod.coefficients)
        optimizer.zero_grad()
        nn.functional.cross_entropy(logits, y).backward()
        # The hooks scale during backward, the fused path just before the step: read what the step used.
        weights = {key: value.clone() for key, value in model.state_dict().items()}
        optimizer.step()
        model.load_state_dict(weights)
        scaled = {name: getattr(model, name).weight.grad.clone() for name in ("audio", "image")}
    optimizer.zero_grad()
    logits, _ = model(a, v)
    nn.functional.cross_entropy(logits, y).backward()
    for name in ("audio", "image"):
        torch.testing.assert_close(scaled[name], factors[name] * getattr(model, name).weight.grad)
    assert factors["image"] < 1.0


def test_resume_from_state_dict_gives_the_uninterrupted_coefficients():
    def run(split: int | None) -> list:
        torch.manual_seed(0)
        model = Fused()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        record: list = []
        data = list(batches(14))
        policy = AdaptivePDMP(["audio", "image"], ACCURACIES, horizon=5.0)
        mod = Modulator({"audio": model.audio, "image": model.image}, policy, optimizer=optimizer)
        mod.set_epoch(0)
        train(mod, model, optimizer, data[:split] if split else data, record)
        if split:
            state = mod.state_dict()
            mod.remove()
            fresh = Modulator(
                {"audio": model.audio, "image": model.image},
                AdaptivePDMP(["audio", "image"], ACCURACIES, horizon=5.0),
                optimizer=optimizer,
            )
            fresh.load_state_dict(state)
            train(fresh, model, optimizer, data[split:], record)
            fresh.remove()
        else:
            mod.remove()
        return [used for used, _, _ in record]

    assert run(7) == run(None)


def test_forgetting_observe_is_an_error_not_a_silent_joint_run():
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    policy = AdaptivePDMP(["audio", "image"], ACCURACIES)
    with Modulator({"audio": model.audio, "image": model.image}, policy, optimizer=optimizer) as mod:
        mod.set_epoch(0)
        a, v, y = next(batches(1))
        logits, _ = model(a, v)
        nn.functional.cross_entropy(logits, y).backward()
        optimizer.step()
        with pytest.raises(RuntimeError, match=r"call mod\.observe"):
            mod.step()
        assert mod.clock.step == 0


def test_auxiliary_losses_never_added_are_an_error_not_a_silent_joint_run():
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    policy = AdaptivePDMP(["audio", "image"], ACCURACIES, auxiliary=4.0)
    with Modulator({"audio": model.audio, "image": model.image}, policy, optimizer=optimizer) as mod:
        mod.set_epoch(0)
        train_with_auxiliary(mod, model, optimizer, batches(2), [])  # weights read: steps advance
        a, v, y = next(batches(1))
        logits, features = model(a, v)
        mod.observe(concat_head_logits(model.head, features), y)
        nn.functional.cross_entropy(logits, y).backward()  # the unimodal losses forgotten
        optimizer.step()
        with pytest.raises(RuntimeError, match=r"read mod\.unimodal_loss_weights.*auxiliary=0"):
            mod.step()
        assert mod.clock.step == 2


def test_a_corrupt_policy_state_is_refused_before_anything_changes():
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    policy = AdaptivePDMP(["audio", "image"], ACCURACIES)
    with Modulator({"audio": model.audio, "image": model.image}, policy, optimizer=optimizer) as mod:
        mod.set_epoch(0)
        train(mod, model, optimizer, batches(3), [])
        state = mod.state_dict()
        before = (policy.state_dict(), mod.clock.state_dict())
        state["policy_state"] = {"ema": {"audio": float("nan"), "image": 1.0}, "updates": 3}
        state["clock"] = {"step": 0, "epoch": 0}
        with pytest.raises(ValueError, match="policy_state"):
            mod.load_state_dict(state)
        assert (policy.state_dict(), mod.clock.state_dict()) == before
    assert np.isfinite(list(before[0]["ema"].values())).all()


def train_with_auxiliary(mod: Modulator, model: Fused, optimizer, data, record: list) -> None:
    """The README's loop for ``auxiliary``: the step's weights times each decomposed logit's loss, added."""
    for a, v, y in data:
        logits, features = model(a, v)
        decomposed = concat_head_logits(model.head, features, detach=False)
        weights = mod.unimodal_loss_weights
        record.append((weights, {k: t.detach().numpy() for k, t in decomposed.items()}, y.numpy()))
        mod.observe({k: t.detach() for k, t in decomposed.items()}, y)
        loss = nn.functional.cross_entropy(logits, y)
        loss = loss + sum(w * nn.functional.cross_entropy(decomposed[m], y) for m, w in weights.items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mod.step()


def test_auxiliary_weights_of_a_step_come_from_the_batches_before_it_and_resume():
    def run(split: int | None) -> list:
        torch.manual_seed(0)
        model = Fused()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        data, record = list(batches(14)), []
        make = lambda: AdaptivePDMP(["audio", "image"], ACCURACIES, horizon=5.0, auxiliary=4.0)  # noqa: E731
        mod = Modulator({"audio": model.audio, "image": model.image}, make(), optimizer=optimizer)
        mod.set_epoch(0)
        train_with_auxiliary(mod, model, optimizer, data[:split] if split else data, record)
        if split:
            state = mod.state_dict()
            mod.remove()
            mod = Modulator({"audio": model.audio, "image": model.image}, make(), optimizer=optimizer)
            mod.load_state_dict(state)
            train_with_auxiliary(mod, model, optimizer, data[split:], record)
        mod.remove()
        with pytest.raises(RuntimeError, match="after remove"):
            mod.unimodal_loss_weights  # noqa: B018
        return record

    record = run(None)
    replay = AdaptivePDMP(["audio", "image"], ACCURACIES, horizon=5.0, auxiliary=4.0)
    for used, logits, labels in record:
        assert used == pytest.approx(replay.unimodal_loss_weights(), rel=1e-12)
        replay.update(modality_scores(logits, labels))
    assert record[0][0] == {"audio": 0.0, "image": 0.0}
    assert max(used["audio"] for used, _, _ in record) > 1.0  # the memorising image branch starves audio
    assert all(used["image"] == 0.0 for used, _, _ in record)
    assert [used for used, _, _ in run(6)] == [used for used, _, _ in record]
