"""pdmp.backends.torch.evaluate_robustness and apply_modality_dropout, and how dropout meets PDMP's
gradient scaling (the coefficient multiplies whatever gradient a dropped modality's encoder gets)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import pdmp  # noqa: E402
from pdmp.backends.torch import Modulator, apply_modality_dropout, evaluate_robustness, training_step  # noqa: E402
from pdmp.robustness import FULL, ModalityDropout, training_means  # noqa: E402

NAMES = ("audio", "image")


class Fused(nn.Module):
    """Audio: an MLP with biases; image: a bias-free MLP (maps 0 to 0); concat fusion, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(
            {
                "audio": nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh()),
                "image": nn.Sequential(
                    nn.Flatten(), nn.Linear(18, 5, bias=False), nn.Tanh(), nn.Linear(5, 5, bias=False), nn.Tanh()
                ),
            }
        )
        self.head = nn.Linear(10, 3)
        self.dropout = nn.Dropout(0.5)  # shows that evaluation runs in eval mode
        self.unimodal_heads = nn.ModuleDict({name: nn.Linear(5, 3) for name in NAMES})

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.encoders[name](inputs[name]) for name in NAMES}

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.dropout(torch.cat([features[name] for name in NAMES], dim=1)))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fuse(self.encode(inputs))


def data(n: int = 64) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = {"audio": rng.normal(size=(n, 4)) + np.eye(3, 4)[y], "image": rng.normal(size=(n, 2, 3, 3))}
    return {k: torch.from_numpy(v) for k, v in x.items()}, torch.from_numpy(y)


def model() -> Fused:
    torch.manual_seed(0)
    return Fused().double()


