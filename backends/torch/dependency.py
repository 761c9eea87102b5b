"""Which modality does a fused torch model rely on? :func:`dependency_shares` over a whole dataset.

It runs the encoders over the data, splits the fusion head into per-modality logits
(:func:`~pdmp.backends.torch.concat_head_logits` or :func:`~pdmp.backends.torch.sum_head_logits`)
and hands them to the core (:func:`pdmp.dependency`), so comparing what a model trained with and
without PDMP relies on takes one call per model, not a hand-written forward split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pdmp._validation import check_modality_names, check_positive_int, check_same_modalities
from pdmp.diagnostics import Dependency, shares, true_class_mass

from ._modes import eval_mode
from .heads import concat_head_logits, sum_head_logits

Batch = tuple[Mapping[str, Any], Any]


def dependency_shares(
    encoders: Mapping[str, nn.Module],
    head: nn.Linear | Mapping[str, nn.Module],
    data: Iterable[Batch] | Batch,
    *,
    fusion: Literal["concat", "sum"] = "concat",
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> Dependency:
    """Each modality's dependency mass and share for a fused model, over a dataset.

    The fused model must compute its logits as ``head(cat([encoders[m](x[m]) for m in encoders]))``
    (``fusion="concat"``) or ``sum(head[m](encoders[m](x[m])) for m in encoders)`` (``fusion="sum"``);
    then modality m's logits are its part of that computation (OGM-GE's decomposition: for concat,
    ``f_m W_m^T + b / M``), and its mass is the mean softmax probability they put on the true class
    (:func:`pdmp.dependency`). Anything the model does between the encoders and the head (dropout,
    normalisation of the concatenation) is not part of the split.

    Args:
        encoders: per modality, the encoder mapping that modality's input to ``(batch, features)``;
            for concat fusion, **in the order the features are concatenated** before the head
            (the order cannot be checked when the widths are equal). An ``nn.ModuleDict`` works.
        head: the ``nn.Linear`` applied to the concatenated features (``fusion="concat"``), or per
            modality the head whose outputs are summed (``fusion="sum"``).
        data: a ``DataLoader`` (or any iterable) yielding ``(inputs, labels)`` batches with
            ``inputs`` a dict of tensors keyed by modality, or one pair ``(inputs, labels)`` of whole
            tensors (or arrays), evaluated in batches of ``batch_size``.
        fusion: ``"concat"`` or ``"sum"``.
        batch_size: batch size for a ``(inputs, labels)`` pair (a ``DataLoader`` keeps its own).
        device: where to run; default: the device of the encoders' first parameter (CPU without one).

    The encoders and head run in evaluation mode without gradients; every module's training flag is
    restored afterwards. Bad input (an unknown or missing modality, a head whose width does not
    match the features, labels out of range) raises ``ValueError``/``TypeError`` naming the batch.
    """
    encoders = _modules(encoders, where="dependency_shares encoders")
    names = check_modality_names(encoders.keys(), where="dependency_shares encoders")
    heads: dict[str, nn.Module] | nn.Linear
    if fusion == "concat":
        if not isinstance(head, nn.Linear):
            hint = " (a dict of heads is fusion='sum')" if isinstance(head, (Mapping, nn.ModuleDict)) else ""
            raise TypeError(
                f"fusion='concat' needs head to be the nn.Linear applied to the concatenated features, "
                f"got {type(head).__name__}{hint}"
            )
        heads = head
    elif fusion == "sum":
        if not isinstance(head, (Mapping, nn.ModuleDict)):
            raise TypeError(
                f"fusion='sum' needs head to be a dict of per-modality heads, got {type(head).__name__}; "
                "for one nn.Linear over the concatenated features use fusion='concat'"
            )
        heads = _modules(head, where="dependency_shares head")
        check_same_modalities(heads.keys(), names, where="dependency_shares head")
    else:
        raise ValueError(f"fusion must be 'concat' or 'sum', got {fusion!r}")
    batch_size = check_positive_int(batch_size, name="batch_size")
    modules = [*encoders.values(), *(heads.values() if isinstance(heads, dict) else [heads])]
    run_on = torch.device(device) if device is not None else _device_of(modules)

    totals = dict.fromkeys(names, 0.0)
    count = 0
    with eval_mode(modules), torch.no_grad():
        for index, (inputs, labels) in enumerate(_batches(data, batch_size)):
            where = f"dependency_shares batch {index}"
            if not isinstance(inputs, Mapping):
                raise TypeError(
                    f"{where}: inputs are {type(inputs).__name__}; yield (inputs, labels) with inputs a dict "
                    "of tensors keyed by modality"
                )
            check_same_modalities(inputs.keys(), names, where=f"{where} inputs")
            features = {name: encoders[name](_tensor(inputs[name]).to(run_on)) for name in names}
            for name, value in features.items():
                if not isinstance(value, torch.Tensor) or value.ndim != 2:
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(
                        f"{where}: the encoder of {name!r} returned {shape}; it must return (batch, features) "
                        "(wrap it as nn.Sequential(encoder, nn.Flatten()) if the model flattens before its head)"
                    )
            try:
                if isinstance(heads, dict):
                    logits = sum_head_logits(heads, features)
                else:
                    logits = concat_head_logits(heads, features)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            widths = {name: int(value.shape[-1]) if value.ndim else 0 for name, value in logits.items()}
            if len(set(widths.values())) != 1:
                raise ValueError(
                    f"{where}: the heads output {widths} logits; summed heads need one logit per class each"
                )
            y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
            try:
                masses = true_class_mass({name: value.double().cpu().numpy() for name, value in logits.items()}, y)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            for name, mass in masses.items():
                totals[name] += float(mass.sum())
            count += len(y)
    if count == 0:
        raise ValueError("dependency_shares: the data held no samples; pass at least one batch")
    mean = {name: totals[name] / count for name in names}
    return Dependency(mass=mean, share=shares(mean))


def _modules(value: Any, *, where: str) -> dict[str, nn.Module]:
    if not isinstance(value, (Mapping, nn.ModuleDict)):
        raise TypeError(f"{where} must be a dict of modules keyed by modality, got {type(value).__name__}")
    result = dict(value.items())
    for name, module in result.items():
        if isinstance(module, type):
            raise TypeError(f"{where}[{name!r}] is the class {module.__name__}, not a module; pass an instance")
        if not isinstance(module, nn.Module):
            raise TypeError(f"{where}[{name!r}] is {type(module).__name__}; it must be a torch nn.Module")
    return result


def _device_of(modules: list[nn.Module]) -> torch.device:
    for module in modules:
        for parameter in module.parameters():
            return parameter.device
    return torch.device("cpu")


def _tensor(value: Any) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    return tensor.float() if tensor.dtype == torch.float64 else tensor  # NumPy's float64 vs float32 models


def _batches(data: Any, batch_size: int) -> Iterator[tuple[Any, Any]]:
    """``(inputs, labels)`` batches from a loader, or from one pair of whole tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (Mapping, nn.ModuleDict)):
        inputs, labels = data
        if isinstance(labels, torch.Tensor):
            n = len(labels)
        else:
            labels = np.asarray(labels)
            n = len(labels) if labels.ndim else 0
        lengths = {name: len(value) for name, value in inputs.items()}
        if any(length != n for length in lengths.values()):
            raise ValueError(
                f"dependency_shares: inputs have {lengths} samples but labels have {n}; pass the same samples"
            )
        for start in range(0, n, batch_size):
            yield (
                {name: value[start : start + batch_size] for name, value in inputs.items()},
                labels[start : start + batch_size],
            )
        return
    if isinstance(data, (Mapping, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a DataLoader yielding (inputs, labels) or one pair (inputs, labels), got "
            f"{type(data).__name__}"
        )
    for index, batch in enumerate(data):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(
                f"dependency_shares batch {index} is {type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                + "; the loader must yield (inputs, labels) with inputs a dict of tensors keyed by modality"
            )
        yield batch[0], batch[1]


__all__ = ["dependency_shares"]
