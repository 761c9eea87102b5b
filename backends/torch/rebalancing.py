"""Train a :class:`~pdmp.rebalancing.RebalancingPolicy` (G-Blending, PMR, Diagnosing & Re-learning, MLA) in PyTorch.

These methods do not scale gradients, so a :class:`~pdmp.backends.torch.Modulator` cannot apply them; a
:class:`Rebalancer` does what the policy's capability flags ask (``pdmp.rebalancing``'s module docstring)
and nothing else: every weight, prototype, mix, projection and fusion weight comes from the core policy.
The loop is the one :func:`~pdmp.backends.torch.training_step` already gives every other policy, with the
epoch-boundary work around it::

    rebalancer = Rebalancer(policy, {"audio": model.audio, "image": model.image}, num_classes=10,
                            encode=model.encode, fuse=model.fuse, head=model.head,
                            unimodal_heads=model.unimodal_heads)
    rebalancer.start(train_loader, held_out=val_loader)         # before the first epoch
    for epoch in range(epochs):
        rebalancer.set_epoch(epoch)
        for inputs, target in train_loader:
            training_step(rebalancer, optimizer, inputs, target, encode=model.encode, fuse=model.fuse)
        rebalancer.end_epoch(epoch, train_loader, held_out=val_loader)
    logits = rebalancer.predict(inputs)                          # MLA: its fusion weights

To resume, save ``rebalancer.state_dict()`` with the model and optimizer, and call
``rebalancer.load_state_dict(state)`` instead of ``start``.

``train_loader`` / ``held_out``: re-iterable batches ``(inputs, target)``, ``inputs`` a dict modality ->
tensor (a ``DataLoader`` or a list). What each method needs from the model:

* **G-Blending** (``needs_held_out_losses``): ``unimodal_heads`` (a classifier per encoder) and held-out
  batches; at the epochs the policy names, every term's mean loss on the training and held-out batches
  is measured (eval mode, no gradient) and handed to the policy, whose weights the following steps use.
* **PMR** (``uses_prototypes``): nothing beyond ``encode``/``fuse``; the prototypes are computed from the
  first training batches (eval mode) before training and after every epoch.
* **Diagnosing & Re-learning** (``uses_parameter_events``): held-out batches and the encoders as modules;
  at the epochs the policy names, each encoder's parameters (not its buffers) are moved toward their
  values at :meth:`Rebalancer.start` in place, so the optimizer keeps its state.
* **MLA** (``uses_training_passes``, ``uses_fusion_weights``): a shared ``head`` (an ``nn.Linear`` whose
  input size is every encoder's feature size) and encoders that take their modality's input
  (``encoders[m](inputs[m])``); each training step takes one optimizer step per modality, and
  :meth:`Rebalancer.predict` fuses the head's per-modality logits with the policy's weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pdmp._boundary import EpochBoundary
from pdmp._validation import check_non_negative_int, check_positive_int, check_same_modalities, check_state_keys
from pdmp.rebalancing import FUSED, LossTerms, ParameterEvent, RebalancingPolicy

from ._distributed import is_distributed
from ._modes import eval_mode

__all__ = ["Rebalancer"]

Features = Mapping[str, torch.Tensor]
Batches = Iterable[tuple[Mapping[str, torch.Tensor], torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Rebalancer:
    """Apply a :class:`~pdmp.rebalancing.RebalancingPolicy`'s declarations to a PyTorch model.

    Args:
        policy: the core policy (:class:`~pdmp.GBlending`, :class:`~pdmp.PMR`,
            :class:`~pdmp.DiagnosingRelearning`, :class:`~pdmp.MLA`, or any subclass).
        encoders: modality -> its encoder ``nn.Module`` (the modules whose parameters a re-initialisation
            moves, and that MLA runs one at a time as ``encoders[m](inputs[m])``); keys = the policy's modalities.
        num_classes: the number of classes (prototypes, the re-learning diagnosis).
        encode, fuse: the model split at the fusion: ``encode(inputs) -> {modality: features}``,
            ``fuse(features) -> logits``.
        head: MLA's shared head (an ``nn.Linear`` applied to each modality's features).
        unimodal_heads: a classifier per encoder, for policies that weight each modality's own loss
            (G-Blending).
        loss_fn: ``loss_fn(logits, target)``, a mean over the batch.

    The per-step part is :meth:`step` (what :func:`~pdmp.backends.torch.training_step` calls for a
    Rebalancer) or, where the framework runs backward and the optimizer (Lightning's automatic
    optimization), :meth:`loss` followed by :meth:`advance` once the step is taken.
    """

    def __init__(
        self,
        policy: RebalancingPolicy,
        encoders: Mapping[str, nn.Module],
        *,
        num_classes: int,
        encode: Callable[[Mapping[str, torch.Tensor]], Features],
        fuse: Callable[[Features], torch.Tensor] | None = None,
        head: nn.Module | None = None,
        unimodal_heads: Mapping[str, nn.Module] | None = None,
        loss_fn: LossFn = F.cross_entropy,
    ) -> None:
        if not isinstance(policy, RebalancingPolicy):
            raise TypeError(
                f"Rebalancer applies a pdmp.rebalancing.RebalancingPolicy (GBlending, PMR, DiagnosingRelearning, "
                f"MLA), got {type(policy).__name__}; train coefficient and gradient policies with Modulator"
            )
        if not isinstance(encoders, Mapping) or not all(isinstance(e, nn.Module) for e in encoders.values()):
            raise TypeError(
                "encoders must be a dict modality -> encoder nn.Module (e.g. {'audio': model.audio}), got "
                f"{encoders!r}"
            )
        policy.check_modalities(list(encoders), where="Rebalancer encoders")
        if not callable(encode):
            raise TypeError(f"encode must be the model's encode(inputs) -> {{modality: features}}, got {encode!r}")
        self.policy = policy
        self.encoders = {m: encoders[m] for m in policy.modalities}
        self.num_classes = check_positive_int(num_classes, name="num_classes")
        self.encode = encode
        self.fuse = fuse
        self.head = head
        self.unimodal_heads = unimodal_heads
        self.loss_fn = loss_fn
        self._check_parts(head=head, unimodal_heads=unimodal_heads, fuse=fuse)
        self.epoch = 0
        #: Training steps taken (one per batch, whatever the number of MLA's passes).
        self.step_count = 0
        self._batch_index = 0
        self._n_batches: int | None = None
        self._initial: dict[str, list[torch.Tensor]] | None = None
        self._started = False
        #: The loss terms of the last step (for MLA: its last pass) and the fusion weights of the last
        #: prediction (MLA; None for the others): what a run records to show what the method did.
        self.last_terms: LossTerms | None = None
        self.last_fusion_weights: dict[str, float] | None = None
        # The boundary passes and their order are the core's; this class gives it the batch functions.
        self._boundary = EpochBoundary(
            policy,
            num_classes=lambda: self.num_classes,
            features=self._batch_features,
            labels=_numpy,
            term_losses=self._batch_term_losses,
            apply_parameter_events=self._apply_parameter_events,
            evaluating=self._evaluating,
            length=_length,
        )

    @property
    def events(self) -> list[tuple[Any, ...]]:
        """What the epoch-boundary work did, in order: ``("checkpoint", epochs_done, weights)``,
        ``("prototypes", epoch)``, ``("reinit", epoch, {modality: mix})``. For logs and tests."""
        return self._boundary.events

    # ------------------------------------------------------------------------------ epoch boundaries

    def start(self, train: Batches, *, held_out: Batches | None = None) -> None:
        """Before the first epoch: keep the encoders' initial parameters (re-initialisation), compute the
        first prototypes (PMR) and the first held-out checkpoint (G-Blending)."""
        policy = self.policy
        if is_distributed():
            # Prototypes, held-out losses and the diagnosis are per-process statistics: each rank would
            # decide differently and the replicas would drift apart.
            raise RuntimeError(
                f"Rebalancer does not support data-parallel training yet ({torch.distributed.get_world_size()} "
                f"processes): {policy.kind}'s epoch-boundary statistics would differ per rank; train it in one process"
            )
        self._require_held_out(held_out, "start")
        self._n_batches = _length(train) if policy.uses_training_passes or policy.uses_prototypes else None
        if policy.uses_parameter_events:
            self._initial = {
                m: [p.detach().clone() for p in encoder.parameters()] for m, encoder in self.encoders.items()
            }
        self._boundary.start(train, held_out)
        self._started = True
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next steps belong to (0-based); call it at the start of every epoch."""
        self.epoch = check_non_negative_int(epoch, name="epoch")
        self._batch_index = 0

    def end_epoch(self, epoch: int, train: Batches, *, held_out: Batches | None = None) -> None:
        """After training epoch ``epoch`` (0-based): the policy's epoch-end work (new prototypes, a held-out
        checkpoint, re-initialisations), each only where the policy declares it and says it is due."""
        epoch = check_non_negative_int(epoch, name="epoch")
        self._require_started("end_epoch")
        self._require_held_out(held_out, "end_epoch")
        self._boundary.end_epoch(epoch, train, held_out)

    # ------------------------------------------------------------------------------------ per step

    def loss(
        self,
        inputs: Mapping[str, torch.Tensor],
        target: torch.Tensor,
        *,
        encode: Callable[[Mapping[str, torch.Tensor]], Features] | None = None,
        fuse: Callable[[Features], torch.Tensor] | None = None,
        unimodal_heads: Mapping[str, nn.Module] | None = None,
        loss_fn: LossFn | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step's training loss as the policy weights it, with the fused logits and the fused loss:
        ``(loss, logits, fused_loss)``. Backward and the optimizer step are the caller's; then :meth:`advance`.

        Refused for a policy with training passes (MLA), whose step takes several optimizer steps: use
        :meth:`step` (or :func:`~pdmp.backends.torch.training_step`)."""
        self._require_started("loss")
        if self.policy.uses_training_passes:
            raise ValueError(
                f"{self.policy.kind} takes one optimizer step per training pass inside a step, so its loss cannot "
                "be handed to a framework's backward: call training_step(rebalancer, optimizer, inputs, target, ...) "
                "(under Lightning: manual optimization, see RebalanceCallback)"
            )
        encode = encode or self.encode
        fuse = fuse or self.fuse
        heads = unimodal_heads if unimodal_heads is not None else self.unimodal_heads
        loss_fn = loss_fn or self.loss_fn
        if fuse is None:
            raise ValueError(f"{self.policy.kind} trains the fused prediction: give fuse= (features -> logits)")
        features = encode(inputs)
        logits = fuse(features)
        fused_loss = loss_fn(logits, target)
        proto_logits: dict[str, torch.Tensor] = {}
        if self.policy.uses_prototypes:
            prototypes = self.policy.prototypes()  # type: ignore[attr-defined]
            proto_logits = {m: _prototype_logits(features[m], prototypes[m]) for m in self.policy.modalities}
            terms = self.policy.loss_terms(
                step=self.step_count,
                epoch=self.epoch,
                prototype_logits={m: _numpy(v) for m, v in proto_logits.items()},
                labels=_numpy(target),
            )
        else:
            terms = self.policy.loss_terms(step=self.step_count, epoch=self.epoch)
        loss = self._combine(terms, fused_loss, features, proto_logits, target, heads, loss_fn)
        self.last_terms = terms
        return loss, logits.detach(), fused_loss.detach()

    def advance(self) -> None:
        """Count one taken training step (after the optimizer step that followed :meth:`loss`)."""
        self.step_count += 1
        self._batch_index += 1

    def step(
        self,
        optimizer: Any,
        inputs: Mapping[str, torch.Tensor],
        target: torch.Tensor,
        *,
        encode: Callable[[Mapping[str, torch.Tensor]], Features] | None = None,
        fuse: Callable[[Features], torch.Tensor] | None = None,
        head: nn.Module | None = None,
        unimodal_heads: Mapping[str, nn.Module] | None = None,
        loss_fn: LossFn | None = None,
        zero_grad: bool = True,
        optimizer_step: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step: forward, backward and (unless ``optimizer_step=False``) the optimizer step;
        MLA's training passes take one optimizer step each. Returns ``(fused logits, fused loss)``, detached
        (for MLA: the fusion-weighted prediction of the passes' logits and its loss)."""
        self._require_started("step")
        if self.policy.uses_training_passes:
            if not (zero_grad and optimizer_step):
                raise ValueError(
                    f"{self.policy.kind}'s training passes each take their own optimizer step, so gradient "
                    f"accumulation (zero_grad={zero_grad}, optimizer_step={optimizer_step}) cannot apply; "
                    "call it with zero_grad=True and optimizer_step=True"
                )
            return self._passes(optimizer, inputs, target, head=head, loss_fn=loss_fn or self.loss_fn)
        if zero_grad:
            optimizer.zero_grad()
        loss, logits, fused_loss = self.loss(
            inputs, target, encode=encode, fuse=fuse, unimodal_heads=unimodal_heads, loss_fn=loss_fn
        )
        loss.backward()
        if optimizer_step:
            optimizer.step()
            self.advance()
        return logits, fused_loss

    @torch.no_grad()
    def predict(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The model's prediction under the policy: ``sum_m w[m] * head(z_m)`` with the policy's fusion
        weights of this batch where it declares them (MLA), else ``fuse(encode(inputs))``. No gradient;
        the modules' train/eval mode is the caller's."""
        features = self.encode(inputs)
        if self.policy.uses_fusion_weights:
            return self._weighted(features)
        if self.fuse is None:
            raise ValueError("Rebalancer.predict needs fuse= (features -> logits) given to the Rebalancer")
        return self.fuse(features)

    # -------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides the model and the optimizer: the policy's state (weights,
        prototypes, projector, re-initialisations done), the clock, and the encoders' initial parameters
        (re-initialisation)."""
        initial = None
        if self._initial is not None:
            initial = {m: [t.clone() for t in tensors] for m, tensors in self._initial.items()}
        return {
            "policy": self.policy.state_dict(),
            "epoch": self.epoch,
            "step_count": self.step_count,
            "batch_index": self._batch_index,
            "n_batches": self._n_batches,
            "started": self._started,
            "initial": initial,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (instead of :meth:`start`, which would begin the method afresh)."""
        keys = ("policy", "epoch", "step_count", "batch_index", "n_batches", "started", "initial")
        check_state_keys(state, required=keys, where="Rebalancer state")
        initial = state["initial"]
        if (initial is None) == self.policy.uses_parameter_events and bool(state["started"]):
            raise ValueError(
                f"Rebalancer state['initial'] is {'missing' if initial is None else 'present'} but "
                f"{self.policy.kind} {'keeps' if self.policy.uses_parameter_events else 'keeps no'} initial "
                "parameters: pass the state_dict() of a Rebalancer of the same policy"
            )
        restored: dict[str, list[torch.Tensor]] | None = None
        if initial is not None:
            check_same_modalities(initial.keys(), self.policy.modalities, where="Rebalancer state['initial']")
            restored = {}
            for m in self.policy.modalities:
                params = list(self.encoders[m].parameters())
                shapes = [tuple(p.shape) for p in params]
                saved = [tuple(t.shape) for t in initial[m]]
                if shapes != saved:
                    raise ValueError(
                        f"Rebalancer state['initial'][{m!r}] holds shapes {saved}, the encoder {shapes}; "
                        "load the state of a Rebalancer over the same encoders"
                    )
                restored[m] = [
                    t.detach().to(p.device, p.dtype).clone() for t, p in zip(initial[m], params, strict=True)
                ]
        n_batches = state["n_batches"]
        epoch = check_non_negative_int(state["epoch"], name="state['epoch']")
        step_count = check_non_negative_int(state["step_count"], name="state['step_count']")
        batch_index = check_non_negative_int(state["batch_index"], name="state['batch_index']")
        n_batches = None if n_batches is None else check_positive_int(n_batches, name="state['n_batches']")
        self.policy.load_state_dict(state["policy"])  # the last check: nothing changes if anything is refused
        self.epoch, self.step_count, self._batch_index, self._n_batches = epoch, step_count, batch_index, n_batches
        self._started = bool(state["started"])
        self._initial = restored

    # ---------------------------------------------------------------------------------- internals

    def _combine(
        self,
        terms: LossTerms,
        fused_loss: torch.Tensor | None,
        features: Features,
        proto_logits: Mapping[str, torch.Tensor],
        target: torch.Tensor,
        heads: Mapping[str, nn.Module] | None,
        loss_fn: LossFn,
        head: nn.Module | None = None,
    ) -> torch.Tensor:
        """Compute only the losses ``terms`` weights and let the core combine them."""
        needed = terms.needed()
        unimodal = {m: loss_fn(self._own_logits(m, features[m], heads, head), target) for m in needed["unimodal"]}
        prototype = {m: loss_fn(proto_logits[m], target) for m in needed["prototype"]}
        entropy = {m: _mean_entropy(proto_logits[m]) for m in needed["prototype_entropy"]}
        loss: torch.Tensor = terms.combine(
            fused_loss, unimodal=unimodal, prototype=prototype, prototype_entropy=entropy
        )
        return loss

    def _own_logits(
        self, modality: str, z: torch.Tensor, heads: Mapping[str, nn.Module] | None, head: nn.Module | None
    ) -> torch.Tensor:
        """Modality m's own logits: the shared head's for a policy with passes or fusion weights (MLA's
        declaration), else its unimodal head's."""
        if self.policy.uses_training_passes or self.policy.uses_fusion_weights:
            shared = head if head is not None else self.head
            assert shared is not None  # checked at construction
            return shared(z)
        if heads is None or modality not in heads:
            raise ValueError(
                f"{self.policy.kind} weights {modality!r}'s own loss: give unimodal_heads= (a classifier per "
                "encoder, e.g. nn.ModuleDict({m: nn.Linear(width, classes) ...})) covering every modality"
            )
        return heads[modality](z)

    def _passes(
        self,
        optimizer: Any,
        inputs: Mapping[str, torch.Tensor],
        target: torch.Tensor,
        *,
        head: nn.Module | None,
        loss_fn: LossFn,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shared = head if head is not None else self.head
        if not isinstance(shared, nn.Linear):
            raise ValueError(
                f"{self.policy.kind} trains every modality through one shared head: give head= (an nn.Linear "
                f"whose input size is every encoder's feature size), got {shared!r}"
            )
        if self._n_batches is None:
            raise RuntimeError("internal: the number of batches per epoch was not recorded by start()")
        passes = self.policy.training_passes(step=self.step_count, epoch=self.epoch)
        pass_logits: dict[str, torch.Tensor] = {}
        for training_pass in passes:
            # set_to_none: the other encoders must get no gradient (momentum and weight decay would move a zero one)
            optimizer.zero_grad(set_to_none=True)
            features = {m: self.encoders[m](inputs[m]) for m in training_pass.modalities}
            self._check_shared_width(shared, features)
            loss = self._combine(training_pass.terms, None, features, {}, target, None, loss_fn, shared)
            self.last_terms = training_pass.terms
            loss.backward()
            for m in training_pass.modalities:
                pass_logits[m] = shared(features[m]).detach()
            if training_pass.project_shared_head:
                z = torch.cat([features[m].detach() for m in training_pass.modalities])
                matrix = self.policy.head_projection(  # type: ignore[attr-defined]
                    _numpy(z), batch_index=self._batch_index, n_batches=self._n_batches
                )
                if matrix is not None and shared.weight.grad is not None:
                    grad = shared.weight.grad
                    projection = torch.as_tensor(matrix, dtype=grad.dtype, device=grad.device)
                    grad.copy_(grad @ projection.T)
            optimizer.step()
        self.advance()
        logits = self._fuse_pass_logits(pass_logits)
        return logits, loss_fn(logits, target).detach()

    def _fuse_pass_logits(self, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.policy.uses_fusion_weights and set(logits) == set(self.policy.modalities):
            weights = self.policy.fusion_weights({m: _numpy(v) for m, v in logits.items()})
            if weights is not None:
                self.last_fusion_weights = dict(weights)
                return sum(weights[m] * logits[m] for m in self.policy.modalities)
        return sum(logits.values()) / len(logits)

    def _weighted(self, features: Features) -> torch.Tensor:
        assert self.head is not None  # checked at construction
        self._check_shared_width(self.head, features)
        logits = {m: self.head(features[m]) for m in self.policy.modalities}
        weights = self.policy.fusion_weights({m: _numpy(v) for m, v in logits.items()})
        self.last_fusion_weights = None if weights is None else dict(weights)
        if weights is None:
            if self.fuse is None:
                raise ValueError("the policy gave no fusion weights and the Rebalancer has no fuse=")
            return self.fuse(features)
        return sum(weights[m] * logits[m] for m in self.policy.modalities)

    def _check_shared_width(self, head: nn.Module, features: Features) -> None:
        widths = {m: int(z.shape[-1]) for m, z in features.items()}
        expected = getattr(head, "in_features", None)
        if any(w != expected for w in widths.values()):
            raise ValueError(
                f"{self.policy.kind} needs a shared head: every encoder's features must have the head's input size "
                f"{expected}, got feature sizes {widths}; give the encoders one output width d and the model a "
                "shared nn.Linear(d, classes) as head="
            )

    def _check_parts(
        self,
        *,
        head: nn.Module | None,
        unimodal_heads: Mapping[str, nn.Module] | None,
        fuse: Callable[[Features], torch.Tensor] | None,
    ) -> None:
        policy = self.policy
        if policy.uses_training_passes or policy.uses_fusion_weights:
            if not isinstance(head, nn.Linear):
                raise ValueError(
                    f"{policy.kind} trains and predicts through one head shared by every modality: give head= "
                    f"(an nn.Linear(d, classes), d every encoder's feature size), got {head!r}"
                )
        elif fuse is None:
            raise ValueError(f"{policy.kind} trains the fused prediction: give fuse= (features -> logits)")
        if policy.needs_held_out_losses:
            missing = sorted(set(policy.modalities) - set(unimodal_heads or {}))
            if missing:
                raise ValueError(
                    f"{policy.kind} weighs each modality's own loss, but unimodal_heads lacks {missing}: give "
                    "unimodal_heads= (a classifier per encoder, e.g. nn.ModuleDict({m: nn.Linear(width, classes)}))"
                )

    def _require_started(self, where: str) -> None:
        if not self._started:
            raise RuntimeError(
                f"Rebalancer.{where} before Rebalancer.start(train_batches, held_out=...): call start once before "
                "the first epoch (it records the initial encoders, the first prototypes or checkpoint)"
            )

    def _require_held_out(self, held_out: Batches | None, where: str) -> None:
        policy = self.policy
        if held_out is None and (policy.needs_held_out_losses or policy.uses_parameter_events):
            what = "each term's held-out loss" if policy.needs_held_out_losses else "held-out encoder features"
            raise ValueError(
                f"{policy.kind} measures {what}: pass Rebalancer.{where}(train_batches, held_out=<validation "
                "batches (inputs, target)>), got held_out=None"
            )

    def _modules(self) -> list[nn.Module]:
        owners = [getattr(self.encode, "__self__", None), getattr(self.fuse, "__self__", None), self.head]
        owners += list(self.encoders.values()) + list((self.unimodal_heads or {}).values())
        return list({id(m): m for m in owners if isinstance(m, nn.Module)}.values())

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode and no gradient for the epoch-boundary measurements."""
        with eval_mode(self._modules()), torch.no_grad():
            yield

    def _batch_features(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        features = self.encode(inputs)
        return {m: _numpy(features[m]) for m in self.policy.modalities}

    def _batch_term_losses(self, inputs: Mapping[str, torch.Tensor], target: torch.Tensor) -> dict[str, float]:
        """Every term's mean loss on one batch (each modality's unimodal head and the fused prediction)."""
        assert self.fuse is not None and self.unimodal_heads is not None  # checked at construction
        features = self.encode(inputs)
        losses = {FUSED: float(self.loss_fn(self.fuse(features), target))}
        for m in self.policy.modalities:
            losses[m] = float(self.loss_fn(self.unimodal_heads[m](features[m]), target))
        return losses

    @torch.no_grad()
    def _apply_parameter_events(self, events: list[ParameterEvent]) -> None:
        assert self._initial is not None  # kept by start() or load_state_dict()
        for event in events:
            params = list(self.encoders[event.modality].parameters())
            for param, initial in zip(params, self._initial[event.modality], strict=True):
                # In place: the optimizer's state (momentum) stays attached to the same tensor.
                param.copy_(event.apply(param, initial))

    def __repr__(self) -> str:
        return f"Rebalancer({self.policy!r}, epoch={self.epoch}, steps={self.step_count})"


def _prototype_logits(z: torch.Tensor, prototypes: np.ndarray) -> torch.Tensor:
    """``-||z - c||`` (Euclidean, not squared), differentiable in ``z``."""
    c = torch.as_tensor(prototypes, dtype=z.dtype, device=z.device)
    # The direct difference, not the matrix-product expansion: exact as the core's NumPy transcription.
    return -torch.cdist(z, c, compute_mode="donot_use_mm_for_euclid_dist")


def _mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64 if tensor.is_floating_point() else tensor.dtype).numpy()


def _length(batches: Batches) -> int:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"the training batches must have a length (a DataLoader or a list of (inputs, target)), got "
            f"{type(batches).__name__}; PMR's prototypes and MLA's projection count the batches of an epoch"
        ) from None
