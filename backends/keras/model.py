"""``ModulatedModel``: a Keras model whose ``train_step`` multiplies each modality's gradients.

It wraps any built Keras model (functional, sequential or subclassed) and keeps ``fit()``,
``evaluate()``, ``predict()``, metrics, callbacks, the progress bar, mixed precision and ``.keras``
saving working: the step is Keras's stock TensorFlow ``train_step`` with one addition between
``tape.gradient`` and ``optimizer.apply_gradients``.

Concepts map one-to-one to :class:`pdmp.backends.torch.Modulator`:

=====================================  ===============================================================
torch ``Modulator``                    Keras ``ModulatedModel``
=====================================  ===============================================================
``Modulator(modalities, policy,        ``ModulatedModel(model, modalities, policy, mode=...)``; the
mode, optimizer)``                     optimizer is the one given to ``compile()``
``set_epoch(e)``                       ``set_epoch(e)`` (``fit()`` calls it at every epoch start)
``step()``                             done in the graph: the step counter advances in ``train_step``
                                       and ``fit()`` refreshes step-based schedules every batch
``observe(logits, labels)``            done in the graph from ``modality_logits`` (OGM-GE only)
``coefficients``                       ``coefficients`` (read from the non-trainable variables)
``state_dict()`` / ``load_state_dict``  the same; the state is also saved in ``.keras`` files
=====================================  ===============================================================

Where the decisions are made: the schedule (warm-up, ramp, end, gammas) is the core policy's, called
in Python at batch/epoch boundaries; its result is written into non-trainable variables only when it
changes, so the traced step reads variables and never retraces. OGM-GE needs this batch's logits, so
its formula runs in the graph (:mod:`pdmp.backends.keras._ogm`, tested against the core).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import keras
import numpy as np
import tensorflow as tf

from pdmp._validation import check_disjoint_assignment, check_non_negative_int
from pdmp.backends.keras import _ogm, _optimizer_lr
from pdmp.backends.keras._keras_private import compute_loss_like_keras, output_in_caller
from pdmp.backends.keras.heads import ConcatHead, LayerLogits, layer_logits_from_config
from pdmp.policies import OGM_NOISE_EPS, OGMGE, Clock, CoefficientPolicy, policy_from_config

Mode = Literal["grad", "lr"]
Member: TypeAlias = "keras.layers.Layer | keras.Variable | str"
#: ``fn(model, x, training) -> {modality: logits}``: a user function giving OGM-GE's per-modality logits.
LogitsFn = Callable[[keras.Model, Any, bool], Mapping[str, Any]]


class _Hidden:
    """Holds Python objects that Keras's attribute tracking must not walk (or save twice)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


