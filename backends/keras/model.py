"""``ModulatedModel``: a Keras model whose ``train_step`` multiplies each modality's gradients.

It wraps any built Keras model (functional, sequential or subclassed) and keeps ``fit()``,
``evaluate()``, ``predict()``, metrics, callbacks, the progress bar, mixed precision and ``.keras``
saving working: the step is Keras's stock ``train_step`` with one addition between the gradients and
the optimizer's update. Keras on TensorFlow and on JAX (``KERAS_BACKEND=jax``) are supported; the step
of each lives in ``tensorflow/trainer.py`` and ``jax/trainer.py``, everything else here.

Concepts map one-to-one to :class:`pdmp.backends.torch.Modulator`:

=====================================  ===============================================================
torch ``Modulator``                    Keras ``ModulatedModel``
=====================================  ===============================================================
``Modulator(modalities, policy,        ``ModulatedModel(model, modalities, policy, mode=...)``; the
mode, optimizer)``                     optimizer is the one given to ``compile()``
``set_epoch(e)``                       ``set_epoch(e)`` (``fit()`` calls it at every epoch start)
``step()``                             ``fit()`` and ``train_on_batch`` count steps in the graph; a
                                       loop of your own calls ``step()`` after each optimizer step
``observe(logits, labels)``            done in the graph from ``modality_logits`` (OGM-GE, learning
                                       policies such as ``AdaptivePDMP``; optional otherwise)
``coefficients``                       ``coefficients`` (read from the non-trainable variables)
``state_dict()`` / ``load_state_dict``  the same; the state is also saved in ``.keras`` files
=====================================  ===============================================================

Where the decisions are made: the schedule (warm-up, ramp, end, gammas) is the core policy's, called
in Python at batch/epoch boundaries; its result is written into non-trainable variables, so the
traced step reads variables and never retraces. The step and epoch counters are variables too, and
they are the truth: the Python side re-reads them before it computes coefficients, so whatever
restores the model's weights (``load_weights``, ``set_weights``, ``BackupAndRestore``,
``EarlyStopping(restore_best_weights=True)``) also restores the schedule. A step is counted only when
the optimizer took it (not a ``LossScaleOptimizer`` step skipped for non-finite gradients, nor a
micro-batch that only accumulates under ``gradient_accumulation_steps``).
OGM-GE needs this batch's logits, so its formula runs in the graph
(:mod:`pdmp.backends.keras._ogm`, tested against the core).

Policies that learn from every batch (``policy.observes_scores``, e.g. :class:`pdmp.AdaptivePDMP`) keep
the torch adapter's timing: step t's coefficients come from the batches before t. The graph computes
the step's per-modality batch scores (summed over replicas) into ``pdmp_scores`` and marks them
pending; in Python, before the next step, the policy folds them in (``policy.update``) and its
coefficients are written. The policy's state lives in a float64 variable
(:mod:`pdmp.backends.keras._policy_state`), so whatever restores the weights restores what the policy
has learnt, at the same step as the clock.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import keras
import numpy as np
from keras import ops

from pdmp._validation import (
    check_bool,
    check_disjoint_assignment,
    check_labels,
    check_non_negative_int,
    check_positive_finite,
    check_same_modalities,
    check_state_keys,
)
from pdmp.backends.keras import _ogm, _optimizer_lr, _policy_state, _rebalancing, _transforms
from pdmp.backends.keras._backend import backend_module
from pdmp.backends.keras._keras_private import (
    accumulated_gradient,
    accumulation_steps,
    inbound_tensors,
    micro_batch_counter,
    output_in_caller,
    producing_layer,
)
from pdmp.backends.keras.heads import ConcatHead, LayerLogits, SumHeads, layer_logits_from_config
from pdmp.policies import (
    OGM_NOISE_EPS,
    OGMGE,
    PDMP,
    Clock,
    CoefficientPolicy,
    NoModulation,
    check_modulation,
    policy_from_config,
)
from pdmp.rebalancing import ParameterEvent, RebalancingPolicy
from pdmp.transforms import LOGIT_STATISTICS, GradientPolicy

Mode = Literal["grad", "lr"]
Member: TypeAlias = "keras.layers.Layer | keras.Variable | str"
#: ``fn(model, x, training) -> {modality: logits}``: a user function giving OGM-GE's per-modality logits.
LogitsFn = Callable[[keras.Model, Any, bool], Mapping[str, Any]]

_backend_ops = backend_module("ops")
# The backend's train_step (tensorflow/trainer.py or jax/trainer.py), mixed in before keras.Model.
_ModulatedTrainer: Any = backend_module("trainer").ModulatedTrainer
# The dtypes of the coefficients/scores and of the counters: the core's float64 where the backend has it
# (TensorFlow; JAX with jax_enable_x64), else float32/int32 (a JAX float64 variable would hold float32).
_WIDE_FLOAT = "float64" if _backend_ops.FLOAT64 else "float32"
_WIDE_INT = "int64" if _backend_ops.FLOAT64 else "int32"
# pdmp_pending: a learning policy's scores of a taken step await folding in (complete), or are the running sum
# of the micro-batches of a step still accumulating (partial); 0: nothing.
_COMPLETE, _PARTIAL = 1, 2


def _where(condition: Any, value: Any, otherwise: Any) -> Any:
    """``ops.where``, or ``value`` itself where the condition is Python ``True`` (known when tracing)."""
    if condition is True:
        return value
    return ops.where(condition, value, ops.convert_to_tensor(otherwise))


def _copy_of(variable: Any) -> Any:
    """A copy of ``variable``'s value in a buffer of its own. On JAX, ``anchor.assign(variable)`` would make the
    anchor hold the very array the encoder variable holds, and Keras's jitted step, which donates every
    variable's buffer, then fails: "Attempt to donate the same buffer twice" (``tests/test_keras_jax.py``)."""
    return ops.copy(ops.convert_to_tensor(variable))


