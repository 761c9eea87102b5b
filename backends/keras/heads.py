"""Per-modality logits for OGM-GE, from the fused model's own head.

OGM-GE scores each modality by the logits its features alone produce through the fusion head:

* concat fusion, head ``Dense`` on ``[f_1 | ... | f_M]``: ``out_u = f_u @ W_u + b / M`` where ``W_u``
  is the kernel's block of rows for modality u (the reference code's ``b/2`` for two modalities);
* sum fusion, ``out = sum_u head_u(f_u)``: ``out_u = head_u(f_u)``.

The functions compute these from tensors (use them in a custom loop or a ``logits_fn``);
:class:`ConcatHead` and :class:`SumHeads` tell :class:`~pdmp.backends.keras.ModulatedModel` which
layers of a functional model to read them from, so the logits come from the same forward pass as the
loss, and are saved with the model's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from pdmp._validation import check_modality_names


def concat_head_logits(head: keras.layers.Layer, features: Mapping[str, Any]) -> dict[str, Any]:
    """Decompose a concat-fusion ``Dense`` head into per-modality logits.

    ``features`` must be in the order they are concatenated before ``head`` (dicts keep insertion
    order); their widths must add up to the head's input width.
    """
    names = check_modality_names(features.keys(), where="concat_head_logits features")
    kernel = getattr(head, "kernel", None)
    if kernel is None or len(kernel.shape) != 2:
        raise TypeError(
            f"concat_head_logits needs a built Dense-like head with a 2-D kernel, got {type(head).__name__} "
            f"{getattr(head, 'name', '')!r}; for other heads pass your own logits function"
        )
    tensors = {name: ops.convert_to_tensor(features[name]) for name in names}
    widths = [int(tensors[name].shape[-1]) for name in names]
    if sum(widths) != kernel.shape[0]:
        given = dict(zip(names, widths, strict=True))
        raise ValueError(
            f"concat_head_logits: feature widths {given} add up to {sum(widths)}, but head "
            f"{head.name!r} takes {kernel.shape[0]} inputs; pass the features that are concatenated into it, in order"
        )
    # Read through ops.convert_to_tensor: inside a stateless (JAX) step that is this step's value of the kernel.
    blocks = ops.split(ops.convert_to_tensor(kernel), np.cumsum(widths)[:-1].tolist(), axis=0)
    bias = getattr(head, "bias", None)
    share = None if bias is None else ops.convert_to_tensor(bias) / len(names)
    result = {}
    for name, block in zip(names, blocks, strict=True):
        out = ops.matmul(ops.cast(tensors[name], block.dtype), block)
        result[name] = out if share is None else out + share
    return result


def sum_head_logits(heads: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
    """Per-modality logits of sum fusion, ``out = sum_u heads[u](features[u])``: ``out_u = heads[u](features[u])``."""
    names = check_modality_names(heads.keys(), where="sum_head_logits heads")
    if set(features) != set(names):
        raise ValueError(
            f"sum_head_logits: heads name {sorted(names)} but features name {sorted(features)}; give one feature "
            "tensor per head"
        )
    return {name: heads[name](features[name]) for name in names}


@dataclass(frozen=True)
class ConcatHead:
    """Read OGM-GE logits from a concat-fusion head of a functional model, by layer names.

    ``features`` maps each modality to the layer whose output is that modality's feature vector,
    in concatenation order; ``head`` names the ``Dense`` layer applied to the concatenation.
    ``ModulatedModel`` checks both against the model's graph (a last-axis ``Concatenate`` of exactly
    these layers, in this order, under the head) and refuses anything else: a wrong order would score
    the wrong kernel blocks without any shape error when the features have equal widths.
    """

    head: str
    features: dict[str, str]

    def taps(self) -> dict[str, str]:
        return dict(self.features)

    def logits(self, model: keras.Model, tapped: Mapping[str, Any]) -> dict[str, Any]:
        return concat_head_logits(model.get_layer(self.head), {name: tapped[name] for name in self.features})

    def get_config(self) -> dict[str, Any]:
        return {"type": "ConcatHead", "head": self.head, "features": dict(self.features)}


@dataclass(frozen=True)
class SumHeads:
    """Read OGM-GE logits of sum fusion: ``heads`` maps each modality to its head layer's name."""

    heads: dict[str, str]

    def taps(self) -> dict[str, str]:
        return dict(self.heads)

    def logits(self, model: keras.Model, tapped: Mapping[str, Any]) -> dict[str, Any]:
        return dict(tapped)

    def get_config(self) -> dict[str, Any]:
        return {"type": "SumHeads", "heads": dict(self.heads)}


LayerLogits = ConcatHead | SumHeads


def layer_logits_from_config(config: Mapping[str, Any]) -> LayerLogits:
    kind = config.get("type")
    if kind == "ConcatHead":
        return ConcatHead(head=config["head"], features=dict(config["features"]))
    if kind == "SumHeads":
        return SumHeads(heads=dict(config["heads"]))
    raise ValueError(f"unknown modality-logits spec {kind!r}; known: ConcatHead, SumHeads")
