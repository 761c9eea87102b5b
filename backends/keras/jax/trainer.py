"""``ModulatedModel``'s JAX step: Keras's stateless JAX ``train_step`` plus the PDMP part before the update.

Keras's JAX trainer calls ``train_step(state, data) -> (logs, state)`` with every variable's value in
``state`` and keeps the variables themselves detached during ``fit()`` (``jax_state_sync`` reattaches
them). So the step reads and writes the model's own variables (coefficients, scores, clock) only inside
a ``keras.StatelessScope`` mapping them to ``state``, and returns their new values in ``state``; the
shared code of :class:`~pdmp.backends.keras.ModulatedModel` (``observe``, ``modulate_gradients``, the
lr-mode hook) runs unchanged inside that scope. The Python side syncs before it reads or writes them.
"""

from __future__ import annotations

from typing import Any

import jax
import keras
from keras import ops
from keras.src.distribution import distribution_lib

from pdmp.backends.keras._keras_private import micro_batch_counter
from pdmp.rebalancing import RebalancingPolicy
from pdmp.transforms import GradientPolicy


class ModulatedTrainer:
    """Mixed into ``ModulatedModel`` (before ``keras.Model``) when Keras runs on JAX."""

    def train_step(self: Any, state: Any, data: Any) -> tuple[dict[str, Any], Any]:
        """Keras's JAX ``train_step`` with
        :meth:`~pdmp.backends.keras.ModulatedModel.modulate_gradients` between the gradients and the update.

        The step's lifecycle is the shared one (``ModulatedModel._micro_batch_fate``, ``_end_step``): the
        counter advances only when the optimizer completes a step (not for a micro-batch that only
        accumulates under ``gradient_accumulation_steps``, nor for one a ``LossScaleOptimizer`` skipped), and
        a learning policy's scores are summed over the step's micro-batches.
        OGM-GE's logits and the unimodal logits of a policy that adds unimodal
        losses (``AdaptivePDMP(auxiliary>0)``) come from the same forward pass as the loss.
        """
        if distribution_lib.distribution() is not None:
            raise NotImplementedError(
                f"ModulatedModel on JAX does not support keras.distribution ({distribution_lib.distribution()!r}) "
                "yet; train on one device, or use KERAS_BACKEND=tensorflow with tf.distribute"
            )
        trainable, non_trainable, optimizer_values, metrics_values = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        rebalancing = isinstance(self.policy, RebalancingPolicy)
        if rebalancing and self.policy.uses_training_passes:
            return self._passes_step(state, x, y, sample_weight)
        gradient_policy = isinstance(self.policy, GradientPolicy)
        separate = gradient_policy and self.policy.uses_unimodal_gradients

        def loss_and_logits(trainable: Any, non_trainable: Any, metrics_values: Any) -> tuple[Any, Any]:
            # call() hands the modality logits of its forward pass over through this dict (see _captured).
            captured: dict[str, Any] = {}
            self._captured.value = captured
            try:
                loss, aux = self.compute_loss_and_updates(
                    trainable, non_trainable, metrics_values, x, y, sample_weight,
                    training=True, optimizer_variables=optimizer_values,
                )  # fmt: skip
            finally:
                self._captured.value = None
            if rebalancing:
                # The policy's weighted loss terms (the compiled loss is the fused one), scaled like Keras's.
                unscaled, y_pred, updated = aux[0], aux[1], aux[2]
                mapping = [
                    *zip(self.non_trainable_variables, updated, strict=True),
                    *zip(self.optimizer.variables, optimizer_values, strict=True),
                ]
                with keras.StatelessScope(state_mapping=mapping):
                    fused = self._fused_term(y, y_pred, sample_weight, unscaled)
                    total = self._rebalanced_loss(y_pred, fused, captured.get("features"),
                                                  captured.get("unimodal"), y)  # fmt: skip
                    loss = self.optimizer.scale_loss(total)
                return loss, (aux, None)
            extra: list[Any] = []
            if self._adds_unimodal_losses and captured.get("unimodal") is not None:
                # The policy's unimodal losses join the loss that is differentiated (not the logged loss, as
                # on TensorFlow), read at this step's weights and loss scale: the variables' values in `state`.
                mapping = [
                    *zip(self.non_trainable_variables, non_trainable, strict=True),
                    *zip(self.optimizer.variables, optimizer_values, strict=True),
                ]
                with keras.StatelessScope(state_mapping=mapping):
                    extra = [self.optimizer.scale_loss(u) for u in self._unimodal_losses(captured["unimodal"], y)]
                extra = [ops.cast(u, loss.dtype) for u in extra]
                loss = loss + sum(extra)
            # Differentiated: the loss, and (for a policy that keeps U apart) each modality's unimodal loss.
            outputs = (loss, ops.stack(extra)) if separate else loss
            return outputs, (aux, captured.get("logits"))

        unimodal_vjp = None
        if separate:
            # One forward pass; the gradient of the loss (G + U), then U of each modality's unimodal loss, as
            # the TensorFlow step's persistent tape does.
            (loss, unimodal_losses), backward, (aux, modality_logits) = jax.vjp(
                lambda values: loss_and_logits(values, non_trainable, metrics_values), trainable, has_aux=True
            )
            zeros = ops.zeros_like(unimodal_losses)
            gradients = backward((ops.ones_like(loss), zeros))[0]

            def unimodal_vjp(m: int) -> Any:
                return backward((ops.zeros_like(loss), ops.one_hot(m, zeros.shape[0], dtype=zeros.dtype)))[0]

        else:
            (_, (aux, modality_logits)), gradients = jax.value_and_grad(loss_and_logits, has_aux=True)(
                trainable, non_trainable, metrics_values
            )
        unscaled_loss, y_pred, non_trainable, metrics_values = aux
        references = self.non_trainable_variables
        mapping = [
            *zip(references, non_trainable, strict=True),
            *zip(self.optimizer.variables, optimizer_values, strict=True),
        ]
        if gradient_policy:
            # The anchor term reads the encoders' current values.
            mapping += list(zip(self.trainable_variables, trainable, strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            finite, completes = self._micro_batch_fate(gradients)
            scores = coefficients = None
            if gradient_policy:
                unimodal = None
                if unimodal_vjp is not None:
                    positions = self._encoder_positions(gradients, self.trainable_variables)
                    unimodal = []
                    for m, indices in enumerate(positions):
                        apart = unimodal_vjp(m) if indices else []
                        unimodal.append([apart[i] for i in indices])
                gradients = self._transform_gradients(
                    gradients, self.trainable_variables, modality_logits, y, unimodal, finite=finite,
                    completes=completes,
                )  # fmt: skip
            elif rebalancing:
                coefficients = None  # the loss carries the policy's weights; the gradients stay as they are
            elif modality_logits is None:
                coefficients = ops.convert_to_tensor(self.pdmp_coefficients)
            else:
                scores, coefficients = self._observe_batch(modality_logits, y, finite=finite)
            if not gradient_policy and not rebalancing:
                gradients = self.modulate_gradients(gradients, self.trainable_variables, coefficients=coefficients)
        non_trainable = [scope.get_current_value(v) for v in references]
        # The count of every apply (not the public iterations: under accumulation a tensor, not a variable).
        position = [id(v) for v in self.optimizer.variables].index(id(micro_batch_counter(self.optimizer)))
        scaled = self._lr_scaled_count()
        with self._step_coefficients(coefficients):
            trainable, new_optimizer_values = self.optimizer.stateless_apply(optimizer_values, gradients, trainable)
        taken = self._steps_taken(optimizer_values[position], new_optimizer_values[position])
        if self.mode == "lr":
            self._check_lr_mode_applied(gradients, self.trainable_variables, scaled, taken)
        with keras.StatelessScope(state_mapping=list(zip(references, non_trainable, strict=True))) as scope:
            self._end_step(taken, finite, scores)
        non_trainable = [scope.get_current_value(v) for v in references]
        logs, metrics_values = self._update_metrics_variables(
            metrics_values, unscaled_loss, x, y, y_pred, sample_weight
        )
        return logs, (trainable, non_trainable, new_optimizer_values, metrics_values)

    def _passes_step(self: Any, state: Any, x: Any, y: Any, sample_weight: Any) -> tuple[dict[str, Any], Any]:
        """A policy with training passes (MLA), statelessly: one forward pass of the encoders (``jax.vjp``), then
        per pass its loss through the shared head at the head's current values, the gradients of the pass's
        encoders (one pullback) and of the head, the head kernel's projection, and one optimizer ``apply`` on
        exactly those variables (the other encoders get no update, not even momentum's)."""
        trainable, non_trainable, optimizer_values, metrics_values = state
        variables = list(self.trainable_variables)
        references = self.non_trainable_variables

        def forward(values: Any) -> tuple[Any, Any]:
            mapping = [*zip(variables, values, strict=True), *zip(references, non_trainable, strict=True)]
            with keras.StatelessScope(state_mapping=mapping) as scope:
                y_pred, features, _ = self._rebalancing_forward(x, True)
            updated = [scope.get_current_value(v) for v in references]
            return features, (y_pred, [v if u is None else u for v, u in zip(non_trainable, updated, strict=True)])

        features, pullback, (y_pred, non_trainable) = jax.vjp(forward, list(trainable), has_aux=True)
        values = list(trainable)
        optimizer_now = list(optimizer_values)
        position = {id(v): i for i, v in enumerate(variables)}
        with keras.StatelessScope(state_mapping=list(zip(references, non_trainable, strict=True))):
            weights = self._pass_weights()
        total = ops.zeros((), features[self.modalities[0]].dtype)
        for index, pass_ in enumerate(self._passes.value):
            updated = self._pass_variables(index)
            head = list(self._shared_head.value.trainable_weights)

            def pass_loss(head_values: Any, pass_features: Any, index: int = index, head: Any = head) -> Any:
                with keras.StatelessScope(state_mapping=list(zip(head, head_values, strict=True))):
                    return self._pass_loss(index, weights, {**features, **pass_features}, y)

            head_values = [values[position[id(v)]] for v in head]
            mine = {m: features[m] for m in pass_.modalities}
            loss, (head_gradients, feature_gradients) = jax.value_and_grad(pass_loss, argnums=(0, 1))(head_values, mine)
            cotangent = {m: feature_gradients[m] if m in mine else ops.zeros_like(v) for m, v in features.items()}
            (all_gradients,) = pullback(cotangent)
            by_variable = {id(v): g for v, g in zip(head, head_gradients, strict=True)}
            gradients = [by_variable.get(id(v), all_gradients[position[id(v)]]) for v in updated]
            mapping = [
                *zip(references, non_trainable, strict=True),
                *zip(self.optimizer.variables, optimizer_now, strict=True),
                *zip(variables, values, strict=True),
            ]
            with keras.StatelessScope(state_mapping=mapping) as scope:
                gradients = self._project_head_gradient(index, features, updated, gradients)
                self.optimizer.apply(gradients, updated)
            values = [scope.get_current_value(v) if scope.get_current_value(v) is not None else old
                      for v, old in zip(variables, values, strict=True)]  # fmt: skip
            optimizer_now = [scope.get_current_value(v) if scope.get_current_value(v) is not None else old
                             for v, old in zip(self.optimizer.variables, optimizer_now, strict=True)]  # fmt: skip
            total = total + ops.cast(loss, total.dtype)
        with keras.StatelessScope(state_mapping=list(zip(references, non_trainable, strict=True))) as scope:
            self.pdmp_step.assign_add(1)
            self.pdmp_batch.assign_add(1)
        non_trainable = [scope.get_current_value(v) for v in references]
        logs, metrics_values = self._update_metrics_variables(metrics_values, total, x, y, y_pred, sample_weight)
        return logs, (values, non_trainable, optimizer_now, metrics_values)

    def _attach_state(self: Any) -> None:
        """Put the values of a running ``fit()`` back into the variables, so that Python reads (and writes)
        the current ones; the next step then starts from the variables (Keras's own callback sync)."""
        self.jax_state_sync()
