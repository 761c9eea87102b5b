"""One small multimodal model, built twice (torch and Keras) from the same NumPy weights, for parity tests.

Architecture (per modality an encoder producing ``WIDTH`` features; concat fusion; one linear head):

* ``mlp`` encoder: ``Dense(HIDDEN, tanh) -> Dense(WIDTH, tanh)``;
* ``cnn`` encoder: ``Conv 3x3 (CHANNELS, same padding, tanh) -> global average pool -> Dense(WIDTH, tanh)``;
* head: ``Dense(classes)`` on ``[f_1 | ... | f_M]``.

NumPy is the reference: weights are drawn in NumPy (float64), written into both frameworks, and read
back as NumPy in the *Keras layout*, keyed ``"<layer>/<variable>"`` (Keras's own naming): Dense
kernels ``(in, out)`` (torch stores ``(out, in)``), conv kernels ``(kh, kw, in, out)`` (torch:
``(out, in, kh, kw)``), images NHWC (torch: NCHW). Global average pooling avoids any flatten-order
question.

Exactness choices, so that float64 runs agree to rounding: every input is float32-representable
(Keras's ``fit()`` casts float inputs to ``floatx``; the cast is then lossless and the float64
``Input`` layers cast back), the learning rate is a power of two (Keras keeps it in a float32
variable), and every coefficient a test uses is float32-representable (Keras keeps coefficients in
float32 variables), and so is every optimizer hyperparameter: Keras casts Python floats such as
``momentum=0.9`` to the variable's dtype *through float32* (``ops.cast(0.9, "float64")`` is
0.8999999761581421), so torch is given those same float32-rounded values (:func:`f32`). No weight
decay: torch's SGD adds ``wd * w`` to the gradient (L2), Keras's SGD decays the weights separately
(decoupled), so the two differ by design.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HIDDEN = 8
WIDTH = 6
CHANNELS = 4
CLASSES = 3

#: (modality name, encoder kind, per-sample input shape in the Keras layout)
TWO = (("audio", "mlp", (6,)), ("image", "cnn", (6, 6, 1)))
THREE = (*TWO, ("text", "mlp", (5,)))

Spec = Sequence[tuple[str, str, tuple[int, ...]]]


def f32(value: float) -> float:
    """``value`` rounded to float32, as Keras's optimizers see a Python float hyperparameter."""
    return float(np.float32(value))


#: SGD momentum (the field's 0.9) and Adam's betas/epsilon, as both frameworks will actually use them.
#: Adam's epsilon is negligible on purpose: Keras adds it to ``sqrt(v)`` before bias correction, torch
#: after (``sqrt(v_hat)``), so any epsilon that matters makes the two Adams differ by design.
MOMENTUM = f32(0.9)
ADAM = {"beta_1": f32(0.9), "beta_2": f32(0.999), "epsilon": f32(1e-30)}


# -- NumPy reference: weights, data, comparison -------------------------------------------------------------


def layer_shapes(spec: Spec) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape in the Keras layout, keyed ``"<layer>/<variable>"``, in model order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, kind, shape in spec:
        if kind == "mlp":
            shapes[f"{name}_fc1/kernel"] = (shape[0], HIDDEN)
            shapes[f"{name}_fc1/bias"] = (HIDDEN,)
            shapes[f"{name}_fc2/kernel"] = (HIDDEN, WIDTH)
            shapes[f"{name}_fc2/bias"] = (WIDTH,)
        elif kind == "cnn":
            shapes[f"{name}_conv/kernel"] = (3, 3, shape[-1], CHANNELS)
            shapes[f"{name}_conv/bias"] = (CHANNELS,)
            shapes[f"{name}_fc2/kernel"] = (CHANNELS, WIDTH)
            shapes[f"{name}_fc2/bias"] = (WIDTH,)
        else:  # pragma: no cover - a typo in a test
            raise ValueError(f"unknown encoder kind {kind!r}")
    shapes["head/kernel"] = (WIDTH * len(spec), CLASSES)
    shapes["head/bias"] = (CLASSES,)
    return shapes


