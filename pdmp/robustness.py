"""Missing and corrupted modalities: test-time conditions, their table, and training-time modality dropout.

Everything that decides what a condition does lives here, in NumPy; the backends' helpers
(:func:`pdmp.backends.torch.evaluate_robustness`, :func:`pdmp.backends.keras.evaluate_robustness`,
``apply_modality_dropout`` in each) only run a model's forward pass or a ``where`` on tensors.

**Test time.** A :class:`Condition` alters some modalities of the test inputs:

* ``missing``: the input is replaced by zeros (``"zeros"``), by the training mean (``"mean"``: the
  per-feature mean over the training samples, :func:`training_means`) or by a learned missing token
  in input space (``"token"``: e.g. the ``nn.Parameter`` that
  :func:`~pdmp.backends.torch.apply_modality_dropout` trained);
* ``noise``: additive Gaussian noise at a signal-to-noise ratio in dB, per sample: with ``P_i`` the mean
  square of sample i's input, the noise's standard deviation is ``sqrt(P_i / 10**(snr_db / 10))``. The
  noise comes from ``numpy.random.default_rng([seed, crc32(condition), crc32(modality)])`` over the
  whole array, so it does not depend on the batch size, the order of the conditions or the backend.

:func:`evaluate_robustness` runs a ``predict`` over every condition and returns a
:class:`RobustnessTable`: per condition (and so per modality), accuracy and macro-F1
(:mod:`pdmp.metrics`) and their drop from the full inputs.

**Training time.** :class:`ModalityDropout` draws, per sample, which modalities to drop (each with its
probability, seeded), never every modality of one sample: where a draw drops them all, one is given back,
chosen with probability proportional to ``1 - rate`` (uniformly when the rates are equal). Its effective
rate for modality m is therefore ``rate_m - P(all dropped) * (1 - rate_m) / sum_k(1 - rate_k)``
(:meth:`ModalityDropout.effective_rates`). The backends' ``apply_modality_dropout`` replaces the dropped
samples' inputs as above on tensors (a learned token stays in the graph); :func:`drop_modalities` does it
in NumPy for a data pipeline (Keras: :class:`pdmp.backends.keras.ModalityDropoutData` feeds ``fit()``).
It changes only the inputs, so it composes with every policy and adapter.

How it meets the coefficients: a policy's coefficient is per encoder and per step, never per sample;
dropout does not change it, and the Modulator multiplies whatever gradient the encoder's parameters
receive from the whole batch by it. What a dropped sample contributes to that gradient depends on the
replacement and the encoder. With ``"mean"`` or ``"token"`` the encoder sees a non-zero input and every
parameter gets a gradient from the sample as from any input. With ``"zeros"``: the first layer's weight
gradient from that sample is exactly 0 (it is ``delta x^T`` with ``x = 0``), but its bias and every later
layer still get one, because ``encoder(0)`` is a constant that still reaches the loss (through the
biases); only an encoder without any bias (and without batch statistics, which mix the samples) maps 0
to 0 and gets no gradient at all from dropped samples. A batch in which an encoder's modality was
dropped for every sample thus gives a bias-free encoder a zero gradient (scaled to zero by any
coefficient), and an encoder with biases the gradient of a constant input, multiplied by its coefficient
like any other.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pdmp._validation import check_labels, check_modality_names, check_seed
from pdmp.metrics import accuracy, macro_f1

Replacement = Literal["zeros", "mean", "token"]
REPLACEMENTS: tuple[str, ...] = ("zeros", "mean", "token")
KINDS: tuple[str, ...] = ("full", "missing", "noise")


@dataclass(frozen=True)
class Condition:
    """One test-time condition: which modalities are altered and how.

    ``kind``: ``"full"`` (nothing altered), ``"missing"`` (``replacement`` one of ``"zeros"``,
    ``"mean"``, ``"token"``) or ``"noise"`` (``snr_db``: Gaussian noise at that signal-to-noise ratio).
    """

    kind: str
    modalities: tuple[str, ...] = ()
    replacement: str | None = None
    snr_db: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown condition kind {self.kind!r}; use one of {KINDS}")
        if isinstance(self.modalities, str):
            raise TypeError(f"Condition modalities is the string {self.modalities!r}; pass a tuple such as ('audio',)")
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if self.kind == "full":
            if self.modalities or self.replacement is not None or self.snr_db is not None:
                raise ValueError("a 'full' condition alters nothing: give it no modalities, replacement or snr_db")
            return
        if not self.modalities:
            raise ValueError(f"a {self.kind!r} condition needs the modalities it alters, e.g. ('audio',)")
        if self.kind == "missing":
            if self.replacement not in REPLACEMENTS or self.snr_db is not None:
                raise ValueError(
                    f"a 'missing' condition needs replacement in {REPLACEMENTS} and no snr_db, got "
                    f"replacement={self.replacement!r}, snr_db={self.snr_db!r}"
                )
        else:
            if self.replacement is not None or not isinstance(self.snr_db, int | float) or not np.isfinite(self.snr_db):
                raise ValueError(
                    f"a 'noise' condition needs a finite snr_db (dB) and no replacement, got snr_db={self.snr_db!r}, "
                    f"replacement={self.replacement!r}"
                )
            object.__setattr__(self, "snr_db", float(self.snr_db))

    @property
    def name(self) -> str:
        """``full``, ``missing[audio]/zeros``, ``noise[audio+image]/10dB``: a key of metrics and tables."""
        if self.kind == "full":
            return "full"
        altered = "+".join(self.modalities)
        detail = self.replacement if self.kind == "missing" else f"{self.snr_db:g}dB"
        return f"{self.kind}[{altered}]/{detail}"


FULL = Condition("full")


def robustness_conditions(
    modalities: Iterable[str],
    *,
    replacements: Sequence[str] = ("zeros", "mean"),
    snrs_db: Sequence[float] = (0.0, 10.0),
    subsets: bool = False,
) -> list[Condition]:
    """The full inputs, then each modality (``subsets=True``: each non-empty proper subset) missing
    under each replacement and noised at each SNR."""
    names = check_modality_names(modalities, where="robustness_conditions modalities")
    for replacement in replacements:
        if replacement not in REPLACEMENTS:
            raise ValueError(f"unknown replacement {replacement!r}; use one of {REPLACEMENTS}")
    sizes = range(1, len(names)) if subsets else range(1, 2)
    groups = [group for size in sizes for group in combinations(names, size)]
    result = [FULL]
    for group in groups:
        result += [Condition("missing", group, replacement=r) for r in replacements]
        result += [Condition("noise", group, snr_db=float(s)) for s in snrs_db]
    return result


def training_means(inputs: Mapping[str, ArrayLike]) -> dict[str, NDArray[np.float64]]:
    """Per modality, the mean over the training samples (axis 0): the ``"mean"`` replacement."""
    return {name: np.asarray(value, dtype=np.float64).mean(axis=0) for name, value in inputs.items()}


def replacement_value(
    modality: str,
    replacement: str,
    sample_shape: tuple[int, ...],
    *,
    train_means: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
) -> Any:
    """The value that replaces a missing ``modality`` (zeros: ``None``, the caller's zeros), checked to
    broadcast to one sample's shape. Shared by the test-time conditions and every backend's dropout."""
    if replacement == "zeros":
        return None
    if replacement not in REPLACEMENTS:
        raise ValueError(f"unknown replacement {replacement!r}; use one of {REPLACEMENTS}")
    source, argument = (train_means, "train_means") if replacement == "mean" else (tokens, "tokens")
    if source is None or modality not in source:
        fix = "pdmp.robustness.training_means(train_inputs)" if replacement == "mean" else "{modality: token}"
        raise ValueError(
            f"replacement {replacement!r} of {modality!r} needs {argument}[{modality!r}]; pass {argument}={fix}"
        )
    value = source[modality]
    shape = tuple(getattr(value, "shape", np.shape(value)))
    try:
        np.broadcast_shapes(shape, sample_shape)
    except ValueError:
        raise ValueError(
            f"{argument}[{modality!r}] has shape {shape}, which does not broadcast to one sample of shape "
            f"{sample_shape}; give it the input's per-sample shape"
        ) from None
    return value


def _stream(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(key.encode()) for key in keys)])


def noised(values: ArrayLike, snr_db: float, rng: np.random.Generator) -> NDArray[Any]:
    """``values`` plus Gaussian noise at ``snr_db`` per sample (power: the sample's mean square)."""
    array = np.asarray(values)
    x = array.astype(np.float64)
    power = np.mean(x.reshape(len(x), -1) ** 2, axis=1) if x.size else np.zeros(len(x))
    scale = np.sqrt(power / 10.0 ** (snr_db / 10.0)).reshape((-1,) + (1,) * (x.ndim - 1))
    out = x + scale * rng.standard_normal(x.shape)
    return out.astype(array.dtype) if np.issubdtype(array.dtype, np.floating) else out


def alter(
    inputs: Mapping[str, ArrayLike],
    condition: Condition,
    *,
    train_means: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, NDArray[Any]]:
    """The inputs under ``condition`` (NumPy arrays, each modality's dtype kept)."""
    arrays = {name: np.asarray(value) for name, value in inputs.items()}
    unknown = sorted(set(condition.modalities) - set(arrays))
    if unknown:
        raise ValueError(f"condition {condition.name!r} alters {unknown}, not among the inputs {sorted(arrays)}")
    result = dict(arrays)
    for name in condition.modalities:
        x = arrays[name]
        if condition.kind == "noise":
            assert condition.snr_db is not None
            result[name] = noised(x, condition.snr_db, _stream(seed, condition.name, name))
            continue
        assert condition.replacement is not None
        value = replacement_value(name, condition.replacement, x.shape[1:], train_means=train_means, tokens=tokens)
        filled = np.zeros_like(x) if value is None else np.broadcast_to(np.asarray(value), x.shape)
        result[name] = np.array(filled, dtype=x.dtype)
    return result


def drop_modalities(
    inputs: Mapping[str, ArrayLike],
    mask: Mapping[str, ArrayLike],
    *,
    replacement: str = "zeros",
    train_means: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
) -> dict[str, NDArray[Any]]:
    """NumPy modality dropout for a data pipeline: each sample's dropped modalities (``mask``:
    :meth:`ModalityDropout.mask`) replaced, the rest unchanged (the backends' ``apply_modality_dropout``
    does the same on tensors, inside the graph)."""
    arrays = {name: np.asarray(value) for name, value in inputs.items()}
    unknown = sorted(set(mask) - set(arrays))
    if unknown:
        raise ValueError(f"the dropout mask names {unknown}, not among the inputs {sorted(arrays)}")
    for name, dropped in mask.items():
        x = arrays[name]
        drop = np.asarray(dropped, dtype=bool)
        if drop.shape != (len(x),):
            raise ValueError(f"the dropout mask of {name!r} has shape {drop.shape}; the batch has {len(x)} samples")
        if not drop.any():
            continue
        value = replacement_value(name, replacement, x.shape[1:], train_means=train_means, tokens=tokens)
        filled = np.zeros(x.shape[1:], x.dtype) if value is None else np.asarray(value, dtype=x.dtype)
        arrays[name] = np.where(drop.reshape((-1,) + (1,) * (x.ndim - 1)), filled, x)
    return arrays


@dataclass(frozen=True)
class RobustnessRow:
    condition: Condition
    accuracy: float
    macro_f1: float
    samples: int


@dataclass
class RobustnessTable:
    """Accuracy and macro-F1 per condition; ``rows[0]`` is the full inputs' where they were evaluated."""

    rows: list[RobustnessRow] = field(default_factory=list)

    def row(self, condition: Condition | str) -> RobustnessRow:
        name = condition.name if isinstance(condition, Condition) else condition
        for row in self.rows:
            if row.condition.name == name:
                return row
        raise KeyError(f"no condition {name!r} in the table; known: {[r.condition.name for r in self.rows]}")

    def drop(self, condition: Condition | str, metric: str = "accuracy") -> float:
        """The full inputs' ``metric`` minus the condition's (positive: the condition hurts)."""
        if metric not in ("accuracy", "macro_f1"):
            raise ValueError(f"metric must be 'accuracy' or 'macro_f1', got {metric!r}")
        return float(getattr(self.row(FULL), metric) - getattr(self.row(condition), metric))

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{"<prefix><condition>/acc": ..., ".../f1": ...}``, e.g. a :func:`pdmp.compare` run's metrics."""
        out: dict[str, float] = {}
        for row in self.rows:
            out[f"{prefix}{row.condition.name}/acc"] = row.accuracy
            out[f"{prefix}{row.condition.name}/f1"] = row.macro_f1
        return out

    def to_dict(self) -> list[dict[str, Any]]:
        return [
            {
                "condition": row.condition.name,
                "kind": row.condition.kind,
                "modalities": list(row.condition.modalities),
                "replacement": row.condition.replacement,
                "snr_db": row.condition.snr_db,
                "accuracy": row.accuracy,
                "macro_f1": row.macro_f1,
                "samples": row.samples,
            }
            for row in self.rows
        ]

    def to_markdown(self) -> str:
        has_full = any(row.condition.kind == "full" for row in self.rows)
        lines = [
            "| condition | altered | how | accuracy | macro-F1 | accuracy drop |",
            "|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            c = row.condition
            how = (
                "-"
                if c.kind == "full"
                else (f"missing ({c.replacement})" if c.kind == "missing" else f"noise {c.snr_db:g} dB")
            )
            drop = f"{100 * self.drop(c):+.1f}" if has_full and c.kind != "full" else "-"
            altered = ", ".join(c.modalities) or "none"
            lines.append(
                f"| {c.name} | {altered} | {how} | {100 * row.accuracy:.1f} | {100 * row.macro_f1:.1f} | {drop} |"
            )
        return "\n".join(lines)


def predict_in_batches(
    forward: Callable[[dict[str, NDArray[Any]]], ArrayLike], inputs: Mapping[str, NDArray[Any]], batch_size: int
) -> NDArray[np.float64]:
    """``forward`` over ``batch_size`` samples at a time, its outputs joined as one float64 array: the
    batching both backends' ``evaluate_robustness`` share (each supplies only the forward pass)."""
    n = len(next(iter(inputs.values())))
    outputs = [
        np.asarray(forward({name: value[start : start + batch_size] for name, value in inputs.items()}), np.float64)
        for start in range(0, n, batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))


def evaluate_robustness(
    predict: Callable[[dict[str, NDArray[Any]]], ArrayLike],
    inputs: Mapping[str, ArrayLike],
    labels: ArrayLike,
    *,
    conditions: Sequence[Condition] | None = None,
    train_means: Mapping[str, Any] | None = None,
    tokens: Mapping[str, Any] | None = None,
    seed: int = 0,
    num_classes: int | None = None,
) -> RobustnessTable:
    """Score ``predict`` (NumPy inputs keyed by modality -> scores or class indices) under each condition.

    Default conditions: :func:`robustness_conditions` of the inputs' modalities (zeros and, with
    ``train_means``, the mean; 0 and 10 dB of noise). Every condition is checked before any prediction.
    """
    if not isinstance(inputs, Mapping) or not inputs:
        raise TypeError(f"inputs must be a dict of arrays keyed by modality, got {type(inputs).__name__}")
    seed = check_seed(seed)
    y = check_labels(labels)
    lengths = {name: len(np.asarray(value)) for name, value in inputs.items()}
    if any(n != len(y) for n in lengths.values()):
        raise ValueError(f"inputs have {lengths} samples but labels have {len(y)}; pass the same samples")
    if conditions is None:
        replacements = ("zeros", "mean") if train_means is not None else ("zeros",)
        conditions = robustness_conditions(list(inputs), replacements=replacements)
    conditions = list(conditions)
    for condition in conditions:
        if not isinstance(condition, Condition):
            raise TypeError(f"conditions must be pdmp.robustness.Condition objects, got {type(condition).__name__}")
        unknown = sorted(set(condition.modalities) - set(inputs))
        if unknown:
            raise ValueError(f"condition {condition.name!r} alters {unknown}; the inputs hold {sorted(inputs)}")
        if condition.kind == "missing":
            assert condition.replacement is not None
            for name in condition.modalities:
                shape = np.shape(inputs[name])[1:]
                replacement_value(name, condition.replacement, shape, train_means=train_means, tokens=tokens)
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"conditions repeat: {names}; give each once")
    table = RobustnessTable()
    for condition in conditions:
        altered = alter(inputs, condition, train_means=train_means, tokens=tokens, seed=seed)
        scores = predict(altered)
        table.rows.append(
            RobustnessRow(
                condition,
                accuracy=accuracy(y, scores),
                macro_f1=macro_f1(y, scores, num_classes=num_classes),
                samples=len(y),
            )
        )
    return table


class ModalityDropout:
    """Per-sample modality dropout masks, seeded; never every modality of one sample.

    Args:
        modalities: the modality names (at least two).
        rate: the probability of dropping each modality, or a dict per modality (missing ones: 0).
        replacement: what the dropped input becomes: ``"zeros"``, ``"mean"`` or ``"token"`` (see the module).
        seed: seed of the masks' NumPy generator; :meth:`mask` draws the next batch's.
    """

    def __init__(
        self,
        modalities: Iterable[str],
        rate: float | Mapping[str, float],
        *,
        replacement: str = "zeros",
        seed: int = 0,
    ) -> None:
        self.modalities = check_modality_names(modalities, where="ModalityDropout modalities")
        if isinstance(rate, Mapping):
            unknown = sorted(set(rate) - set(self.modalities))
            if unknown:
                raise ValueError(f"ModalityDropout rate names {unknown}; known: {', '.join(self.modalities)}")
            rates = {name: rate.get(name, 0.0) for name in self.modalities}
        else:
            rates = dict.fromkeys(self.modalities, rate)
        for name, value in rates.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"ModalityDropout rate of {name!r} must be a probability in [0, 1], got {value!r}")
        if all(float(v) == 1.0 for v in rates.values()):
            raise ValueError("ModalityDropout rates are all 1: every modality would always be dropped; lower one")
        if replacement not in REPLACEMENTS:
            raise ValueError(f"unknown replacement {replacement!r}; use one of {REPLACEMENTS}")
        self.rates = {name: float(value) for name, value in rates.items()}
        self.replacement = replacement
        self.seed = check_seed(seed)
        self._rng = np.random.default_rng(self.seed)

    def mask(self, batch_size: int) -> dict[str, NDArray[np.bool_]]:
        """Per modality, a boolean ``(batch_size,)`` array: True where that sample's modality is dropped."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 0:
            raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
        rates = np.array([self.rates[name] for name in self.modalities])
        dropped = self._rng.random((int(batch_size), len(rates))) < rates
        everything = dropped.all(axis=1)
        if everything.any():
            keep = (1.0 - rates) / (1.0 - rates).sum()
            given_back = self._rng.choice(len(rates), size=int(everything.sum()), p=keep)
            dropped[np.flatnonzero(everything), given_back] = False
        return {name: dropped[:, index].copy() for index, name in enumerate(self.modalities)}

    def effective_rates(self) -> dict[str, float]:
        """Per modality, the probability that :meth:`mask` drops it (after giving one modality back)."""
        rates = np.array([self.rates[name] for name in self.modalities])
        everything = float(np.prod(rates))
        keep = (1.0 - rates) / (1.0 - rates).sum()
        return {name: float(rates[i] - everything * keep[i]) for i, name in enumerate(self.modalities)}

    def get_config(self) -> dict[str, Any]:
        return {
            "modalities": list(self.modalities),
            "rate": dict(self.rates),
            "replacement": self.replacement,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        """The generator's state, so a resumed run draws the masks an uninterrupted one would."""
        return {"config": self.get_config(), "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if dict(state.get("config", {})) != self.get_config():
            raise ValueError(f"ModalityDropout state is of {state.get('config')!r}, not of {self.get_config()!r}")
        self._rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        return f"ModalityDropout(rate={self.rates}, replacement={self.replacement!r}, seed={self.seed})"


__all__ = [
    "FULL",
    "REPLACEMENTS",
    "Condition",
    "ModalityDropout",
    "RobustnessRow",
    "RobustnessTable",
    "alter",
    "drop_modalities",
    "evaluate_robustness",
    "noised",
    "predict_in_batches",
    "replacement_value",
    "robustness_conditions",
    "training_means",
]
