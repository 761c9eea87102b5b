"""PDMPCallback in a real ``lightning.Trainer`` on CPU.

Every run is compared with a hand-written loop driving a ``Modulator`` on the same seed and batches:
the coefficients of every batch (read from the logged ``pdmp/coef_*``) and the final weights must be
the same. Covered: plain 32-bit, bf16-mixed (what Lightning runs on CPU for both ``"16-mixed"`` and
``"bf16-mixed"``), fp16 with a ``GradScaler`` (the explicit ``MixedPrecision("16-mixed", "cpu")``
plugin) where a skipped step is not counted, gradient accumulation, resume from a checkpoint, and
``strategy="ddp"`` with 2 CPU processes (this file re-run as a script, the way Lightning launches it).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from pdmp import OGMGE, PDMP, AdaptivePDMP
from pdmp.backends.torch import Modulator, concat_head_logits, training_log
from pdmp.backends.torch.lightning import PDMPCallback

MODALITIES = ["audio", "image"]
SAMPLES, BATCH = 32, 8  # 4 batches per epoch


def make_policy(name: str) -> Any:
    if name == "pdmp":
        return PDMP(MODALITIES, "audio", 10.0, 0.5, warmup=1)  # epoch 0 plain: set_epoch matters
    if name == "pdmp-step":
        return PDMP(MODALITIES, "audio", 4.0, 0.5, warmup=1, ramp=3, unit="step")  # counts optimizer steps
    if name == "ogm":
        return OGMGE(MODALITIES, alpha=0.8)  # noise on: the generator state must survive a resume
    if name == "ogm-quiet":
        return OGMGE(MODALITIES, alpha=0.8, noise=False)  # DDP: noise scales with each rank's own gradient
    if name == "adaptive":
        return AdaptivePDMP(MODALITIES, {"audio": 0.3, "image": 0.9}, horizon=2.0)  # image under-used
    if name == "adaptive-aux":  # audio's target share 0.9: its unimodal loss is added
        return AdaptivePDMP(MODALITIES, {"audio": 0.9, "image": 0.1}, horizon=2.0, auxiliary=4.0, gamma_max=1.0)
    raise ValueError(name)


class TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.image = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.head = nn.Linear(16, 3)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = {"audio": self.audio(a), "image": self.image(v)}
        return self.head(torch.cat([features["audio"], features["image"]], dim=1)), features


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (SAMPLES,), generator=generator)
    audio = torch.randn(SAMPLES, 6, generator=generator) + 1.5 * F.one_hot(y, 6).float()  # the stronger modality
    image = torch.randn(SAMPLES, 5, generator=generator) + 0.5 * F.one_hot(y, 5).float()
    return TensorDataset(audio, image, y)


def loader() -> DataLoader:
    return DataLoader(dataset(), batch_size=BATCH, shuffle=False)


def make_optimizer(params: Any, optimizer: str) -> torch.optim.Optimizer:
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=1e-2)
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


class Fused(LightningModule):
    """The user's side of the contract: store (per-modality logits, labels) in training_step."""

    def __init__(self, optimizer: str = "sgd", poison: tuple[int, ...] = (), with_logits: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TwoTower()
        self.optimizer_name = optimizer
        self.poison = poison  # global batch indices whose loss is made inf (a step GradScaler must skip)
        self.with_logits = with_logits
        self.batches = 0
        self.weights_used: list[dict[str, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        a, v, y = batch
        out, features = self.net(a, v)
        parts = concat_head_logits(self.net.head, features, detach=False)
        if self.with_logits:
            self.pdmp_logits = ({m: p.detach() for m, p in parts.items()}, y)
        loss = F.cross_entropy(out, y)
        callback = next(c for c in self.trainer.callbacks if isinstance(c, PDMPCallback))
        if callback.policy.uses_unimodal_losses:
            weights = callback.unimodal_loss_weights
            self.weights_used.append(weights)
            loss = loss + sum(w * F.cross_entropy(parts[m], y) for m, w in weights.items())
        if self.batches in self.poison:
            loss = loss * math.inf
        self.batches += 1
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.parameters(), self.optimizer_name)


class MemoryLogger(Logger):
    """Keeps every logged row in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append(dict(metrics))

    def pdmp_rows(self) -> list[dict[str, float]]:
        return [
            {k: v for k, v in row.items() if k.startswith("pdmp/")} for row in self.rows if "pdmp/coef_audio" in row
        ]


def fit(
    policy: str,
    *,
    mode: str = "grad",
    optimizer: str = "sgd",
    epochs: int = 2,
    logger: Any = None,
    module: Fused | None = None,
    callbacks: tuple[Any, ...] = (),
    ckpt_path: str | None = None,
    **trainer_kwargs: Any,
) -> tuple[Fused, PDMPCallback, Any]:
    module = module or Fused(optimizer)
    callback = PDMPCallback({"audio": "net.audio", "image": "net.image"}, make_policy(policy), mode=mode)
    logger = logger or MemoryLogger()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        callbacks=[callback, *callbacks],
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path)
    return module, callback, logger


def hand_loop(
    policy: str,
    *,
    mode: str = "grad",
    optimizer: str = "sgd",
    epochs: int = 2,
    accumulate: int = 1,
    autocast: torch.dtype | None = None,
    scaler: Any = None,
    poison: tuple[int, ...] = (),
) -> tuple[TwoTower, Modulator, list[dict[str, float]]]:
    """What the callback should amount to, written by hand (Lightning's order: forward, backward, step)."""
    torch.manual_seed(0)
    net = TwoTower()
    opt = make_optimizer(net.parameters(), optimizer)
    mod = Modulator({"audio": net.audio, "image": net.image}, make_policy(policy), mode=mode, optimizer=opt,
                    scaler=scaler)  # fmt: skip
    history: list[dict[str, float]] = []
    batches = 0
    for epoch in range(epochs):
        mod.set_epoch(epoch)
        for index, (a, v, y) in enumerate(loader()):
            context = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
            with context:
                out, features = net(a, v)
                parts = concat_head_logits(net.head, features, detach=False)
                logits = {m: p.detach() for m, p in parts.items()}
                loss = F.cross_entropy(out, y)
                if mod.policy.uses_unimodal_losses:
                    loss = loss + sum(w * F.cross_entropy(parts[m], y) for m, w in mod.unimodal_loss_weights.items())
                loss = loss / accumulate
            if batches in poison:
                loss = loss * math.inf
            batches += 1
            mod.observe(logits, y)
            history.append(training_log(mod, logits, y))
            (scaler.scale(loss) if scaler else loss).backward()
            if (index + 1) % accumulate == 0:
                if scaler:
                    scaler.unscale_(opt)
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad()
            mod.step()
    return net, mod, history


def assert_same_run(
    module: Fused, callback: PDMPCallback, logged: list[dict[str, float]], reference: Any, *, exact: bool = True
) -> None:
    net, mod, history = reference
    assert len(logged) == len(history)
    for got, want in zip(logged, history, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
    state = callback.state_dict()["modulator"]
    assert state["clock"] == mod.clock.state_dict()
    assert state["coefficients"] == pytest.approx(mod.state_dict()["coefficients"])
    for name, tensor in net.state_dict().items():
        got = module.net.state_dict()[name]
        if exact:
            assert torch.equal(got, tensor), name
        else:
            torch.testing.assert_close(got, tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("policy", "mode", "optimizer"),
    [("pdmp", "grad", "sgd"), ("pdmp-step", "lr", "adam"), ("ogm", "grad", "sgd"), ("adaptive", "grad", "sgd")],
)
def test_same_as_hand_written_loop(policy: str, mode: str, optimizer: str) -> None:
    module, callback, logger = fit(policy, mode=mode, optimizer=optimizer)
    assert_same_run(module, callback, logger.pdmp_rows(), hand_loop(policy, mode=mode, optimizer=optimizer))
    coefficients = {row["pdmp/coef_audio"] for row in logger.pdmp_rows()}
    assert len(coefficients) > 1  # the schedule really moved (not all 1)
    assert not callback.modulator.active  # hooks are gone after fit: the model trains plainly again


def test_auxiliary_losses_same_as_hand_written_loop() -> None:
    """AdaptivePDMP's unimodal losses added in training_step with the callback's weights: the same run
    as the README's hand-written loop, and the weights really moved off 0."""
    module, callback, logger = fit("adaptive-aux", epochs=3)
    assert_same_run(module, callback, logger.pdmp_rows(), hand_loop("adaptive-aux", epochs=3))
    assert module.weights_used[0] == {"audio": 0.0, "image": 0.0}  # nothing observed before the first step
    assert max(w["audio"] for w in module.weights_used) > 0.5 and all(w["image"] == 0 for w in module.weights_used)
    with pytest.raises(RuntimeError, match=r"outside Trainer\.fit"):
        callback.unimodal_loss_weights  # noqa: B018


def test_auxiliary_losses_forgotten_in_training_step_are_refused() -> None:
    class Forgetful(Fused):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            a, v, y = batch
            out, features = self.net(a, v)
            self.pdmp_logits = (concat_head_logits(self.net.head, features), y)
            return F.cross_entropy(out, y)

    with pytest.raises(RuntimeError, match=r"unimodal_loss_weights.*auxiliary=0"):
        fit("adaptive-aux", module=Forgetful())


def test_metrics_reach_csv_logger(tmp_path: Path) -> None:
    module, _, _ = fit("pdmp", logger=CSVLogger(tmp_path, name="run"), epochs=2)
    assert {"pdmp/coef_audio", "pdmp/coef_image", "pdmp/share_audio", "pdmp/share_image"} <= set(
        module.trainer.logged_metrics
    )
    with open(next(tmp_path.rglob("metrics.csv"))) as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("pdmp/coef_audio")]
    assert len(rows) == 8
    assert float(rows[0]["pdmp/coef_audio"]) == 1.0  # warm-up epoch
    assert float(rows[-1]["pdmp/coef_audio"]) == 10.0 and float(rows[-1]["pdmp/coef_image"]) == 0.5
    assert float(rows[-1]["pdmp/share_audio"]) + float(rows[-1]["pdmp/share_image"]) == pytest.approx(1.0)


def test_epoch_logging_and_no_logits() -> None:
    """PDMP needs no logits: without them only coefficients are logged; log='epoch' gives one row an epoch."""
    module = Fused(with_logits=False)
    callback = PDMPCallback(lambda m: {"audio": m.net.audio, "image": m.net.image}, make_policy("pdmp"),
                            log_every="epoch")  # fmt: skip
    logger = MemoryLogger()
    trainer = Trainer(accelerator="cpu", max_epochs=2, logger=logger, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, callbacks=[callback])  # fmt: skip
    trainer.fit(module, train_dataloaders=loader())
    rows = logger.pdmp_rows()
    assert rows == [{"pdmp/coef_audio": 1.0, "pdmp/coef_image": 1.0}, {"pdmp/coef_audio": 10.0, "pdmp/coef_image": 0.5}]


def test_bf16_mixed_precision() -> None:
    """bf16 autocast on CPU (Lightning maps precision='16-mixed' on CPU to this too)."""
    module, callback, logger = fit("ogm", precision="bf16-mixed")
    reference = hand_loop("ogm", autocast=torch.bfloat16)
    assert_same_run(module, callback, logger.pdmp_rows(), reference)


def test_fp16_grad_scaler_skipped_step_not_counted() -> None:
    """fp16 autocast with a GradScaler on CPU; batch 5's loss is inf, so GradScaler skips that step."""
    poison = (5,)
    module, callback, logger = fit(
        "pdmp-step",
        module=Fused(poison=poison),
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))],
    )
    reference = hand_loop(
        "pdmp-step", autocast=torch.float16, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8), poison=poison
    )
    assert_same_run(module, callback, logger.pdmp_rows(), reference)
    assert callback.state_dict()["modulator"]["clock"]["step"] == 2 * 4 - 1  # 8 batches, one step skipped


