"""PDMP for Keras 3 on TensorFlow or JAX: a ``fit()``-compatible model that modulates per-modality gradients.

Names mirror :mod:`pdmp.backends.torch`; the coefficient math is the core's (:mod:`pdmp.policies`).

* :class:`ModulatedModel` wraps a built model; its ``train_step`` scales each modality's gradients
  (``mode="grad"``) or learning rate (``mode="lr"``) by the policy's coefficient.
* :func:`concat_head_logits`, :func:`sum_head_logits`, :class:`ConcatHead`, :class:`SumHeads`:
  per-modality logits for OGM-GE.
* :func:`rank_unimodal`: stage 1, train one Keras model per modality and rank them (the user's
  optimizer and learning-rate schedule, one or several training seeds; ``return_details=True`` gives
  the core's :class:`pdmp.UnimodalReport`).
* :func:`dependency_shares`: each modality's dependency share of a fused model over a dataset.
* :class:`PDMPLogger`: a callback putting ``pdmp/coef_<m>`` and ``pdmp/share_<m>`` into ``fit()``'s logs.

Keras's backend is the one ``KERAS_BACKEND`` selects: ``tensorflow`` or ``jax`` (the backend-specific
step lives in ``tensorflow/`` and ``jax/``); importing this module on any other raises ImportError
naming the active and the supported backends (:data:`SUPPORTED_BACKENDS`).
"""

from pdmp.backends._coexistence import load_triton_before_tensorflow

load_triton_before_tensorflow()  # before keras loads tensorflow (if it does): see the module

from pdmp.backends.keras._backend import SUPPORTED_BACKENDS, check_backend  # noqa: E402

check_backend()

from pdmp.backends.keras.dependency import dependency_shares  # noqa: E402
from pdmp.backends.keras.heads import ConcatHead, SumHeads, concat_head_logits, sum_head_logits  # noqa: E402
from pdmp.backends.keras.logs import PDMPLogger  # noqa: E402
from pdmp.backends.keras.model import ModulatedModel  # noqa: E402
from pdmp.backends.keras.ranking import rank_unimodal  # noqa: E402
from pdmp.backends.keras.robustness import (  # noqa: E402
    ModalityDropoutData,
    apply_modality_dropout,
    evaluate_robustness,
)

__all__ = [
    "SUPPORTED_BACKENDS",
    "ConcatHead",
    "ModalityDropoutData",
    "ModulatedModel",
    "PDMPLogger",
    "SumHeads",
    "apply_modality_dropout",
    "concat_head_logits",
    "dependency_shares",
    "evaluate_robustness",
    "rank_unimodal",
    "sum_head_logits",
]
