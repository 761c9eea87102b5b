"""Per-modality logits from concat and sum fusion heads (OGM-GE's decomposition)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from pdmp import modality_scores  # noqa: E402
from pdmp.backends.torch import concat_head_logits, sum_head_logits  # noqa: E402

torch.set_num_threads(1)


def test_concat_head_splits_weight_columns_and_bias_over_m() -> None:
    torch.manual_seed(0)
    head = nn.Linear(5 + 3 + 2, 4)
    features = {"audio": torch.randn(6, 5), "image": torch.randn(6, 3), "text": torch.randn(6, 2)}
    logits = concat_head_logits(head, features)
    w, b = head.weight.detach().numpy(), head.bias.detach().numpy()
    a = features["audio"].numpy()
    np.testing.assert_allclose(logits["audio"].numpy(), a @ w[:, :5].T + b / 3, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits["text"].numpy(), features["text"].numpy() @ w[:, 8:].T + b / 3, rtol=1e-5)
    total = sum(logits.values())
    torch.testing.assert_close(total, head(torch.cat(list(features.values()), dim=1)).detach())
    assert not any(t.requires_grad for t in logits.values())  # for scoring only: no graph is built
    scores = modality_scores({k: t.numpy() for k, t in logits.items()}, np.zeros(6, dtype=int))
    assert set(scores) == {"audio", "image", "text"}


def test_concat_head_without_bias() -> None:
    head = nn.Linear(4, 2, bias=False)
    logits = concat_head_logits(head, {"a": torch.ones(1, 1), "b": torch.ones(1, 3)})
    torch.testing.assert_close(logits["a"], head.weight[:, :1].detach().T)


def test_sum_head_uses_each_modality_head_with_its_own_bias() -> None:
    torch.manual_seed(0)
    heads = {"audio": nn.Linear(5, 3), "image": nn.Linear(4, 3)}
    features = {"image": torch.randn(2, 4), "audio": torch.randn(2, 5)}
    logits = sum_head_logits(heads, features)
    torch.testing.assert_close(logits["audio"], heads["audio"](features["audio"]).detach())
    torch.testing.assert_close(logits["image"], heads["image"](features["image"]).detach())


def test_head_helpers_name_bad_input() -> None:
    head = nn.Linear(6, 2)
    with pytest.raises(ValueError, match=r"sum to 5 but head.in_features is 6"):
        concat_head_logits(head, {"a": torch.ones(1, 2), "b": torch.ones(1, 3)})
    with pytest.raises(TypeError, match=r"must be the nn\.Linear"):
        concat_head_logits(nn.Sequential(head), {"a": torch.ones(1, 3), "b": torch.ones(1, 3)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown modality\(ies\) \['audoi'\]"):
        sum_head_logits({"audio": head, "image": head}, {"audoi": torch.ones(1, 6), "image": torch.ones(1, 6)})


def test_split_heads_are_differentiable_on_request() -> None:
    """``detach=False`` keeps the graph (InfoReg's and ARL's unimodal losses train through it); the
    default stays detached (scores only)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 3)
    features = {"a": torch.randn(4, 2, requires_grad=True), "b": torch.randn(4, 3, requires_grad=True)}
    assert not any(v.requires_grad for v in concat_head_logits(head, features).values())
    parts = concat_head_logits(head, features, detach=False)
    parts["a"].sum().backward()
    assert features["a"].grad is not None and features["b"].grad is None
    assert head.weight.grad is not None and torch.count_nonzero(head.weight.grad[:, 2:]) == 0
    heads = {"a": torch.nn.Linear(2, 3), "b": torch.nn.Linear(3, 3)}
    assert all(v.requires_grad for v in sum_head_logits(heads, features, detach=False).values())
    assert not any(v.requires_grad for v in sum_head_logits(heads, features).values())