def test_gradient_accumulation_counts_optimizer_steps() -> None:
    module, callback, logger = fit("pdmp-step", accumulate_grad_batches=2)
    net, mod, history = hand_loop("pdmp-step", accumulate=2)
    # Lightning writes step logs only at optimizer steps: the last micro-batch's values.
    assert_same_run(module, callback, logger.pdmp_rows(), (net, mod, history[1::2]))
    assert callback.state_dict()["modulator"]["clock"]["step"] == 4  # 8 micro-batches, 4 optimizer steps


@pytest.mark.parametrize("policy", ["ogm", "adaptive", "pdmp-step"])
def test_resume_from_checkpoint(tmp_path: Path, policy: str) -> None:
    """Fit 2 epochs; fit 1 epoch, save, resume for the second: same coefficients and weights."""
    uninterrupted, full_callback, full_logger = fit(policy, epochs=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    fit(policy, epochs=1, callbacks=(checkpoint,))
    resumed, callback, logger = fit(policy, epochs=2, ckpt_path=str(tmp_path / "epoch=0.ckpt"))
    assert logger.pdmp_rows() == full_logger.pdmp_rows()[4:]  # the second epoch's 4 batches
    assert callback.state_dict()["modulator"]["clock"] == full_callback.state_dict()["modulator"]["clock"]
    for name, tensor in uninterrupted.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[name], tensor), name


