"""PyTorch Lightning callback: PDMP (or OGM-GE, ...) in a ``lightning.Trainer`` with one line.

:class:`PDMPCallback` builds a :class:`~pdmp.backends.torch.Modulator` when fitting starts and drives it
from the Trainer; every coefficient is still decided by the core policy and applied by the Modulator.

* **Epochs**: ``set_epoch(trainer.current_epoch)`` at the start of every training epoch.
* **Steps**: ``step()`` after every training batch. The Modulator is given the Trainer's optimizer (and
  ``16-mixed``'s ``GradScaler``), so only steps the optimizer really took advance the schedule and the
  policies: micro-batches of ``accumulate_grad_batches`` gather into their step (AGM, ARL, InfoReg,
  MMPareto and AdaptivePDMP see every micro-batch of it), and a step ``GradScaler`` skipped (inf/NaN
  gradients) counts nothing and changes no policy state.
* **Logits** (OGM-GE, :class:`~pdmp.AdaptivePDMP`, dependency logs): in ``training_step`` the module
  stores ``self.pdmp_logits = (per_modality_logits, labels)``; the callback hands them to
  ``Modulator.observe`` just before backward (``on_before_backward``) and then clears the attribute, so
  stale logits are never reused.
* **Checkpoints**: the Modulator's ``state_dict`` (clock, coefficients, noise generators, what an
  adaptive policy has learnt) is the callback's state in Lightning checkpoints, so
  ``trainer.fit(model, ckpt_path=...)`` continues with the coefficients of an uninterrupted run.
* **Gradient policies** (:class:`~pdmp.transforms.GradientPolicy`, ``mode="grad"``): logits (as
  above), epoch-start anchors and gradient statistics work under automatic optimization. A policy
  with ``uses_unimodal_gradients`` (MMPareto) needs ``Modulator.backward(loss, unimodal_losses)``,
  which Lightning's automatic backward cannot call: use manual optimization and, in
  ``training_step``, call ``callback.modulator.backward(loss, {modality: unimodal_loss})`` (with
  ``16-mixed`` the Modulator scales the losses itself) and ``observe`` it directly if the policy
  reads logits, then ``optimizer.step()``.
* **Auxiliary losses** (``AdaptivePDMP(auxiliary=...)``): in ``training_step`` add
  ``sum(w[m] * loss_fn(parts[m], y))`` over the decomposed logits
  (``parts = concat_head_logits(self.head, features, detach=False)``), with ``w`` the callback's
  :attr:`PDMPCallback.unimodal_loss_weights` (this step's, from the batches before it). A step that
  never read them is refused (the losses would silently be missing).
* **Logs**: :func:`~pdmp.backends.torch.training_log`'s values (``pdmp/coef_<modality>``, and
  ``pdmp/share_<modality>`` when logits were stored) through ``LightningModule.log``.

:class:`RebalanceCallback` is the sibling for a :class:`~pdmp.rebalancing.RebalancingPolicy`
(G-Blending, PMR, Diagnosing & Re-learning, MLA): it builds a
:class:`~pdmp.backends.torch.Rebalancer` and runs the epoch-boundary work from the Trainer's hooks;
``training_step`` uses :attr:`RebalanceCallback.rebalancer` (see its docstring). :class:`PDMPCallback`
refuses these policies and names it.

Needs the ``lightning`` package (``pip install "pdmp[lightning]"``); the standalone
``pytorch_lightning`` package has its own ``Callback`` class and is not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import torch

try:
    from lightning.pytorch import Callback
except ImportError as error:
    raise ImportError(
        "pdmp.backends.torch.lightning needs the lightning package: pip install 'pdmp[lightning]' "
        "(or pip install 'lightning>=2.4')"
    ) from error

from pdmp._validation import check_bool, check_non_negative_int, check_positive_int
from pdmp.policies import CoefficientPolicy
from pdmp.rebalancing import RebalancingPolicy
from pdmp.transforms import GradientPolicy

from .logs import training_log
from .modulator import Mode, Modulator, ParameterSource
from .rebalancing import Rebalancer

#: The LightningModule attribute that carries ``(per_modality_logits, labels)`` from ``training_step``.
LOGITS_ATTRIBUTE = "pdmp_logits"

EncoderSpec = Mapping[str, str] | Callable[[Any], Mapping[str, ParameterSource]]
LogMode = Literal["step", "epoch"] | None


class PDMPCallback(Callback):
    """Modulate each modality's encoder of a LightningModule with a core policy during ``Trainer.fit``.

    Args:
        encoders: where each modality's encoder is in the LightningModule: a dict modality -> attribute
            path (``{"audio": "audio", "image": "backbone.image"}``: a submodule, a parameter or an
            iterable of parameters), or a function ``module -> {modality: encoder module or parameters}``
            (e.g. ``lambda m: {"audio": m.audio, "image": m.image}``). Use attribute paths with
            ``strategy="ddp_spawn"``, which pickles callbacks (a lambda cannot be pickled).
        policy: the core policy (:class:`~pdmp.PDMP`, :class:`~pdmp.OGMGE`, :class:`~pdmp.AdaptivePDMP`,
            ...); its modality names must equal the keys of ``encoders``. Adaptive policies learn in place,
            so give each ``fit`` a fresh policy object (a checkpoint restores what it had learnt).
        mode: ``"grad"`` (scale gradients; use with SGD) or ``"lr"`` (scale each modality's learning
            rate; use with Adam/AdamW). With ``"lr"`` and an LR scheduler, give every modality's encoder
            its own parameter group in ``configure_optimizers`` (the scheduler exists before the callback
            could split mixed groups).
        seed: seed of OGM-GE's gradient noise; the same on every DDP rank.
        sync: all-reduce OGM-GE's scores across DDP ranks (every rank then uses the global batch's
            coefficients).
        log_every: ``"step"`` logs each training batch's values (written at the Trainer's
            ``log_every_n_steps``), ``"epoch"`` their mean over the epoch's batches (reduced across
            ranks), ``None`` logs nothing. In ``"step"`` mode under DDP the shares are rank 0's batch
            (the coefficients are the same on every rank).

    The Trainer must have exactly one optimizer (automatic or manual optimization). The
    :class:`Modulator` exists from ``on_fit_start`` until the end of ``fit`` (:attr:`modulator`);
    afterwards its hooks are removed and :meth:`state_dict` still returns the final state. Each
    ``fit`` starts the schedule afresh unless it resumes from a checkpoint (``ckpt_path``).

    Example::

        class Fused(lightning.LightningModule):
            def training_step(self, batch, batch_idx):
                audio, image, y = batch
                features = {"audio": self.audio(audio), "image": self.image(image)}
                self.pdmp_logits = (concat_head_logits(self.head, features), y)  # OGM-GE / shares only
                return F.cross_entropy(self.head(torch.cat(list(features.values()), 1)), y)

        callback = PDMPCallback({"audio": "audio", "image": "image"}, PDMP.from_ranking(ranking))
        lightning.Trainer(max_epochs=10, callbacks=[callback]).fit(Fused(), loader)
    """

    def __init__(
        self,
        encoders: EncoderSpec,
        policy: CoefficientPolicy,
        mode: Mode = "grad",
        *,
        seed: int = 0,
        sync: bool = True,
        log_every: LogMode = "step",
    ) -> None:
        super().__init__()
        if not (callable(encoders) or isinstance(encoders, Mapping)):
            raise TypeError(
                "encoders must be a dict modality -> attribute path of its encoder in the LightningModule "
                f"(e.g. {{'audio': 'audio'}}) or a function module -> {{modality: encoder}}, got {encoders!r}"
            )
        if not isinstance(policy, CoefficientPolicy):
            raise TypeError(f"policy must be a pdmp CoefficientPolicy (PDMP, OGMGE, ...), got {type(policy).__name__}")
        if isinstance(policy, RebalancingPolicy):
            raise TypeError(
                f"{type(policy).__name__} is a RebalancingPolicy (it changes the loss, the parameters or the step, not "
                "gradient coefficients): use pdmp.backends.torch.lightning.RebalanceCallback instead of PDMPCallback"
            )
        if log_every not in ("step", "epoch", None):
            raise ValueError(f"log_every must be 'step', 'epoch' or None (no logging), got {log_every!r}")
        # Checked here, not when the Modulator is built at fit time: a typo should not cost a setup.
        if mode not in ("grad", "lr"):
            raise ValueError(f"unknown mode {mode!r}; use 'grad' (gradients) or 'lr' (per-modality learning rates)")
        seed = check_non_negative_int(seed, name="seed")
        sync = check_bool(sync, name="sync")
        self.encoders = encoders
        self.policy = policy
        self.mode: Mode = mode
        self.seed = seed
        self.sync = sync
        # Not "self.log": Lightning sets a callback's log attribute to LightningModule.log.
        self.log_every = log_every
        #: The Modulator of the running ``fit`` (None before it; removed, its hooks gone, after it).
        self.modulator: Modulator | None = None
        self._state: dict[str, Any] | None = None  # loaded from a checkpoint before the Modulator exists
        self._final: dict[str, Any] | None = None  # the last fit's end state, for state_dict() after fit
        self._observed: tuple[Mapping[str, torch.Tensor], Any] | None = None

    # ------------------------------------------------------------------------------ fit lifecycle

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # The optimizers exist from here on (Strategy.setup), and optimizer states are restored only
        # after this hook, so lr mode's split parameter groups match a checkpoint saved with them.
        optimizers = list(trainer.optimizers)
        if len(optimizers) != 1:
            raise ValueError(
                f"PDMPCallback needs exactly one optimizer, found {len(optimizers)}; return a single optimizer "
                "from configure_optimizers (one parameter group per modality is fine)"
            )
        per_batch = self.policy.needs_logits and not isinstance(self.policy, GradientPolicy)  # (those refuse lr)
        if per_batch and self.mode == "lr" and pl_module.automatic_optimization:
            # Lightning calls optimizer.step(closure): the learning rates would be set before the
            # closure's training_step has produced this batch's logits.
            raise ValueError(
                f"{type(self.policy).__name__} sets coefficients from each batch's logits, which mode='lr' cannot "
                "apply under Lightning's automatic optimization; use mode='grad' (OGM-GE's own mechanism)"
            )
        if (
            isinstance(self.policy, GradientPolicy)
            and self.policy.uses_unimodal_gradients
            and pl_module.automatic_optimization
        ):
            raise ValueError(
                f"{type(self.policy).__name__} needs each modality's unimodal gradient, computed by "
                "Modulator.backward(loss, unimodal_losses), which Lightning's automatic optimization cannot call; "
                "set self.automatic_optimization = False and in training_step call "
                "callback.modulator.backward(loss, {modality: unimodal_loss}) then optimizer.step()"
            )
        modalities = self._resolve_encoders(pl_module)
        try:
            modulator = Modulator(
                modalities,
                self.policy,
                mode=self.mode,
                optimizer=optimizers[0],
                scaler=getattr(trainer.precision_plugin, "scaler", None),  # 16-mixed only
                seed=self.seed,
                sync=self.sync,
            )
        except ValueError as error:
            # lr mode refuses to split mixed parameter groups under a scheduler; in Lightning the user
            # cannot build the Modulator first, so the fix is different: say which.
            if "LR scheduler" not in str(error):
                raise
            raise ValueError(
                f"{error}. Under Lightning: in configure_optimizers give each modality's encoder its own "
                "parameter group, e.g. SGD([{'params': self.audio.parameters()}, {'params': self.image.parameters()}, "
                "{'params': self.head.parameters()}], lr=...)"
            ) from error
        if self._state is not None:
            modulator.load_state_dict(self._state)
            self._state = None
        self.modulator, self._final = modulator, None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._require_modulator("on_train_epoch_start").set_epoch(trainer.current_epoch)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # Logits stored by a batch that skipped backward (training_step returned None) or by a
        # validation step must not be taken for this batch's.
        setattr(pl_module, LOGITS_ATTRIBUTE, None)
        self._observed = None

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        modulator = self._require_modulator("on_before_backward")
        stored = getattr(pl_module, LOGITS_ATTRIBUTE, None)
        if stored is None:
            policy = modulator.policy
            if (
                policy.needs_logits
                or policy.observes_scores
                or (isinstance(policy, GradientPolicy) and policy.uses_logits)
            ):
                raise RuntimeError(
                    f"{type(modulator.policy).__name__} needs each batch's per-modality logits: in training_step set "
                    f"self.{LOGITS_ATTRIBUTE} = (concat_head_logits(self.head, features), y) before returning the "
                    "loss (sum_head_logits for a sum-fusion head)"
                )
            return
        if not (isinstance(stored, tuple) and len(stored) == 2):
            raise TypeError(
                f"{type(pl_module).__name__}.{LOGITS_ATTRIBUTE} must be a tuple (per_modality_logits, labels), "
                f"got {type(stored).__name__}"
            )
        setattr(pl_module, LOGITS_ATTRIBUTE, None)  # one batch's logits serve one backward pass
        logits, labels = stored
        modulator.observe(logits, labels)
        self._observed = (logits, labels)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        modulator = self._require_modulator("on_train_batch_end")
        if self.log_every is not None:
            # Before step(): the coefficients this batch was trained with.
            observed = self._observed or (None, None)
            epoch = self.log_every == "epoch"
            for name, value in training_log(modulator, *observed).items():
                # batch_size=1: an epoch value is the mean over batches; reduce across ranks only then.
                pl_module.log(name, value, on_step=not epoch, on_epoch=epoch, batch_size=1, sync_dist=epoch)
        self._observed = None
        modulator.step()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._release()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._release()  # a failed fit must not leave hooks on the user's model

    @property
    def unimodal_loss_weights(self) -> dict[str, float]:
        """This step's weight of each modality's unimodal loss (read it in ``training_step``; see
        :attr:`Modulator.unimodal_loss_weights`)."""
        return self._require_modulator("unimodal_loss_weights").unimodal_loss_weights

    # -------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """``{"modulator": Modulator.state_dict()}``: the running fit's, else the last one's; empty before any."""
        if self.modulator is not None and self.modulator.active:
            return {"modulator": self.modulator.state_dict()}
        state = self._state if self._state is not None else self._final
        return {"modulator": state} if state is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; Lightning calls it before ``on_fit_start`` when resuming."""
        if not state_dict:
            return
        if "modulator" not in state_dict:
            raise ValueError(
                f"not a PDMPCallback state (keys {sorted(state_dict)}); pass what PDMPCallback.state_dict() returned"
            )
        if self.modulator is not None and self.modulator.active:  # strategies that restore after setup
            self.modulator.load_state_dict(state_dict["modulator"])
        else:
            self._state = state_dict["modulator"]

    # ---------------------------------------------------------------------------------- internals

    def _resolve_encoders(self, pl_module: Any) -> Mapping[str, ParameterSource]:
        return _resolve_encoders(self.encoders, pl_module, "PDMPCallback")

    def _require_modulator(self, hook: str) -> Modulator:
        if self.modulator is None or not self.modulator.active:
            raise RuntimeError(
                f"PDMPCallback.{hook} outside Trainer.fit (no Modulator); pass the callback to "
                "lightning.Trainer(callbacks=[...]) and train with trainer.fit"
            )
        return self.modulator

    def _release(self) -> None:
        if self.modulator is not None and self.modulator.active:
            self._final = self.modulator.state_dict()  # kept for state_dict(); a new fit starts afresh
            self.modulator.remove()
        self._observed = None