class _Hidden:
    """Holds Python objects that Keras's attribute tracking must not walk (or save twice)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


@keras.saving.register_keras_serializable(package="pdmp")
class ModulatedModel(_ModulatedTrainer, keras.Model):
    """Wraps ``model`` so that ``fit()`` scales each modality's encoder gradients by the policy's coefficient.

    Args:
        model: a built Keras model; its forward pass is used unchanged.
        modalities: for each modality, its encoder given as a layer, a layer name, a variable, a
            variable path, or a list of these. Every variable of a listed layer belongs to that
            modality, also one that is frozen now: it is modulated once it is unfrozen and trains
            (recompile after changing ``trainable``, as Keras requires). Leave fusion/head variables
            out: they are never modulated, and the layer producing the model's output is refused.
        policy: any :class:`pdmp.CoefficientPolicy` over exactly these modality names; every kind
            accepted, and the wiring each needs, is in the table below.
        mode: ``"grad"`` multiplies gradients by ``k``; ``"lr"`` multiplies the learning rate the
            optimizer uses for those variables by ``k``, which prioritises under any optimizer (see
            :mod:`pdmp.backends.keras._optimizer_lr` for what is and is not scaled). What equals what:
            under Keras's ``SGD`` the two modes give identical updates, with or without momentum,
            Nesterov or ``weight_decay`` (Keras's SGD uses ``lr * g`` only as a product and its weight
            decay is decoupled, so neither sees the difference), even while ``k`` changes. Under
            Adam/AdamW/RMSprop ``grad`` mode is nearly a no-op (they normalise the gradient's scale;
            only epsilon notices; ``compile()`` warns) and ``lr`` mode is exactly ``k * lr`` for those
            variables. Gradient clipping (``clipnorm``/``global_clipnorm``) sees the scaled gradients in
            ``grad`` mode.
        modality_logits: per-modality logits, needed by OGM-GE and by policies that learn from every
            batch (``AdaptivePDMP``), optional for the others (then each step's batch scores are
            computed too, and :class:`~pdmp.backends.keras.PDMPLogger` logs dependency shares):
            :class:`~pdmp.backends.keras.ConcatHead` / :class:`~pdmp.backends.keras.SumHeads` (layer
            names of a functional model; the logits come from the training forward pass itself), or
            ``fn(model, x, training) -> {modality: logits}`` (runs an extra forward; register it with
            ``keras.saving.register_keras_serializable`` to save the model).
        unimodal_logits: each modality's own unimodal head's logits, ``(batch, classes)`` like the output,
            in the same forms as ``modality_logits`` (the heads must be layers of ``model``, so that they
            train). Each modality's unimodal loss, the mean sparse categorical cross-entropy of these
            logits (integer or one-hot labels), weighted by the policy's ``unimodal_loss_weight(epoch)``
            (1, or ARL's ``gamma`` after its warm-up), is added to the training loss. Required by a
            GradientPolicy with ``uses_unimodal_gradients`` (MMPareto), for which each encoder's gradient
            of it (``U``) is also kept apart from the rest (``G``, one more partial backward pass per
            modality); optional otherwise (InfoReg's and ARL's unimodal losses: pass the decomposed
            ``ConcatHead`` here too).
        seed: seed of OGM-GE's gradient noise. Noise is drawn statelessly from (seed, step, variable),
            so it is reproducible and identical on every replica (the streams of TensorFlow and JAX
            differ; each is reproducible). Under ``tf.distribute`` it is added to each replica's
            gradient before the optimizer sums them, with that replica's gradient's standard deviation
            (the single-device reference adds it once, after reduction).
        modality_features: for a :class:`pdmp.rebalancing.RebalancingPolicy` whose flags read encoder
            features (``uses_prototypes``, ``uses_parameter_events``, ``uses_training_passes``,
            ``uses_fusion_weights``): ``{modality: feature layer name}`` of a functional model, or
            ``fn(model, x, training) -> {modality: features}``.
        shared_head: for ``uses_training_passes`` / ``uses_fusion_weights`` (MLA): the name of the ``Dense``
            layer applied to every modality's features; each modality's own logits are ``head(z_m)``.

    RebalancingPolicies (:class:`pdmp.GBlending`, :class:`pdmp.PMR`, :class:`pdmp.DiagnosingRelearning`,
    :class:`pdmp.MLA`; TensorFlow and JAX, ``fit()`` only) act by their capability flags alone
    (:mod:`pdmp.backends.keras._rebalancing`): every step's loss is the policy's ``LossTerms`` (one host call)
    over the compiled (fused) loss, ``unimodal_logits``' or the shared head's per-modality losses and PMR's
    prototype terms; ``fit()`` adds a :class:`~pdmp.backends.keras._rebalancing.RebalancingCallback` for the
    epoch-boundary work on ``fit()``'s training data and ``fit(..., held_out=(x_val, y_val))`` (default
    ``validation_data``); MLA's passes each take one optimizer step on the pass's encoder and the shared head
    only (SGD-exact; Adam's bias correction counts the optimizer's iterations, which advance once per pass);
    ``predict``/``evaluate`` of a policy with fusion weights return ``sum_m w[m] * head(z_m)``. The logged
    ``loss`` is the compiled loss (MLA: the passes' losses summed). Resuming from a file keeps the weights,
    the prototypes and the initial encoders, but not the policy's Python state (G-Blending's last checkpoint,
    MLA's projector).

    Policies accepted, and what each needs (``M``: ``modality_logits=``, ``U``: ``unimodal_logits=``;
    anything missing is refused at construction, naming the argument):

    ==================================  ===================================================================
    policy                              needs
    ==================================  ===================================================================
    ``PDMP``, ``NoModulation``, a       nothing (``M`` optional: each step's batch scores, for
    coefficient policy of your own      :class:`~pdmp.backends.keras.PDMPLogger`'s dependency shares); both modes
    ``OGMGE``                           ``M`` (this batch's per-modality logits); noise only in ``grad`` mode
    ``AdaptivePDMP``                    ``M``; with ``auxiliary > 0`` also ``U`` (the decomposed fusion logits:
                                        the ``ConcatHead`` of ``M``); both modes
    ``AGM`` (GradientPolicy)            ``M``: its masked passes (below); ``U`` optional, weighted 0
    ``InfoReg`` (GradientPolicy)        ``M`` and ``U`` (the reference's loss adds each unimodal loss: the
                                        decomposed ``ConcatHead`` for both)
    ``ARL`` (GradientPolicy)            ``M`` and ``U`` (its loss term ``gamma * sum_m L_m``: the decomposed
                                        ``ConcatHead`` for both)
    ``MMPareto`` (GradientPolicy)       ``U``: each modality's own unimodal head, a layer of ``model``
                                        (``SumHeads`` or a function); the fused head, or one layer for two
                                        modalities, is refused
    a GradientPolicy of your own        what its flags declare: ``uses_logits`` -> ``M``;
                                        ``uses_unimodal_losses`` / ``uses_unimodal_gradients`` -> ``U``
    ==================================  ===================================================================

    GradientPolicies run in ``mode="grad"`` on TensorFlow and JAX (refused in lr mode).
    Every coefficient a policy returns is checked (:func:`pdmp.policies.check_modulation`) and every
    transform (:func:`pdmp.transforms.check_transform`) before it is applied: NaN, inf or a negative value
    stops ``fit()`` with an error naming the policy, step, modality and value, and no variable is updated.

    One step lifecycle (both backends, ``fit()`` and ``train_on_batch``): micro-batches accumulate into a
    step (the optimizer's ``gradient_accumulation_steps``); a step is taken, or skipped (a
    ``LossScaleOptimizer`` skips non-finite gradients); the clock counts, and policies observe, transform
    and learn, once per taken step. Under accumulation a learning policy learns from the step's summed
    batch scores, a GradientPolicy transforms the mean gradient of the step's micro-batches (the one the
    optimizer applies) with the step's summed logit statistics, and OGM-GE scales (and draws noise for)
    each micro-batch by its own logits, like the torch adapter's hooks. A skipped step changes no policy
    state, no coefficient and no count. Not supported (refused): a GradientPolicy with accumulation under
    ``tf.distribute``. A checkpoint taken between the micro-batches of one step keeps Keras's accumulated
    gradients but not a GradientPolicy's partial logit statistics (or ``U``) of that step.

    ``get_weights()``/``weights``: the wrapped model's weights first (comparable one to one with
    ``inner_model.get_weights()``), then the library's state (:attr:`pdmp_variables`: coefficients, scores,
    clock, what the policy has learnt, anchors), which ``set_weights`` and
    ``EarlyStopping(restore_best_weights=True)`` restore with the weights. Compare
    ``model.inner_model.get_weights()`` to compare models.

    Training: ``fit()`` keeps the schedule by itself (``steps_per_execution > 1`` is refused for
    policies whose coefficients change from step to step). ``train_on_batch`` counts its step; call
    :meth:`set_epoch` at each epoch start. A loop of your own: compile the model with the optimizer
    you apply, then per epoch :meth:`set_epoch`, per batch ``tape.gradient``,
    :meth:`modulate_gradients` (for OGM-GE and learning policies after :meth:`observe`),
    ``optimizer.apply_gradients`` and :meth:`step` (outside ``tf.function``).

    Learning policies (``policy.observes_scores``, e.g. :class:`pdmp.AdaptivePDMP`): step t uses the
    coefficients learnt from the batches before t, as in the torch adapter. ``model.policy`` is
    brought up to date from the model's variables before every step; the variables, not the Python
    object, hold what it has learnt, so ``.keras`` files, ``load_weights``, ``BackupAndRestore`` and
    ``EarlyStopping(restore_best_weights=True)`` restore it with the weights and the clock.

    GradientPolicies (:class:`pdmp.transforms.GradientPolicy`: :class:`pdmp.AGM`, :class:`pdmp.MMPareto`,
    :class:`pdmp.InfoReg`, :class:`pdmp.ARL`, your own), ``mode="grad"`` only, in ``fit()`` and
    ``train_on_batch``: the step computes what the policy declares it uses (the logit statistics of
    ``modality_logits``, summed over replicas; ``U`` apart from ``G`` from ``unimodal_logits``; the gradient
    statistics), calls the core's ``policy.transform`` once on the host (TensorFlow: ``tf.numpy_function``, so
    the step runs without XLA: ``jit_compile`` is set to False; JAX: ``jax.pure_callback`` inside the jitted
    step) and applies :func:`pdmp.transforms.apply_transform`'s formula to the encoders' gradients
    (:mod:`pdmp.backends.keras._transforms`). The policy's state is kept in a variable (none for a stateless
    policy), and so are the anchors (``uses_anchor``): a copy of the encoders taken at :meth:`set_epoch` (epoch
    0: the initial weights), kept when a restored model re-announces the anchors' epoch; ``coefficients`` report
    ``magnitude * fused`` of the last step. Under ``tf.distribute`` the encoders' gradients are summed over the
    replicas before the transform (one all-reduce more per step). For AGM, pass its masked passes as
    ``modality_logits=lambda model, x, training: {m: ops.stop_gradient(v) for m, v in
    pdmp.mono_modal_responses(lambda inputs: model(inputs, training=False), x).items()}`` (a registered
    function, to save the model).

    On JAX (``KERAS_BACKEND=jax``): the same, through Keras's stateless JAX step (``fit()``,
    ``train_on_batch``, ``evaluate``, ``predict``, ``.keras`` files). Without ``jax_enable_x64`` JAX has
    no float64, so coefficients and scores are float32 and the counters int32 (a learning policy's state
    is still kept exactly, as float64 bit patterns in an int32 variable). GradientPolicies train there
    too (float64 parity with TensorFlow under ``jax_enable_x64``: ``tests/test_parity_jax.py``). TensorFlow
    only: ``tf.distribute`` (on JAX ``keras.distribution`` is refused) and the loop of your own above
    (``tf.GradientTape``). Under ``gradient_accumulation_steps`` a GradientPolicy's running sums of a step's
    statistics are weights of the model on JAX (``pdmp_step_*``: Keras's stateless step carries nothing else).
    """

    def __init__(
        self,
        model: keras.Model,
        modalities: Mapping[str, Member | Sequence[Member]],
        policy: CoefficientPolicy,
        *,
        mode: Mode = "grad",
        modality_logits: LayerLogits | LogitsFn | None = None,
        unimodal_logits: LayerLogits | LogitsFn | None = None,
        seed: int = 0,
        modality_features: Mapping[str, str] | SumHeads | LogitsFn | None = None,
        shared_head: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise TypeError(f"ModulatedModel wraps a keras.Model, got {type(model).__name__}")
        if not model.built:
            raise ValueError(
                f"model {model.name!r} is not built, so its encoders have no variables yet; build it first "
                "(call it on a batch, or model.build(input_shape))"
            )
        if not isinstance(policy, CoefficientPolicy):
            raise TypeError(
                "policy must be a pdmp CoefficientPolicy (PDMP, OGMGE, AdaptivePDMP, NoModulation, a GradientPolicy "
                f"such as AGM, InfoReg, ARL or MMPareto, or your own subclass), got {type(policy).__name__}"
            )
        if mode not in ("grad", "lr"):
            raise ValueError(f"mode must be 'grad' or 'lr', got {mode!r}")
        if isinstance(policy, GradientPolicy) and mode != "grad":
            raise ValueError(
                f"{type(policy).__name__} is a GradientPolicy: it transforms each encoder gradient (combining fused "
                "and unimodal gradients, pulling towards anchors), which no learning-rate multiplier can express; "
                "use mode='grad'"
            )
        if not isinstance(modalities, Mapping):
            raise TypeError(
                f"modalities must be a dict {{name: layer(s)/variable(s)}}, got {type(modalities).__name__}"
            )
        policy.check_modalities(list(modalities), where="ModulatedModel modalities")
        rebalancing = isinstance(policy, RebalancingPolicy)
        features_spec = _check_rebalancing_wiring(
            policy, model, mode, modality_logits, unimodal_logits, modality_features, shared_head
        )
        self.inner_model = model
        self.policy = policy
        self.mode: Mode = mode
        self.seed = check_non_negative_int(seed, name="seed")
        groups = _resolve_modalities(model, modalities)
        if mode == "lr" and policy.adds_noise:
            raise ValueError(
                f"{policy!r} adds noise to gradients, which mode='lr' does not modulate; use mode='grad', or "
                "turn the noise off (OGMGE(..., noise=False)) to scale learning rates"
            )
        groups = _restrict(policy, groups)
        self._groups = _Hidden({name: groups[name] for name in self.modalities})
        index = {}
        for position, name in enumerate(self.modalities):
            for variable in groups[name]:
                for key in _backend_ops.variable_keys(variable):
                    index[key] = position
        self._index = _Hidden(index)
        spec = _check_logits_spec(policy, modality_logits, model)
        unimodal = _check_unimodal_spec(policy, unimodal_logits)
        _check_own_heads(spec, model, argument="modality_logits")
        _check_own_heads(unimodal, model, argument="unimodal_logits")
        self._adds_unimodal_losses = _takes_unimodal_logits(policy)
        self._logits = _Hidden(spec)
        self._unimodal_logits = _Hidden(unimodal)
        self._features_spec = _Hidden(features_spec)
        self._shared_head = _Hidden(None if shared_head is None else model.get_layer(shared_head))
        tapped = [s for s in (spec, unimodal, features_spec) if hasattr(s, "taps")]
        self._tap_model = _Hidden(_tap_model(model, tapped) if tapped else None)
        count = len(self.modalities)
        # float64: the core computes coefficients and scores in float64; a float64 model then trains with
        # exactly the torch adapter's values (gradients cast them to their own dtype).
        self.pdmp_coefficients = self.add_weight(
            shape=(count,), initializer="ones", dtype=_WIDE_FLOAT, trainable=False, aggregation="mean",
            name="pdmp_coefficients",
        )  # fmt: skip
        self.pdmp_scores = self.add_weight(
            shape=(count,), initializer="zeros", dtype=_WIDE_FLOAT, trainable=False, aggregation="mean",
            name="pdmp_scores",
        )  # fmt: skip
        self.pdmp_noise_gate = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False, aggregation="mean", name="pdmp_noise_gate"
        )
        self.pdmp_step = self.add_weight(
            shape=(), initializer="zeros", dtype=_WIDE_INT, trainable=False, aggregation="only_first_replica",
            name="pdmp_step",
        )  # fmt: skip
        self.pdmp_epoch = self.add_weight(
            shape=(), initializer="zeros", dtype=_WIDE_INT, trainable=False, aggregation="only_first_replica",
            name="pdmp_epoch",
        )  # fmt: skip
        self._state_layout = _Hidden(None)
        if policy.observes_scores or isinstance(policy, GradientPolicy):
            layout = _policy_state.StateLayout(policy.state_dict(), owner=type(policy).__name__)
            self._state_layout = _Hidden(layout)
        layout = self._state_layout.value
        if layout is not None and layout.size:
            # What the policy has learnt (a GradientPolicy's state is updated in the step, by the host call). A
            # stateless policy gets no variable: a zero-size array in get_weights() breaks comparisons of weights.
            self.pdmp_policy_state = self.add_weight(
                shape=(layout.size * _policy_state.WORDS[_WIDE_FLOAT],), initializer="zeros",
                dtype=_policy_state.STORAGE[_WIDE_FLOAT], trainable=False, aggregation="only_first_replica",
                name="pdmp_policy_state",
            )  # fmt: skip
            self.pdmp_policy_state.assign(_policy_state.pack(layout.encode(policy.state_dict()), _WIDE_FLOAT))
        self._anchors = _Hidden(None)
        self._anchors_restored = _Hidden(False)
        # Under gradient_accumulation_steps, a GradientPolicy's running sums of the step's logit statistics and
        # U (made by compile(); not saved: a checkpoint between the micro-batches of one step loses them).
        self._step_sums = _Hidden(None)
        if isinstance(policy, GradientPolicy):
            self._host_transform = _Hidden(_transforms.host_transform(policy, layout, _WIDE_FLOAT))
            if policy.uses_anchor:
                # The encoders at the start of the anchor's epoch (epoch 0: the initial weights), saved with the
                # model so that a resumed run pulls towards the same point; pdmp_anchor_epoch says which epoch.
                self._anchors = _Hidden(self._snapshot(groups, "pdmp_anchor"))
                self.pdmp_anchor_epoch = self.add_weight(
                    shape=(), initializer="zeros", dtype=_WIDE_INT, trainable=False,
                    aggregation="only_first_replica", name="pdmp_anchor_epoch",
                )  # fmt: skip
        if self._adds_unimodal_losses:
            # Each modality's unimodal-loss weight in this step's training loss (ARL's gamma after its warm-up,
            # AdaptivePDMP's auxiliary weights), written with the step's coefficients.
            self.pdmp_unimodal_weights = self.add_weight(
                shape=(count,), initializer="ones", dtype=_WIDE_FLOAT, trainable=False,
                aggregation="only_first_replica", name="pdmp_unimodal_weights",
            )  # fmt: skip
        if policy.observes_scores:
            # Whether pdmp_scores holds a step's scores the learning policy has not yet seen.
            self.pdmp_pending = self.add_weight(
                shape=(), initializer="zeros", dtype=_WIDE_INT, trainable=False, aggregation="only_first_replica",
                name="pdmp_pending",
            )  # fmt: skip
        self._clock = Clock()
        self._lr_lookup = _Hidden(self._lr_multiplier)
        # Inside a train step: the step's coefficients, which lr mode's learning rates use (a stateless JAX
        # step cannot read them from the variable); and where call() hands its modality logits over (JAX).
        self._step_coefficient_values = _Hidden(None)
        self._captured = _Hidden(None)
        # step(): the optimizer's iteration count at the last counted step, to tell skipped steps apart.
        self._iterations_seen = _Hidden(None)
        self._epoch_was_set = False
        self._rebalancing_state = _Hidden({})
        if rebalancing:
            self._set_up_rebalancing(groups)
        self.built = True
        self.update_coefficients()

    # -- a RebalancingPolicy (G-Blending, PMR, D&R, MLA): what its capability flags ask for ------------------

    def _snapshot(
        self, groups: Mapping[str, Sequence[keras.Variable]], prefix: str
    ) -> dict[str, tuple[keras.Variable, ...]]:
        """A non-trainable copy of every variable of each modality's group (``<prefix>_<position>_<i>``), saved
        with the model: InfoReg's anchors, the encoders' initial values for re-initialisation."""
        copies: dict[str, tuple[keras.Variable, ...]] = {}
        for position, name in enumerate(self.modalities):
            held = []
            for i, variable in enumerate(groups[name]):
                copy = self.add_weight(
                    shape=tuple(variable.shape), initializer="zeros", dtype=variable.dtype, trainable=False,
                    aggregation="only_first_replica", name=f"{prefix}_{position}_{i}",
                )  # fmt: skip
                copy.assign(_copy_of(variable))
                held.append(copy)
            copies[name] = tuple(held)
        return copies

    def _set_up_rebalancing(self, groups: Mapping[str, tuple[keras.Variable, ...]]) -> None:
        """The variables and host calls a RebalancingPolicy's flags need (see ``backends/keras/_rebalancing.py``)."""
        policy = self.policy
        assert isinstance(policy, RebalancingPolicy)
        classes = _output_width(self.inner_model)
        if classes is None and policy.uses_prototypes:
            raise ValueError(
                f"{type(policy).__name__} keeps one prototype per class: the model's output width (the number of "
                "classes) must be known; wrap a functional model with one (batch, classes) output"
            )
        self._classes = _Hidden(classes)  # else read from the first prediction (num_classes)
        unimodal = self._unimodal_logits.value is not None or self._shared_head.value is not None
        available = {"fused": True, "unimodal": unimodal, "prototype": policy.uses_prototypes,
                     "prototype_entropy": policy.uses_prototypes}  # fmt: skip
        self._host_terms = _Hidden(_rebalancing.host_loss_terms(policy, available, _WIDE_FLOAT))
        if policy.uses_prototypes:
            # The prototypes the step reads (written at the epoch boundaries from the policy's): variables, so the
            # compiled step never retraces and a saved model keeps them.
            dims = _feature_dims(self.inner_model, self._features_spec.value, self.modalities)
            self.pdmp_prototypes = [
                self.add_weight(shape=(classes, dims[m]), initializer="zeros", dtype=_WIDE_FLOAT, trainable=False,
                                aggregation="only_first_replica", name=f"pdmp_prototypes_{i}")
                for i, m in enumerate(self.modalities)
            ]  # fmt: skip
        if policy.uses_parameter_events:
            # Each encoder's trainable weights before training (saved with the model): the re-initialisation's target.
            trainable = {name: tuple(v for v in groups[name] if v.trainable) for name in self.modalities}
            self._initial = _Hidden(self._snapshot(trainable, "pdmp_initial"))
        if policy.uses_training_passes:
            head = self._shared_head.value
            self._passes = _Hidden(tuple(policy.training_passes(step=0, epoch=0)))
            passes_available = {"fused": False, "unimodal": True, "prototype": False, "prototype_entropy": False}
            self._host_passes = _Hidden(_rebalancing.host_pass_terms(policy, self._passes.value, passes_available,
                                                                     _WIDE_FLOAT))  # fmt: skip
            dim = int(head.kernel.shape[0])
            self._host_projection = _Hidden(_rebalancing.host_projection(policy, self._rebalancing_state.value, dim))
            # The batch's index within its epoch (MLA's projection regulariser), reset by set_epoch().
            self.pdmp_batch = self.add_weight(
                shape=(), initializer="zeros", dtype=_WIDE_INT, trainable=False, aggregation="only_first_replica",
                name="pdmp_batch",
            )  # fmt: skip
        if policy.uses_fusion_weights:
            self._host_fusion = _Hidden(_rebalancing.host_fusion_weights(policy, _WIDE_FLOAT))

    def _rebalancing_forward(self, x: Any, training: Any) -> tuple[Any, dict[str, Any] | None, dict[str, Any] | None]:
        """The model's output, each modality's features (``modality_features``) and each modality's own logits
        (``unimodal_logits``, or the shared head on its features), from one forward pass where the specs name
        layers (a function runs its own)."""
        tapped: dict[str, Any] = {}
        if self._tap_model.value is None:
            y_pred = self.inner_model(x, training=training)
        else:
            y_pred, _, tapped = self._tap_model.value(x, training=training)

        def values(spec: Any) -> dict[str, Any] | None:
            if spec is None:
                return None
            if hasattr(spec, "taps"):
                return dict(spec.logits(self.inner_model, {m: tapped[layer] for m, layer in spec.taps().items()}))
            return dict(spec(self.inner_model, x, training))

        features = values(self._features_spec.value)
        unimodal = values(self._unimodal_logits.value)
        head = self._shared_head.value
        if head is not None and features is not None:
            unimodal = {m: head(features[m]) for m in self.modalities}
        if unimodal is not None:
            _check_unimodal_logits(unimodal, self.modalities, y_pred)
        return y_pred, features, unimodal

    def _fused_term(self, y: Any, y_pred: Any, sample_weight: Any, compiled: Any) -> Any:
        """The fused term of a RebalancingPolicy's loss: the compiled loss, computed by the ``keras.losses.Loss``
        given to ``compile()`` in its own dtype where nothing else joins it (Keras 3.15's compiled loss is float32
        even for a float64 loss, which would round the term's weight, not a power of two, to float32)."""
        loss = getattr(self, "loss", None)
        if isinstance(loss, keras.losses.Loss) and not self.losses:
            return loss(y, y_pred, sample_weight)
        return compiled

    def _rebalanced_loss(self, y_pred: Any, fused_loss: Any, features: Any, unimodal: Any, labels: Any) -> Any:
        """This step's training loss: the policy's loss terms (one host call) combined in ``keras.ops``."""
        count = len(self.modalities)
        losses: dict[str, list[Any] | None] = {}
        if unimodal is not None:
            losses["unimodal"] = [_rebalancing.cross_entropy(unimodal[m], labels) for m in self.modalities]
        y = _transforms.class_indices(labels, y_pred, type(self.policy).__name__)
        inputs = [ops.convert_to_tensor(self.pdmp_step), ops.convert_to_tensor(self.pdmp_epoch), y]
        if getattr(self.policy, "uses_prototypes", False):
            prototypes = self.pdmp_prototypes
            logits = [_rebalancing.prototype_logits(features[m], prototypes[i]) for i, m in enumerate(self.modalities)]
            losses["prototype"] = [_rebalancing.cross_entropy(v, labels) for v in logits]
            losses["prototype_entropy"] = [_rebalancing.mean_entropy(v) for v in logits]
            inputs.append(ops.stop_gradient(ops.stack([ops.cast(v, _WIDE_FLOAT) for v in logits])))
        (weights,) = _backend_ops.host_call(self._host_terms.value, inputs, [((1 + 3 * count,), _WIDE_FLOAT)])
        return _rebalancing.combine(weights, count, fused_loss, losses)

    def _pass_weights(self) -> Any:
        """Each training pass's :meth:`pdmp.rebalancing.LossTerms.vector` for this step (one host call)."""
        count = len(self.modalities)
        (weights,) = _backend_ops.host_call(
            self._host_passes.value,
            [ops.convert_to_tensor(self.pdmp_step), ops.convert_to_tensor(self.pdmp_epoch)],
            [((len(self._passes.value), 1 + 3 * count), _WIDE_FLOAT)],
        )
        return weights

    def _pass_loss(self, index: int, weights: Any, features: Mapping[str, Any], labels: Any) -> Any:
        """Pass ``index``'s loss: its modalities' own losses (the shared head on their features), weighted."""
        head = self._shared_head.value
        pass_ = self._passes.value[index]
        losses = []
        for m in self.modalities:
            if m in pass_.modalities:
                losses.append(_rebalancing.cross_entropy(head(features[m]), labels))
            else:
                losses.append(ops.zeros((), features[pass_.modalities[0]].dtype))  # weight 0 (checked on the host)
        return _rebalancing.combine(weights[index], len(self.modalities), None, {"unimodal": losses})

    def _pass_variables(self, index: int) -> list[Any]:
        """What pass ``index``'s optimizer step updates: its encoders' trainable weights and the shared head's."""
        pass_ = self._passes.value[index]
        encoders = [v for m in pass_.modalities for v in self._groups.value[m] if v.trainable]
        return encoders + list(self._shared_head.value.trainable_weights)

    def _project_head_gradient(self, index: int, features: Mapping[str, Any], variables: Sequence[Any],
                               gradients: list[Any]) -> list[Any]:  # fmt: skip
        """With ``project_shared_head``: the head kernel's gradient ``K`` becomes ``P @ K`` (Keras's kernel is the
        transpose of the core's ``G``, so this is ``G @ P.T``), ``P`` from ``policy.head_projection``."""
        pass_ = self._passes.value[index]
        if not pass_.project_shared_head:
            return gradients
        kernel = self._shared_head.value.kernel
        position = [id(v) for v in variables].index(id(kernel))
        z = ops.concatenate([ops.cast(ops.stop_gradient(features[m]), _WIDE_FLOAT) for m in pass_.modalities], axis=0)
        dim = int(kernel.shape[0])
        matrix, applies = _backend_ops.host_call(
            self._host_projection.value, [z, ops.convert_to_tensor(self.pdmp_batch)],
            [((dim, dim), _WIDE_FLOAT), ((), "int32")], stateful=True,
        )  # fmt: skip
        gradient = gradients[position]
        projected = ops.matmul(ops.cast(matrix, gradient.dtype), gradient)
        result = list(gradients)
        result[position] = ops.where(ops.greater(applies, 0), projected, gradient)
        return result

    def _fused_prediction(self, inputs: Any) -> Any:
        """``uses_fusion_weights``: ``sum_m w[m] * head(z_m)`` with the policy's weights of this batch (or the
        model's own output where the policy gives none)."""
        y_pred, _, unimodal = self._rebalancing_forward(inputs, False)
        assert unimodal is not None  # the shared head is required at construction
        stacked = ops.stack([ops.cast(unimodal[m], _WIDE_FLOAT) for m in self.modalities])
        count = len(self.modalities)
        (weights,) = _backend_ops.host_call(self._host_fusion.value, [stacked], [((count,), _WIDE_FLOAT)])
        fused = sum(ops.cast(weights[i], unimodal[m].dtype) * unimodal[m] for i, m in enumerate(self.modalities))
        return ops.where(ops.isnan(weights[0]), ops.cast(y_pred, fused.dtype), fused)

    @property
    def num_classes(self) -> int:
        """The number of classes (the width of the model's output)."""
        if self._classes.value is None:
            raise RuntimeError("the number of classes is read from the first batch the model predicts")
        return int(self._classes.value)

    def _rebalancing_features(self, inputs: Any) -> dict[str, np.ndarray]:
        """Each modality's features of a batch, inference mode, as float64 NumPy (epoch-boundary work)."""
        y_pred, features, _ = self._rebalancing_forward(inputs, False)
        if self._classes.value is None:
            self._classes.value = int(y_pred.shape[-1])
        assert features is not None  # required at construction for the flags that call this
        return {m: np.asarray(ops.convert_to_numpy(features[m]), dtype=np.float64) for m in self.modalities}

    def _term_losses(self, inputs: Any, labels: np.ndarray) -> dict[str, float]:
        """Every term's mean loss on a batch, inference mode: the compiled loss of the output and each modality's
        own loss (G-Blending's checkpoints)."""
        from pdmp.rebalancing import FUSED

        y_pred, _, unimodal = self._rebalancing_forward(inputs, False)
        assert unimodal is not None  # required at construction for needs_held_out_losses
        y = ops.convert_to_tensor(labels)
        result = {m: float(ops.convert_to_numpy(_rebalancing.cross_entropy(unimodal[m], y))) for m in self.modalities}
        compiled = self.compute_loss(x=inputs, y=y, y_pred=y_pred, training=False)
        result[FUSED] = float(ops.convert_to_numpy(self._fused_term(y, y_pred, None, compiled)))
        return result

    def _write_prototypes(self, prototypes: Mapping[str, np.ndarray]) -> None:
        self._attach_state()
        for i, m in enumerate(self.modalities):
            self.pdmp_prototypes[i].assign(np.asarray(prototypes[m], dtype=np.float64))

    def _apply_parameter_events(self, events: Sequence[ParameterEvent]) -> None:
        """Assign ``event.apply(current, initial)`` to the trainable weights of each event's encoder (not its
        batch-norm moving statistics; the optimizer's state is left as it is)."""
        self._attach_state()
        for event in events:
            trainable = [v for v in self._groups.value[event.modality] if v.trainable]
            for variable, initial in zip(trainable, self._initial.value[event.modality], strict=True):
                current = ops.convert_to_tensor(variable)
                variable.assign(ops.cast(event.apply(current, ops.convert_to_tensor(initial)), variable.dtype))

    # -- the forward pass and the step ------------------------------------------------------------

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        captured = self._captured.value
        if captured is None:
            if not training and isinstance(self.policy, RebalancingPolicy) and self.policy.uses_fusion_weights:
                return self._fused_prediction(inputs)
            return self.inner_model(inputs, training=training)
        if isinstance(self.policy, RebalancingPolicy):
            # The JAX step's forward pass: the features and own logits leave through here.
            y_pred, captured["features"], captured["unimodal"] = self._rebalancing_forward(inputs, training)
            return y_pred
        # A JAX step runs the forward pass inside Keras's loss function; the logits leave it through here.
        y_pred, captured["logits"], captured["unimodal"] = self._forward_with_logits(inputs, training)
        return y_pred

    def observe(self, modality_logits: Mapping[str, Any], labels: Any) -> Any:
        """Record this batch's per-modality batch scores (in the graph); for OGM-GE, set the coefficients.

        The scores ``s_m = sum_i softmax(logits_m)[i, y_i]`` are summed over replicas, so every replica
        holds the same values. OGM-GE turns them into this step's coefficients; a learning policy
        (``AdaptivePDMP``) receives them before the next step (they inform later steps only); for other
        policies they are only recorded (for :class:`~pdmp.backends.keras.PDMPLogger`'s shares). Labels
        outside ``0..classes-1`` fail with an ``InvalidArgumentError`` naming them (TensorFlow would
        otherwise gather garbage on some devices). Returns the coefficients of this step, in
        :attr:`modalities` order.
        """
        if isinstance(self.policy, GradientPolicy):
            raise RuntimeError(
                f"{type(self.policy).__name__} is a GradientPolicy: its statistics and transform are computed inside "
                "fit()/train_on_batch from modality_logits=; ModulatedModel.observe() is for coefficient policies"
            )
        self.policy.check_modalities(list(modality_logits), where="ModulatedModel.observe logits")
        width = modality_logits[self.modalities[0]].shape[-1]
        _check_numpy_labels(labels, None if width is None else int(width), where="observe() labels")
        scores, coefficients = self._observe_batch(modality_logits, labels, finite=True)
        if self.policy.observes_scores:
            self.pdmp_scores.assign(scores)
            self.pdmp_pending.assign(_COMPLETE)
        return coefficients

    def _observe_batch(self, modality_logits: Mapping[str, Any], labels: Any, *, finite: Any) -> tuple[Any, Any]:
        """This micro-batch's scores (summed over replicas) and the coefficients its gradients get.

        OGM-GE's coefficients come from the batch itself and are recorded; other policies' scores are
        recorded for the logs. A learning policy's scores are left to :meth:`_end_step` (they count only
        for a step the optimizer takes). ``finite``: whether the optimizer will use this micro-batch
        (False for one a ``LossScaleOptimizer`` skips: nothing is recorded then).
        """
        scores = _ogm.batch_scores([modality_logits[name] for name in self.modalities], labels, dtype=_WIDE_FLOAT)
        scores = _backend_ops.all_reduce_sum(scores)
        if not self.policy.observes_scores:
            self.pdmp_scores.assign(_where(finite, scores, self.pdmp_scores))
        if isinstance(self.policy, OGMGE):
            gate = ops.convert_to_tensor(self.pdmp_noise_gate)  # 1 while OGM-GE is active
            coefficients = gate * _ogm.coefficients(scores, self.policy.alpha) + (1.0 - gate)
            self.pdmp_coefficients.assign(_where(finite, ops.cast(coefficients, _WIDE_FLOAT), self.pdmp_coefficients))
            return scores, coefficients
        return scores, ops.convert_to_tensor(self.pdmp_coefficients)

    # -- one step's lifecycle: micro-batches accumulate into a step; a step is taken or skipped ----------------

    def _accumulation(self) -> int | None:
        """The compiled optimizer's ``gradient_accumulation_steps`` (None without; a trace-time constant)."""
        optimizer = getattr(self, "optimizer", None)
        return None if optimizer is None else accumulation_steps(optimizer)

    def _micro_batch_fate(self, gradients: Sequence[Any]) -> tuple[Any, Any]:
        """Before the optimizer sees this micro-batch: ``(finite, completes)``.

        ``finite``: the optimizer will use the gradients (False where a ``LossScaleOptimizer`` will skip
        them for inf/NaN, checked like it over every replica); ``completes``: applied, they complete an
        optimizer step (under ``gradient_accumulation_steps`` only every n-th used micro-batch does). The
        step is taken where both hold. Python ``True`` where the answer is known when tracing, so the
        plain step runs exactly the ops it always ran.
        """
        optimizer = self.optimizer
        finite: Any = True
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            checks = [ops.all(ops.isfinite(_backend_ops.densify(g))) for g in gradients if g is not None]
            if checks:
                bad = ops.sum(ops.cast(ops.logical_not(ops.stack(checks)), "int32"))
                finite = ops.equal(_backend_ops.all_reduce_sum(bad), 0)
        completes: Any = True
        steps = self._accumulation()
        if steps:
            count = ops.convert_to_tensor(micro_batch_counter(optimizer))
            completes = ops.equal((count + 1) % steps, 0)
        return finite, completes

    def _steps_taken(self, before: Any, after: Any) -> Any:
        """Optimizer steps completed between two readings of :func:`micro_batch_counter` (0 or 1 per micro-batch)."""
        steps = self._accumulation() or 1
        return ops.floor_divide(after, steps) - ops.floor_divide(before, steps)

    def _end_step(self, taken: Any, finite: Any, scores: Any) -> None:
        """After the optimizer: count a taken step, and collect a learning policy's scores for it.

        A learning policy's scores are summed over the micro-batches the optimizer used, and handed to
        it (``pdmp_pending`` = complete) only when the step is taken; a skipped micro-batch adds nothing.
        """
        self.pdmp_step.assign_add(ops.cast(taken, self.pdmp_step.dtype))
        if scores is None or not self.policy.observes_scores:
            return
        pending = ops.convert_to_tensor(self.pdmp_pending)
        stored = ops.convert_to_tensor(self.pdmp_scores)
        earlier = ops.where(ops.equal(pending, _PARTIAL), stored, ops.zeros_like(stored))
        total = earlier + ops.cast(scores, stored.dtype)
        done = ops.greater(taken, 0)
        self.pdmp_scores.assign(_where(finite, total, stored))
        partial = ops.cast(_where(finite, _PARTIAL, pending), pending.dtype)
        self.pdmp_pending.assign(ops.where(done, ops.cast(_COMPLETE, pending.dtype), partial))

    def modulate_gradients(
        self, gradients: Sequence[Any], variables: Sequence[Any], *, coefficients: Any = None
    ) -> list[Any]:
        """Scale (``grad`` mode) and, for OGM-GE, add noise to each modality variable's gradient.

        Use it in a custom training loop between ``tape.gradient`` and ``apply_gradients``, and call
        :meth:`step` after each optimizer step. Gradients may be loss-scaled (mixed precision): scaling
        commutes with it, and OGM-GE's noise is drawn from the unscaled gradient's standard deviation
        and scaled back (the loss scale is the compiled optimizer's). ``coefficients`` (in
        :attr:`modalities` order) default to the model's coefficient variables.
        """
        if isinstance(self.policy, GradientPolicy):
            raise RuntimeError(
                f"{type(self.policy).__name__} is a GradientPolicy: it needs the fused and unimodal gradients apart, "
                "this step's statistics and the anchors, which ModulatedModel gathers inside its own train_step; "
                "train with fit() or train_on_batch (a loop of your own can call model.train_on_batch(x, y))"
            )
        if coefficients is None:
            coefficients = ops.convert_to_tensor(self.pdmp_coefficients)
        noisy = self.policy.adds_noise
        if noisy:
            scale_loss = getattr(getattr(self, "optimizer", None), "scale_loss", None)
            one = ops.convert_to_tensor(1.0, "float32")
            loss_scale = one if scale_loss is None else ops.cast(scale_loss(one), "float32")
            gate = ops.convert_to_tensor(self.pdmp_noise_gate)
        if self.mode == "lr":
            if getattr(self, "optimizer", None) is None:
                raise RuntimeError(
                    "mode='lr' scales the learning rate of the optimizer given to compile(), but this model is not "
                    "compiled; call model.compile(optimizer=...) with the optimizer your loop applies"
                )
            _optimizer_lr.install(self.optimizer, self._lr_lookup.value)
        result = list(gradients)
        index = self._index.value
        for position, (gradient, variable) in enumerate(zip(gradients, variables, strict=True)):
            modality = index.get(id(variable))
            if gradient is None or modality is None:
                continue
            if noisy:
                gradient = _backend_ops.densify(gradient)
            k = ops.cast(coefficients[modality], gradient.dtype)
            scaled = _backend_ops.scale_gradient(gradient, k) if self.mode == "grad" else gradient
            if noisy:
                raw = ops.cast(gradient, "float32") / loss_scale
                draw = _backend_ops.stateless_normal(ops.shape(raw), self.seed, self._noise_counter(), position)
                noise = draw * (_ogm.sample_std(raw) + OGM_NOISE_EPS)
                scaled = scaled + ops.cast(gate * noise * loss_scale, scaled.dtype)
            result[position] = scaled
        return result

    def _noise_counter(self) -> Any:
        """What OGM-GE's noise is drawn for: the step, or under gradient accumulation the micro-batch (each
        backward pass gets its own noise, as in the torch adapter)."""
        if self._accumulation():
            return ops.convert_to_tensor(micro_batch_counter(self.optimizer))
        return ops.convert_to_tensor(self.pdmp_step)

    def step(self) -> bool:
        """Count one training step of a loop of your own; call it after ``optimizer.apply_gradients``.

        It advances the step counter (step-unit schedules, and OGM-GE's noise, which is drawn per
        step) and writes the coefficients of the next step. ``fit()`` and ``train_on_batch`` count
        their steps themselves: do not call it there. A step the compiled optimizer did not take (a
        ``LossScaleOptimizer`` skipped non-finite gradients) is not counted; returns whether it was.
        It runs the policy in Python, so call it outside ``tf.function`` (your traced step may be one).
        """
        if _backend_ops.inside_traced_function():
            raise RuntimeError(
                "ModulatedModel.step() computes the next coefficients in Python and cannot run inside "
                "tf.function; call it after your (traced) training step, in the Python loop"
            )
        self._warn_if_epoch_never_set("step()")
        self._attach_state()
        if self.policy.observes_scores and int(self.pdmp_pending.numpy()) != _COMPLETE:
            raise RuntimeError(
                f"{type(self.policy).__name__} learns from every batch: call model.observe(modality_logits, labels) "
                "in your training step before step() (concat_head_logits / sum_head_logits split a fusion head); "
                "without it the coefficients would silently stay where they are"
            )
        counted = True
        optimizer = getattr(self, "optimizer", None)  # None before compile()
        if optimizer is not None:
            iterations = int(ops.convert_to_numpy(_iterations(optimizer)))
            counted = iterations != self._iterations_seen.value
            accumulating = accumulation_steps(optimizer)
            if not counted and not accumulating and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                raise RuntimeError(
                    f"ModulatedModel.step(): the compiled optimizer ({type(optimizer).__name__}) took no step since "
                    "the last step()/set_epoch(), so the schedule cannot advance; compile the model with the "
                    "optimizer your loop applies, and call step() once after each apply_gradients"
                )
            if counted and self.mode == "lr" and _optimizer_lr.scaled_count(optimizer) == 0:
                raise RuntimeError(_lr_not_applied_message(optimizer))
            self._iterations_seen.value = iterations
        if counted:
            self.pdmp_step.assign_add(1)
        elif self.policy.observes_scores and not accumulation_steps(optimizer):
            self.pdmp_pending.assign(0)  # a skipped step's scores inform nothing, as in fit()
        self._sync_clock()
        self.update_coefficients()
        return counted

    def train_on_batch(self, *args: Any, **kwargs: Any) -> Any:
        """``keras.Model.train_on_batch`` on the policy's schedule: it uses the coefficients of the
        current step and counts the step it takes. Call :meth:`set_epoch` at each epoch start."""
        self._warn_if_epoch_never_set("train_on_batch()")
        if isinstance(self.policy, RebalancingPolicy) and _boundary_flags(self.policy):
            flags = ", ".join(_boundary_flags(self.policy))
            raise RuntimeError(
                f"{type(self.policy).__name__} needs work at epoch boundaries ({flags}) on the training data, "
                "which ModulatedModel.fit() does (RebalancingCallback); train with fit()"
            )
        self._sync_clock()
        self.update_coefficients()
        return super().train_on_batch(*args, **kwargs)

    def _forward_with_logits(self, x: Any, training: Any) -> tuple[Any, dict[str, Any] | None, dict[str, Any] | None]:
        """The inner model's output, each modality's logits (``modality_logits``) and each modality's unimodal
        logits (``unimodal_logits``), from one forward pass (a logits function runs its own)."""
        specs = (self._logits.value, self._unimodal_logits.value)
        if all(spec is None for spec in specs):
            return self.inner_model(x, training=training), None, None
        tapped: dict[str, Any] = {}
        if self._tap_model.value is None:
            y_pred = self.inner_model(x, training=training)
        else:
            y_pred, _, tapped = self._tap_model.value(x, training=training)
        results: list[dict[str, Any] | None] = []
        for spec in specs:
            if spec is None:
                results.append(None)
            elif hasattr(spec, "taps"):
                results.append(spec.logits(self.inner_model, {m: tapped[layer] for m, layer in spec.taps().items()}))
            else:
                results.append(dict(spec(self.inner_model, x, training)))
        if results[1] is not None:
            _check_unimodal_logits(results[1], self.modalities, y_pred)
        return y_pred, results[0], results[1]

    def _unimodal_losses(self, unimodal: Mapping[str, Any], labels: Any) -> list[Any]:
        """Each modality's unimodal loss (mean sparse categorical cross-entropy from its logits) times the
        policy's weight this epoch, scaled as Keras scales the compiled loss for ``tf.distribute`` (so that
        the replicas' gradients sum to the batch's)."""
        replicas = _backend_ops.replica_count()
        weights = keras.ops.convert_to_tensor(self.pdmp_unimodal_weights)
        losses = [_transforms.unimodal_loss(unimodal[name], labels) for name in self.modalities]
        return [loss * keras.ops.cast(weights[i], loss.dtype) / replicas for i, loss in enumerate(losses)]

    def _transform_gradients(
        self,
        gradients: Sequence[Any],
        variables: Sequence[Any],
        modality_logits: Mapping[str, Any] | None,
        labels: Any,
        unimodal: Sequence[Sequence[Any] | None] | None,
        *,
        finite: Any = True,
        completes: Any = True,
    ) -> list[Any]:
        """A GradientPolicy's step: statistics, one host call of ``policy.transform``, the formula.

        ``gradients``: of everything backpropagated (``G + U``), loss-scaled like the optimizer expects,
        one replica's share under ``tf.distribute``; ``unimodal``: for policies that use them, per modality
        ``U`` of each of its encoder's tensors in ``gradients`` order (see :meth:`_encoder_positions`).
        Returns the gradients with each modality tensor's replaced (same scaling and replica share).

        ``finite``/``completes`` (:meth:`_micro_batch_fate`): the policy observes, transforms and
        advances only for a step the optimizer takes. A micro-batch that only accumulates adds its logit
        statistics (and ``U``) to the step's and passes its gradients through; the one completing the
        step transforms the mean gradient of the step's micro-batches (what the optimizer applies: its
        accumulated sum plus this one, over the steps) and hands the optimizer the gradient that makes
        its mean the transformed one. A micro-batch a ``LossScaleOptimizer`` skips changes nothing.
        """
        policy = self.policy
        assert isinstance(policy, GradientPolicy)
        scale_loss = getattr(getattr(self, "optimizer", None), "scale_loss", None)
        one = ops.convert_to_tensor(1.0, "float32")
        loss_scale = one if scale_loss is None else ops.cast(scale_loss(one), "float32")
        replicas = _backend_ops.replica_count()
        steps = self._accumulation()
        take = finite if completes is True else (completes if finite is True else ops.logical_and(finite, completes))
        if steps and replicas > 1:
            raise NotImplementedError(
                f"{type(policy).__name__} with gradient_accumulation_steps={steps} under tf.distribute ({replicas} "
                "replicas): the transform of the accumulated step is not implemented across replicas; drop "
                "gradient_accumulation_steps (use a larger global batch), or train on one device"
            )
        sums: dict[str, Any] = (self._step_sums.value or {}) if steps else {}
        positions = self._encoder_positions(gradients, variables)
        result = list(gradients)
        plain: list[list[Any]] = []
        fused: list[list[Any]] = []
        apart: list[list[Any] | None] = []
        earlier: list[list[Any] | None] = []
        for m, indices in enumerate(positions):
            raw = [_backend_ops.densify(gradients[i]) for i in indices]
            extra = None if unimodal is None else list(unimodal[m] or [])
            if extra is not None and raw and all(u is None for u in extra):
                name = self.modalities[m]
                raise ValueError(
                    f"unimodal_logits[{name!r}] does not depend on modality {name!r}'s encoder variables, so "
                    f"{type(policy).__name__} has no unimodal gradient to combine; compute it from this modality's "
                    "encoder features through its own unimodal head"
                )
            if replicas > 1:
                # The formula is not linear (norms, the anchor term): apply it to the whole batch's gradient.
                raw = list(_backend_ops.all_reduce_sum(raw)) if raw else raw
                extra = list(_backend_ops.all_reduce_sum(extra)) if extra else extra
            raw = [g / ops.cast(loss_scale, g.dtype) for g in raw]
            if extra is not None:
                extra = [
                    ops.zeros_like(g) if u is None else ops.cast(u, g.dtype) / ops.cast(loss_scale, g.dtype)
                    for g, u in zip(raw, extra, strict=True)
                ]
            before = None
            if steps:
                # The step's mean gradient: the optimizer's sum of the earlier micro-batches plus this one.
                before = [ops.cast(accumulated_gradient(self.optimizer, variables[i]), raw[0].dtype) for i in indices]
                raw = [(a + g) / steps for a, g in zip(before, raw, strict=True)]
                if extra is not None:
                    running = [sums["unimodal"][id(variables[i])] for i in indices]
                    totals = [r + ops.cast(u, r.dtype) for r, u in zip(running, extra, strict=True)]
                    for r, t in zip(running, totals, strict=True):
                        r.assign(ops.where(take, ops.zeros_like(t), _where(finite, t, r)))
                    extra = [ops.cast(t, g.dtype) / steps for t, g in zip(totals, raw, strict=True)]
            earlier.append(before)
            plain.append(raw)
            apart.append(extra)
            fused.append(raw if extra is None else [g - u for g, u in zip(raw, extra, strict=True)])
        count = len(self.modalities)
        if policy.uses_logits:
            if modality_logits is None:  # pragma: no cover - refused at construction
                raise RuntimeError(f"{type(policy).__name__} needs modality_logits")
            logit_stats = _transforms.logit_statistics(
                [modality_logits[name] for name in self.modalities], labels, dtype=_WIDE_FLOAT,
                who=type(policy).__name__,
            )  # fmt: skip
            logit_stats = _backend_ops.all_reduce_sum(logit_stats)
            if steps:
                # Batch sums: the step's are the sums over its micro-batches.
                running_stats = sums["logits"]
                logit_stats = ops.convert_to_tensor(running_stats) + logit_stats
                running_stats.assign(
                    ops.where(take, ops.zeros_like(logit_stats), _where(finite, logit_stats, running_stats))
                )
            true_prob = logit_stats[:, LOGIT_STATISTICS.index("true_prob")]
            self.pdmp_scores.assign(_where(take, true_prob, self.pdmp_scores))
        else:
            logit_stats = ops.zeros((count, len(LOGIT_STATISTICS)), _WIDE_FLOAT)
        if policy.uses_gradient_stats:
            gradient_stats = ops.stack(
                [_transforms.gradient_statistics(fused[m], apart[m], dtype=_WIDE_FLOAT) for m in range(count)]
            )
        else:
            gradient_stats = ops.zeros((count, 4), _WIDE_FLOAT)
        stateful = self._state_layout.value.size > 0
        # A stateless policy's (empty) state does not cross the host call: a zero-size output buffer may be
        # aliased by XLA, which a JAX step would then donate twice.
        state = ops.convert_to_tensor(self.pdmp_policy_state) if stateful else ops.zeros((1,), "int32")
        taking = ops.convert_to_tensor(1 if take is True else ops.cast(take, "int32"), "int32")
        transform, new_state = _backend_ops.host_call(
            self._host_transform.value,
            [ops.convert_to_tensor(self.pdmp_step), ops.convert_to_tensor(self.pdmp_epoch), taking, logit_stats,
             gradient_stats, state],
            [((count, 5), _WIDE_FLOAT), (tuple(state.shape), keras.backend.standardize_dtype(state.dtype))],
        )  # fmt: skip
        if stateful:
            self.pdmp_policy_state.assign(new_state)  # unchanged by the host where the step is not taken
        # magnitude * fused: what logs report
        self.pdmp_coefficients.assign(_where(take, transform[:, 3] * transform[:, 0], self.pdmp_coefficients))
        anchors = self._anchors.value
        for m, indices in enumerate(positions):
            params = anchor_values = None
            if anchors is not None:
                params = [variables[i] for i in indices]
                name = self.modalities[m]
                by_variable = dict(zip(map(id, self._groups.value[name]), anchors[name], strict=True))
                anchor_values = [by_variable[id(v)] for v in params]
            new = _transforms.transformed(transform[m], fused[m], plain[m], apart[m], params, anchor_values)
            before = earlier[m]
            for position, (i, value) in enumerate(zip(indices, new, strict=True)):
                if before is not None:
                    value = value * steps - before[position]  # the optimizer applies (its sum + this) / steps
                value = value * ops.cast(loss_scale, value.dtype)
                value = value / replicas if replicas > 1 else value
                result[i] = _where(take, value, _backend_ops.densify(gradients[i]))
        return _backend_ops.after(result, transform)

    def _encoder_positions(self, gradients: Sequence[Any], variables: Sequence[Any]) -> list[list[int]]:
        """Per modality (in :attr:`modalities` order), the positions in ``variables`` of its encoder's
        variables that have a gradient."""
        index = self._index.value
        positions: list[list[int]] = [[] for _ in self.modalities]
        for i, (gradient, variable) in enumerate(zip(gradients, variables, strict=True)):
            modality = index.get(id(variable))
            if gradient is not None and modality is not None:
                positions[modality].append(i)
        return positions

    def _lr_multiplier(self, variable: Any) -> Any:
        modality = self._index.value.get(id(variable))
        if modality is None:
            return None
        coefficients = self._step_coefficient_values.value
        if coefficients is None:  # a loop of your own: the coefficient variables
            coefficients = ops.convert_to_tensor(self.pdmp_coefficients)
        return coefficients[modality]

    @contextlib.contextmanager
    def _step_coefficients(self, coefficients: Any) -> Iterator[None]:
        """lr mode scales the learning rates with ``coefficients`` (this step's) while the optimizer applies."""
        self._step_coefficient_values.value = coefficients
        try:
            yield
        finally:
            self._step_coefficient_values.value = None

    def _lr_scaled_count(self) -> int:
        return _optimizer_lr.scaled_count(self.optimizer)

    def _check_lr_mode_applied(
        self, gradients: Sequence[Any], variables: Sequence[Any], scaled_before: int, taken: Any
    ) -> None:
        """Raise if ``apply_gradients`` updated modality variables without passing them through
        ``update_step``, the one path where lr mode scales the learning rate (a Keras change would do that).

        A traced step traces every branch, so the check holds there; eagerly, a branch not taken (a
        skipped loss-scaled step, a gradient-accumulation step) calls nothing, so only updates count.
        """
        index = self._index.value
        if not any(g is not None and id(v) in index for g, v in zip(gradients, variables, strict=True)):
            return
        if _optimizer_lr.scaled_count(self.optimizer) > scaled_before:
            return
        if _backend_ops.update_step_may_be_skipped() and (self._accumulation() or int(np.asarray(taken)) == 0):
            return
        raise RuntimeError(_lr_not_applied_message(self.optimizer))

    # -- the schedule -------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Tell the policy which epoch starts (0-based); ``fit()`` calls it for you."""
        epoch = check_non_negative_int(epoch, name="epoch")
        self._epoch_was_set = True
        self._sync_clock()  # also brings a running JAX fit()'s values into the variables
        self._clock.epoch = epoch
        self.pdmp_epoch.assign(epoch)
        if isinstance(self.policy, RebalancingPolicy) and self.policy.uses_training_passes:
            self.pdmp_batch.assign(0)
        self._take_anchors(epoch)
        optimizer = getattr(self, "optimizer", None)  # None before compile()
        if optimizer is not None:
            self._iterations_seen.value = int(ops.convert_to_numpy(_iterations(optimizer)))
        self.update_coefficients()

    def _take_anchors(self, epoch: int) -> None:
        """A GradientPolicy with ``uses_anchor``: copy the encoders into the anchors at the epoch start, except
        that anchors restored from a checkpoint are kept when their own epoch is announced (a run resumed
        mid-epoch pulls towards the same point as the uninterrupted one), as the torch Modulator does."""
        anchors = self._anchors.value
        if anchors is None:
            return
        restored = self._anchors_restored.value and int(self.pdmp_anchor_epoch.numpy()) == epoch
        self._anchors_restored.value = False
        if restored:
            return
        for name in self.modalities:
            for anchor, variable in zip(anchors[name], self._groups.value[name], strict=True):
                anchor.assign(_copy_of(variable))
        self.pdmp_anchor_epoch.assign(epoch)

    @property
    def weights(self) -> list[Any]:
        """The wrapped model's weights (in ``inner_model.weights`` order), then :attr:`pdmp_variables`.

        ``get_weights()``/``set_weights()`` use this order, so the first ``len(inner_model.weights)`` entries
        compare one to one with an unwrapped model's ``get_weights()``; the state that follows makes
        ``set_weights`` (and ``EarlyStopping(restore_best_weights=True)``) restore the schedule too.
        """
        inner = list(self.inner_model.weights)
        known = {id(v) for v in inner}
        return inner + [v for v in super().weights if id(v) not in known]

    @property
    def pdmp_variables(self) -> tuple[Any, ...]:
        """The library's own state variables (coefficients, scores, clock, what the policy has learnt, a
        GradientPolicy's anchors), which :attr:`weights` lists after the wrapped model's; compare
        ``model.inner_model.get_weights()`` to compare only the model's own weights."""
        known = {id(v) for v in self.inner_model.weights}
        return tuple(v for v in super().weights if id(v) not in known)

    def load_own_variables(self, store: Any) -> None:
        """Keras's loading of this model's own variables (``.keras`` files, ``load_weights``,
        ``BackupAndRestore``); marks restored anchors, which :meth:`set_epoch` keeps for their epoch.

        A file written while a stateless policy still had an empty (zero-size) state variable loads too:
        that entry is dropped."""
        own = len(self._trainable_variables) + len(self._non_trainable_variables)
        if len(store.keys()) > own:
            values = [store[str(i)] for i in range(len(store.keys()))]
            kept = [value for value in values if np.asarray(value).size]
            if len(kept) == own:
                store = {str(i): value for i, value in enumerate(kept)}
        super().load_own_variables(store)
        self._anchors_restored.value = self._anchors.value is not None

    def update_coefficients(self) -> None:
        """Write the policy's coefficients for the current step/epoch into the model's variables.

        ``fit()``, ``train_on_batch``, :meth:`step` and :meth:`set_epoch` call it for you. It always
        writes: restored weights may hold other values than the ones this object last wrote.
        """
        self._attach_state()
        if isinstance(self.policy, RebalancingPolicy):
            return  # it scales no gradient: the coefficients stay 1
        if isinstance(self.policy, OGMGE):
            self.pdmp_noise_gate.assign(1.0 if self.policy.active(self._clock.epoch) else 0.0)
            return
        if isinstance(self.policy, GradientPolicy):
            # The step computes its transform (and the coefficients it reports) itself; adopt its state.
            self._sync_policy()
            self._write_unimodal_weights()
            return
        if self.policy.needs_logits:
            raise NotImplementedError(f"{type(self.policy).__name__} needs logits and has no Keras implementation")
        if self.policy.observes_scores:
            self._sync_policy()
            self._fold_pending_scores()
        modulation = check_modulation(
            self.policy,
            self.policy.modulation(step=self._clock.step, epoch=self._clock.epoch),
            step=self._clock.step,
            epoch=self._clock.epoch,
        )
        self.pdmp_coefficients.assign(np.asarray([modulation.coefficients[n] for n in self.modalities], np.float64))
        self.pdmp_noise_gate.assign(float(modulation.noise))
        if self._adds_unimodal_losses:
            self._write_unimodal_weights()

    def _write_unimodal_weights(self) -> None:
        weights = self.policy.unimodal_loss_weights(step=self._clock.step, epoch=self._clock.epoch)
        self.pdmp_unimodal_weights.assign(np.asarray([weights[n] for n in self.modalities], np.float64))

    def _sync_policy(self) -> None:
        """Adopt the learning policy's state stored in the variables (restored with the weights)."""
        layout = self._state_layout.value
        if layout is not None and layout.size:
            self.policy.load_state_dict(layout.decode(_policy_state.unpack(self.pdmp_policy_state.numpy())))

    def _fold_pending_scores(self) -> None:
        """Hand the last step's scores to the learning policy, once (its coefficients were fixed before)."""
        if int(self.pdmp_pending.numpy()) != _COMPLETE:
            return
        values = np.asarray(self.pdmp_scores.numpy(), dtype=np.float64)
        self.policy.update(dict(zip(self.modalities, (float(v) for v in values), strict=True)))
        layout = self._state_layout.value
        if layout.size:
            self.pdmp_policy_state.assign(_policy_state.pack(layout.encode(self.policy.state_dict()), _WIDE_FLOAT))
        self.pdmp_pending.assign(0)

    def _sync_clock(self) -> None:
        """Adopt the step/epoch stored in the variables: they are restored with the weights and
        advanced in the graph, so they, not the Python copy, are the truth."""
        self._attach_state()
        self._clock.step = int(self.pdmp_step.numpy())
        self._clock.epoch = int(self.pdmp_epoch.numpy())

    def _warn_if_epoch_never_set(self, where: str) -> None:
        if self._epoch_was_set or not _depends_on_epoch(self.policy):
            return
        self._epoch_was_set = True  # warn once
        warnings.warn(
            f"ModulatedModel.{where} ran before any set_epoch(), and {self.policy!r} changes with the epoch: the "
            "schedule stays at epoch 0 until you call model.set_epoch(epoch) at each epoch start",
            UserWarning,
            stacklevel=3,
        )

    @property
    def modalities(self) -> tuple[str, ...]:
        """The policy's modality names, in the order of the coefficient variables."""
        return self.policy.modalities

    @property
    def step_count(self) -> int:
        """Training steps the optimizer took while modulated, as stored in the model."""
        self._attach_state()
        return int(self.pdmp_step.numpy())

    @property
    def epoch(self) -> int:
        self._attach_state()
        return int(self.pdmp_epoch.numpy())

    @property
    def coefficients(self) -> dict[str, float]:
        """Current coefficient of each modality (for OGM-GE: the last batch's)."""
        self._attach_state()
        values = np.asarray(self.pdmp_coefficients.numpy(), dtype=np.float64)
        return {name: float(value) for name, value in zip(self.modalities, values, strict=True)}

    @property
    def unimodal_loss_weights(self) -> dict[str, float]:
        """Each modality's weight of its unimodal loss in the current step's training loss (ARL's gamma,
        ``AdaptivePDMP``'s auxiliary weights); all 0 for a policy that adds none."""
        if not self._adds_unimodal_losses:
            return {name: 0.0 for name in self.modalities}
        self._attach_state()
        values = np.asarray(self.pdmp_unimodal_weights.numpy(), dtype=np.float64)
        return {name: float(value) for name, value in zip(self.modalities, values, strict=True)}

    @property
    def modality_variables(self) -> dict[str, tuple[keras.Variable, ...]]:
        """The variables each modality's coefficient applies to (frozen ones too: once they train)."""
        return dict(self._groups.value)

    def state_dict(self) -> dict[str, Any]:
        """Policy, clock and coefficients, as plain Python values (what a ``.keras`` file also stores).

        ``policy_state`` is what a learning policy or a GradientPolicy has learnt (empty for the others)
        and ``pending_scores`` the last step's scores a learning policy has not yet folded in (``None``
        when there are none). A GradientPolicy's anchors are variables: they are saved and restored with
        the weights, not here.
        """
        self._sync_clock()
        pending = None
        if self._state_layout.value is not None:
            self._sync_policy()
        if self.policy.observes_scores and int(self.pdmp_pending.numpy()) == _COMPLETE:
            pending = self._scores()
        return {
            "policy": self.policy.get_config(),
            "mode": self.mode,
            "clock": self._clock.state_dict(),
            "coefficients": self.coefficients,
            "seed": self.seed,
            "scores": self._scores(),
            "policy_state": self.policy.state_dict(),
            "pending_scores": pending,
        }

    def _scores(self) -> dict[str, float]:
        self._attach_state()
        return dict(zip(self.modalities, (float(s) for s in self.pdmp_scores.numpy()), strict=True))

    def load_state_dict(self, state: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restore :meth:`state_dict`. With ``strict`` the saved policy must equal this model's.

        Everything is checked before anything changes: a bad state leaves the model as it was.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict from ModulatedModel.state_dict(), got {type(state).__name__}")
        missing = [key for key in ("policy", "clock", "coefficients") if key not in state]
        if missing:
            raise ValueError(
                f"state lacks {missing}; pass the dict returned by ModulatedModel.state_dict() (keys policy, mode, "
                "clock, coefficients, seed)"
            )
        strict = check_bool(strict, name="strict")
        check_state_keys(
            state,
            required=(),  # the three required keys are named above, with the fix
            optional=("policy", "mode", "clock", "coefficients", "seed", "scores", "policy_state", "pending_scores"),
            where="ModulatedModel state",
        )
        if state.get("scores") is not None:  # informational (the last batch's scores), but never loosely typed
            _pending_scores(state["scores"], self.modalities, learning=True, where="state['scores']")
        stored = policy_from_config(state["policy"])
        stored.check_modalities(self.modalities, where="ModulatedModel.load_state_dict")
        if state.get("mode", self.mode) != self.mode:
            raise ValueError(f"state was saved in mode={state['mode']!r} but this model uses {self.mode!r}")
        if strict and stored != self.policy:
            raise ValueError(
                f"state was saved with policy {stored!r} but this model uses {self.policy!r}; "
                "build the model with the saved policy, or pass strict=False to keep the new one"
            )
        seed = check_non_negative_int(state.get("seed", self.seed), name="state['seed']")
        clock = Clock()
        if not isinstance(state["clock"], Mapping):
            raise TypeError(f"state['clock'] must be a dict {{'step': ..., 'epoch': ...}}, got {state['clock']!r}")
        clock.load_state_dict(state["clock"])
        coefficients = state["coefficients"]
        if not isinstance(coefficients, Mapping):
            raise TypeError(f"state['coefficients'] must be a dict {{modality: coefficient}}, got {coefficients!r}")
        check_same_modalities(coefficients, self.modalities, where="state['coefficients']")
        values = [check_positive_finite(coefficients[n], name=f"state['coefficients'][{n!r}]") for n in self.modalities]
        policy_state = state.get("policy_state", {})  # absent in states of stateless policies
        try:
            policy_from_config(self.policy.get_config()).load_state_dict(policy_state)  # check on a copy first
            layout = self._state_layout.value
            encoded = None if layout is None else layout.encode(policy_state)
        except (TypeError, ValueError) as error:
            raise ValueError(f"state['policy_state'] does not fit {self.policy!r}: {error}") from error
        pending = _pending_scores(state.get("pending_scores"), self.modalities, learning=self.policy.observes_scores)
        # Checked: now change state.
        self._attach_state()
        if seed != self.seed:
            self.seed = seed
            self.train_function = None  # the seed is a trace-time constant: retrace
        self._clock = clock
        self.pdmp_step.assign(clock.step)
        self.pdmp_epoch.assign(clock.epoch)
        self.pdmp_coefficients.assign(np.asarray(values, dtype=np.float64))
        self.policy.load_state_dict(policy_state)
        if encoded is not None and encoded.size:
            self.pdmp_policy_state.assign(_policy_state.pack(encoded, _WIDE_FLOAT))
        if self.policy.observes_scores:
            self.pdmp_pending.assign(0 if pending is None else _COMPLETE)
            if pending is not None:
                self.pdmp_scores.assign(np.asarray([pending[n] for n in self.modalities], dtype=np.float64))
        if not self.policy.needs_logits:
            self.update_coefficients()

    # -- compile() and fit() ------------------------------------------------------------------------------

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``keras.Model.compile``; refuses ``steps_per_execution > 1`` with a step-by-step schedule and
        warns (once) when ``mode="grad"`` meets an optimizer that normalises gradients away."""
        steps = kwargs.get("steps_per_execution", args[6] if len(args) > 6 else 1)
        _check_steps_per_execution(self.policy, steps)
        if isinstance(self.policy, (GradientPolicy, RebalancingPolicy)) and _backend_ops.HOST_CALL_BLOCKS_XLA:
            # The policy's transform runs in Python once per step (tf.numpy_function), which XLA cannot compile.
            kwargs = dict(kwargs)
            for position, name in ((7, "jit_compile"), (8, "auto_scale_loss")):
                if len(args) > position:
                    kwargs[name] = args[position]
            args = args[:7]
            if kwargs.get("jit_compile", "auto") is True:
                warnings.warn(
                    f"jit_compile=True: {type(self.policy).__name__}'s transform runs the core policy on the host "
                    "once per step (tf.numpy_function), which XLA cannot compile; the train step is compiled as a "
                    "tf.function without XLA (jit_compile=False) instead",
                    UserWarning,
                    stacklevel=2,
                )
            kwargs["jit_compile"] = False
        super().compile(*args, **kwargs)
        passes = isinstance(self.policy, RebalancingPolicy) and self.policy.uses_training_passes
        if passes and self.optimizer is not None:
            why = None
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                why = "a LossScaleOptimizer (it may skip one pass's step and not the others')"
            elif self._accumulation():
                why = f"gradient_accumulation_steps={self._accumulation()} (each pass must update the weights at once)"
            if why:
                raise NotImplementedError(
                    f"{type(self.policy).__name__} takes one optimizer step per training pass; not supported with "
                    f"{why}; compile with a plain optimizer"
                )
            if not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)  # each pass applies to a subset of them
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if self.mode == "grad" and not isinstance(self.policy, NoModulation) and _is_adaptive(optimizer):
            warnings.warn(
                f"mode='grad' with {type(optimizer).__name__}: it normalises each gradient by its own scale, so "
                "multiplying gradients by the coefficients barely changes the updates (prioritisation is almost a "
                "no-op). Use ModulatedModel(..., mode='lr') to scale each modality's learning rate instead, or SGD",
                UserWarning,
                stacklevel=2,
            )
        if self.mode == "lr" and self.optimizer is not None:
            _optimizer_lr.install(self.optimizer, self._lr_lookup.value)
        if self.optimizer is not None:
            self._iterations_seen.value = int(ops.convert_to_numpy(_iterations(self.optimizer)))
        self._step_sums.value = self._make_step_sums()

    def _make_step_sums(self) -> dict[str, Any] | None:
        """A GradientPolicy under gradient accumulation: the step's running sums of what the optimizer does
        not accumulate itself (the logit statistics, each encoder variable's ``U``)."""
        if not isinstance(self.policy, GradientPolicy) or self.optimizer is None or not self._accumulation():
            return None
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)  # the step reads its accumulators
        if self._step_sums.value is not None:
            return self._step_sums.value  # compiled again: the same sums
        count = len(self.modalities)
        if not _backend_ops.STEP_SUMS_ARE_WEIGHTS:
            make = lambda shape, dtype, name: keras.Variable(np.zeros(shape), dtype=dtype, trainable=False)  # noqa: E731
        else:
            # JAX: Keras's stateless step carries the model's own variables only, so the sums are weights of the
            # model (made here, by compile(), which a loaded model runs before its weights are restored).
            def make(shape: tuple[int, ...], dtype: Any, name: str) -> Any:
                return self.add_weight(shape=shape, initializer="zeros", dtype=dtype, trainable=False,
                                       aggregation="only_first_replica", name=name)  # fmt: skip

        sums: dict[str, Any] = {"logits": make((count, len(LOGIT_STATISTICS)), _WIDE_FLOAT, "pdmp_step_logit_sums")}
        if self.policy.uses_unimodal_gradients:
            sums["unimodal"] = {
                id(v): make(tuple(v.shape), v.dtype, f"pdmp_step_unimodal_sum_{p}_{i}")
                for p, group in enumerate(self._groups.value.values())
                for i, v in enumerate(group)
            }
        return sums

    def compile_from_config(self, config: Any) -> None:
        """Compile on load as Keras does for models that keep its ``compile()`` (it skips overridden ones)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)  # optimizer variables, for the weights to load into

    def fit(self, *args: Any, callbacks: Any = None, **kwargs: Any) -> Any:
        """``keras.Model.fit`` plus a first callback that keeps the coefficients on the policy's schedule.

        With ``modality_logits``, NumPy labels are checked before training (integer class indices below
        the number of the model's outputs). :class:`~pdmp.backends.keras.PDMPLogger` callbacks are moved
        to the front of ``callbacks``, so that History, CSVLogger and TensorBoard see what they log.
        """
        _check_steps_per_execution(self.policy, getattr(self, "steps_per_execution", 1))
        if self._logits.value is not None or self._unimodal_logits.value is not None:
            labels = kwargs["y"] if "y" in kwargs else (args[1] if len(args) > 1 else None)
            _check_numpy_labels(labels, _output_width(self.inner_model), where="fit() y")
        from pdmp.backends.keras.logs import PDMPLogger  # here: logs imports this module

        schedule = _ScheduleCallback(self)
        first: list[Any] = [schedule]
        held_out = kwargs.pop("held_out", None)
        if isinstance(self.policy, RebalancingPolicy):
            first.append(self._rebalancing_callback(args, kwargs, held_out))
        elif held_out is not None:
            raise ValueError(f"held_out= is for RebalancingPolicy methods, not {type(self.policy).__name__}; drop it")

        def ordered(given: list[Any]) -> list[Any]:
            # The loggers must write into ``logs`` before History, CSVLogger or TensorBoard read them.
            loggers = [callback for callback in given if isinstance(callback, PDMPLogger)]
            return [*first, *loggers, *(callback for callback in given if not isinstance(callback, PDMPLogger))]

        if callbacks is None:
            callbacks = list(first)
        elif isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks.callbacks[:] = ordered(list(callbacks.callbacks))
            for callback in first:
                callback.set_model(self)
        else:
            callbacks = ordered(list(callbacks))
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def _rebalancing_callback(self, args: Sequence[Any], kwargs: Mapping[str, Any], held_out: Any) -> Any:
        """The epoch-boundary work of a RebalancingPolicy, on ``fit()``'s training data (unshuffled batches of
        ``batch_size``) and ``held_out`` (``(x, y)`` or a dataset of ``(x, y)``; default ``validation_data``)."""
        policy = self.policy
        assert isinstance(policy, RebalancingPolicy)
        names = ("x", "y", "batch_size")
        given = {name: kwargs[name] if name in kwargs else (args[i] if len(args) > i else None)
                 for i, name in enumerate(names)}  # fmt: skip
        train = _rebalancing.batches_of(given["x"], given["y"], given["batch_size"])
        if held_out is None:
            held_out = kwargs.get("validation_data")
        if held_out is None and (policy.needs_held_out_losses or policy.uses_parameter_events):
            what = "each term's held-out loss" if policy.needs_held_out_losses else "held-out encoder features"
            raise ValueError(
                f"{type(policy).__name__} measures {what} at epoch boundaries: pass fit(..., held_out=(x_val, y_val)) "
                "(or validation_data=)"
            )
        held = None
        if held_out is not None:
            held = _rebalancing.batches_of(*held_out, batch_size=given["batch_size"]) if isinstance(
                held_out, tuple) else _rebalancing.batches_of(held_out)  # fmt: skip
        return _rebalancing.RebalancingCallback(self, train, held)

    # -- saving -----------------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        # Variables are stored as positions in ``model.weights``: that order is rebuilt exactly from the
        # model's config on load, whereas variable paths of nested models are not stable across loads.
        position = {id(v): i for i, v in enumerate(self.inner_model.weights)}
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.inner_model),
            "modalities": {name: [position[id(v)] for v in group] for name, group in self._groups.value.items()},
            "policy": self.policy.get_config(),
            "mode": self.mode,
            "modality_logits": _logits_config(self._logits.value),
            "unimodal_logits": _logits_config(self._unimodal_logits.value),
            "seed": self.seed,
            "modality_features": _logits_config(self._features_spec.value),
            "shared_head": None if self._shared_head.value is None else self._shared_head.value.name,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> ModulatedModel:
        options = dict(config)
        model = keras.saving.deserialize_keras_object(options.pop("model"), custom_objects=custom_objects)
        spec = _logits_from_config(options.pop("modality_logits", None), custom_objects)
        unimodal = _logits_from_config(options.pop("unimodal_logits", None), custom_objects)
        features = _logits_from_config(options.pop("modality_features", None), custom_objects)
        policy = policy_from_config(options.pop("policy"))
        options.pop("dtype", None)
        weights = model.weights
        modalities = {name: [weights[int(i)] for i in indices] for name, indices in options.pop("modalities").items()}
        return cls(model, modalities, policy, modality_logits=spec, unimodal_logits=unimodal,
                   modality_features=features, **options)  # fmt: skip


def _logits_config(spec: Any) -> dict[str, Any] | None:
    if spec is None:
        return None
    if hasattr(spec, "get_config"):
        return spec.get_config()
    return {"type": "function", "function": keras.saving.serialize_keras_object(spec)}


def _logits_from_config(config: Mapping[str, Any] | None, custom_objects: Any) -> Any:
    if config is None:
        return None
    if config.get("type") == "function":
        return keras.saving.deserialize_keras_object(config["function"], custom_objects=custom_objects)
    return layer_logits_from_config(config)


class _ScheduleCallback(keras.callbacks.Callback):
    """Keeps the coefficient variables on the policy's schedule during ``fit()``.

    The clock is read from the model's variables at each epoch start, after every ``on_train_begin``
    has run (``BackupAndRestore`` restores the weights, clock included, there). Step-dependent
    schedules re-read the step before every batch: a step the optimizer skipped was not counted.
    """

    def __init__(self, owner: ModulatedModel) -> None:
        super().__init__()
        self._owner = _Hidden(owner)
        self._per_step = _depends_on_step(owner.policy)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._owner.value.set_epoch(epoch)

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if self._per_step:
            owner = self._owner.value
            owner._sync_clock()
            owner.update_coefficients()


# -- what the policy depends on ------------------------------------------------------------------------------


def _depends_on_step(policy: CoefficientPolicy) -> bool:
    """Whether the policy's coefficients can change between two steps of one epoch (unknown policies: yes).

    OGM-GE and GradientPolicies change per batch too, but in the graph (a GradientPolicy's transform is
    called from the step): nothing to refresh.
    """
    if isinstance(policy, (NoModulation, OGMGE, GradientPolicy)):
        return False
    return not (isinstance(policy, PDMP) and policy.unit == "epoch")


def _depends_on_epoch(policy: CoefficientPolicy) -> bool:
    if isinstance(policy, NoModulation):
        return False
    if isinstance(policy, PDMP):
        return policy.unit == "epoch" and (policy.warmup > 0 or policy.ramp > 0 or policy.end is not None)
    if isinstance(policy, OGMGE):
        return policy.start_epoch > 0 or policy.end_epoch is not None
    return True


def _check_steps_per_execution(policy: CoefficientPolicy, steps: Any) -> None:
    if isinstance(steps, int) and steps > 1 and policy.observes_scores:
        raise ValueError(
            f"steps_per_execution={steps} runs {steps} steps per call, but {type(policy).__name__} learns from "
            "every step's batch scores, which are handed to it between calls only (all but the last would be "
            "lost); compile with steps_per_execution=1"
        )
    if isinstance(steps, int) and steps > 1 and _depends_on_step(policy):
        raise ValueError(
            f"steps_per_execution={steps} runs {steps} steps per call, but {policy!r} changes its coefficients "
            "from step to step and they are refreshed between calls only, so the schedule would lag; compile with "
            "steps_per_execution=1, or use an epoch-unit schedule (PDMP(..., unit='epoch'))"
        )


_ADAPTIVE_NAMES = ("Adam", "AdamW", "Adamax", "Nadam", "RMSprop", "Adagrad", "Adadelta", "Adafactor", "Lion", "Lamb")


def _is_adaptive(optimizer: Any) -> bool:
    """Optimizers whose update is (almost) invariant to a constant gradient multiplier."""
    classes = tuple(getattr(keras.optimizers, name) for name in _ADAPTIVE_NAMES if hasattr(keras.optimizers, name))
    return isinstance(optimizer, classes)


def _iterations(optimizer: Any) -> Any:
    """The optimizer's count of the updates it applied (a ``LossScaleOptimizer``'s inner optimizer's:
    before Keras 3.9 the wrapper's own count never advanced)."""
    return getattr(optimizer, "inner_optimizer", optimizer).iterations


def _lr_not_applied_message(optimizer: Any) -> str:
    return (
        f"mode='lr': {type(optimizer).__name__} updated the modality variables without calling its per-variable "
        f"update_step(gradient, variable, learning_rate), where lr mode scales the learning rate (Keras "
        f"{keras.__version__}). The coefficients were not applied; use mode='grad' with SGD, or a Keras version "
        "pdmp supports (see pyproject.toml). In a loop of your own, compile the model with the optimizer you apply"
    )


def _pending_scores(
    value: Any, modalities: Sequence[str], *, learning: bool, where: str = "state['pending_scores']"
) -> dict[str, float] | None:
    """``state['pending_scores']`` (or ``where``): None, or each modality's finite, non-negative batch score."""
    if value is None:
        return None
    if not learning:
        raise ValueError(f"{where} is only for policies that learn from batch scores; drop it")
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be None or a dict {{modality: score}}, got {value!r}")
    check_same_modalities(value, modalities, where=where)
    result = {}
    for name in modalities:
        score = value[name]
        if (
            isinstance(score, bool)
            or not isinstance(score, (int, float, np.number))
            or not np.isfinite(score)
            or score < 0
        ):
            raise ValueError(f"{where}[{name!r}] is {score!r}; a batch score is a finite number >= 0")
        result[name] = float(score)
    return result


def _check_numpy_labels(labels: Any, classes: int | None, *, where: str) -> None:
    """OGM-GE reads labels as class indices in the graph; refuse bad NumPy labels before any work."""
    if not isinstance(labels, (np.ndarray, list, tuple)):
        return  # tensors and datasets: the in-graph assertions of _ogm.batch_scores check them
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[-1] == 1:
        array = array[:, 0]
    if array.ndim == 2 and array.shape[-1] == classes and classes is not None and classes > 1:
        if array.dtype.kind not in "iuf" or not np.all(np.isfinite(array)):
            raise ValueError(f"{where}: one-hot labels contain NaN/inf or non-numbers; fix the targets")
        return
    check_labels(array, num_classes=classes, name=f"{where} (OGM-GE class indices)")


def _output_width(model: keras.Model) -> int | None:
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs or len(outputs) != 1 or outputs[0].shape[-1] is None:
        return None
    return int(outputs[0].shape[-1])


# -- resolving modalities ----------------------------------------------------------------------------------


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return list(model._flatten_layers(include_self=False, recursive=True))


def _resolve_modalities(model: keras.Model, modalities: Mapping[str, Any]) -> dict[str, tuple[keras.Variable, ...]]:
    """Each modality's variables, frozen ones included (they are modulated once they are unfrozen)."""
    known = {id(v): v for v in model.weights}
    by_path: dict[str, list[keras.Variable]] = {}
    for variable in model.weights:
        by_path.setdefault(variable.path, []).append(variable)
    layers = _all_layers(model)
    groups: dict[str, list[int]] = {}
    for name, members in modalities.items():
        items = list(members) if isinstance(members, (list, tuple)) else [members]
        ids: list[int] = []
        for item in items:
            for variable in _variables_of(item, model, by_path, layers, modality=name):
                if id(variable) not in known:
                    raise ValueError(
                        f"modality {name!r}: variable {variable.path!r} is not a variable of model {model.name!r}; "
                        "list the encoders of the model you are wrapping"
                    )
                ids.append(id(variable))
        groups[name] = ids
    checked = check_disjoint_assignment(groups, describe=lambda key: repr(known[key].path), kind="variable")
    head = {id(v): layer for layer in _head_layers(model) for v in layer.weights}
    for name, keys in checked.items():
        for key in keys:
            if key in head:
                raise ValueError(
                    f"modality {name!r} includes {known[key].path!r} of layer {head[key].name!r}, which produces "
                    f"the output of model {model.name!r}: the head is never modulated; list only the encoder of "
                    f"{name!r}"
                )
    return {name: tuple(known[key] for key in keys) for name, keys in checked.items()}  # type: ignore[index]


def _head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers with weights that produce the model's outputs (through weightless single-input layers
    such as an activation or dropout); [] for a subclassed model, whose graph is unknown."""
    try:
        outputs = keras.tree.flatten(model.outputs)
    except (AttributeError, ValueError, TypeError):
        return []
    heads = []
    for tensor in outputs:
        layer = _skip_weightless(producing_layer(tensor))
        if isinstance(layer, keras.Model):
            heads.extend(_head_layers(layer))  # a nested model: its own output layer is the head
        elif layer is not None and layer.weights:
            heads.append(layer)
    return heads


def _skip_weightless(layer: Any, *, stop: Any = ()) -> Any:
    """Walk back from ``layer`` through weightless single-input layers (activation, dropout, ...),
    stopping at a layer named in ``stop``."""
    while (
        layer is not None
        and getattr(layer, "name", None) not in stop
        and not isinstance(layer, keras.layers.Concatenate)
        and not layer.weights
        and len(inbound_tensors(layer)) == 1
    ):
        layer = producing_layer(inbound_tensors(layer)[0])
    return layer


def _variables_of(
    item: Any, model: keras.Model, by_path: Mapping[str, list[keras.Variable]], layers: list[Any], *, modality: str
) -> list[keras.Variable]:
    if isinstance(item, keras.Variable):
        return [item]
    if isinstance(item, keras.layers.Layer):
        return list(item.weights)
    if isinstance(item, str):
        if item in by_path:
            if len(by_path[item]) > 1:
                raise ValueError(f"modality {modality!r}: several variables have path {item!r}; name the layer instead")
            return list(by_path[item])
        matches = [layer for layer in layers if layer.name == item]
        if len(matches) == 1:
            return list(matches[0].weights)
        if len(matches) > 1:
            raise ValueError(f"modality {modality!r}: model {model.name!r} has several layers named {item!r}")
        known = ", ".join(sorted({layer.name for layer in layers})[:20])
        raise ValueError(
            f"modality {modality!r}: model {model.name!r} has no layer or variable {item!r}; layers: {known}"
        )
    raise TypeError(
        f"modality {modality!r}: {item!r} is a {type(item).__name__}; give layers, layer names, variables or "
        "variable paths"
    )


def _restrict(policy: CoefficientPolicy, groups: Mapping[str, tuple[keras.Variable, ...]]) -> dict[str, tuple]:
    """Keep the variables the policy modulates (OGM-GE's reference: only 4-D conv kernels)."""
    result = {
        name: tuple(v for v in variables if policy.modulates(tuple(v.shape))) for name, variables in groups.items()
    }
    empty = [name for name, variables in result.items() if not variables]
    if empty:
        raise ValueError(
            f"{policy!r} modulates none of modality(ies) {empty}'s variables (shapes "
            f"{[tuple(v.shape) for v in groups[empty[0]]]}); with OGMGE(conv_kernels_only=True) the encoders need "
            "4-D conv kernels, otherwise use conv_kernels_only=False"
        )
    return result


def _check_logits_spec(policy: CoefficientPolicy, spec: Any, model: keras.Model) -> Any:
    if spec is None:
        if isinstance(policy, GradientPolicy) and policy.uses_logits:
            raise ValueError(
                f"{type(policy).__name__} needs this batch's per-modality logits (its logit statistics) every step: "
                "pass modality_logits=ConcatHead(head=..., features={...}) or SumHeads(heads={...}) (decomposed fusion "
                "logits, unimodal heads), or a function fn(model, x, training) -> {modality: logits} (e.g. AGM's "
                "masked passes: pdmp.mono_modal_responses(lambda inputs: model(inputs, training=False), x), "
                "wrapped in keras.ops.stop_gradient)"
            )
        if policy.needs_logits or policy.observes_scores:
            why = "needs per-modality logits" if policy.needs_logits else "learns from per-modality logits"
            raise ValueError(
                f"{type(policy).__name__} {why}: pass modality_logits=ConcatHead(head=..., features={{...}}), "
                "SumHeads(heads={...}) or a function fn(model, x, training) -> {modality: logits}"
            )
        return None
    return _spec_of_known_form(policy, spec, argument="modality_logits", where="")


def _takes_unimodal_logits(policy: CoefficientPolicy) -> bool:
    """GradientPolicies (unimodal losses or gradients) and policies that add unimodal losses."""
    return isinstance(policy, GradientPolicy) or policy.uses_unimodal_losses


def _boundary_flags(policy: RebalancingPolicy) -> list[str]:
    """The capability flags whose work happens at epoch boundaries or needs the epoch's batch count."""
    flags = ("needs_held_out_losses", "uses_prototypes", "uses_parameter_events", "uses_training_passes")
    return [flag for flag in flags if getattr(policy, flag)]


def _check_rebalancing_wiring(
    policy: CoefficientPolicy,
    model: keras.Model,
    mode: str,
    modality_logits: Any,
    unimodal_logits: Any,
    modality_features: Any,
    shared_head: Any,
) -> Any:
    """What a RebalancingPolicy's flags need (``modality_features``, ``shared_head``, ``unimodal_logits``);
    returns the features spec (``SumHeads`` of the feature layers, a function, or None)."""
    if not isinstance(policy, RebalancingPolicy):
        if modality_features is not None or shared_head is not None:
            raise ValueError(
                f"modality_features= and shared_head= are for RebalancingPolicy methods (GBlending, PMR, "
                f"DiagnosingRelearning, MLA), not {type(policy).__name__}; drop them"
            )
        return None
    who = type(policy).__name__
    if mode != "grad":
        raise ValueError(f"{who} scales no gradient and no learning rate; use mode='grad' (the default)")
    if modality_logits is not None:
        raise ValueError(f"{who} does not read modality_logits= (it scales no gradient); drop it")
    spec: Any = modality_features
    if isinstance(modality_features, Mapping):
        spec = SumHeads(heads={str(m): str(layer) for m, layer in modality_features.items()})
    if spec is not None:
        spec = _spec_of_known_form(policy, spec, argument="modality_features", where="modality_features ")
    shared = policy.uses_training_passes or policy.uses_fusion_weights
    needs_features = shared or policy.uses_prototypes or policy.uses_parameter_events
    if needs_features and spec is None:
        flags = [f for f in ("uses_prototypes", "uses_parameter_events", "uses_training_passes", "uses_fusion_weights")
                 if getattr(policy, f)]  # fmt: skip
        raise ValueError(
            f"{who} ({', '.join(flags)}) reads each modality's encoder features: pass modality_features={{modality: "
            "feature layer name}} (layers of the functional model) or fn(model, x, training) -> {modality: features}"
        )
    if shared:
        if shared_head is None:
            raise ValueError(
                f"{who} trains and predicts every modality through one shared head: pass shared_head=<the name of a "
                "Dense layer of the model whose input size is every encoder's feature size>"
            )
        if unimodal_logits is not None:
            raise ValueError(
                f"{who}: each modality's own logits are the shared head's on its features; drop unimodal_logits"
            )
        try:
            head = model.get_layer(shared_head)
        except ValueError as error:
            raise ValueError(f"shared_head={shared_head!r}: {error}") from None
        kernel = getattr(head, "kernel", None)
        if kernel is None or len(kernel.shape) != 2:
            raise ValueError(f"shared_head={shared_head!r} must be a built Dense-like layer with a 2-D kernel")
    elif shared_head is not None:
        raise ValueError(f"shared_head= is for policies with training passes or fusion weights, not {who}; drop it")
    if policy.needs_held_out_losses and unimodal_logits is None:
        raise ValueError(
            f"{who} weighs each modality's own loss (and measures it on held-out data): pass unimodal_logits= with "
            "each modality's own head's logits: SumHeads(heads={modality: unimodal head layer}) or fn(model, x, "
            "training) -> {modality: logits}"
        )
    return spec


def _feature_dims(model: keras.Model, spec: Any, modalities: Sequence[str]) -> dict[str, int]:
    """Each modality's feature width, from the functional graph (layer names) or a symbolic call of the function."""
    try:
        if hasattr(spec, "taps"):
            shapes = {m: output_in_caller(model.get_layer(layer)).shape for m, layer in spec.taps().items()}
        else:
            shapes = {m: v.shape for m, v in spec(model, model.input, False).items()}
        dims = {m: int(shapes[m][-1]) for m in modalities}
    except (AttributeError, ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"the width of each modality's features must be known when the model is wrapped ({error}); give "
            "modality_features as layer names of a functional model"
        ) from None
    return dims


def _check_unimodal_spec(policy: CoefficientPolicy, spec: Any) -> Any:
    if spec is None:
        if isinstance(policy, GradientPolicy) and policy.uses_unimodal_gradients:
            raise ValueError(
                f"{type(policy).__name__} combines each encoder's fused-loss and unimodal-loss gradients: pass "
                "unimodal_logits= giving each modality's own unimodal head's logits: SumHeads(heads={modality: "
                "unimodal head layer}) for a functional model, or a function fn(model, x, training) -> "
                "{modality: logits}"
            )
        if policy.uses_unimodal_losses:
            # Without them the method would train as something else (ARL without its loss term), silently.
            off = ", or set auxiliary=0" if hasattr(policy, "auxiliary") else ""
            raise ValueError(
                f"{type(policy).__name__} adds each modality's unimodal loss to the training loss ({policy!r}): "
                "pass unimodal_logits= with each modality's own logits, e.g. the decomposed fusion logits "
                "ConcatHead(head=..., features={...}) (the same spec as modality_logits), SumHeads(heads={modality: "
                f"unimodal head layer}}) or fn(model, x, training) -> {{modality: logits}}{off}"
            )
        return None
    if not _takes_unimodal_logits(policy) and not isinstance(policy, RebalancingPolicy):
        raise ValueError(
            f"unimodal_logits= adds unimodal losses, which {type(policy).__name__} does not use (it is for "
            "GradientPolicies and AdaptivePDMP(auxiliary=...)); add them to the inner model's losses instead, "
            "or drop unimodal_logits"
        )
    return _spec_of_known_form(policy, spec, argument="unimodal_logits", where="unimodal_logits ")


def _check_own_heads(spec: Any, model: keras.Model, *, argument: str) -> None:
    """A ``SumHeads`` names each modality's own head: not one layer for two modalities, not the layer that
    produces the model's (fused) output; either would give every modality the same logits, and a policy
    would then train on a unimodal loss or gradient that is not one, without any shape error."""
    if not isinstance(spec, SumHeads):
        return
    by_layer: dict[str, list[str]] = {}
    for modality, layer in spec.heads.items():
        by_layer.setdefault(layer, []).append(modality)
    shared = {layer: names for layer, names in by_layer.items() if len(names) > 1}
    if shared:
        layer, names = next(iter(shared.items()))
        raise ValueError(
            f"{argument}=SumHeads names the same layer {layer!r} for modalities {names}: each modality needs its own "
            "head (a classifier on that modality's encoder features), or every one gets the same logits"
        )
    fused = {layer.name for layer in _head_layers(model)}
    for modality, layer in spec.heads.items():
        if layer in fused:
            raise ValueError(
                f"{argument}=SumHeads names {layer!r}, the layer producing the output of model {model.name!r} (the "
                f"fused head), as modality {modality!r}'s head: its logits are the fused logits, not {modality!r}'s "
                "own; name each modality's own head layer (a classifier on its encoder's features)"
            )


def _spec_of_known_form(policy: CoefficientPolicy, spec: Any, *, argument: str, where: str) -> Any:
    """A logits spec (``ConcatHead``/``SumHeads`` naming exactly the policy's modalities, or a function)."""
    if hasattr(spec, "taps"):
        policy.check_modalities(list(spec.taps()), where=f"{where}{type(spec).__name__} modality names")
        return spec
    if callable(spec):
        return spec
    raise TypeError(f"{argument} must be ConcatHead, SumHeads or a function, got {type(spec).__name__}")


def _check_unimodal_logits(logits: Any, modalities: Sequence[str], y_pred: Any) -> None:
    """Trace time: the unimodal logits name exactly the modalities, each ``(batch, classes)`` like the output."""
    if not isinstance(logits, Mapping):
        raise TypeError(f"unimodal_logits must give a dict {{modality: logits}}, got {type(logits).__name__}")
    check_same_modalities(list(logits), modalities, where="unimodal_logits")
    seen: dict[int, str] = {}
    for name in modalities:
        if logits[name] is y_pred:
            raise ValueError(
                f"unimodal_logits[{name!r}] is the model's fused output: give each modality its own head's logits "
                "(a classifier on that modality's encoder features)"
            )
        if id(logits[name]) in seen:
            raise ValueError(
                f"unimodal_logits gives modalities {seen[id(logits[name])]!r} and {name!r} the same tensor: give each "
                "modality its own head's logits (a classifier on that modality's encoder features)"
            )
        seen[id(logits[name])] = name
    expected = tuple(y_pred.shape)
    for name in modalities:
        shape = tuple(logits[name].shape)
        same = len(shape) == 2 == len(expected) and all(
            a is None or b is None or a == b for a, b in zip(shape, expected, strict=True)
        )
        if not same:
            raise ValueError(
                f"unimodal_logits[{name!r}] has shape {shape}, but the model's output has shape {expected}: each "
                "modality's unimodal head must give (batch, classes) logits like the fused output (its unimodal "
                "loss is the sparse categorical cross-entropy from those logits)"
            )


def _tap_model(model: keras.Model, specs: LayerLogits | Sequence[LayerLogits]) -> keras.Model:
    """A view of ``model`` returning, in one forward pass, ``(output, {modality: tapped output}, {layer name:
    its output})``: the second for the first spec (what ``spec.logits`` reads), the third for every spec."""
    specs = [specs] if hasattr(specs, "taps") else list(specs)
    wanted: set[str] = set()
    for item in specs:
        wanted |= {*item.taps().values(), *([item.head] if isinstance(item, ConcatHead) else [])}
    spec = specs[0]
    try:
        names = {layer.name for layer in model.layers}
        inputs, output = model.inputs, model.output
    except (AttributeError, ValueError) as error:
        raise TypeError(
            f"{type(spec).__name__} reads layer outputs of a functional model, but {model.name!r} is a "
            f"{type(model).__name__} ({error}); pass modality_logits=fn(model, x, training) instead"
        ) from None
    missing = sorted(wanted - names)
    if missing:
        raise ValueError(
            f"{type(spec).__name__}: model {model.name!r} has no top-level layer(s) {missing}; "
            f"its layers: {', '.join(sorted(names))}"
        )
    for item in specs:
        if isinstance(item, ConcatHead):
            _check_concatenation_order(model, item)
    layers = sorted({layer for item in specs for layer in item.taps().values()})
    by_layer = {layer: output_in_caller(model.get_layer(layer)) for layer in layers}
    first = {name: by_layer[layer] for name, layer in spec.taps().items()}
    return keras.Model(inputs, (output, first, by_layer))


def _check_concatenation_order(model: keras.Model, spec: ConcatHead) -> None:
    """OGM-GE splits the head's kernel into blocks in ``spec.features`` order: that must be the order in
    which the model concatenates the features, or equal-width blocks would be scored for the wrong
    modality. Follows the graph from the head back to a last-axis ``Concatenate`` of the feature layers."""
    head = model.get_layer(spec.head)
    listed = list(spec.features.values())
    fix = "pass modality_logits=fn(model, x, training) for another fusion"
    inputs = inbound_tensors(head)
    concat = _skip_weightless(producing_layer(inputs[0])) if len(inputs) == 1 else None
    if not isinstance(concat, keras.layers.Concatenate):
        found = "nothing" if concat is None else f"{type(concat).__name__} {concat.name!r}"
        raise ValueError(
            f"ConcatHead: head {spec.head!r} is not applied to a Concatenate of the features (it reads {found}); "
            f"ConcatHead needs head(Concatenate()([{', '.join(listed)}])); {fix}"
        )
    rank = len(concat.output.shape)
    if concat.axis not in (-1, rank - 1):
        raise ValueError(
            f"ConcatHead: {concat.name!r} concatenates on axis {concat.axis}, but the head's blocks are on the last "
            f"axis; concatenate the features on axis -1, or {fix}"
        )
    sources = [_skip_weightless(producing_layer(t), stop=listed) for t in inbound_tensors(concat)]
    order = [getattr(layer, "name", None) for layer in sources]
    if order != listed:
        by_layer = {layer: name for name, layer in spec.features.items()}
        if sorted(map(str, order)) == sorted(listed):
            right = {by_layer[layer]: layer for layer in order}
            raise ValueError(
                f"ConcatHead: {concat.name!r} concatenates {order} in this order, but features lists {listed}; "
                f"OGM-GE would score the wrong blocks of head {spec.head!r}. List them in concatenation order: "
                f"ConcatHead({spec.head!r}, {right})"
            )
        raise ValueError(
            f"ConcatHead: {concat.name!r} concatenates the outputs of {order}, not the feature layers {listed}; "
            f"name the layers whose outputs are concatenated into head {spec.head!r}, or {fix}"
        )