def test_manual_optimization() -> None:
    """automatic_optimization=False: the user's opt.step() is the step the Modulator counts."""

    class Manual(Fused):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            optimizer = self.optimizers()
            loss = super().training_step(batch, batch_idx)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()

    module, callback, logger = fit("ogm", module=Manual())
    assert_same_run(module, callback, logger.pdmp_rows(), hand_loop("ogm"))


class Scheduled(Fused):
    """Adam with a StepLR halving every epoch; ``grouped``: one parameter group per modality."""

    def __init__(self, grouped: bool) -> None:
        super().__init__("adam")
        self.grouped = grouped

    def configure_optimizers(self) -> Any:
        net = self.net
        params = (
            [{"params": m.parameters()} for m in (net.audio, net.image, net.head)] if self.grouped else net.parameters()
        )
        optimizer = torch.optim.Adam(params, lr=1e-2)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}


def test_lr_mode_with_lr_scheduler() -> None:
    module, _, logger = fit("pdmp", mode="lr", module=Scheduled(grouped=True))
    assert logger.pdmp_rows()[-1]["pdmp/coef_audio"] == 10.0
    # The scheduler saw the base rates only: the coefficients never leaked into them.
    assert [group["lr"] for group in module.trainer.optimizers[0].param_groups] == [1e-2 * 0.25] * 3
    with pytest.raises(ValueError, match="give each modality's encoder its own parameter group"):
        fit("pdmp", mode="lr", module=Scheduled(grouped=False))