Unpack = Callable[[Any], tuple[Mapping[str, torch.Tensor], torch.Tensor]]


class RebalanceCallback(Callback):
    """Train a :class:`~pdmp.rebalancing.RebalancingPolicy` (G-Blending, PMR, Diagnosing & Re-learning, MLA)
    in a ``lightning.Trainer``: a :class:`~pdmp.backends.torch.Rebalancer` built when fitting starts, its
    epoch-boundary work run from the Trainer's hooks (``start`` in ``on_train_start``, ``set_epoch`` in
    ``on_train_epoch_start``, ``end_epoch`` in ``on_train_epoch_end``, over the Trainer's training
    dataloader and the held-out batches).

    Args:
        policy: the core policy; its modality names must equal the keys of ``encoders``.
        encoders: each modality's encoder module in the LightningModule, as for :class:`PDMPCallback`
            (attribute paths or a function ``module -> {modality: module}``).
        num_classes: the number of classes.
        held_out: held-out batches for G-Blending's checkpoints and Diagnosing & Re-learning's diagnosis
            (a DataLoader); if None, the LightningModule's own ``val_dataloader()``.
        unpack: ``batch -> (inputs, target)``, ``inputs`` a dict modality -> tensor; default: the batch is
            that pair already.

    The LightningModule follows the model contract of :func:`~pdmp.backends.torch.training_step`:
    methods ``encode(inputs) -> {modality: features}`` and ``fuse(features) -> logits``, and the attributes
    ``head`` (MLA's shared ``nn.Linear``) and ``unimodal_heads`` (G-Blending's classifier per encoder) where
    the policy needs them. Under automatic optimization (G-Blending, PMR, Diagnosing & Re-learning),
    ``training_step`` returns the policy's loss::

        def training_step(self, batch, batch_idx):
            inputs, y = batch
            loss, logits, fused_loss = self.rebalance.rebalancer.loss(inputs, y)   # self.rebalance: the callback
            return loss

    MLA takes one optimizer step per modality inside a training step, which automatic optimization cannot
    do: set ``self.automatic_optimization = False`` and in ``training_step`` call
    ``training_step(self.rebalance.rebalancer, self.optimizers(), inputs, y, encode=self.encode, fuse=self.fuse)``
    (:func:`pdmp.backends.torch.training_step`); MLA under automatic optimization is refused at fit start.
    Predict with ``callback.rebalancer.predict(inputs)`` (MLA's fusion weights). The Trainer must have one
    optimizer and one device (no DDP yet); MLA refuses ``16-mixed``'s GradScaler. The policy's state is not
    saved in Lightning checkpoints (a resumed fit would restart the method), so train these methods without
    ``ckpt_path``.
    """

    def __init__(
        self,
        policy: RebalancingPolicy,
        encoders: EncoderSpec,
        *,
        num_classes: int,
        held_out: Iterable[Any] | None = None,
        unpack: Unpack | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(policy, RebalancingPolicy):
            raise TypeError(
                "RebalanceCallback applies a pdmp.rebalancing.RebalancingPolicy (GBlending, PMR, "
                f"DiagnosingRelearning, MLA), got {type(policy).__name__}; use PDMPCallback for coefficient and "
                "gradient policies"
            )
        if not (callable(encoders) or isinstance(encoders, Mapping)):
            raise TypeError(
                "encoders must be a dict modality -> attribute path of its encoder in the LightningModule "
                f"(e.g. {{'audio': 'audio'}}) or a function module -> {{modality: encoder}}, got {encoders!r}"
            )
        if unpack is not None and not callable(unpack):
            raise TypeError(f"unpack must be a function batch -> (inputs, target), got {unpack!r}")
        self.policy = policy
        self.encoders = encoders
        self.num_classes = check_positive_int(num_classes, name="num_classes")
        self.held_out = held_out
        self.unpack = unpack
        #: The Rebalancer of the running ``fit`` (None before it).
        self.rebalancer: Rebalancer | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if len(list(trainer.optimizers)) != 1:
            raise ValueError(
                f"RebalanceCallback needs exactly one optimizer, found {len(list(trainer.optimizers))}; return a "
                "single optimizer from configure_optimizers"
            )
        if self.policy.uses_training_passes and pl_module.automatic_optimization:
            raise ValueError(
                f"{type(self.policy).__name__} takes one optimizer step per training pass inside a step, which "
                "Lightning's automatic optimization cannot do: set self.automatic_optimization = False in the "
                "LightningModule and in training_step call pdmp.backends.torch.training_step(callback.rebalancer, "
                "self.optimizers(), inputs, y, encode=self.encode, fuse=self.fuse)"
            )
        if int(getattr(trainer, "world_size", 1)) > 1:
            raise ValueError(
                f"RebalanceCallback does not support data-parallel training yet (world_size={trainer.world_size}): "
                f"{type(self.policy).__name__}'s epoch-boundary statistics would differ per process; use devices=1"
            )
        if self.policy.uses_training_passes and getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                f"{type(self.policy).__name__}'s training passes call backward themselves and cannot apply the "
                "16-mixed GradScaler; use precision='32-true' (or 'bf16-mixed', which needs no scaler)"
            )
        if not callable(getattr(pl_module, "encode", None)):
            raise ValueError(
                f"{type(pl_module).__name__} has no encode method: RebalanceCallback needs the model contract "
                "encode(inputs) -> {modality: features} and fuse(features) -> logits on the LightningModule"
            )
        encoders = _resolve_encoders(self.encoders, pl_module, "RebalanceCallback")
        if not all(isinstance(e, torch.nn.Module) for e in encoders.values()):
            raise TypeError("RebalanceCallback encoders must resolve to nn.Module encoders (not parameter lists)")
        self.rebalancer = Rebalancer(
            self.policy,
            encoders,
            num_classes=self.num_classes,
            encode=pl_module.encode,
            fuse=getattr(pl_module, "fuse", None),
            head=getattr(pl_module, "head", None),
            unimodal_heads=getattr(pl_module, "unimodal_heads", None),
        )

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._require("on_train_start").start(self._train(trainer, pl_module), held_out=self._held(pl_module))

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._require("on_train_epoch_start").set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.automatic_optimization:  # manual: training_step counted its own step
            self._require("on_train_batch_end").advance()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._require("on_train_epoch_end").end_epoch(
            trainer.current_epoch, self._train(trainer, pl_module), held_out=self._held(pl_module)
        )

    def _require(self, hook: str) -> Rebalancer:
        if self.rebalancer is None:
            raise RuntimeError(
                f"RebalanceCallback.{hook} outside Trainer.fit (no Rebalancer); pass the callback to "
                "lightning.Trainer(callbacks=[...]) and train with trainer.fit"
            )
        return self.rebalancer

    def _train(self, trainer: Any, pl_module: Any) -> _Batches:
        return _Batches(trainer.train_dataloader, self.unpack, pl_module)

    def _held(self, pl_module: Any) -> _Batches | None:
        policy = self.policy
        if not (policy.needs_held_out_losses or policy.uses_parameter_events):
            return None
        source = self.held_out
        if source is None:
            try:
                source = pl_module.val_dataloader()
            except Exception as error:  # Lightning's default hook raises when the module defines none
                raise ValueError(
                    f"{type(policy).__name__} needs held-out batches: pass RebalanceCallback(..., held_out=<a "
                    "DataLoader of validation batches>) or define val_dataloader() in the LightningModule"
                ) from error
        return _Batches(source, self.unpack, pl_module)