def initial_weights(spec: Spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Glorot-uniform kernels and small non-zero biases, float64, drawn once in NumPy."""
    rng = np.random.default_rng(seed)
    weights = {}
    for key, shape in layer_shapes(spec).items():
        if key.endswith("/kernel"):
            fan_in = math.prod(shape[:-1])
            limit = math.sqrt(6.0 / (fan_in + shape[-1]))
            weights[key] = rng.uniform(-limit, limit, size=shape)
        else:
            weights[key] = rng.uniform(-0.1, 0.1, size=shape)
    return weights


def make_data(spec: Spec, n: int, seed: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Paired inputs (Keras layout, float64 holding float32-representable values) and labels.

    Each modality carries the class with its own strength (the first the most), so the modalities
    differ in how fast they learn and OGM-GE has something to balance.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = {}
    for index, (name, _, shape) in enumerate(spec):
        strength = 1.5 / (index + 1)
        signal = np.zeros((n, math.prod(shape)))
        signal[np.arange(n), y % signal.shape[1]] = strength
        values = rng.normal(size=(n, math.prod(shape))) + signal
        x[name] = values.reshape((n, *shape)).astype(np.float32).astype(np.float64)
    return x, y


@dataclass
class Trace:
    """What one training run recorded after every step: parameters (Keras layout) and coefficients."""

    params: list[dict[str, np.ndarray]] = field(default_factory=list)
    coefficients: list[dict[str, float]] = field(default_factory=list)
    #: A GradientPolicy's transform of every step (``GradientTransform.as_array``), where one was used.
    transforms: list[np.ndarray] = field(default_factory=list)
    #: The unimodal-loss weights of every step, where the policy adds unimodal losses.
    unimodal_weights: list[dict[str, float]] = field(default_factory=list)
    #: Predictions on the training inputs after training (a policy with fusion weights: the fused prediction).
    predictions: list[np.ndarray] = field(default_factory=list)


@dataclass
class Agreement:
    """The largest differences observed between two traces (over all steps and parameters)."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    steps: int = 0


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ``|a - b| / max(|b|, 1e-3)``: relative where the value is not tiny, absolute-ish below."""
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-3)


def compare_traces(
    got: Trace, reference: Trace, *, rtol: float, atol: float, what: str = "torch vs keras"
) -> Agreement:
    """Assert every parameter agrees at every step (``|a-b| <= atol + rtol*|b|``); name the first divergence.

    The failure message says which parameter diverged, at which step, by how much (max abs and max
    relative difference, and where in the tensor).
    """
    assert len(got.params) == len(reference.params), (
        f"{what}: {len(got.params)} steps recorded vs {len(reference.params)}"
    )
    agreement = Agreement(steps=len(got.params))
    for step, (mine, theirs) in enumerate(zip(got.params, reference.params, strict=True)):
        assert mine.keys() == theirs.keys(), f"{what}: parameter names differ: {sorted(mine)} vs {sorted(theirs)}"
        for key in theirs:
            a, b = mine[key], theirs[key]
            assert a.shape == b.shape, f"{what}: {key} has shape {a.shape} vs {b.shape}"
            diff = np.abs(a - b)
            agreement.max_abs = max(agreement.max_abs, float(diff.max()))
            agreement.max_rel = max(agreement.max_rel, float(relative(a, b).max()))
            bad = diff > atol + rtol * np.abs(b)
            if bad.any():
                where = np.unravel_index(np.argmax(diff - rtol * np.abs(b)), b.shape)
                raise AssertionError(
                    f"{what}: parameter {key!r} diverged at step {step + 1} (of {len(got.params)}): "
                    f"max abs diff {diff.max():.3e}, max rel diff {relative(a, b).max():.3e} "
                    f"(tolerance atol={atol:g}, rtol={rtol:g}); worst element {tuple(int(i) for i in where)}: "
                    f"{a[where]!r} vs {b[where]!r}; {int(bad.sum())} of {b.size} elements out of tolerance"
                )
    return agreement


def batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


# -- torch ----------------------------------------------------------------------------------------------------


def torch_model(spec: Spec, weights: Mapping[str, np.ndarray]) -> Any:
    """The model in torch (float64), holding ``weights`` (Keras layout, transposed into torch's)."""
    import torch
    from torch import nn

    class Mlp(nn.Module):
        def __init__(self, inputs: int) -> None:
            super().__init__()
            self.fc1 = nn.Linear(inputs, HIDDEN)
            self.fc2 = nn.Linear(HIDDEN, WIDTH)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.fc2(torch.tanh(self.fc1(x))))

    class Cnn(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(channels, CHANNELS, 3, padding=1)
            self.fc2 = nn.Linear(CHANNELS, WIDTH)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.fc2(torch.tanh(self.conv(x)).mean(dim=(2, 3))))

    class Fused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoders = nn.ModuleDict(
                {name: Mlp(shape[0]) if kind == "mlp" else Cnn(shape[-1]) for name, kind, shape in spec}
            )
            self.head = nn.Linear(WIDTH * len(spec), CLASSES)

        def forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            features = {name: self.encoders[name](inputs[name]) for name, _, _ in spec}
            return self.head(torch.cat(list(features.values()), dim=1)), features

    model = Fused().double()
    with torch.no_grad():
        for key, param in torch_parameters(model, spec).items():
            param.copy_(torch.from_numpy(to_torch_layout(key, weights[key])))
    return model


def torch_parameters(model: Any, spec: Spec) -> dict[str, Any]:
    """The model's parameters keyed by their Keras name."""
    params = {}
    for name, kind, _ in spec:
        encoder = model.encoders[name]
        first = "conv" if kind == "cnn" else "fc1"
        for layer in (first, "fc2"):
            params[f"{name}_{layer}/kernel"] = getattr(encoder, layer).weight
            params[f"{name}_{layer}/bias"] = getattr(encoder, layer).bias
    params["head/kernel"] = model.head.weight
    params["head/bias"] = model.head.bias
    return params


def to_torch_layout(key: str, value: np.ndarray) -> np.ndarray:
    if key.endswith("/kernel") and value.ndim == 2:
        return np.ascontiguousarray(value.T)
    if key.endswith("/kernel") and value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    return np.ascontiguousarray(value)


def from_torch_layout(key: str, value: np.ndarray) -> np.ndarray:
    if key.endswith("/kernel") and value.ndim == 2:
        return value.T.copy()
    if key.endswith("/kernel") and value.ndim == 4:
        return value.transpose(2, 3, 1, 0).copy()
    return value.copy()


def torch_inputs(spec: Spec, x: Mapping[str, np.ndarray], rows: slice) -> dict[str, Any]:
    import torch

    out = {}
    for name, kind, _ in spec:
        value = x[name][rows]
        if kind == "cnn":
            value = value.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        out[name] = torch.from_numpy(np.ascontiguousarray(value))
    return out


def train_torch(
    spec: Spec,
    weights: Mapping[str, np.ndarray],
    x: Mapping[str, np.ndarray],
    y: np.ndarray,
    policy: Any,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = MOMENTUM,
    mode: str = "grad",
    optimizer: str = "sgd",
    seed: int = 0,
) -> Trace:
    """Train with :class:`pdmp.backends.torch.Modulator` (or plainly, ``policy=None``); record every step."""
    import torch
    from torch import nn

    from pdmp.backends.torch import Modulator, concat_head_logits

    model = torch_model(spec, weights)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(ADAM["beta_1"], ADAM["beta_2"]), eps=ADAM["epsilon"])
    named = torch_parameters(model, spec)
    mod = None
    if policy is not None:
        encoders = {name: model.encoders[name] for name, _, _ in spec}
        mod = Modulator(encoders, policy, mode=mode, optimizer=opt, seed=seed)
    trace = Trace()
    labels = torch.from_numpy(y)
    for epoch in range(epochs):
        if mod is not None:
            mod.set_epoch(epoch)
        for rows in batches(len(y), batch_size):
            out, features = model(torch_inputs(spec, x, rows))
            loss = nn.functional.cross_entropy(out, labels[rows])
            if mod is not None:
                decomposed = concat_head_logits(model.head, features, detach=False)
                mod.observe({name: value.detach() for name, value in decomposed.items()}, labels[rows])
                if policy.uses_unimodal_losses:
                    weights_now = mod.unimodal_loss_weights
                    trace.unimodal_weights.append(weights_now)
                    for name, value in decomposed.items():
                        loss = loss + weights_now[name] * nn.functional.cross_entropy(value, labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            trace.coefficients.append(mod.coefficients if mod is not None else {name: 1.0 for name, _, _ in spec})
            if mod is not None:
                mod.step()
            trace.params.append({key: from_torch_layout(key, p.detach().numpy()) for key, p in named.items()})
    if mod is not None:
        mod.remove()
    return trace


# -- Keras ----------------------------------------------------------------------------------------------------


def keras_model(spec: Spec, weights: Mapping[str, np.ndarray], activation: str = "tanh") -> Any:
    """The functional Keras model (every layer float64), holding ``weights``.

    ``activation``: the encoders' (``tests/test_parity_jax.py`` uses ``"relu"``: Keras's JAX ``tanh``
    returns float32 for a float64 input, which would make its float64 model partly float32)."""
    import keras

    f64 = "float64"
    inputs = {name: keras.Input(shape, name=name, dtype=f64) for name, _, shape in spec}
    features = []
    for name, kind, _ in spec:
        h = inputs[name]
        if kind == "mlp":
            h = keras.layers.Dense(HIDDEN, activation=activation, name=f"{name}_fc1", dtype=f64)(h)
        else:
            conv = keras.layers.Conv2D(
                CHANNELS, 3, padding="same", activation=activation, name=f"{name}_conv", dtype=f64
            )
            h = conv(h)
            h = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool", dtype=f64)(h)
        features.append(keras.layers.Dense(WIDTH, activation=activation, name=f"{name}_fc2", dtype=f64)(h))
    fused = keras.layers.Concatenate(name="concat", dtype=f64)(features)
    out = keras.layers.Dense(CLASSES, name="head", dtype=f64)(fused)
    model = keras.Model(inputs, out, name="fused")
    for key, variable in keras_parameters(model).items():
        variable.assign(weights[key])
    return model


def keras_parameters(model: Any) -> dict[str, Any]:
    return {f"{layer.name}/{v.name}": v for layer in model.layers for v in layer.trainable_weights}


def encoder_layers(spec: Spec) -> dict[str, list[str]]:
    """Each modality's encoder, as the names of its Keras layers (fusion and head left out)."""
    return {name: [f"{name}_conv" if kind == "cnn" else f"{name}_fc1", f"{name}_fc2"] for name, kind, _ in spec}


def train_keras(
    spec: Spec,
    weights: Mapping[str, np.ndarray],
    x: Mapping[str, np.ndarray],
    y: np.ndarray,
    policy: Any,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = MOMENTUM,
    mode: str = "grad",
    optimizer: str = "sgd",
    seed: int = 0,
    activation: str = "tanh",
) -> Trace:
    """Train with :class:`pdmp.backends.keras.ModulatedModel` and ``fit()`` (unshuffled); record every step."""
    import keras

    from pdmp.backends.keras import ConcatHead, ModulatedModel

    inner = keras_model(spec, weights, activation)
    model: Any = inner
    if policy is not None:
        wants_logits = policy.needs_logits or policy.observes_scores
        logits = ConcatHead("head", {name: f"{name}_fc2" for name, _, _ in spec}) if wants_logits else None
        unimodal = logits if policy.uses_unimodal_losses else None
        model = ModulatedModel(
            inner, encoder_layers(spec), policy, mode=mode, modality_logits=logits, unimodal_logits=unimodal, seed=seed
        )
    opt = keras.optimizers.SGD(lr, momentum=momentum) if optimizer == "sgd" else keras.optimizers.Adam(lr, **ADAM)
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64"),
        jit_compile=False,
    )
    named = keras_parameters(inner)
    trace = Trace()

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            coefficients = model.coefficients if policy is not None else {name: 1.0 for name, _, _ in spec}
            trace.coefficients.append(coefficients)
            if policy is not None and policy.uses_unimodal_losses:
                used = np.asarray(model.pdmp_unimodal_weights.numpy(), dtype=np.float64)
                trace.unimodal_weights.append({name: float(v) for (name, _, _), v in zip(spec, used, strict=True)})
            trace.params.append({key: np.array(v.numpy()) for key, v in named.items()})

    model.fit(
        {name: value for name, value in x.items()},
        y,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[Record()],
    )
    return trace


