"""AMP: autocast + GradScaler give the fp32 update; skipped steps leave the modulator untouched."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from pdmp import OGMGE, PDMP  # noqa: E402
from pdmp.backends.torch import Modulator, concat_head_logits  # noqa: E402

torch.set_num_threads(1)


class TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.image = nn.Sequential(nn.Linear(5, 16), nn.ReLU())
        self.head = nn.Linear(32, 3)
        # A modality parameter whose gradient is exactly 0: its OGM-GE noise is pure eps.
        self.audio_gate = nn.Parameter(torch.ones(4))

    def features(self, a: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"audio": self.audio(a) + 0.0 * self.audio_gate.sum(), "image": self.image(v)}

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat(list(self.features(a, v).values()), dim=1))


def groups(model: TwoTower) -> dict[str, list[nn.Parameter]]:
    return {"audio": [*model.audio.parameters(), model.audio_gate], "image": list(model.image.parameters())}


def data(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(16, 6, generator=g), torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)


def run(amp: bool, mode: str = "grad", steps: int = 3, inf_at: int | None = None):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = TwoTower()
    start = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=amp)
    mod = Modulator(groups(model), PDMP(["audio", "image"], "audio", 10.0, 0.5, warmup=1, unit="step"), mode, optimizer)  # type: ignore[arg-type]
    log = []
    for step in range(steps):
        a, v, y = data(step)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            loss = nn.functional.cross_entropy(model(a, v).float(), y)
        if step == inf_at:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        log.append((mod.step(), mod.step_count, mod.coefficients, [g["lr"] for g in optimizer.param_groups]))
    return start, model.state_dict(), log


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_autocast_and_gradscaler_give_the_fp32_update(mode: str) -> None:
    start, fp32, _ = run(amp=False, mode=mode)
    _, amp, log = run(amp=True, mode=mode)
    assert log[-1][2] == {"audio": 10.0, "image": 0.5}
    for name in fp32:
        moved = (fp32[name] - start[name]).abs().max()
        if moved == 0:
            continue
        # fp16 compute: agreement well within the update itself (a missed gamma would be off by 10x).
        assert (amp[name] - fp32[name]).abs().max() <= 0.05 * moved, name


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_a_skipped_step_does_not_advance_or_corrupt_the_modulator(mode: str) -> None:
    _, clean, clean_log = run(amp=True, mode=mode, steps=3)
    _, skipped, log = run(amp=True, mode=mode, steps=4, inf_at=1)
    advanced = [entry[0] for entry in log]
    assert advanced == [True, False, True, True]
    assert [entry[1] for entry in log] == [1, 1, 2, 3]
    assert log[1][2] == log[0][2]  # coefficients unchanged by the skipped step
    assert log[1][3] == log[0][3]  # learning rates restored / never scaled
    # The skipped step changed nothing else either: the run equals a clean run without that batch,
    # except for the data order (step 1's batch was dropped), so compare the schedule, not weights.
    assert [entry[1:3] for entry in log[2:]] == [entry[1:3] for entry in clean_log[1:]]
    assert all(torch.isfinite(value).all() for value in skipped.values())
    assert clean.keys() == skipped.keys()


def test_ogmge_noise_is_in_unscaled_units_under_a_loss_scale() -> None:
    """Same noise draws with and without a 2**12 loss scale: after unscaling the gradients agree,
    including the pure-eps noise of a zero-gradient parameter (which needs eps * scale in the hook)."""
    grads = {}
    for scale in (None, 2.0**12):
        torch.manual_seed(0)
        model = TwoTower()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale or 1.0, enabled=scale is not None)
        mod = Modulator(groups(model), OGMGE(["audio", "image"]), optimizer=optimizer, scaler=scaler, seed=1)
        a, v, y = data(0)
        out = model(a, v)
        mod.observe(concat_head_logits(model.head, model.features(a, v)), y)
        scaler.scale(nn.functional.cross_entropy(out, y)).backward()
        scaler.unscale_(optimizer)
        grads[scale] = {name: p.grad.clone() for name, p in model.named_parameters()}
    plain, scaled = grads[None], grads[2.0**12]
    for name in plain:
        torch.testing.assert_close(scaled[name], plain[name], rtol=1e-5, atol=1e-12)
    gate = plain["audio_gate"]
    assert 0 < gate.abs().max() < 1e-7  # noise N(0, 0 + 1e-8): the eps term is really exercised