class _Batches:
    """A dataloader's batches as ``(inputs, target)`` on the module's device; re-iterable, with a length."""

    def __init__(self, source: Any, unpack: Unpack | None, pl_module: Any) -> None:
        if source is None:
            raise ValueError("RebalanceCallback: the Trainer has no training dataloader")
        self.source, self.unpack, self.pl_module = source, unpack, pl_module

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[tuple[Mapping[str, torch.Tensor], torch.Tensor]]:
        from lightning.pytorch.utilities import move_data_to_device

        for batch in self.source:
            batch = move_data_to_device(batch, self.pl_module.device)
            pair = self.unpack(batch) if self.unpack is not None else batch
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], Mapping)):
                raise TypeError(
                    "RebalanceCallback reads batches as (inputs, target) with inputs a dict modality -> tensor; "
                    f"got {type(batch).__name__}: pass unpack=<function batch -> (inputs, target)>"
                )
            yield pair[0], pair[1]


def _resolve_encoders(encoders: EncoderSpec, pl_module: Any, owner: str) -> Mapping[str, ParameterSource]:
    if not isinstance(encoders, Mapping):
        modalities = encoders(pl_module)
        if not isinstance(modalities, Mapping):
            raise TypeError(
                f"{owner} encoders function returned {type(modalities).__name__}; "
                "it must return a dict modality -> encoder module or parameters"
            )
        return modalities
    resolved: dict[str, ParameterSource] = {}
    for modality, path in encoders.items():
        if not isinstance(path, str):
            raise TypeError(
                f"{owner} encoders[{modality!r}] must be an attribute path (str) of the LightningModule, "
                f"got {type(path).__name__}; pass a function module -> encoders to give modules directly"
            )
        resolved[modality] = _attribute(pl_module, path, modality, owner)
    return resolved


def _attribute(module: Any, path: str, modality: str, owner: str = "PDMPCallback") -> Any:
    """``module.a.b`` for ``"a.b"``, with an error naming the missing part and what exists there."""
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if not hasattr(module, part):
            where = ".".join(parts[:depth]) or type(module).__name__
            children = [name for name, _ in module.named_children()] if isinstance(module, torch.nn.Module) else []
            known = f"; its submodules are {children}" if children else ""
            raise AttributeError(
                f"{owner} encoders[{modality!r}] = {path!r}: {where} has no attribute {part!r}{known}. "
                "Name the attribute that holds the modality's encoder"
            )
        module = getattr(module, part)
    return module


__all__ = ["LOGITS_ATTRIBUTE", "PDMPCallback", "RebalanceCallback"]
