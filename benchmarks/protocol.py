"""Backend-neutral parts of the benchmark: methods, seeds, statistics, tables. NumPy only.

A *method* names how the multimodal model is trained; it turns a ranking into a core policy, so the
torch and Keras runners train exactly the same set of methods.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pdmp import (
    OGMGE,
    PDMP,
    CoefficientPolicy,
    GradientPolicy,
    InversePDMP,
    NoModulation,
    Ranking,
    UniformScaling,
    accuracy,
    dependency,
    macro_f1,
    run_environment,
)
from pdmp._validation import check_mapping, check_non_negative_finite, check_positive_finite, check_positive_int


@dataclass(frozen=True)
class Method:
    """One training method of the comparison.

    ``kind``: ``joint`` (no modulation), ``pdmp``, ``symmetric`` (every encoder scaled by the same
    ``gamma_p``: isolates the asymmetry), ``inverse`` (PDMP prioritising the *weakest* modality: tests
    the paper's central claim), ``ogmge``. ``lr_scale`` multiplies the base learning rate (the
    tuned-learning-rate joint control).
    """

    name: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    lr_scale: float = 1.0

    def policy(self, ranking: Ranking, epochs: int) -> CoefficientPolicy:
        options = dict(self.options)
        if self.kind == "joint":
            return NoModulation(ranking.order)
        if self.kind == "pdmp":
            return PDMP.from_ranking(ranking, **options)
        if self.kind == "symmetric":
            return UniformScaling(ranking.order, options.pop("gamma_p"), **options)
        if self.kind == "inverse":
            return InversePDMP.from_ranking(ranking, **options)
        if self.kind == "ogmge":
            options.setdefault("end_epoch", epochs)
            return OGMGE(ranking.order, **options)
        raise ValueError(f"unknown method kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "options": dict(self.options), "lr_scale": self.lr_scale}


#: Hidden width of the wide MLP, the under-optimization regime's image encoder
#: (see pdmp.datasets.UNDER_OPTIMIZATION_ENCODERS).
WIDE_MLP_HIDDEN = 512

#: Per-dataset encoder replacements: the under-optimization regime holds only with a memorising image encoder.
ENCODER_OVERRIDES: dict[str, dict[str, str]] = {"av_digits:under_optimization": {"image": "wide_mlp"}}


OPTIMIZERS = ("sgd", "adamw")
#: Image encoders (vector modalities always get an MLP) and fusions of the torch models
#: (``benchmarks.models_torch``; the Keras models implement concat only).
ENCODERS = ("cnn", "transformer")
ENCODER_KINDS = (*ENCODERS, "wide_mlp")
FUSIONS = ("concat", "sum", "film", "gated")

#: AdamW's base settings (the usual ones for small ViTs), used by transformer settings: SGD at the CNNs'
#: learning rate left the transformers at chance in 10 epochs (preset extended-a).
ADAMW = {"lr": 1e-3, "weight_decay": 1e-2}


@dataclass(frozen=True)
class TrainConfig:
    """One run's training setup, shared by the torch and Keras runners."""

    epochs: int = 8
    lr: float = 0.01
    #: ``"sgd"`` (momentum, the field's choice for CNNs) or ``"adamw"`` (what transformers need to train).
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    encoder: str = "cnn"
    fusion: str = "concat"
    width: int = 32
    depth: int = 2
    device: str = "cpu"
    #: Per-modality encoder kinds replacing ``encoder`` (e.g. the under-optimization regime's wide image MLP).
    encoder_overrides: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here, before any data is loaded or model built: a typo fails in a second, not after
        # the dataset cache was built, and a string number ("10") never reaches the training loop.
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}")
        for name in ("epochs", "batch_size", "width", "depth"):
            check_positive_int(getattr(self, name), name=f"TrainConfig.{name}")
        check_positive_finite(self.lr, name="TrainConfig.lr")
        for name in ("momentum", "weight_decay"):
            check_non_negative_finite(getattr(self, name), name=f"TrainConfig.{name}")
        if self.encoder not in ENCODER_KINDS:
            raise ValueError(f"unknown encoder {self.encoder!r}; use one of {ENCODER_KINDS}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; use one of {FUSIONS}")
        if not isinstance(self.device, str) or not self.device:
            raise TypeError(f"TrainConfig.device must be a device name such as 'cpu' or 'cuda', got {self.device!r}")
        overrides = check_mapping(
            self.encoder_overrides, name="TrainConfig.encoder_overrides", example="{'image': 'wide_mlp'}"
        )
        unknown = {modality: kind for modality, kind in overrides.items() if kind not in ENCODER_KINDS}
        if unknown:
            raise ValueError(f"TrainConfig.encoder_overrides names unknown encoder(s) {unknown}; use {ENCODER_KINDS}")

    def encoder_for(self, modality: str) -> str:
        return self.encoder_overrides.get(modality, self.encoder)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "encoder_overrides": dict(self.encoder_overrides)}


def modulation_mode(config: TrainConfig, policy: CoefficientPolicy) -> Literal["grad", "lr"]:
    """How a run applies its policy: gradient scaling under SGD (where it equals a learning-rate
    multiplier); per-modality learning rates under AdamW, which normalises a constant gradient factor
    away. OGM-GE keeps gradient mode everywhere, as published: its noise is a gradient term."""
    if isinstance(policy, GradientPolicy):  # transforms beyond scaling (the baselines) act on gradients
        return "grad"
    return "lr" if config.optimizer == "adamw" and not policy.adds_noise else "grad"


