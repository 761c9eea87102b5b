"""pdmp.backends.torch.training_step: one step that is right for every shipped policy.

Each policy trained with training_step ends with bit-identical parameters and coefficients to the
hand-written loop that branches on the policy (the loop the docs showed before the function existed).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import pdmp  # noqa: E402
from pdmp.backends.torch import Modulator, concat_head_logits  # noqa: E402
from pdmp.backends.torch.training import training_step  # noqa: E402
from pdmp.compare import APPLIED_KEY  # noqa: E402

pytestmark = pytest.mark.torch

N, CLASSES, NAMES = 128, 4, ["audio", "image"]


def data():
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, CLASSES, (N,), generator=generator)
    onehot = nn.functional.one_hot(y, CLASSES).float()
    x = {
        "audio": torch.randn(N, 16, generator=generator) + 2.0 * onehot.repeat(1, 4),
        "image": torch.randn(N, 8, generator=generator) + 0.3 * onehot.repeat(1, 2),
    }
    return x, y


class Fused(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict(
            {"audio": nn.Sequential(nn.Linear(16, 12), nn.ReLU()), "image": nn.Sequential(nn.Linear(8, 12), nn.ReLU())}
        )
        self.head = nn.Linear(24, CLASSES)
        self.unimodal_heads = nn.ModuleDict({m: nn.Linear(12, CLASSES) for m in NAMES})

    def encode(self, inputs):
        return {m: encoder(inputs[m]) for m, encoder in self.encoders.items()}

    def fuse(self, features):
        return self.head(torch.cat([features["audio"], features["image"]], dim=1))

    def forward(self, inputs):
        features = self.encode(inputs)
        return self.fuse(features), features


def hand_loop_step(model, mod, optimizer, policy, batch, target, epoch):
    ce = nn.functional.cross_entropy
    logits, features = model(batch)
    loss = ce(logits, target)
    optimizer.zero_grad()
    if isinstance(policy, pdmp.GradientPolicy) and policy.uses_unimodal_gradients:
        mod.backward(loss, {m: ce(model.unimodal_heads[m](f), target) for m, f in features.items()})
    elif isinstance(policy, pdmp.AGM):
        model.eval()
        with torch.no_grad():
            responses = pdmp.mono_modal_responses(lambda masked: model(masked)[0], batch)
        model.train()
        mod.observe(responses, target)
        loss.backward()
    elif isinstance(policy, pdmp.PDMP | pdmp.NoModulation | pdmp.UniformScaling):
        loss.backward()
    else:  # OGM-GE, InfoReg, ARL, AdaptivePDMP: decomposed logits, weighted unimodal losses
        parts = concat_head_logits(model.head, features, detach=False)
        weights = mod.unimodal_loss_weights
        mod.observe({m: p.detach() for m, p in parts.items()}, target)
        extra = [weights[m] * ce(parts[m], target) for m in NAMES if weights[m]]
        (loss + sum(extra)).backward() if extra else loss.backward()
    optimizer.step()
    mod.step()


def train(policy, use_function: bool):
    x, y = data()
    torch.manual_seed(1)
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    with Modulator(dict(model.encoders.items()), policy, optimizer=optimizer) as mod:
        for epoch in range(3):
            mod.set_epoch(epoch)
            for i in range(0, N, 32):
                batch, target = {m: v[i : i + 32] for m, v in x.items()}, y[i : i + 32]
                if use_function:
                    training_step(mod, optimizer, batch, target, encode=model.encode, fuse=model.fuse,
                                  head=model.head, unimodal_heads=model.unimodal_heads)  # fmt: skip
                else:
                    hand_loop_step(model, mod, optimizer, policy, batch, target, epoch)
                history.append(mod.coefficients)
    return [p.detach().clone() for p in model.parameters()], history


RANKING = pdmp.Ranking(order=("audio", "image"), scores={"audio": 0.9, "image": 0.4})
POLICIES = {
    "joint": lambda: pdmp.NoModulation(NAMES),
    "pdmp": lambda: pdmp.PDMP.from_ranking(RANKING, warmup=1),
    "uniform": lambda: pdmp.UniformScaling(NAMES, 5.0, warmup=1),
    "ogmge": lambda: pdmp.OGMGE(NAMES, noise=False),
    "adaptive_aux": lambda: pdmp.AdaptivePDMP.from_ranking(RANKING, auxiliary=4, gamma_max=1, gamma_min=1),
    "agm": lambda: pdmp.AGM(NAMES),
    "mmpareto": lambda: pdmp.MMPareto(NAMES),
    "inforeg": lambda: pdmp.InfoReg(NAMES),
    "arl": lambda: pdmp.ARL(NAMES, warmup=1),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_training_step_trains_every_policy_as_the_branching_loop_does(name):
    expected, expected_history = train(POLICIES[name](), use_function=False)
    got, history = train(POLICIES[name](), use_function=True)
    assert history == expected_history
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_training_step_says_what_a_policy_needs():
    x, y = data()
    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    batch, target = {m: v[:8] for m, v in x.items()}, y[:8]
    with Modulator(dict(model.encoders.items()), pdmp.ARL(NAMES), optimizer=optimizer) as mod:
        mod.set_epoch(0)
        with pytest.raises(ValueError, match="ARL reads per-modality logits: pass exactly one of head="):
            training_step(mod, optimizer, batch, target, encode=model.encode, fuse=model.fuse)
    with Modulator(dict(model.encoders.items()), pdmp.MMPareto(NAMES), optimizer=optimizer) as mod:
        mod.set_epoch(0)
        with pytest.raises(ValueError, match="MMPareto combines each encoder's fused and unimodal gradients"):
            training_step(mod, optimizer, batch, target, encode=model.encode, fuse=model.fuse, head=model.head)


def test_the_modulator_records_what_it_applied_and_compare_flags_a_policy_that_applied_nothing():
    x, y = data()

    def train_fn(policy, seed):
        torch.manual_seed(seed)
        model = Fused()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        with Modulator(dict(model.encoders.items()), policy, optimizer=optimizer) as mod:
            for epoch in range(2):
                mod.set_epoch(epoch)
                for i in range(0, N, 64):
                    batch, target = {m: v[i : i + 64] for m, v in x.items()}, y[i : i + 64]
                    training_step(mod, optimizer, batch, target, encode=model.encode, fuse=model.fuse,
                                  head=model.head)  # fmt: skip
            applied = mod.applied.to_dict()
        with torch.no_grad():
            accuracy = float((model.fuse(model.encode(x)).argmax(1) == y).float().mean())
        return {"train_acc": accuracy, APPLIED_KEY: applied}

    candidates = [
        pdmp.Candidate("joint", pdmp.NoModulation(NAMES)),
        pdmp.Candidate("pdmp", pdmp.PDMP.from_ranking(RANKING, warmup=1)),
        pdmp.Candidate("uniform_x1", pdmp.UniformScaling(NAMES, 1.0)),  # moves nothing: flagged
        pdmp.Candidate("arl", pdmp.ARL(NAMES, warmup=1)),
    ]
    study = pdmp.compare(train_fn, candidates, seeds=[0, 1], progress=False)
    assert study.runs[("pdmp", 0)]["applied"]["coefficients"] == {"audio": [1.0, 10.0], "image": [0.5, 1.0]}
    assert study.runs[("arl", 0)]["applied"]["unimodal_loss_weights"]["audio"][1] > 0
    assert study.applied_nothing() == ["uniform_x1"]
    assert "**Applied nothing:** uniform_x1" in study.to_markdown("train_acc")
