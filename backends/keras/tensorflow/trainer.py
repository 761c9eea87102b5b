"""``ModulatedModel``'s TensorFlow step: Keras's stock TF ``train_step`` plus the PDMP part before the update."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras.src.losses.loss import unscale_loss_for_distribution

from pdmp.backends.keras._keras_private import micro_batch_counter
from pdmp.rebalancing import RebalancingPolicy
from pdmp.transforms import GradientPolicy


def compute_loss_like_keras(model: keras.Model, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
    """The loss exactly as Keras's TF ``train_step`` computes it, also updating the ``loss`` metric."""
    loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
    batch = tf.shape(next(i for i in keras.tree.flatten(x) if i is not None))[0]
    model._loss_tracker.update_state(unscale_loss_for_distribution(loss), sample_weight=batch)
    return loss


class ModulatedTrainer:
    """Mixed into ``ModulatedModel`` (before ``keras.Model``) when Keras runs on TensorFlow."""

    def train_step(self: Any, data: Any) -> dict[str, Any]:
        """Keras's TensorFlow ``train_step`` with ``modulate_gradients`` before ``apply_gradients``.

        The step's lifecycle is the shared one (``ModulatedModel._micro_batch_fate``, ``_end_step``): the
        step counter advances only when the optimizer completes a step (not for a micro-batch that only
        accumulates, nor for one a ``LossScaleOptimizer`` skipped), and policies observe and transform once
        per taken step. A GradientPolicy's step backpropagates the unimodal losses too (each modality's
        apart, where the policy asks) and replaces the encoders' gradients by ``_transform_gradients``.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(self.policy, RebalancingPolicy):
            if self.policy.uses_training_passes:
                return self._passes_step(x, y, sample_weight)
            return self._rebalancing_step(x, y, sample_weight)
        gradient_policy = isinstance(self.policy, GradientPolicy)
        separate = gradient_policy and self.policy.uses_unimodal_gradients
        with tf.GradientTape(persistent=separate) as tape:
            y_pred, modality_logits, unimodal_logits = self._forward(x)
            loss = compute_loss_like_keras(self, x, y, y_pred, sample_weight)
            unimodal_losses = [] if unimodal_logits is None else self._unimodal_losses(unimodal_logits, y)
            if unimodal_losses:
                loss = loss + tf.add_n([tf.cast(u, loss.dtype) for u in unimodal_losses])
            if self.optimizer is not None:
                loss = self.optimizer.scale_loss(loss)
                unimodal_losses = [self.optimizer.scale_loss(u) for u in unimodal_losses]
        variables = self.trainable_weights
        if variables:
            gradients = tape.gradient(loss, variables)
            finite, completes = self._micro_batch_fate(gradients)
            scores = None
            if gradient_policy:
                unimodal = None
                if separate:
                    # U of each modality's own encoder: one more (partial) backward pass per modality.
                    positions = self._encoder_positions(gradients, variables)
                    unimodal = [
                        tape.gradient(unimodal_losses[m], [variables[i] for i in indices]) if indices else []
                        for m, indices in enumerate(positions)
                    ]
                    del tape
                gradients = self._transform_gradients(
                    gradients, variables, modality_logits, y, unimodal, finite=finite, completes=completes
                )
                coefficients = None
            else:
                coefficients = None
                if modality_logits is not None:
                    scores, coefficients = self._observe_batch(modality_logits, y, finite=finite)
                gradients = self.modulate_gradients(gradients, variables, coefficients=coefficients)
            counter = micro_batch_counter(self.optimizer)
            before = tf.convert_to_tensor(counter)
            scaled = self._lr_scaled_count()
            with self._step_coefficients(coefficients):
                self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            taken = tf.cast(self._steps_taken(before, tf.convert_to_tensor(counter)), tf.int64)
            if self.mode == "lr":
                self._check_lr_mode_applied(gradients, variables, scaled, taken)
            self._end_step(taken, finite, scores)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _rebalancing_step(self: Any, x: Any, y: Any, sample_weight: Any) -> dict[str, Any]:
        """A RebalancingPolicy's step: the policy's weighted loss terms (``_rebalanced_loss``), gradients unscaled."""
        with tf.GradientTape() as tape:
            y_pred, features, unimodal = self._rebalancing_forward(x, True)
            fused = compute_loss_like_keras(self, x, y, y_pred, sample_weight)  # the logged loss
            fused = self._fused_term(y, y_pred, sample_weight, fused)
            loss = self._rebalanced_loss(y_pred, fused, features, unimodal, y)
            loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_weights
        gradients = tape.gradient(loss, variables)
        finite, _ = self._micro_batch_fate(gradients)
        counter = micro_batch_counter(self.optimizer)
        before = tf.convert_to_tensor(counter)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        taken = tf.cast(self._steps_taken(before, tf.convert_to_tensor(counter)), tf.int64)
        self._end_step(taken, finite, None)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _passes_step(self: Any, x: Any, y: Any, sample_weight: Any) -> dict[str, Any]:
        """A policy with training passes (MLA): one forward pass of the encoders, then per pass its loss through
        the shared head (at the head's weights after the passes before it), the gradient of the pass's encoders
        and the head only, the head kernel's projection, and one optimizer step on exactly those variables
        (``apply_gradients`` of a subset: the other encoders get no update, not even momentum's)."""
        with tf.GradientTape(persistent=True) as tape:
            y_pred, features, _ = self._rebalancing_forward(x, True)
        weights = self._pass_weights()
        total = tf.zeros((), features[self.modalities[0]].dtype)
        for index in range(len(self._passes.value)):
            with tape:  # resumes recording: the pass's loss is differentiated back through the same features
                loss = self._pass_loss(index, weights, features, y)
            variables = self._pass_variables(index)
            gradients = tape.gradient(loss, variables)
            gradients = self._project_head_gradient(index, features, variables, gradients)
            self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            total = total + tf.cast(loss, total.dtype)
        del tape
        self.pdmp_step.assign_add(1)
        self.pdmp_batch.assign_add(1)
        batch = tf.shape(next(i for i in keras.tree.flatten(x) if i is not None))[0]
        self._loss_tracker.update_state(total, sample_weight=batch)  # the logged loss: the passes' losses summed
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _forward(self: Any, x: Any) -> tuple[Any, Any, Any]:
        if self._logits.value is None and self._unimodal_logits.value is None:
            return self(x, training=True), None, None
        return self._forward_with_logits(x, True)

    def _attach_state(self) -> None:
        """Nothing to do: TensorFlow's step updates the variables themselves."""