@keras.saving.register_keras_serializable(package="pdmp")
class ModulatedModel(keras.Model):
    """Wraps ``model`` so that ``fit()`` scales each modality's encoder gradients by the policy's coefficient.

    Args:
        model: a built Keras model; its forward pass is used unchanged.
        modalities: for each modality, its encoder given as a layer, a layer name, a variable, a
            variable path, or a list of these. Every trainable variable of a listed layer belongs to
            that modality. Leave fusion/head variables out: they are never modulated.
        policy: a :class:`pdmp.CoefficientPolicy` (``PDMP``, ``OGMGE``, ``NoModulation``) over exactly
            these modality names.
        mode: ``"grad"`` multiplies gradients by ``k``; ``"lr"`` multiplies the learning rate the
            optimizer uses for those variables by ``k``, which prioritises under any optimizer (see
            :mod:`pdmp.backends.keras._optimizer_lr` for what is and is not scaled). What equals what:
            under Keras's ``SGD`` the two modes give identical updates, with or without momentum,
            Nesterov or ``weight_decay`` (Keras's SGD uses ``lr * g`` only as a product and its weight
            decay is decoupled, so neither sees the difference), even while ``k`` changes. Under
            Adam/AdamW/RMSprop ``grad`` mode is nearly a no-op (they normalise the gradient's scale;
            only epsilon notices) and ``lr`` mode is exactly ``k * lr`` for those variables. Gradient
            clipping (``clipnorm``/``global_clipnorm``) sees the scaled gradients in ``grad`` mode.
        modality_logits: OGM-GE only: :class:`~pdmp.backends.keras.ConcatHead` /
            :class:`~pdmp.backends.keras.SumHeads` (layer names of a functional model; the logits come
            from the training forward pass itself), or ``fn(model, x, training) -> {modality: logits}``
            (runs an extra forward; register it with ``keras.saving.register_keras_serializable`` to
            save the model).
        seed: seed of OGM-GE's gradient noise. Noise is drawn statelessly from (seed, step, variable),
            so it is reproducible and identical on every replica. Under ``tf.distribute`` it is added to
            each replica's gradient before the optimizer sums them, with that replica's gradient's
            standard deviation (the single-device reference adds it once, after reduction).
    """

    def __init__(
        self,
        model: keras.Model,
        modalities: Mapping[str, Member | Sequence[Member]],
        policy: CoefficientPolicy,
        *,
        mode: Mode = "grad",
        modality_logits: LayerLogits | LogitsFn | None = None,
        seed: int = 0,
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
                f"policy must be a pdmp CoefficientPolicy (PDMP, OGMGE, NoModulation), got {type(policy).__name__}"
            )
        if mode not in ("grad", "lr"):
            raise ValueError(f"mode must be 'grad' or 'lr', got {mode!r}")
        if not isinstance(modalities, Mapping):
            raise TypeError(
                f"modalities must be a dict {{name: layer(s)/variable(s)}}, got {type(modalities).__name__}"
            )
        policy.check_modalities(list(modalities), where="ModulatedModel modalities")
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
                for key in _optimizer_lr.variable_keys(variable):
                    index[key] = position
        self._index = _Hidden(index)
        spec = _check_logits_spec(policy, modality_logits, model)
        self._logits = _Hidden(spec)
        self._tap_model = _Hidden(_tap_model(model, spec) if hasattr(spec, "taps") else None)
        count = len(self.modalities)
        self.pdmp_coefficients = self.add_weight(
            shape=(count,), initializer="ones", dtype="float32", trainable=False, aggregation="mean",
            name="pdmp_coefficients",
        )  # fmt: skip
        self.pdmp_scores = self.add_weight(
            shape=(count,), initializer="zeros", dtype="float32", trainable=False, aggregation="mean",
            name="pdmp_scores",
        )  # fmt: skip
        self.pdmp_noise_gate = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False, aggregation="mean", name="pdmp_noise_gate"
        )
        self.pdmp_step = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, aggregation="only_first_replica",
            name="pdmp_step",
        )  # fmt: skip
        self.pdmp_epoch = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False, aggregation="only_first_replica",
            name="pdmp_epoch",
        )  # fmt: skip
        self._clock = Clock()
        self._written: tuple[float, ...] | None = None
        self._lr_lookup = _Hidden(self._lr_multiplier)
        self.built = True
        self.update_coefficients()

    # -- the forward pass and the step ------------------------------------------------------------

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.inner_model(inputs, training=training)

    def train_step(self, data: Any) -> dict[str, Any]:
        """Keras's TensorFlow ``train_step`` with :meth:`modulate_gradients` before ``apply_gradients``."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred, modality_logits = self._forward(x)
            loss = compute_loss_like_keras(self, x, y, y_pred, sample_weight)
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_weights
        if variables:
            gradients = tape.gradient(loss, variables)
            coefficients = None if modality_logits is None else self.observe(modality_logits, y)
            gradients = self.modulate_gradients(gradients, variables, coefficients=coefficients)
            self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        self.pdmp_step.assign_add(1)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def observe(self, modality_logits: Mapping[str, Any], labels: Any) -> tf.Tensor:
        """OGM-GE: set the coefficients from this batch's per-modality logits (in the graph).

        Scores are summed over replicas before use, so every replica computes the same coefficients.
        Returns the coefficients, in :attr:`modalities` order.
        """
        if not isinstance(self.policy, OGMGE):
            raise TypeError(f"observe() is for OGM-GE; policy {type(self.policy).__name__} needs no logits")
        self.policy.check_modalities(list(modality_logits), where="ModulatedModel.observe logits")
        scores = _ogm.batch_scores([modality_logits[name] for name in self.modalities], labels)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            scores = context.all_reduce(tf.distribute.ReduceOp.SUM, scores)
        gate = tf.convert_to_tensor(self.pdmp_noise_gate)  # 1 while OGM-GE is active
        coefficients = gate * _ogm.coefficients(scores, self.policy.alpha) + (1.0 - gate)
        self.pdmp_scores.assign(scores)
        self.pdmp_coefficients.assign(coefficients)
        return coefficients

    def modulate_gradients(
        self, gradients: Sequence[Any], variables: Sequence[Any], *, coefficients: tf.Tensor | None = None
    ) -> list[Any]:
        """Scale (``grad`` mode) and, for OGM-GE, add noise to each modality variable's gradient.

        Use it in a custom training loop between ``tape.gradient`` and ``apply_gradients``. Gradients
        may be loss-scaled (mixed precision): scaling commutes with it, and OGM-GE's noise is drawn
        from the unscaled gradient's standard deviation and scaled back. ``coefficients`` (in
        :attr:`modalities` order) default to the model's coefficient variables.
        """
        if coefficients is None:
            coefficients = tf.convert_to_tensor(self.pdmp_coefficients)
        noisy = self.policy.adds_noise
        if noisy:
            loss_scale = tf.cast(self.optimizer.scale_loss(tf.constant(1.0)), tf.float32)
            gate = tf.convert_to_tensor(self.pdmp_noise_gate)
        if self.mode == "lr" and self.optimizer is not None:
            _optimizer_lr.install(self.optimizer, self._lr_lookup.value)
        result = list(gradients)
        index = self._index.value
        for position, (gradient, variable) in enumerate(zip(gradients, variables, strict=True)):
            modality = index.get(id(variable))
            if gradient is None or modality is None:
                continue
            if isinstance(gradient, tf.IndexedSlices) and noisy:
                gradient = tf.convert_to_tensor(gradient)
            k = tf.cast(coefficients[modality], gradient.dtype)
            if self.mode == "grad":
                scaled = (
                    tf.IndexedSlices(gradient.values * k, gradient.indices, gradient.dense_shape)
                    if isinstance(gradient, tf.IndexedSlices)
                    else gradient * k
                )
            else:
                scaled = gradient
            if noisy:
                raw = tf.cast(gradient, tf.float32) / loss_scale
                seed = tf.stack([tf.cast(self.seed, tf.int64), tf.convert_to_tensor(self.pdmp_step) * 4096 + position])
                noise = tf.random.stateless_normal(tf.shape(raw), seed=seed) * (_ogm.sample_std(raw) + OGM_NOISE_EPS)
                scaled = scaled + tf.cast(gate * noise * loss_scale, scaled.dtype)
            result[position] = scaled
        return result

    def _forward(self, x: Any) -> tuple[Any, dict[str, Any] | None]:
        spec = self._logits.value
        if spec is None:
            return self(x, training=True), None
        if callable(spec) and not hasattr(spec, "taps"):
            y_pred = self(x, training=True)
            return y_pred, dict(spec(self.inner_model, x, True))
        y_pred, tapped = self._tap_model.value(x, training=True)
        return y_pred, spec.logits(self.inner_model, tapped)

    def _lr_multiplier(self, variable: Any) -> tf.Tensor | None:
        modality = self._index.value.get(id(variable))
        if modality is None:
            return None
        return tf.convert_to_tensor(self.pdmp_coefficients)[modality]

    # -- the schedule -------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Tell the policy which epoch starts (0-based); ``fit()`` calls it for you."""
        self._clock.epoch = check_non_negative_int(epoch, name="epoch")
        self.pdmp_epoch.assign(self._clock.epoch)
        self.update_coefficients()

    def update_coefficients(self) -> None:
        """Write the policy's coefficients for the current step/epoch into the model's variables.

        ``fit()`` calls it at every batch and epoch start; with ``train_on_batch`` or a custom loop,
        call :meth:`set_epoch` and this yourself. Variables are written only when a value changes.
        """
        if isinstance(self.policy, OGMGE):
            values: tuple[float, ...] = (1.0 if self.policy.active(self._clock.epoch) else 0.0,)
        elif self.policy.needs_logits:
            raise NotImplementedError(f"{type(self.policy).__name__} needs logits and has no Keras implementation")
        else:
            modulation = self.policy.modulation(step=self._clock.step, epoch=self._clock.epoch)
            values = (*(modulation.coefficients[name] for name in self.modalities), float(modulation.noise))
        if values == self._written:
            return
        if len(values) > 1:
            self.pdmp_coefficients.assign(np.asarray(values[:-1], dtype=np.float32))
        self.pdmp_noise_gate.assign(values[-1])
        self._written = values

    def _sync_clock(self) -> None:
        """Adopt the step/epoch stored in the variables (after loading, or steps run outside fit())."""
        self._clock.step = int(self.pdmp_step.numpy())
        self._clock.epoch = int(self.pdmp_epoch.numpy())

    @property
    def modalities(self) -> tuple[str, ...]:
        """The policy's modality names, in the order of the coefficient variables."""
        return self.policy.modalities

    @property
    def step_count(self) -> int:
        """Training steps taken (``train_step`` calls), as stored in the model."""
        return int(self.pdmp_step.numpy())

    @property
    def epoch(self) -> int:
        return int(self.pdmp_epoch.numpy())

    @property
    def coefficients(self) -> dict[str, float]:
        """Current coefficient of each modality (for OGM-GE: the last batch's)."""
        values = np.asarray(self.pdmp_coefficients.numpy(), dtype=np.float64)
        return {name: float(value) for name, value in zip(self.modalities, values, strict=True)}

    @property
    def modality_variables(self) -> dict[str, tuple[keras.Variable, ...]]:
        """The variables each modality's coefficient applies to."""
        return dict(self._groups.value)

    def state_dict(self) -> dict[str, Any]:
        """Policy, clock and coefficients, as plain Python values (what a ``.keras`` file also stores)."""
        self._sync_clock()
        return {
            "policy": self.policy.get_config(),
            "mode": self.mode,
            "clock": self._clock.state_dict(),
            "coefficients": self.coefficients,
            "seed": self.seed,
            "scores": dict(zip(self.modalities, (float(s) for s in self.pdmp_scores.numpy()), strict=True)),
        }

    def load_state_dict(self, state: Mapping[str, Any], *, strict: bool = True) -> None:
        """Restore :meth:`state_dict`. With ``strict`` the saved policy must equal this model's."""
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
        if seed != self.seed:
            self.seed = seed
            self.train_function = None  # the seed is a trace-time constant: retrace
        self._clock.load_state_dict(state["clock"])
        self.pdmp_step.assign(self._clock.step)
        self.pdmp_epoch.assign(self._clock.epoch)
        coefficients = state.get("coefficients", {})
        self.policy.check_modalities(list(coefficients), where="state['coefficients']")
        self.pdmp_coefficients.assign(np.asarray([coefficients[n] for n in self.modalities], dtype=np.float32))
        self._written = None
        if not self.policy.needs_logits:
            self.update_coefficients()

    # -- fit() ------------------------------------------------------------------------------------------

    def fit(self, *args: Any, callbacks: Any = None, **kwargs: Any) -> Any:
        """``keras.Model.fit`` plus a first callback that keeps the coefficients on the policy's schedule."""
        schedule = _ScheduleCallback(self)
        if callbacks is None:
            callbacks = [schedule]
        elif isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks.callbacks.insert(0, schedule)
            schedule.set_model(self)
        else:
            callbacks = [schedule, *callbacks]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # -- saving -----------------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        spec = self._logits.value
        if spec is None:
            logits_config = None
        elif hasattr(spec, "get_config"):
            logits_config = spec.get_config()
        else:
            logits_config = {"type": "function", "function": keras.saving.serialize_keras_object(spec)}
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
            "modality_logits": logits_config,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> ModulatedModel:
        options = dict(config)
        model = keras.saving.deserialize_keras_object(options.pop("model"), custom_objects=custom_objects)
        logits_config = options.pop("modality_logits", None)
        spec: Any = None
        if logits_config is not None:
            if logits_config.get("type") == "function":
                spec = keras.saving.deserialize_keras_object(logits_config["function"], custom_objects=custom_objects)
            else:
                spec = layer_logits_from_config(logits_config)
        policy = policy_from_config(options.pop("policy"))
        options.pop("dtype", None)
        weights = model.weights
        modalities = {name: [weights[int(i)] for i in indices] for name, indices in options.pop("modalities").items()}
        return cls(model, modalities, policy, modality_logits=spec, **options)


