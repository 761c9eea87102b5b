"""The step lifecycle of the torch Modulator, for every policy family.

Micro-batches accumulate into a step; a step is taken or skipped (GradScaler skipping an inf step, an
``optimizer.step`` that raises); policies observe, transform and count once per *taken* step. Checked here:

* gradient accumulation equals one big batch (the same sample counts, coefficients, policy state and
  weights), also when ``Modulator.step()`` is called after every micro-batch (as Lightning's callback does);
* Lightning's ``accumulate_grad_batches=2`` equals the hand-written accumulation loop;
* a step GradScaler skipped, or whose ``optimizer.step`` raised, leaves the policy state as it was: the run
  equals one that never saw that batch.

Everything runs in float64, so "equal" is up to summation-order rounding.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch_helpers import TwoTower  # noqa: E402

import pdmp  # noqa: E402
from pdmp.backends.torch import Modulator, concat_head_logits  # noqa: E402

torch.set_num_threads(1)

NAMES = ("audio", "image")
FAMILIES = ["pdmp", "ogmge", "adaptive", "agm", "arl", "inforeg", "mmpareto"]
ROWS = 16  # samples per optimizer step
STEPS = 4  # steps per epoch
CLOSE = {"rtol": 1e-9, "atol": 1e-12}


def make_policy(family: str) -> Any:
    return {
        "pdmp": lambda: pdmp.PDMP(NAMES, "audio", 3.0, 0.5, unit="step", warmup=1, ramp=3),
        "ogmge": lambda: pdmp.OGMGE(NAMES, noise=False),
        "adaptive": lambda: pdmp.AdaptivePDMP(NAMES, {"audio": 0.9, "image": 0.2}, horizon=2.0, auxiliary=1.0),
        "agm": lambda: pdmp.AGM(NAMES),
        "arl": lambda: pdmp.ARL(NAMES, gamma=3.0, warmup=1),
        "inforeg": lambda: pdmp.InfoReg(NAMES, window=1, threshold=0.0),
        "mmpareto": lambda: pdmp.MMPareto(NAMES),
    }[family]()


def make_model() -> TwoTower:
    torch.manual_seed(0)
    model = TwoTower()
    model.unimodal = nn.ModuleDict({m: nn.Linear(8, 3) for m in NAMES})  # MMPareto's unimodal heads
    return model.double()


def data(family: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One (audio, image, labels) batch of ROWS samples per step. OGM-GE scales each micro-batch by its own
    coefficients, so a step equals one big batch only when its micro-batches agree: its halves are copies."""
    generator = torch.Generator().manual_seed(1)
    steps = []
    for _ in range(STEPS):
        a = torch.randn(ROWS, 6, generator=generator, dtype=torch.float64)
        v = torch.randn(ROWS, 5, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 3, (ROWS,), generator=generator)
        a[:, 0] += 1.5 * y  # audio carries the label more than image does
        if family == "ogmge":
            half = ROWS // 2
            a, v, y = torch.cat([a[:half], a[:half]]), torch.cat([v[:half], v[:half]]), torch.cat([y[:half], y[:half]])
        steps.append((a, v, y))
    return steps


def split(batch: tuple[torch.Tensor, ...], parts: int) -> list[tuple[torch.Tensor, ...]]:
    return list(zip(*(t.chunk(parts) for t in batch), strict=True))


def forward_loss(
    family: str, model: TwoTower, a: torch.Tensor, v: torch.Tensor, y: torch.Tensor, weights: dict[str, float] | None
) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor] | None]:
    """The fused loss (plus weighted unimodal losses), what to observe, and MMPareto's unimodal losses."""
    features = model.features(a, v)
    loss = F.cross_entropy(model.head(torch.cat([features["audio"], features["image"]], 1)), y)
    observed, unimodal = None, None
    if family == "agm":
        with torch.no_grad():
            observed = pdmp.mono_modal_responses(lambda x: model(x["audio"], x["image"]), {"audio": a, "image": v})
    elif family == "mmpareto":
        unimodal = {m: F.cross_entropy(model.unimodal[m](features[m]), y) for m in NAMES}
    elif family != "pdmp":
        parts = concat_head_logits(model.head, features, detach=False)
        observed = {m: p.detach() for m, p in parts.items()}
        if weights is not None:
            loss = loss + sum(weights[m] * F.cross_entropy(parts[m], y) for m in NAMES)
    return loss, observed, unimodal


class Spy:
    """Records the sample count every GradientPolicy transform is computed from."""

    def __init__(self, policy: Any) -> None:
        self.counts: list[float] = []
        if isinstance(policy, pdmp.GradientPolicy) and policy.uses_logits:
            inner = policy.compute_transform

            def compute_transform(**kwargs: Any) -> Any:
                self.counts.append(kwargs["logit_stats"]["audio"]["count"])
                return inner(**kwargs)

            policy.compute_transform = compute_transform