def run_both(spec: Spec, policy_factory: Callable[[], Any] | None, **options: Any) -> tuple[Trace, Trace]:
    """The same run in torch and in Keras (a fresh policy object each, so neither can share state)."""
    weights = initial_weights(spec, seed=options.pop("weight_seed", 0))
    n = options.pop("n", 96)
    x, y = make_data(spec, n, seed=options.pop("data_seed", 1))
    torch_trace = train_torch(spec, weights, x, y, policy_factory() if policy_factory else None, **options)
    keras_trace = train_keras(spec, weights, x, y, policy_factory() if policy_factory else None, **options)
    return torch_trace, keras_trace


def names_of(spec: Spec) -> list[str]:
    return [name for name, _, _ in spec]


def flatten(values: Iterable[dict[str, float]], names: Sequence[str]) -> np.ndarray:
    return np.array([[row[name] for name in names] for row in values], dtype=np.float64)


def compare_transforms(got: Trace, reference: Trace, names: Sequence[str], *, what: str) -> np.ndarray:
    """Assert two GradientPolicy runs applied the same transform (``rtol 1e-9``) and the same coefficients
    (magnitude * fused) at every step; return the reference's transforms, (steps, modalities, 5)."""
    want, got_transforms = np.stack(reference.transforms), np.stack(got.transforms)
    assert got_transforms.shape == want.shape == (len(reference.params), len(names), 5), (
        got_transforms.shape,
        want.shape,
    )
    np.testing.assert_allclose(
        got_transforms, want, rtol=1e-9, atol=1e-12, err_msg=f"{what}: the transform of every step"
    )
    np.testing.assert_allclose(
        flatten(got.coefficients, names), flatten(reference.coefficients, names), rtol=1e-9, atol=0,
        err_msg=f"{what}: coefficients (magnitude * fused) of every step",
    )  # fmt: skip
    return want