#: Fixed defaults (base: SGD, momentum 0.9, the preset's learning rate, cosine decay).
DEFAULT_PDMP = {"gamma_p": 10.0, "gamma_r": 0.5, "warmup": 1}
DEFAULT_OGMGE = {"alpha": 0.8}


def main_methods() -> list[Method]:
    """The main job's methods: baselines, PDMP at its default, and the symmetric-scaling control."""
    return [
        Method("joint", "joint"),
        Method("ogm_ge", "ogmge", DEFAULT_OGMGE),
        Method("pdmp", "pdmp", DEFAULT_PDMP),
        Method("symmetric", "symmetric", {"gamma_p": DEFAULT_PDMP["gamma_p"], "warmup": 1}),
    ]


def tuning_grids() -> dict[str, list[Method]]:
    """Candidate settings chosen on validation (equal budget: 4 candidates per tuned method)."""
    return {
        "pdmp": [
            Method(f"pdmp[gp={gp},gr={gr},w={w}]", "pdmp", {"gamma_p": gp, "gamma_r": gr, "warmup": w})
            for gp, gr, w in ((2.0, 0.5, 1), (5.0, 0.5, 1), (10.0, 0.5, 1), (5.0, 1.0, 1))
        ],
        "ogm_ge": [Method(f"ogm_ge[alpha={a}]", "ogmge", {"alpha": a}) for a in (0.1, 0.3, 0.5, 0.8)],
        "joint_lr": [Method(f"joint[lr*{s}]", "joint", lr_scale=s) for s in (0.5, 2.0, 5.0, 10.0)],
    }


def extra_controls() -> list[Method]:
    return [Method("inverse", "inverse", DEFAULT_PDMP)]


def mean_std(values: Sequence[float]) -> str:
    array = np.asarray(values, dtype=float) * 100
    if array.size == 1:
        return f"{array[0]:.2f}"
    return f"{array.mean():.2f} ± {array.std(ddof=1):.2f}"


#: Environment variables that change a run's arithmetic: the thread pools of OpenMP, MKL, OpenBLAS and
#: TensorFlow, and the kernel selection of ATen and oneDNN (each moves the first epoch's loss on its own).
ARITHMETIC_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "TF_ENABLE_ONEDNN_OPTS",
)


def environment() -> dict[str, Any]:
    """:func:`pdmp.run_environment` (CPU, core count, versions) plus what else selects a run's arithmetic,
    recorded in every run's JSON: torch's intra- and inter-op thread counts and its CPU kernel level
    (``torch_cpu_capability``, e.g. AVX2 or AVX512), TensorFlow's thread counts, the environment
    variables of :data:`ARITHMETIC_VARIABLES` that are set, and the GPU.

    The same code, configuration and seed give bit-identical runs only where these agree: the thread
    count and the kernel level change each convolution's summation order (the committed audio-dominant
    joint runs of seed 1 part in the first epoch's loss and end at 66.4 with 2 threads and 53.4 with 1;
    see ``benchmarks/reproduce.py``).
    """
    info = run_environment()
    variables = {name: os.environ[name] for name in ARITHMETIC_VARIABLES if name in os.environ}
    if variables:
        info["arithmetic_variables"] = variables
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
        if capability is not None:
            info["torch_cpu_capability"] = capability()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None and hasattr(tensorflow, "config"):  # 0: TensorFlow's default (all cores)
        threads = tensorflow.config.threading
        info["tf_threads"] = [threads.get_intra_op_parallelism_threads(), threads.get_inter_op_parallelism_threads()]
    return info


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def split_metrics(labels: np.ndarray, fused: np.ndarray, per_modality: Mapping[str, np.ndarray] | None) -> dict:
    """Accuracy and macro-F1 of fused logits; with per-modality logits, each modality's share
    (dependency) and the fused head's accuracy from that modality's decomposed logits alone."""
    result: dict[str, Any] = {"acc": accuracy(labels, fused), "f1": macro_f1(labels, fused)}
    if per_modality:
        result["dependency"] = dependency(per_modality, labels).share
        result["decomposed_acc"] = {name: accuracy(labels, logits) for name, logits in per_modality.items()}
    return result


def best_epoch(history: Sequence[Mapping[str, Any]]) -> int:
    """The epoch with the highest validation accuracy (ties: the earliest)."""
    return max(range(len(history)), key=lambda e: (history[e]["val"]["acc"], -e))


def is_new_best(history: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the last epoch is the best on validation so far: the runners keep its weights then."""
    return best_epoch(history) == len(history) - 1


def summarise(
    history: list[dict[str, Any]],
    started: float,
    val_predicted: np.ndarray,
    *,
    final_test: dict[str, Any],
    best_test: dict[str, Any],
) -> dict[str, Any]:
    """The run's final epoch and its best-validation epoch (ties: earliest), as both runners report them.

    The test split is read only twice, after training: for the final weights and for the weights of the
    best-validation epoch (the runners keep a copy of those, chosen with :func:`is_new_best`).
    """
    best = best_epoch(history)
    return {
        "history": history,
        "final": {"epoch": len(history) - 1, "val": history[-1]["val"], "test": final_test},
        "best_val": {"epoch": best, "val": history[best]["val"], "test": best_test},
        "wall_time_s": time.perf_counter() - started,
        # Final-epoch validation predictions: the ranking stage ranks unimodal runs by these.
        "val_predicted": val_predicted,
    }
