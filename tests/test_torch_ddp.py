"""DDP over 2 CPU processes (gloo): identical coefficients and weights on every rank, equal to
single-process training on the same global batches; OGM-GE scores are all-reduced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch_ddp_helpers import run_ranks  # noqa: E402

from pdmp import OGMGE, PDMP  # noqa: E402
from pdmp.backends.torch import Modulator, concat_head_logits  # noqa: E402

WORLD, STEPS, GLOBAL_BATCH = 2, 4, 8
SCENARIOS = ("pdmp-grad", "pdmp-lr", "ogm", "ogm-noise", "ogm-nosync")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


class TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.image = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.head = nn.Linear(16, 3)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = {"audio": self.audio(a), "image": self.image(v)}
        return self.head(torch.cat(list(features.values()), dim=1)), features


def policy(scenario: str) -> Any:
    if scenario.startswith("pdmp"):
        return PDMP(["audio", "image"], "audio", 10.0, 0.5, warmup=1, unit="step")
    return OGMGE(["audio", "image"], alpha=0.8, noise=scenario == "ogm-noise")


def train(scenario: str, rank: int, world: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = TwoTower()
    run = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mod = Modulator(
        {"audio": model.audio, "image": model.image},
        policy(scenario),
        mode="lr" if scenario == "pdmp-lr" else "grad",
        optimizer=optimizer,
        sync=scenario != "ogm-nosync",
    )
    mod.set_epoch(0)  # OGM-GE's window is in epochs
    history = []
    local = GLOBAL_BATCH // world
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        a, v = torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randn(GLOBAL_BATCH, 5, generator=g)
        y = torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)
        rows = slice(rank * local, (rank + 1) * local)
        optimizer.zero_grad()
        out, features = run(a[rows], v[rows])
        mod.observe(concat_head_logits(model.head, features), y[rows])
        history.append(mod.coefficients)
        nn.functional.cross_entropy(out, y[rows]).backward()
        optimizer.step()
        mod.step()
    return {"coefficients": history, "state": {k: t.detach().clone() for k, t in model.state_dict().items()}}


def _worker(rank: int, world: int, directory: str) -> None:
    torch.save({scenario: train(scenario, rank, world) for scenario in SCENARIOS}, f"{directory}/rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("ddp")
    run_ranks(_worker, WORLD, str(directory))  # see torch_ddp_helpers for what makes it deterministic
    return [torch.load(Path(directory) / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["pdmp-grad", "pdmp-lr", "ogm"])
def test_ranks_agree_with_each_other_and_with_single_process_training(ranks, scenario: str) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    single = train(scenario, rank=0, world=1)
    first, second = ranks[0][scenario], ranks[1][scenario]
    assert first["coefficients"] == second["coefficients"]
    assert len({tuple(c.values()) for c in first["coefficients"]}) > 1  # coefficients really change
    for step, (ddp, alone) in enumerate(zip(first["coefficients"], single["coefficients"], strict=True)):
        assert ddp == pytest.approx(alone, rel=1e-6), step  # OGM-GE: all-reduced = global-batch scores
    for name, value in first["state"].items():
        assert torch.equal(second["state"][name], value), name
        torch.testing.assert_close(value, single["state"][name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ogmge_noise_keeps_ranks_identical(ranks) -> None:  # type: ignore[no-untyped-def]
    first, second = ranks[0]["ogm-noise"], ranks[1]["ogm-noise"]
    assert first["coefficients"] == second["coefficients"]
    for name, value in first["state"].items():
        assert torch.equal(second["state"][name], value), name


@pytest.mark.slow
def test_without_the_all_reduce_ranks_would_disagree(ranks) -> None:  # type: ignore[no-untyped-def]
    # Control for the tests above: local scores give each rank its own coefficients.
    assert ranks[0]["ogm-nosync"]["coefficients"] != ranks[1]["ogm-nosync"]["coefficients"]