def hand_loop(
    family: str,
    *,
    micro: int = 1,
    step_every_micro: bool = False,
    epochs: int = 2,
    scaler: Any = None,
    pass_scaler: bool = True,
    zero_model: bool = False,
    poison: tuple[int, int] | None = None,
    fail: tuple[int, int] | None = None,
    drop: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Train; ``micro`` micro-batches per step, ``poison`` (epoch, step) gets an inf loss (GradScaler skips it),
    ``fail`` (epoch, step) has an ``optimizer.step`` that raises, ``drop`` (epoch, step) is left out."""
    model, policy = make_model(), make_policy(family)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    spy = Spy(policy)
    mod = Modulator(
        {m: getattr(model, m) for m in NAMES}, policy, optimizer=opt, scaler=scaler if pass_scaler else None
    )
    failing = {"now": False}

    def maybe_fail(*_: Any) -> None:
        if failing["now"]:
            raise RuntimeError("injected failure")

    opt.register_step_pre_hook(maybe_fail)  # after the Modulator's own hook: the transform has run
    trace: list[Any] = []
    for epoch in range(epochs):
        mod.set_epoch(epoch)
        for index, batch in enumerate(data(family)):
            if (epoch, index) == drop:
                continue
            (model if zero_model else opt).zero_grad()
            weights = mod.unimodal_loss_weights if policy.uses_unimodal_losses and family != "mmpareto" else None
            for position, (a, v, y) in enumerate(split(batch, micro)):
                loss, observed, unimodal = forward_loss(family, model, a, v, y, weights)
                if observed is not None:
                    mod.observe(observed, y)
                loss = loss / micro * (math.inf if (epoch, index) == poison else 1.0)
                if unimodal is not None:
                    mod.backward(loss, {m: u / micro for m, u in unimodal.items()})
                else:
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                if step_every_micro and position < micro - 1:
                    # Lightning's callback calls step() after every micro-batch: those calls are not steps.
                    assert not mod.step()
            failing["now"] = (epoch, index) == fail
            try:
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
            except RuntimeError as error:
                assert "injected failure" in str(error)
                continue  # the step failed: the loop goes on with the next batch
            taken = mod.step()
            trace.append((taken, mod.step_count, mod.coefficients, policy.state_dict()))
    return {
        "params": {k: p.detach().clone() for k, p in model.named_parameters()},
        "trace": [entry for entry in trace if entry[0]],
        "skipped": [entry for entry in trace if not entry[0]],
        "counts": spy.counts,
        "state": policy.state_dict(),
        "step": mod.step_count,
    }


def assert_same(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    assert got["step"] == want["step"], what
    assert len(got["trace"]) == len(want["trace"]), what
    for (_, step_g, coef_g, state_g), (_, step_w, coef_w, state_w) in zip(got["trace"], want["trace"], strict=True):
        assert step_g == step_w, what
        for m in NAMES:
            assert coef_g[m] == pytest.approx(coef_w[m], rel=1e-9, abs=1e-12), f"{what}: coefficients at step {step_w}"
        assert _flat(state_g) == pytest.approx(_flat(state_w), rel=1e-9, abs=1e-12), f"{what}: state at step {step_w}"
    for key, value in want["params"].items():
        torch.testing.assert_close(got["params"][key], value, **CLOSE, msg=f"{what}: {key}")


def _flat(state: Any) -> list[float]:
    if isinstance(state, dict):
        return [x for key in sorted(state) for x in _flat(state[key])]
    if isinstance(state, (list, tuple)):
        return [x for item in state for x in _flat(item)]
    return [float(state)]


@pytest.mark.parametrize("step_every_micro", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_accumulated_micro_batches_equal_one_big_batch(family: str, step_every_micro: bool) -> None:
    big = hand_loop(family)
    accumulated = hand_loop(family, micro=2, step_every_micro=step_every_micro)
    assert_same(accumulated, big, f"{family}: 2 micro-batches vs one batch")
    assert accumulated["step"] == 2 * STEPS
    if family in ("agm", "arl", "inforeg"):
        assert accumulated["counts"] == big["counts"] == [float(ROWS)] * 2 * STEPS  # every sample of the step
    moved = {m for _, _, coefficients, _ in big["trace"] for m, c in coefficients.items() if c != 1.0}
    if family not in ("inforeg",):  # InfoReg pulls towards anchors; its coefficients stay 1
        assert moved, f"{family} never modulated: the comparison would not test it"


@pytest.mark.parametrize("signal", ["scaler", "zero_grad"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_step_grad_scaler_skipped_leaves_the_policy_state_unchanged(family: str, signal: str) -> None:
    """The Modulator learns of a skip that never called the optimizer from the scaler's lowered scale
    (``scaler=``; the loop zeroes gradients with ``model.zero_grad()``), or without ``scaler=`` from the
    ``optimizer.zero_grad()`` that discards the skipped step's gradients."""
    if family == "mmpareto" and signal == "zero_grad":
        pytest.skip("Modulator.backward scales the losses only with scaler=")
    by_scaler = signal == "scaler"
    skipped = hand_loop(
        family,
        micro=2,
        scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8),
        pass_scaler=by_scaler,
        zero_model=by_scaler,
        poison=(0, 1),
    )
    clean = hand_loop(family, micro=2, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8), drop=(0, 1))
    assert len(skipped["skipped"]) == 1 and skipped["skipped"][0][1] == 1  # the clock stayed at 1
    assert_same(skipped, clean, f"{family}: a skipped step vs a run without that batch")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_step_whose_optimizer_step_raised_leaves_the_policy_state_unchanged(family: str) -> None:
    failed = hand_loop(family, micro=2, fail=(0, 1))
    clean = hand_loop(family, micro=2, drop=(0, 1))
    # The failed step's gradients were never applied; what differs is only that the model is the same.
    assert_same(failed, clean, f"{family}: a raising optimizer.step vs a run without that batch")


