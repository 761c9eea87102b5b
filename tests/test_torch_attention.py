"""Attention fusion (benchmarks.models_attention*): PDMP applies unchanged through the torch Modulator;
the methods that read per-modality logits are applied through unimodal heads or refused, as documented."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import pdmp  # noqa: E402
from benchmarks.models_attention import AttentionWiringError, attention_wiring  # noqa: E402
from benchmarks.models_attention_torch import AttentionFusionNet, attention_step  # noqa: E402
from benchmarks.models_torch import MLPEncoder, make_encoder  # noqa: E402
from pdmp.backends.torch import Modulator  # noqa: E402

NAMES = ["audio", "image"]


def net() -> AttentionFusionNet:
    torch.manual_seed(0)
    encoders = {"audio": MLPEncoder(6, 8), "image": make_encoder("cnn", (1, 8, 8), 8)}
    return AttentionFusionNet(encoders, 3, depth=1, heads=2).double()


def batch(n: int = 16) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = {"audio": rng.normal(size=(n, 6)) + np.eye(3, 6)[y], "image": rng.normal(size=(n, 1, 8, 8))}
    return {k: torch.from_numpy(v) for k, v in x.items()}, torch.from_numpy(y)


def policies() -> dict[str, pdmp.CoefficientPolicy]:
    ranking = pdmp.Ranking(order=("audio", "image"), scores={"audio": 0.9, "image": 0.5})
    return {
        "joint": pdmp.NoModulation(NAMES),
        "pdmp": pdmp.PDMP(NAMES, "audio"),
        "uniform": pdmp.UniformScaling(NAMES, 10.0),
        "agm": pdmp.AGM(NAMES),
        "mmpareto": pdmp.MMPareto(NAMES),
        "inforeg": pdmp.InfoReg(NAMES, {"audio": 0.95, "image": 0.1}),
        "arl": pdmp.ARL(NAMES, warmup=0),
        "recipe": pdmp.recipe(ranking),
        "ogmge": pdmp.OGMGE(NAMES),
        "adaptive": pdmp.AdaptivePDMP.from_ranking(ranking),
    }


def test_the_wiring_of_every_policy() -> None:
    wiring = {}
    for name, policy in policies().items():
        try:
            wiring[name] = attention_wiring(policy)
        except AttentionWiringError as error:
            assert "no per-modality share" in str(error) and policy.kind in str(error)
            wiring[name] = "refused"
    assert wiring == {
        "joint": "parameters",
        "pdmp": "parameters",
        "uniform": "parameters",
        "agm": "masked_inputs",
        "mmpareto": "unimodal_heads",
        "inforeg": "unimodal_heads",
        "arl": "unimodal_heads",
        "recipe": "unimodal_heads",
        "ogmge": "refused",
        "adaptive": "refused",
    }


def test_forward_contract() -> None:
    model = net()
    x, _ = batch()
    logits, parts = model(x)
    assert logits.shape == (16, 3) and set(parts) == set(NAMES) and all(p.shape == (16, 3) for p in parts.values())
    # Cross-modal attention: changing one modality's input changes the fused logits.
    other = dict(x, image=torch.zeros_like(x["image"]))
    assert not torch.allclose(model(other)[0], logits)


def test_pdmp_scales_only_the_encoders_gradients() -> None:
    model = net()
    x, y = batch()
    plain = copy.deepcopy(model)
    F.cross_entropy(plain(x)[0], y).backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: compare the gradients of one step
    with Modulator(dict(model.encoders.items()), pdmp.PDMP(NAMES, "audio", 10.0, 0.5), optimizer=optimizer) as mod:
        mod.set_epoch(0)
        attention_step(model, mod, optimizer, x, y)
    expected = {"audio": 10.0, "image": 0.5}
    scaled = dict(model.named_parameters())
    for name, parameter in plain.named_parameters():
        got = scaled[name].grad
        if parameter.grad is None:
            assert got is None or not got.any(), name  # the unimodal heads: no loss reaches them
            continue
        factor = expected[name.split(".")[1]] if name.startswith("encoders.") else 1.0
        torch.testing.assert_close(got, factor * parameter.grad, rtol=1e-10, atol=1e-14, msg=name)


def test_ogmge_is_refused_before_any_forward() -> None:
    model = net()
    x, y = batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mod = Modulator(dict(model.encoders.items()), pdmp.OGMGE(NAMES), optimizer=optimizer)
    with mod, pytest.raises(AttentionWiringError, match="OGMGE"):
        attention_step(model, mod, optimizer, x, y)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["arl", "inforeg", "mmpareto", "recipe", "agm"])
def test_the_logit_reading_methods_train_through_their_wiring(name: str) -> None:
    model = net()
    policy = policies()[name]
    x, y = batch()
    heads_before = {k: v.clone() for k, v in model.unimodal_heads.state_dict().items()}
    head_before = model.head.weight.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Modulator(dict(model.encoders.items()), policy, optimizer=optimizer) as mod:
        for epoch in range(2):
            mod.set_epoch(epoch)
            for _ in range(2):
                output = attention_step(model, mod, optimizer, x, y)
                assert torch.isfinite(output.loss)
        coefficients = mod.coefficients
    assert set(coefficients) == set(NAMES)
    assert not torch.equal(model.head.weight, head_before)
    heads_moved = any(not torch.equal(heads_before[k], v) for k, v in model.unimodal_heads.state_dict().items())
    # The unimodal heads train exactly when the wiring uses them.
    assert heads_moved == (attention_wiring(policy) == "unimodal_heads")