def test_each_fit_starts_afresh_and_state_outlives_fit() -> None:
    callback = PDMPCallback({"audio": "net.audio", "image": "net.image"}, make_policy("pdmp-step"), log_every=None)
    steps = []
    for _ in range(2):
        trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False, callbacks=[callback])  # fmt: skip
        trainer.fit(Fused(), train_dataloaders=loader())
        steps.append(callback.state_dict()["modulator"]["clock"]["step"])
    assert steps == [4, 4]


def test_training_log_for_hand_written_loops() -> None:
    net = TwoTower()
    mod = Modulator({"audio": net.audio, "image": net.image}, PDMP(MODALITIES, "audio", 3.0, 0.5))
    assert training_log(mod) == {"pdmp/coef_audio": 3.0, "pdmp/coef_image": 0.5}
    a, v, y = next(iter(loader()))
    _, features = net(a, v)
    values = training_log(mod, concat_head_logits(net.head, features), y)
    assert set(values) == {"pdmp/coef_audio", "pdmp/coef_image", "pdmp/share_audio", "pdmp/share_image"}
    assert values["pdmp/share_audio"] + values["pdmp/share_image"] == pytest.approx(1.0)
    assert all(type(value) is float for value in values.values())
    with pytest.raises(ValueError, match="without labels"):
        training_log(mod, concat_head_logits(net.head, features))
    with pytest.raises(ValueError, match="training_log logits"):
        training_log(mod, {"audio": features["audio"]}, y)
    with pytest.raises(TypeError, match="needs the Modulator"):
        training_log(PDMP(MODALITIES, "audio"), None)  # type: ignore[arg-type]


def test_package_import_does_not_need_lightning() -> None:
    code = (
        "import sys\n"
        "import pdmp.backends.torch as backend\n"
        "assert not any(name.split('.')[0] == 'lightning' for name in sys.modules), 'lightning was imported'\n"
        "sys.modules['lightning'] = sys.modules['lightning.pytorch'] = None  # as if it were not installed\n"
        "try:\n"
        "    backend.PDMPCallback\n"
        "except ImportError as error:\n"
        "    assert 'pdmp[lightning]' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('no ImportError without lightning')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_misuse_is_explained() -> None:
    with pytest.raises(AttributeError, match=r"'net.audo'.*no attribute 'audo'.*audio"):
        Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                callbacks=[PDMPCallback({"audio": "net.audo", "image": "net.image"}, make_policy("pdmp"))]
                ).fit(Fused(), train_dataloaders=loader())  # fmt: skip
    with pytest.raises(RuntimeError, match=r"self.pdmp_logits = \(concat_head_logits"):
        fit("ogm", module=Fused(with_logits=False))
    with pytest.raises(ValueError, match="use mode='grad'"):
        fit("ogm", mode="lr", module=Fused())
    with pytest.raises(TypeError, match="CoefficientPolicy"):
        PDMPCallback({"audio": "net.audio"}, "pdmp")  # type: ignore[arg-type]