# -- GradientPolicies (the baselines) ---------------------------------------------------------------------------
#
# Each is wired as the README's baselines example does: MMPareto gets one unimodal head per encoder (a Dense
# on the encoder's features, weights ``"<modality>_unimodal/kernel"``), whose losses are kept apart; AGM's
# logits are the mono-modal responses of masked passes, without gradient; the others (InfoReg, ARL) observe
# the fusion head's decomposed logits and add their cross-entropies to the loss, weighted by the policy's
# unimodal_loss_weight (ARL's gamma after its warm-up).


def unimodal_head_weights(spec: Spec, seed: int = 2) -> dict[str, np.ndarray]:
    """A unimodal head per modality (``Dense(CLASSES)`` on its features), Keras layout, float64."""
    rng = np.random.default_rng(seed)
    limit = math.sqrt(6.0 / (WIDTH + CLASSES))
    weights = {}
    for name, _, _ in spec:
        weights[f"{name}_unimodal/kernel"] = rng.uniform(-limit, limit, size=(WIDTH, CLASSES))
        weights[f"{name}_unimodal/bias"] = rng.uniform(-0.1, 0.1, size=(CLASSES,))
    return weights


def train_torch_transform(
    spec: Spec,
    weights: Mapping[str, np.ndarray],
    x: Mapping[str, np.ndarray],
    y: np.ndarray,
    policy: Any,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = MOMENTUM,
) -> Trace:
    """Train with a GradientPolicy through :class:`pdmp.backends.torch.Modulator`; record every step."""
    import torch
    from torch import nn

    import pdmp
    from pdmp.backends.torch import Modulator

    model = torch_model(spec, weights)
    named = torch_parameters(model, spec)
    heads = {}
    if policy.uses_unimodal_gradients:
        heads = torch_unimodal_heads(spec, weights, named)
    parameters = [*model.parameters(), *(p for head in heads.values() for p in head.parameters())]
    opt = torch.optim.SGD(parameters, lr=lr, momentum=momentum)
    ce = nn.functional.cross_entropy
    mod = Modulator({name: model.encoders[name] for name, _, _ in spec}, policy, optimizer=opt)
    trace = Trace()
    labels = torch.from_numpy(y)
    for epoch in range(epochs):
        mod.set_epoch(epoch)
        for rows in batches(len(y), batch_size):
            batch, target = torch_inputs(spec, x, rows), labels[rows]
            out, features = model(batch)
            loss = ce(out, target)
            opt.zero_grad()
            if policy.uses_unimodal_gradients:
                mod.backward(loss, {m: ce(heads[m](f), target) for m, f in features.items()})
            elif isinstance(policy, pdmp.AGM):
                with torch.no_grad():
                    mod.observe(pdmp.mono_modal_responses(lambda masked: model(masked)[0], batch), target)
                loss.backward()
            else:
                parts = _torch_decomposed_logits(model.head, features)
                mod.observe({m: p.detach() for m, p in parts.items()}, target)
                weight = policy.unimodal_loss_weight(epoch)  # ARL: gamma after its warm-up
                (loss + weight * sum(ce(p, target) for p in parts.values())).backward()
            opt.step()
            trace.coefficients.append(mod.coefficients)
            trace.transforms.append(policy.last_transform.as_array(mod.modalities))
            mod.step()
            trace.params.append({key: from_torch_layout(key, p.detach().numpy()) for key, p in named.items()})
    mod.remove()
    return trace