# -- Lightning: accumulate_grad_batches=2 is the hand-written accumulation loop ----------------------------


def lightning_fit(
    family: str, *, epochs: int = 2, poison: int | None = None, drop: int | None = None, scaler: Any = None
) -> dict[str, Any]:
    """Fit with ``accumulate_grad_batches=2``; ``poison``: the step (counted over the whole fit) whose loss is
    inf, ``drop``: the step left out, ``scaler``: a GradScaler for 16-bit mixed precision."""
    lightning = pytest.importorskip("lightning")
    from lightning.pytorch.plugins import MixedPrecision

    from pdmp.backends.torch.lightning import PDMPCallback

    steps = [(epoch, index, batch) for epoch in range(epochs) for index, batch in enumerate(data(family))]
    per_epoch = [
        [micro for epoch_, index, batch in steps if epoch_ == epoch and epoch * STEPS + index != drop
         for micro in split(batch, 2)]
        for epoch in range(epochs)
    ]  # fmt: skip
    poisoned = set() if poison is None else {2 * poison, 2 * poison + 1}  # its micro-batches, counted over the fit
    policy = make_policy(family)
    spy = Spy(policy)
    manual = family == "mmpareto"  # its unimodal gradients need Modulator.backward: manual optimization

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()
            self.automatic_optimization = not manual
            self.seen = 0

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            a, v, y = batch
            callback = next(c for c in self.trainer.callbacks if isinstance(c, PDMPCallback))
            uses_weights = policy.uses_unimodal_losses and not manual
            weights = callback.unimodal_loss_weights if uses_weights else None
            loss, observed, unimodal = forward_loss(family, self.model, a, v, y, weights)
            if observed is not None:
                self.pdmp_logits = (observed, y)
            if self.seen in poisoned:
                loss = loss * math.inf
            self.seen += 1
            if not manual:
                return loss  # Lightning divides it by accumulate_grad_batches
            assert unimodal is not None and callback.modulator is not None
            optimizer = self.optimizers()
            if batch_idx % 2 == 0:
                optimizer.zero_grad()
            callback.modulator.backward(loss / 2, {m: u / 2 for m, u in unimodal.items()})
            if batch_idx % 2 == 1:
                optimizer.step()
            return None

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

        def train_dataloader(self) -> Any:
            # The ready micro-batches, in order; one epoch may be a step shorter (drop=).
            return torch.utils.data.DataLoader(per_epoch[self.current_epoch], batch_size=None)

    module = Module()
    callback = PDMPCallback({m: f"model.{m}" for m in NAMES}, policy, log_every=None)
    plugins = [] if scaler is None else [MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, accumulate_grad_batches=1 if manual else 2, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, callbacks=[callback],
        plugins=plugins, reload_dataloaders_every_n_epochs=1,
    )  # fmt: skip
    trainer.fit(module)
    final = callback.state_dict()["modulator"]
    return {
        "params": {k: p.detach().clone() for k, p in module.model.named_parameters()},
        "counts": spy.counts,
        "state": policy.state_dict(),
        "step": final["clock"]["step"],
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_lightning_accumulate_grad_batches_equals_the_hand_written_loop(family: str) -> None:
    fitted = lightning_fit(family)
    hand = hand_loop(family, micro=2)
    assert fitted["step"] == hand["step"] == 2 * STEPS
    assert fitted["counts"] == hand["counts"]
    assert _flat(fitted["state"]) == pytest.approx(_flat(hand["state"]), rel=1e-9, abs=1e-12)
    for key, value in hand["params"].items():
        torch.testing.assert_close(fitted["params"][key], value, **CLOSE, msg=f"{family}: {key}")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "mmpareto"])
def test_lightning_grad_scaler_skip_leaves_the_policy_state_unchanged(family: str) -> None:
    """16-bit mixed precision with accumulate_grad_batches=2: the step whose loss is inf is skipped by
    GradScaler (the optimizer is not called); the run equals one that never saw that step's micro-batches
    (the model is float64, which autocast leaves alone, so only the loss scale differs)."""
    skipped = lightning_fit(family, poison=1, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
    clean = lightning_fit(family, drop=1, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
    assert skipped["step"] == clean["step"] == 2 * STEPS - 1
    assert skipped["counts"] == clean["counts"]
    assert _flat(skipped["state"]) == pytest.approx(_flat(clean["state"]), rel=1e-9, abs=1e-12)
    for key, value in clean["params"].items():
        torch.testing.assert_close(skipped["params"][key], value, **CLOSE, msg=f"{family}: {key}")