# ---------------------------------------------------------------- RebalancingPolicy: RebalanceCallback


def _unpack(batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    a, v, y = batch
    return {"audio": a, "image": v}, y


class Rebalanced(LightningModule):
    """The model contract (encode, fuse, head, unimodal_heads) as a LightningModule; float64."""

    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.audio = nn.Sequential(nn.Linear(6, 8), nn.ReLU()).double()
        self.image = nn.Sequential(nn.Linear(5, 8), nn.Tanh()).double()
        self.head = nn.Linear(8 if shared else 16, 3).double()
        self.unimodal_heads = nn.ModuleDict({m: nn.Linear(8, 3) for m in MODALITIES}).double()
        if shared:
            self.automatic_optimization = False

    def encode(self, inputs: Any) -> dict[str, torch.Tensor]:
        return {"audio": self.audio(inputs["audio"]), "image": self.image(inputs["image"])}

    def fuse(self, features: Any) -> torch.Tensor:
        return self.head(torch.cat([features["audio"], features["image"]], dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        from pdmp.backends.torch import training_step
        from pdmp.backends.torch.lightning import RebalanceCallback

        callback = next(c for c in self.trainer.callbacks if isinstance(c, RebalanceCallback))
        inputs, y = _unpack(batch)
        if not self.automatic_optimization:  # MLA: one optimizer step per modality
            training_step(callback.rebalancer, self.optimizers(), inputs, y, encode=self.encode, fuse=self.fuse)
            return None
        return callback.rebalancer.loss(inputs, y)[0]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _loader64(seed: int = 1) -> DataLoader:
    a, v, y = dataset().tensors
    if seed != 1:
        y = torch.randint(0, 3, y.shape, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(a.double(), v.double(), y), batch_size=BATCH, shuffle=False)


def _rebalancing_policy(name: str) -> Any:
    import pdmp

    if name == "pmr":
        return pdmp.PMR(MODALITIES, alpha=2.0, prototype_fraction=2)
    if name == "gblending":
        return pdmp.GBlending(MODALITIES, super_epoch=1)
    if name == "dr":
        return pdmp.DiagnosingRelearning(MODALITIES, every=1, count=1)
    return pdmp.MLA(MODALITIES, projection="code")  # the projection on: the full arithmetic


@pytest.mark.parametrize("name", ["pmr", "gblending", "dr", "mla"])
def test_rebalance_callback_same_as_hand_written_loop(name: str) -> None:
    from pdmp.backends.torch import Rebalancer, training_step
    from pdmp.backends.torch.lightning import RebalanceCallback

    shared = name == "mla"
    module = Rebalanced(shared)
    callback = RebalanceCallback(
        _rebalancing_policy(name),
        {"audio": "audio", "image": "image"},
        num_classes=3,
        held_out=_loader64(seed=5),
        unpack=_unpack,
    )
    Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, callbacks=[callback],
            num_sanity_val_steps=0).fit(module, train_dataloaders=_loader64())  # fmt: skip

    hand = Rebalanced(shared)
    optimizer = hand.configure_optimizers()
    train = [_unpack(b) for b in _loader64()]
    held = [_unpack(b) for b in _loader64(seed=5)]
    parts = {"encode": hand.encode, "fuse": hand.fuse, "head": hand.head, "unimodal_heads": hand.unimodal_heads}
    reb = Rebalancer(_rebalancing_policy(name), {"audio": hand.audio, "image": hand.image}, num_classes=3, **parts)
    reb.start(train, held_out=held)
    for epoch in range(2):
        reb.set_epoch(epoch)
        for inputs, y in train:
            training_step(reb, optimizer, inputs, y, encode=hand.encode, fuse=hand.fuse)
        reb.end_epoch(epoch, train, held_out=held)
    assert callback.rebalancer is not None
    assert callback.rebalancer.events == reb.events  # the same boundary work at the same epochs
    assert reb.events or name == "mla"  # (MLA has none)
    assert callback.rebalancer.step_count == reb.step_count == 8
    for (key, got), want in zip(module.state_dict().items(), hand.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=key)


def test_rebalance_callback_misuse_is_explained() -> None:
    import pdmp
    from pdmp.backends.torch.lightning import RebalanceCallback

    def trainer(callback: Any, **options: Any) -> Trainer:
        return Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                       enable_checkpointing=False, callbacks=[callback], num_sanity_val_steps=0, **options)  # fmt: skip

    with pytest.raises(ValueError, match=r"automatic_optimization = False.*training_step\(callback.rebalancer"):
        module = Rebalanced()  # automatic optimization
        module.head = nn.Linear(8, 3).double()
        trainer(RebalanceCallback(pdmp.MLA(MODALITIES), {"audio": "audio", "image": "image"}, num_classes=3,
                                  unpack=_unpack)).fit(module, train_dataloaders=_loader64())  # fmt: skip
    with pytest.raises(ValueError, match=r"held_out=<a DataLoader.*val_dataloader\(\)"):
        trainer(RebalanceCallback(pdmp.GBlending(MODALITIES), {"audio": "audio", "image": "image"}, num_classes=3,
                                  unpack=_unpack)).fit(Rebalanced(), train_dataloaders=_loader64())  # fmt: skip
    scaler = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    mla = RebalanceCallback(pdmp.MLA(MODALITIES), {"audio": "audio", "image": "image"}, num_classes=3, unpack=_unpack)
    with pytest.raises(ValueError, match=r"cannot apply the 16-mixed GradScaler; use precision='32-true'"):
        trainer(mla, plugins=[scaler]).fit(Rebalanced(shared=True), train_dataloaders=_loader64())
    with pytest.raises(TypeError, match="RebalanceCallback"):
        PDMPCallback({"audio": "audio", "image": "image"}, pdmp.PMR(MODALITIES))
    with pytest.raises(TypeError, match="PDMPCallback"):
        RebalanceCallback(make_policy("pdmp"), {"audio": "audio", "image": "image"}, num_classes=3)


# ----------------------------------------------------------------------------------------- DDP


@pytest.mark.slow  # two fresh processes import torch and lightning: about 40 s on 2 busy cores
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    """strategy='ddp', devices=2 on CPU: Lightning re-runs this file as a script for rank 1 (gloo).

    Both ranks end with the same coefficients, the same weights and the same Modulator clock, and
    these equal one process training on the same global batches (DistributedSampler interleaves
    samples, so each global batch is the same 8 samples): OGM-GE's scores are all-reduced. Without
    noise: OGM-GE's noise scales with each rank's own gradient, so it differs from one process's.
    """
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "ddp", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    net, mod, history = hand_loop("ogm-quiet")
    for saved in ranks:
        assert saved["clock"] == mod.clock.state_dict()
        assert len(saved["history"]) == len(history)
        for got, want in zip(saved["history"], history, strict=True):
            assert got == pytest.approx({k: v for k, v in want.items() if "coef" in k}, rel=1e-6)
        for name, tensor in net.state_dict().items():
            torch.testing.assert_close(saved["weights"][name], tensor, rtol=1e-5, atol=1e-6)


class _Recorder(PDMPCallback):
    """Records each batch's coefficients on every rank (loggers write from rank 0 only)."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        assert self.modulator is not None
        self.history.append({f"pdmp/coef_{k}": v for k, v in self.modulator.coefficients.items()})
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def _ddp_main(directory: str) -> None:
    torch.set_num_threads(1)
    callback = _Recorder({"audio": "net.audio", "image": "net.image"}, make_policy("ogm-quiet"))
    callback.history = []
    module = Fused()
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      callbacks=[callback], use_distributed_sampler=False)  # fmt: skip
    # Lightning's own sampler would shuffle; this one interleaves, so each step's global batch is the
    # single-process batch. Lightning sets LOCAL_RANK for the process it launches (rank 1).
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    sampler = DistributedSampler(dataset(), num_replicas=2, rank=rank, shuffle=False)
    data = DataLoader(dataset(), batch_size=BATCH // 2, sampler=sampler)
    trainer.fit(module, train_dataloaders=data)
    torch.save(
        {
            "history": callback.history,
            "clock": callback.state_dict()["modulator"]["clock"],
            "weights": {k: t.detach().clone() for k, t in module.net.state_dict().items()},
        },
        Path(directory) / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "ddp":
    _ddp_main(sys.argv[2])