def _torch_decomposed_logits(head: Any, features: Mapping[str, Any]) -> dict[str, Any]:
    """``f_m W_m^T + b / M`` per modality, with gradient (``pdmp.backends.torch.concat_head_logits`` computes
    the same under ``no_grad``, for observing only), as Keras's ``ConcatHead`` gives them."""
    from torch.nn import functional

    result, start = {}, 0
    for name, value in features.items():
        stop = start + value.shape[-1]
        result[name] = functional.linear(value, head.weight[:, start:stop], head.bias / len(features))
        start = stop
    return result


def torch_dense(kernel: np.ndarray, bias: np.ndarray) -> Any:
    """A float64 ``nn.Linear`` holding a Keras ``Dense``'s ``kernel`` (in x out, transposed here) and ``bias``."""
    import torch
    from torch import nn

    layer = nn.Linear(*kernel.shape).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
        layer.bias.copy_(torch.from_numpy(bias.copy()))
    return layer


def torch_unimodal_heads(spec: Spec, weights: Mapping[str, np.ndarray], named: dict[str, Any]) -> dict[str, Any]:
    """A unimodal head per modality from ``weights["<m>_unimodal/..."]``, its parameters added to ``named``."""
    heads = {}
    for name, _, _ in spec:
        head = heads[name] = torch_dense(weights[f"{name}_unimodal/kernel"], weights[f"{name}_unimodal/bias"])
        named[f"{name}_unimodal/kernel"], named[f"{name}_unimodal/bias"] = head.weight, head.bias
    return heads


