"""Probe suite for the Keras adapter: bad inputs and faults, each refused loudly and without side effects.

Every probe asserts the error type, that the message names the culprit (and usually the fix), and
that nothing changed: the wrapped model's weights, the ModulatedModel's variables (coefficients, step
and epoch clock), its seed, and the files in a scratch folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from keras_helpers import keras, tf
from test_keras_model import ENCODERS, LOSS, NAMES, build, data

from pdmp import OGMGE, PDMP, AdaptivePDMP
from pdmp.backends.keras import (
    ConcatHead,
    ModulatedModel,
    SumHeads,
    concat_head_logits,
    rank_unimodal,
    sum_head_logits,
)
from pdmp.backends.keras.heads import layer_logits_from_config

pytestmark = pytest.mark.keras

SPEC = ConcatHead("head", {"audio": "audio_enc", "visual": "visual_enc"})


@dataclass
class Bench:
    """What a probe may touch: a plain model, a trained ModulatedModel over another one, a folder."""

    inner: keras.Model
    model: ModulatedModel
    folder: Path


@dataclass(frozen=True)
class Probe:
    name: str
    act: Callable[[Bench], Any]
    error: type[Exception]
    match: str


def state(bench: Bench) -> dict[str, Any]:
    return {
        "inner": [v.numpy().copy() for v in bench.inner.weights],
        "model": {v.path: v.numpy().copy() for v in bench.model.weights},
        "seed": bench.model.seed,
        "clock": bench.model.state_dict()["clock"],
        "files": sorted(p.name for p in bench.folder.iterdir()),
    }


def ogm(inner: keras.Model, **options: Any) -> ModulatedModel:
    return ModulatedModel(inner, ENCODERS, OGMGE(NAMES), modality_logits=options.pop("spec", SPEC), **options)


def wrap(bench: Bench, policy: Any = None, **options: Any) -> ModulatedModel:
    return ModulatedModel(bench.inner, options.pop("modalities", ENCODERS), policy or PDMP(NAMES, "audio"), **options)


def saved_state(bench: Bench, **changes: Any) -> dict[str, Any]:
    return {**bench.model.state_dict(), **changes}


def unbuilt() -> keras.Model:
    return keras.Sequential([keras.layers.Dense(2)])


def labels_out_of_range(bench: Bench) -> None:
    model = ogm(bench.inner)
    model.compile(keras.optimizers.SGD(0.1), LOSS, jit_compile=False)
    x, y = data()
    model.fit(x, np.where(np.arange(len(y)) == 3, 7, y), epochs=1, verbose=0)


def nan_labels(bench: Bench) -> None:
    model = ogm(bench.inner)
    model.compile(keras.optimizers.SGD(0.1), LOSS, jit_compile=False)
    x, y = data()
    model.fit(x, np.where(np.arange(len(y)) == 3, np.nan, y), epochs=1, verbose=0)


UNIMODAL = {
    name: (lambda width=width: keras.Sequential([keras.Input((width,)), keras.layers.Dense(3)]))
    for name, width in (("a", 3), ("v", 4))
}


def rank(labels: Callable[[np.ndarray], np.ndarray] = lambda y: y, **options: Any) -> None:
    x, y = data()
    pairs = {name: (x[name], labels(y)) for name in ("a", "v")}
    rank_unimodal(UNIMODAL, pairs, pairs, epochs=1, lr=0.1, progress=False, **options)


PROBES = [
    Probe("not-a-model", lambda b: ModulatedModel(keras.layers.Dense(3), ENCODERS, PDMP(NAMES, "audio")),
          TypeError, r"wraps a keras.Model, got Dense"),
    Probe("unbuilt-model", lambda b: ModulatedModel(unbuilt(), ENCODERS, PDMP(NAMES, "audio")),
          ValueError, r"is not built.*build it first"),
    Probe("policy-as-dict", lambda b: wrap(b, {"gamma_p": 10}), TypeError, r"policy must be a pdmp CoefficientPolicy"),
    Probe("unknown-mode", lambda b: wrap(b, mode="param"), ValueError, r"mode must be 'grad' or 'lr', got 'param'"),
    Probe("modalities-as-list", lambda b: wrap(b, modalities=["audio_enc", "visual_enc"]),
          TypeError, r"modalities must be a dict \{name: layer\(s\)/variable\(s\)\}, got list"),
    Probe("misspelled-modality", lambda b: wrap(b, modalities={"audoi": "audio_enc", "visual": "visual_enc"}),
          ValueError, r"unknown modality\(ies\) \['audoi'\] and missing modality\(ies\) \['audio'\]"),
    Probe("unknown-layer", lambda b: wrap(b, modalities={"audio": "audio_encoder", "visual": "visual_enc"}),
          ValueError, r"modality 'audio': model 'fused' has no layer or variable 'audio_encoder'; layers: "),
    Probe("variable-of-another-model",
          lambda b: wrap(b, modalities={"audio": build().get_layer("audio_enc"), "visual": "visual_enc"}),
          ValueError, r"modality 'audio': variable 'audio_enc/kernel' is not a variable of model 'fused'"),
    Probe("member-of-wrong-type", lambda b: wrap(b, modalities={"audio": 3, "visual": "visual_enc"}),
          TypeError, r"modality 'audio': 3 is a int; give layers, layer names, variables or variable paths"),
    Probe("variable-in-two-modalities",
          lambda b: wrap(b, modalities={"audio": ["audio_enc", "concat"], "visual": ["visual_enc", "audio_enc/bias"]}),
          ValueError, r"'audio_enc/bias' is claimed by modalities 'audio' and 'visual'"),
    Probe("empty-modality", lambda b: wrap(b, modalities={"audio": "audio_enc", "visual": []}),
          ValueError, r"modality 'visual' has no trainable variables"),
    Probe("head-as-a-modality", lambda b: wrap(b, modalities={"audio": ["audio_enc", "head"], "visual": "visual_enc"}),
          ValueError, r"'audio' includes 'head/kernel' of layer 'head', which produces the output of model 'fused'"),
    Probe("concat-head-in-wrong-order",
          lambda b: ogm(b.inner, spec=ConcatHead("head", {"visual": "visual_enc", "audio": "audio_enc"})),
          ValueError, r"concatenates \['audio_enc', 'visual_enc'\] in this order, but features lists"),
    Probe("concat-head-on-a-missing-layer", lambda b: ogm(b.inner, spec=ConcatHead("fusion", dict(ENCODERS))),
          ValueError, r"ConcatHead: model 'fused' has no top-level layer\(s\) \['fusion'\]"),
    Probe("sum-heads-with-unknown-modality", lambda b: ogm(b.inner, spec=SumHeads({"sound": "a", "visual": "b"})),
          ValueError, r"SumHeads modality names: unknown modality\(ies\) \['sound'\]"),
    Probe("logits-spec-as-string", lambda b: ogm(b.inner, spec="head"),
          TypeError, r"modality_logits must be ConcatHead, SumHeads or a function, got str"),
    Probe("adaptive-without-logits", lambda b: wrap(b, AdaptivePDMP(NAMES, {"audio": 0.8, "visual": 0.5})),
          ValueError, r"AdaptivePDMP learns from per-modality logits: pass modality_logits="),
    Probe("ogm-without-logits", lambda b: wrap(b, OGMGE(NAMES)), ValueError, r"OGMGE needs per-modality logits"),
    Probe("ogm-noise-in-lr-mode", lambda b: ogm(b.inner, mode="lr"),
          ValueError, r"adds noise to gradients, which mode='lr' does not modulate"),
    Probe("negative-seed", lambda b: wrap(b, seed=-1), ValueError, r"seed must be an integer >= 0, got -1"),
    Probe("boolean-seed", lambda b: wrap(b, seed=True), ValueError, r"seed must be an integer >= 0, got True"),
    Probe("negative-epoch", lambda b: b.model.set_epoch(-1), ValueError, r"epoch must be an integer >= 0, got -1"),
    Probe("fractional-epoch", lambda b: b.model.set_epoch(1.5), ValueError, r"epoch must be an integer >= 0, got 1.5"),
    Probe("state-not-a-dict", lambda b: b.model.load_state_dict([("clock", {})]),
          TypeError, r"state must be a dict from ModulatedModel.state_dict\(\), got list"),
    Probe("state-without-clock", lambda b: b.model.load_state_dict({"policy": {}, "coefficients": {}}),
          ValueError, r"state lacks \['clock'\]"),
    Probe("state-with-negative-step",
          lambda b: b.model.load_state_dict(saved_state(b, clock={"step": -3, "epoch": 1})),
          ValueError, r"state\['step'\] must be an integer >= 0, got -3"),
    Probe("state-with-nan-coefficient",
          lambda b: b.model.load_state_dict(
              saved_state(b, clock={"step": 99, "epoch": 9}, coefficients={"audio": float("nan"), "visual": 0.5})
          ),
          ValueError, r"state\['coefficients'\]\['audio'\] must be a finite number > 0, got nan"),
    Probe("state-with-missing-coefficient",
          lambda b: b.model.load_state_dict(saved_state(b, clock={"step": 99, "epoch": 9}, coefficients={"audio": 1})),
          ValueError, r"state\['coefficients'\]: missing modality\(ies\) \['visual'\]"),
    Probe("state-with-string-scores", lambda b: b.model.load_state_dict(saved_state(b, scores="1")),
          TypeError, r"state\['scores'\] must be None or a dict"),
    Probe("state-with-unknown-key", lambda b: b.model.load_state_dict(saved_state(b, extra=1)),
          ValueError, r"ModulatedModel state: unknown key\(s\) \['extra'\]"),
    Probe("state-with-string-strict", lambda b: b.model.load_state_dict(saved_state(b), strict="no"),
          TypeError, r"strict must be True or False, got str 'no'"),
    Probe("state-from-lr-mode", lambda b: b.model.load_state_dict(saved_state(b, mode="lr")),
          ValueError, r"state was saved in mode='lr' but this model uses 'grad'"),
    Probe("state-of-another-policy",
          lambda b: b.model.load_state_dict(saved_state(b, policy=PDMP(NAMES, "visual").get_config())),
          ValueError, r"build the model with the saved policy, or pass strict=False"),
    Probe("steps-per-execution-with-a-step-schedule",
          lambda b: wrap(b, PDMP(NAMES, "audio", unit="step", warmup=2)).compile("sgd", LOSS, steps_per_execution=3),
          ValueError, r"steps_per_execution=3 runs 3 steps per call"),
    Probe("ogm-label-out-of-range", labels_out_of_range,
          ValueError, r"fit\(\) y \(OGM-GE class indices\) contains class index 7 but there are 3 classes"),
    Probe("ogm-nan-label", nan_labels,
          ValueError, r"fit\(\) y \(OGM-GE class indices\) must hold integer class indices"),
    Probe("observe-label-out-of-range",
          lambda b: ogm(b.inner).observe({n: tf.zeros((2, 3)) for n in NAMES}, np.array([0, 3])),
          ValueError, r"observe\(\) labels \(OGM-GE class indices\) contains class index 3 but there are 3"),
    Probe("observe-unknown-modality",
          lambda b: b.model.observe({"audio": tf.zeros((1, 3)), "sound": tf.zeros((1, 3))}, [0]),
          ValueError, r"ModulatedModel.observe logits: unknown modality\(ies\) \['sound'\]"),
    Probe("concat-logits-of-the-wrong-width",
          lambda b: concat_head_logits(b.inner.layers[-1], {"audio": np.ones((1, 5)), "visual": np.ones((1, 4))}),
          ValueError, r"feature widths \{'audio': 5, 'visual': 4\} add up to 9, but head 'head' takes 10 inputs"),
    Probe("sum-logits-with-missing-features",
          lambda b: sum_head_logits({"audio": keras.layers.Dense(3), "visual": keras.layers.Dense(3)},
                                    {"audio": np.ones((1, 2))}),
          ValueError, r"heads name \['audio', 'visual'\] but features name \['audio'\]"),
    Probe("unknown-logits-spec-in-a-config", lambda b: layer_logits_from_config({"type": "GatedHead"}),
          ValueError, r"unknown modality-logits spec 'GatedHead'; known: ConcatHead, SumHeads"),
    Probe("rank-unimodal-label-beyond-the-classes", lambda b: rank(lambda y: np.where(np.arange(len(y)) == 0, 3, y)),
          ValueError, r"train\['a'\] labels contains class index 3 but there are 3 classes"),
    Probe("rank-unimodal-optimizer-of-wrong-type", lambda b: rank(optimizer=42),
          TypeError, r"optimizer must be a name or a callable returning a Keras optimizer, got 42"),
]  # fmt: skip


@pytest.fixture(scope="module")
def trained() -> tuple[keras.Model, ModulatedModel]:
    """A plain model and a ModulatedModel with a non-trivial state (trained, mid-schedule)."""
    x, y = data()
    model = ModulatedModel(build(seed=1), ENCODERS, PDMP(NAMES, "audio", warmup=1, ramp=2))
    model.compile(keras.optimizers.SGD(0.05), LOSS, jit_compile=False)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    return build(), model


def test_there_are_enough_distinct_probes() -> None:
    assert len({probe.name for probe in PROBES}) == len(PROBES) >= 18


@pytest.mark.parametrize("probe", PROBES, ids=[probe.name for probe in PROBES])
def test_probe_is_refused_loudly_and_changes_nothing(
    probe: Probe, trained: tuple[keras.Model, ModulatedModel], tmp_path: Path
) -> None:
    inner, model = trained
    bench = Bench(inner, model, tmp_path)
    before = state(bench)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a probe that wrote a file into the working folder would show up here
    try:
        with pytest.raises(probe.error, match=probe.match):
            probe.act(bench)
    finally:
        os.chdir(cwd)
    after = state(bench)
    assert after["files"] == before["files"] == []
    assert after["seed"] == before["seed"] and after["clock"] == before["clock"]
    for got, want in zip(after["inner"], before["inner"], strict=True):
        np.testing.assert_array_equal(got, want)
    assert after["model"].keys() == before["model"].keys()
    for path, value in before["model"].items():
        np.testing.assert_array_equal(after["model"][path], value, err_msg=path)
