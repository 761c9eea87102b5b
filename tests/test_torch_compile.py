"""torch.compile: a compiled model's gradients are still modulated (hooks on leaf parameters run in
the eager autograd engine after the compiled backward)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from pdmp import PDMP  # noqa: E402
from pdmp.backends.torch import Modulator  # noqa: E402

torch.set_num_threads(1)


class TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.image = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.audio(a), self.image(v)], dim=1))


def grads(backend: str | None) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = TwoTower()
    mod = Modulator(
        {"audio": model.audio, "image": model.image}, PDMP(["audio", "image"], "audio", 10.0, 0.5, warmup=1)
    )
    run = model if backend is None else torch.compile(model, backend=backend)
    a, v, y = torch.randn(4, 6), torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    result = []
    for epoch in (0, 1):  # the coefficient changes between calls: it must not be baked into the graph
        mod.set_epoch(epoch)
        model.zero_grad()
        nn.functional.cross_entropy(run(a, v), y).backward()
        result.append({name: p.grad.clone() for name, p in model.named_parameters()})
    return result


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_model_gets_modulated_gradients(backend: str) -> None:
    torch._dynamo.reset()
    eager, compiled = grads(None), grads(backend)
    for epoch in (0, 1):
        for name, grad in eager[epoch].items():
            torch.testing.assert_close(compiled[epoch][name], grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[1]["audio.0.weight"], 10.0 * compiled[0]["audio.0.weight"])
    torch.testing.assert_close(compiled[1]["head.weight"], compiled[0]["head.weight"])