def keras_named_parameters(inner: Any, spec: Spec, *, unimodal_heads: bool) -> dict[str, Any]:
    """The Keras model's parameters by name (the fused model's where ``inner`` wraps one), with the unimodal
    heads' of :func:`_with_unimodal_heads` where asked."""
    named = keras_parameters(getattr(inner, "fused", inner))
    if unimodal_heads:
        for name, _, _ in spec:
            head = inner.unimodal_heads[name]
            named[f"{name}_unimodal/kernel"], named[f"{name}_unimodal/bias"] = head.kernel, head.bias
    return named


def keras_transform_model(spec: Spec, weights: Mapping[str, np.ndarray], policy: Any, activation: str = "tanh") -> Any:
    """The Keras model for ``policy``, wrapped in ``ModulatedModel`` as :func:`train_torch_transform` wires it."""
    import pdmp
    from pdmp.backends.keras import ConcatHead, ModulatedModel

    names = [name for name, _, _ in spec]
    inner = keras_model(spec, weights, activation)
    decomposed = ConcatHead("head", {name: f"{name}_fc2" for name in names})
    if policy.uses_unimodal_gradients:
        inner = _with_unimodal_heads(inner, spec, weights)
        return ModulatedModel(inner, encoder_layers(spec), policy, unimodal_logits=_unimodal_head_logits)
    if isinstance(policy, pdmp.AGM):
        return ModulatedModel(inner, encoder_layers(spec), policy, modality_logits=_mono_modal_responses)
    return ModulatedModel(inner, encoder_layers(spec), policy, modality_logits=decomposed, unimodal_logits=decomposed)


def _mono_modal_responses(model: Any, x: Any, training: bool) -> dict[str, Any]:
    import keras

    import pdmp

    responses = pdmp.mono_modal_responses(lambda inputs: model(inputs, training=False), x)
    return {name: keras.ops.stop_gradient(value) for name, value in responses.items()}


def _unimodal_head_logits(model: Any, x: Any, training: bool) -> dict[str, Any]:
    features = model.features(x, training=training)
    return {name: model.unimodal_heads[name](value) for name, value in features.items()}