class _ScheduleCallback(keras.callbacks.Callback):
    """Advances the Python clock at batch/epoch boundaries and refreshes the coefficients."""

    def __init__(self, owner: ModulatedModel) -> None:
        super().__init__()
        self._owner = _Hidden(owner)
        self._begin = 0

    def on_train_begin(self, logs: Any = None) -> None:
        self._owner.value._sync_clock()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._owner.value.set_epoch(epoch)

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self._begin = batch
        self._owner.value.update_coefficients()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._owner.value._clock.step += batch - self._begin + 1


# -- resolving modalities ----------------------------------------------------------------------------------


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return list(model._flatten_layers(include_self=False, recursive=True))


def _resolve_modalities(model: keras.Model, modalities: Mapping[str, Any]) -> dict[str, tuple[keras.Variable, ...]]:
    trainable = {id(v): v for v in model.trainable_weights}
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
                if id(variable) not in trainable:
                    if any(variable is v for v in model.weights):
                        continue  # frozen: not trained, so nothing to modulate
                    raise ValueError(
                        f"modality {name!r}: variable {variable.path!r} is not a variable of model {model.name!r}; "
                        "list the encoders of the model you are wrapping"
                    )
                ids.append(id(variable))
        groups[name] = ids
    checked = check_disjoint_assignment(groups, describe=lambda key: repr(trainable[key].path), kind="variable")
    return {name: tuple(trainable[key] for key in keys) for name, keys in checked.items()}  # type: ignore[index]


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
    if not policy.needs_logits:
        if spec is not None:
            raise ValueError(f"modality_logits is only used by OGM-GE; {type(policy).__name__} ignores it, drop it")
        return None
    if spec is None:
        raise ValueError(
            "OGMGE needs per-modality logits: pass modality_logits=ConcatHead(head=..., features={...}), "
            "SumHeads(heads={...}) or a function fn(model, x, training) -> {modality: logits}"
        )
    if hasattr(spec, "taps"):
        policy.check_modalities(list(spec.taps()), where=f"{type(spec).__name__} modality names")
        return spec
    if callable(spec):
        return spec
    raise TypeError(f"modality_logits must be ConcatHead, SumHeads or a function, got {type(spec).__name__}")


def _tap_model(model: keras.Model, spec: LayerLogits) -> keras.Model:
    """A view of ``model`` returning ``(output, {modality: tapped layer output})`` in one forward pass."""
    wanted = {*spec.taps().values(), *([spec.head] if isinstance(spec, ConcatHead) else [])}
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
    tapped = {name: output_in_caller(model.get_layer(layer)) for name, layer in spec.taps().items()}
    return keras.Model(inputs, (output, tapped))
