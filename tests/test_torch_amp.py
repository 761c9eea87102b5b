"""AMP: autocast + GradScaler give the fp32 update; skipped steps leave the modulator untouched."""

from __future__ import annotations

import copy
import warnings

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


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    # GradScaler calls a fused optimizer's step() even on an inf step (the kernel skips the update).
    "adam-fused": lambda params: torch.optim.Adam(params, lr=1e-2, fused=True),
    "adam-foreach": lambda params: torch.optim.Adam(params, lr=1e-2, foreach=True),
}


def run(  # type: ignore[no-untyped-def]
    amp: bool,
    mode: str = "grad",
    steps: int = 3,
    inf_at: int | None = None,
    optimizer: str = "sgd",
    batches: list[int] | None = None,
    gamma_r: float = 0.5,
):
    torch.manual_seed(0)
    model = TwoTower()
    start = copy.deepcopy(model.state_dict())
    opt = OPTIMIZERS[optimizer](model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=amp)
    policy = PDMP(["audio", "image"], "audio", 10.0, gamma_r, warmup=1, unit="step")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # grad mode under Adam warns (a near no-op); the clock is what is tested
        mod = Modulator(groups(model), policy, mode, opt)  # type: ignore[arg-type]
    log = []
    for step, batch in enumerate(batches if batches is not None else range(steps)):
        a, v, y = data(batch)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            loss = nn.functional.cross_entropy(model(a, v).float(), y)
        if step == inf_at:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        log.append((mod.step(), mod.step_count, mod.coefficients, [g["lr"] for g in opt.param_groups]))
    return start, model.state_dict(), log


def worst_deviation(result: dict, reference: dict, start: dict) -> float:  # type: ignore[type-arg]
    """Largest |result - reference| per tensor, relative to how far the reference moved that tensor."""
    ratios = []
    for name, value in reference.items():
        moved = (value - start[name]).abs().max()
        if moved > 0:
            ratios.append(float((result[name] - value).abs().max() / moved))
    return max(ratios)


# float16 keeps 11 significant bits (unit roundoff 2**-11 ~ 4.9e-4); the AMP run deviates from fp32 by
# about 7e-4 of the update here (a few roundings). 4e-3 allows that with margin, while a coefficient
# that is dropped or wrong changes a modality's update by tens of percent (checked below).
AMP_TOLERANCE = 4e-3


@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_autocast_and_gradscaler_give_the_fp32_update(mode: str) -> None:
    start, fp32, _ = run(amp=False, mode=mode)
    _, amp, log = run(amp=True, mode=mode)
    assert log[-1][2] == {"audio": 10.0, "image": 0.5}
    assert worst_deviation(amp, fp32, start) <= AMP_TOLERANCE
    # The tolerance discriminates: the same fp32 run with gamma_r dropped (1.0) is far outside it.
    _, dropped, _ = run(amp=False, mode=mode, gamma_r=1.0)
    assert worst_deviation(amp, dropped, start) > 20 * AMP_TOLERANCE


@pytest.mark.parametrize("optimizer", ["sgd", "adam-fused", "adam-foreach"])
@pytest.mark.parametrize("mode", ["grad", "lr"])
def test_a_skipped_step_does_not_advance_or_corrupt_the_modulator(mode: str, optimizer: str) -> None:
    # Batch 1 is given an inf loss: GradScaler skips that step (a fused optimizer is still called).
    _, skipped, log = run(amp=True, mode=mode, steps=4, inf_at=1, optimizer=optimizer)
    assert [entry[0] for entry in log] == [True, False, True, True]
    assert [entry[1] for entry in log] == [1, 1, 2, 3]  # the clock did not advance on the skipped step
    # Warm-up is 1 step, so after each counted step the coefficients are exactly the gammas.
    assert [entry[2] for entry in log] == [{"audio": 10.0, "image": 0.5}] * 4
    base_lrs = log[0][3]
    assert all(entry[3] == base_lrs for entry in log)  # learning rates restored / never left scaled
    # Nothing else moved either: the run equals a clean run over batches 0, 2, 3 (same coefficients,
    # same optimizer state); only the loss scale differs, by a power of two.
    start, clean, clean_log = run(amp=True, mode=mode, batches=[0, 2, 3], optimizer=optimizer)
    assert [entry[1:3] for entry in clean_log] == [entry[1:3] for i, entry in enumerate(log) if i != 1]
    assert worst_deviation(skipped, clean, start) <= AMP_TOLERANCE


def test_the_warmup_step_is_unmodulated() -> None:
    """Literal check of the step clock: with warmup=1 the first update is plain, the later ones scaled."""
    _, fp32, log = run(amp=False, steps=1)
    assert log[0][1:3] == (1, {"audio": 10.0, "image": 0.5})
    _, plain, _ = run(amp=False, steps=1, gamma_r=1.0)
    for name in fp32:
        assert torch.equal(fp32[name], plain[name]), name  # step 0 is in the warm-up: gamma_r played no part


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