def _with_unimodal_heads(fused: Any, spec: Spec, weights: Mapping[str, np.ndarray]) -> Any:
    """``fused`` plus a unimodal head per modality (its variables train with the model's)."""
    import keras

    names = [name for name, _, _ in spec]

    class WithUnimodalHeads(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="with_unimodal_heads")
            self.fused = fused
            self.features = keras.Model(fused.inputs, {n: fused.get_layer(f"{n}_fc2").output for n in names})
            self.unimodal_heads = {n: keras.layers.Dense(CLASSES, name=f"{n}_unimodal", dtype="float64") for n in names}

        def call(self, inputs: Any, training: Any = None) -> Any:
            return self.fused(inputs, training=training)

    model = WithUnimodalHeads()
    for name in names:
        head = model.unimodal_heads[name]
        head.build((None, WIDTH))
        head.kernel.assign(weights[f"{name}_unimodal/kernel"])
        head.bias.assign(weights[f"{name}_unimodal/bias"])
    model({name: np.zeros((1, *shape)) for name, _, shape in spec})
    return model


def train_keras_transform(
    spec: Spec,
    weights: Mapping[str, np.ndarray],
    x: Mapping[str, np.ndarray],
    y: np.ndarray,
    policy: Any,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = MOMENTUM,
    activation: str = "tanh",
) -> Trace:
    """Train with a GradientPolicy through :class:`pdmp.backends.keras.ModulatedModel` and ``fit()``."""
    import keras

    model = keras_transform_model(spec, weights, policy, activation)
    model.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64"),
    )
    named = keras_named_parameters(model.inner_model, spec, unimodal_heads=policy.uses_unimodal_gradients)
    trace = Trace()

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            trace.coefficients.append(model.coefficients)
            trace.transforms.append(policy.last_transform.as_array(model.modalities))
            trace.params.append({key: np.array(v.numpy()) for key, v in named.items()})

    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0, callbacks=[Record()])
    return trace


# -- RebalancingPolicies (G-Blending, PMR, Diagnosing & Re-learning, MLA) ---------------------------------------
#
# G-Blending gets a unimodal head per encoder (as MMPareto); PMR and D&R read the encoders' features
# (``"<modality>_fc2"``); MLA's model applies one shared head to every encoder's features and sums the logits.


def keras_shared_head_model(spec: Spec, weights: Mapping[str, np.ndarray], activation: str = "tanh") -> Any:
    """MLA's model: the encoders of :func:`keras_model`, one ``Dense(CLASSES)`` head ``"head"`` (kernel
    ``(WIDTH, CLASSES)``, ``weights["shared_head/kernel"]``) applied to each encoder's features, logits summed."""
    import keras

    f64 = "float64"
    inputs = {name: keras.Input(shape, name=name, dtype=f64) for name, _, shape in spec}
    head = keras.layers.Dense(CLASSES, name="head", dtype=f64)
    outputs = []
    for name, kind, _ in spec:
        if kind != "mlp":  # pragma: no cover - a typo in a test
            raise ValueError("keras_shared_head_model takes mlp encoders only")
        h = keras.layers.Dense(HIDDEN, activation=activation, name=f"{name}_fc1", dtype=f64)(inputs[name])
        outputs.append(head(keras.layers.Dense(WIDTH, activation=activation, name=f"{name}_fc2", dtype=f64)(h)))
    model = keras.Model(inputs, keras.layers.Add(name="fuse", dtype=f64)(outputs), name="shared")
    for key, variable in keras_parameters(model).items():
        variable.assign(weights[key])
    return model