def test_evaluation_equals_the_core_with_the_same_forward() -> None:
    net = model()
    net.train()
    x, y = data()
    means = training_means({k: v.numpy() for k, v in x.items()})
    conditions = pdmp.robustness_conditions(NAMES, replacements=("zeros", "mean"), snrs_db=(0.0, 20.0))
    table = evaluate_robustness(net, x, y, conditions=conditions, train_means=means, seed=2, batch_size=7)
    assert net.training and net.dropout.training  # restored

    def reference(inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return net.eval()({k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()

    expected = pdmp.robustness.evaluate_robustness(
        reference, {k: v.numpy() for k, v in x.items()}, y.numpy(), conditions=conditions, train_means=means, seed=2
    )
    assert table.to_dict() == expected.to_dict()
    assert table.row("missing[audio]/zeros").samples == 64


def test_a_function_predict_and_its_errors() -> None:
    net = model().eval()
    x, y = data()
    table = evaluate_robustness(lambda inputs: net(inputs), x, y, conditions=[FULL])
    assert 0.0 <= table.row("full").accuracy <= 1.0
    with pytest.raises(TypeError, match="must return the logits tensor"):
        evaluate_robustness(lambda inputs: (net(inputs), None), x, y, conditions=[FULL])


def test_dropout_replaces_only_the_dropped_samples() -> None:
    x, _ = data(8)
    mask = {"audio": np.array([1, 0, 0, 1, 0, 0, 0, 0], bool), "image": np.zeros(8, bool)}
    out = apply_modality_dropout(x, mask)
    assert torch.equal(out["audio"][[0, 3]], torch.zeros(2, 4, dtype=torch.float64))
    assert torch.equal(out["audio"][[1, 2, 4]], x["audio"][[1, 2, 4]])
    assert out["image"] is x["image"]
    means = {"audio": np.arange(4.0)}
    filled = apply_modality_dropout(x, mask, replacement="mean", train_means=means)
    assert torch.equal(filled["audio"][0], torch.arange(4.0, dtype=torch.float64))
    token = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    tokened = apply_modality_dropout(x, mask, replacement="token", tokens={"audio": token})
    tokened["audio"].sum().backward()
    assert torch.equal(token.grad, torch.full((4,), 2.0, dtype=torch.float64))  # two dropped samples
    with pytest.raises(ValueError, match="has shape"):
        apply_modality_dropout(x, {"audio": np.zeros(3, bool)})
    with pytest.raises(ValueError, match="needs train_means"):
        apply_modality_dropout(x, mask, replacement="mean")


def gradients(net: Fused, inputs: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
    net.zero_grad()
    nn.functional.cross_entropy(net(inputs), y).backward()
    return {name: p.grad.clone() for name, p in net.encoders.named_parameters()}


@pytest.mark.parametrize("replacement", ["zeros", "mean"])
def test_pdmp_still_multiplies_a_dropped_modalitys_encoder_gradient(replacement: str) -> None:
    net = model().eval()  # no nn.Dropout noise: the two passes must see the same function
    x, y = data()
    dropout = ModalityDropout(NAMES, 0.5, replacement=replacement, seed=1)
    batch = apply_modality_dropout(
        x, dropout.mask(64), replacement=replacement, train_means=training_means({k: v.numpy() for k, v in x.items()})
    )
    plain = gradients(copy.deepcopy(net), batch, y)
    policy = pdmp.PDMP(list(NAMES), "audio", 10.0, 0.5)
    with Modulator(dict(net.encoders.items()), policy, mode="grad") as modulator:
        modulator.set_epoch(0)
        coefficients = modulator.coefficients
        scaled = gradients(net, batch, y)
    assert coefficients == {"audio": 10.0, "image": 0.5}
    for name, grad in plain.items():
        torch.testing.assert_close(scaled[name], coefficients[name.split(".")[0]] * grad, rtol=1e-12, atol=0)


def test_an_encoder_whose_input_is_zeroed_everywhere() -> None:
    """With zeros for every sample: a bias-free encoder gets no gradient at all (scaled or not); an
    encoder with biases gets none on its first weight but one on its biases and later layers."""
    net = model().eval()
    x, y = data()
    everything = np.ones(64, bool)
    no_image = apply_modality_dropout(x, {"image": everything})
    no_audio = apply_modality_dropout(x, {"audio": everything})
    policy = pdmp.PDMP(list(NAMES), "audio", 10.0, 0.5)
    with Modulator(dict(net.encoders.items()), policy, mode="grad") as modulator:
        modulator.set_epoch(0)
        image = gradients(net, no_image, y)
        audio = gradients(net, no_audio, y)
    assert all(not grad.any() for name, grad in image.items() if name.startswith("image."))
    assert not audio["audio.0.weight"].any()
    assert audio["audio.0.bias"].abs().sum() > 0 and audio["audio.2.weight"].abs().sum() > 0


RANKING = pdmp.Ranking(order=("audio", "image"), scores={"audio": 0.9, "image": 0.4})
POLICIES = {
    "joint": lambda: pdmp.NoModulation(NAMES),
    "pdmp": lambda: pdmp.PDMP.from_ranking(RANKING, warmup=1),
    "uniform": lambda: pdmp.UniformScaling(NAMES, 5.0, warmup=1),
    "inverse": lambda: pdmp.InversePDMP.from_ranking(RANKING, warmup=1),
    "ogmge": lambda: pdmp.OGMGE(NAMES),
    "adaptive": lambda: pdmp.AdaptivePDMP.from_ranking(RANKING, auxiliary=4),
    "agm": lambda: pdmp.AGM(NAMES),
    "mmpareto": lambda: pdmp.MMPareto(NAMES),
    "inforeg": lambda: pdmp.InfoReg(NAMES),
    "arl": lambda: pdmp.ARL(NAMES, warmup=1),
    "mslr": lambda: pdmp.MSLR(NAMES, {"audio": 2.0, "image": 0.5}),
    "recipe": lambda: pdmp.recipe(RANKING),
}


def train_with_dropout(policy: pdmp.CoefficientPolicy, rate: float) -> list[torch.Tensor]:
    net = model()
    net.dropout.p = 0.0  # only the modality dropout may tell the two runs apart
    x, y = data()
    dropout = ModalityDropout(NAMES, rate, seed=0) if rate else None
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    with Modulator(dict(net.encoders.items()), policy, optimizer=optimizer) as modulator:
        for epoch in range(2):
            modulator.set_epoch(epoch)
            for rows in (slice(0, 32), slice(32, 64)):
                inputs = {name: value[rows] for name, value in x.items()}
                if dropout is not None:
                    inputs = apply_modality_dropout(inputs, dropout.mask(32))
                output = training_step(
                    modulator,
                    optimizer,
                    inputs,
                    y[rows],
                    encode=net.encode,
                    fuse=net.fuse,
                    head=net.head,
                    unimodal_heads=net.unimodal_heads,
                )
                assert torch.isfinite(output.loss)
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("name", list(POLICIES))
def test_dropout_composes_with_every_shipped_policy(name: str) -> None:
    """Dropout changes only the inputs: every policy trains through training_step on dropped batches,
    and the dropout is applied (the parameters end elsewhere than without it)."""
    with_dropout = train_with_dropout(POLICIES[name](), 0.5)
    without = train_with_dropout(POLICIES[name](), 0.0)
    assert all(torch.isfinite(p).all() for p in with_dropout)
    assert any(not torch.equal(a, b) for a, b in zip(with_dropout, without, strict=True))