def shared_head_weights(spec: Spec, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`initial_weights` with the head resized to one modality's features (``(WIDTH, CLASSES)``)."""
    weights = initial_weights(spec, seed)
    rng = np.random.default_rng(seed + 7)
    limit = math.sqrt(6.0 / (WIDTH + CLASSES))
    weights["head/kernel"] = rng.uniform(-limit, limit, size=(WIDTH, CLASSES))
    return weights


def keras_rebalancing_model(spec: Spec, policy: Any, activation: str = "tanh", seed: int = 0) -> Any:
    """``ModulatedModel`` wired for ``policy`` as its capability flags ask (see the comment above)."""
    from pdmp.backends.keras import ModulatedModel

    names = [name for name, _, _ in spec]
    features = {name: f"{name}_fc2" for name in names}
    if policy.uses_training_passes:
        inner = keras_shared_head_model(spec, shared_head_weights(spec, seed), activation)
        return ModulatedModel(inner, encoder_layers(spec), policy, modality_features=features, shared_head="head")
    weights = {**initial_weights(spec, seed), **unimodal_head_weights(spec)}
    fused = keras_model(spec, weights, activation)
    if policy.needs_held_out_losses:
        inner = _with_unimodal_heads(fused, spec, weights)
        encoders = {m: [inner.fused.get_layer(layer) for layer in layers] for m, layers in encoder_layers(spec).items()}
        return ModulatedModel(inner, encoders, policy, unimodal_logits=_unimodal_head_logits)
    return ModulatedModel(fused, encoder_layers(spec), policy, modality_features=features)


def train_keras_rebalancing(
    spec: Spec,
    x: Mapping[str, np.ndarray],
    y: np.ndarray,
    held_out: tuple[Mapping[str, np.ndarray], np.ndarray],
    policy: Any,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = MOMENTUM,
    activation: str = "tanh",
) -> Trace:
    """Train a RebalancingPolicy through ``ModulatedModel.fit`` (unshuffled); record every step's parameters."""
    import keras

    model = keras_rebalancing_model(spec, policy, activation)
    model.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64"),
    )
    named = keras_named_parameters(model.inner_model, spec, unimodal_heads=policy.needs_held_out_losses)
    trace = Trace()

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            assert model.step_count > 0  # on JAX: brings the running fit()'s values into the variables
            trace.params.append({key: np.array(v.numpy()) for key, v in named.items()})

    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0, callbacks=[Record()],
              held_out=held_out)  # fmt: skip
    trace.predictions.append(np.asarray(model.predict(x, batch_size=batch_size, verbose=0)))
    return trace


def train_torch_rebalancing(
    spec: Spec,
    x: Mapping[str, np.ndarray],
    y: np.ndarray,
    held_out: tuple[Mapping[str, np.ndarray], np.ndarray],
    policy: Any,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = MOMENTUM,
) -> Trace:
    """The same run as :func:`train_keras_rebalancing` with :class:`pdmp.backends.torch.Rebalancer` (the models
    of :func:`torch_model`, the same weights; MLA's shared head a ``Linear(WIDTH, CLASSES)``); every step recorded
    in the Keras layout and naming."""
    import torch

    from pdmp.backends.torch import Rebalancer

    names = [name for name, _, _ in spec]
    passes = policy.uses_training_passes
    weights = shared_head_weights(spec) if passes else {**initial_weights(spec), **unimodal_head_weights(spec)}
    model = torch_model(spec, {**weights, "head/kernel": initial_weights(spec)["head/kernel"]} if passes else weights)
    named = torch_parameters(model, spec)
    head = None
    if passes:
        head = torch_dense(weights["head/kernel"], weights["head/bias"])
        named["head/kernel"], named["head/bias"] = head.weight, head.bias
    heads = torch_unimodal_heads(spec, weights, named) if policy.needs_held_out_losses else None
    parameters = list({id(p): p for p in named.values()}.values())
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum)

    def encode(inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {name: model.encoders[name](inputs[name]) for name in names}

    def fuse(features: Mapping[str, Any]) -> Any:
        return model.head(torch.cat([features[name] for name in names], dim=1))

    rebalancer = Rebalancer(
        policy, {name: model.encoders[name] for name in names}, num_classes=CLASSES, encode=encode,
        fuse=None if passes else fuse, head=head, unimodal_heads=heads,
    )  # fmt: skip
    labels, held_labels = torch.from_numpy(y), torch.from_numpy(held_out[1])
    train = [(torch_inputs(spec, x, rows), labels[rows]) for rows in batches(len(y), batch_size)]
    held = [
        (torch_inputs(spec, held_out[0], rows), held_labels[rows]) for rows in batches(len(held_labels), batch_size)
    ]
    rebalancer.start(train, held_out=held)
    trace = Trace()
    for epoch in range(epochs):
        rebalancer.set_epoch(epoch)
        for inputs, target in train:
            rebalancer.step(optimizer, inputs, target)
            trace.params.append({key: from_torch_layout(key, p.detach().numpy()) for key, p in named.items()})
        rebalancer.end_epoch(epoch, train, held_out=held)
    return trace
