"""Probe suite for the NumPy core: bad input fails loudly, names the culprit, and changes nothing.

Every probe runs in a folder holding a valid ranking file; afterwards the folder's files (names and
bytes), the probe's input arrays and any object it was handed must be exactly as before. NumPy only.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pdmp
from pdmp import (
    OGMGE,
    PDMP,
    Clock,
    NoModulation,
    Ranking,
    RankingFileError,
    accuracy,
    macro_f1,
    policy_from_config,
    rank_modalities,
)
from pdmp.metrics import check_metric
from pdmp.ranking import check_ranking_options, check_unimodal_request, rank_unimodal_outputs

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])
PREDICTIONS = {"audio": np.array([0, 1, 2, 0, 1, 2, 0, 0]), "image": np.array([0, 1, 1, 1, 2, 2, 0, 0])}
ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with one valid ranking file, the current directory during the probe."""
    ranking = rank_modalities(PREDICTIONS, LABELS, n_bootstrap=10, seed=0, warn_margin=0.0)
    ranking.save(tmp_path / "ranking.json")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _altered_ranking(field: str, value: Any) -> Callable[[Path], Any]:
    def probe(folder: Path) -> Any:
        altered = folder / "altered.json"
        data = json.loads((folder / "ranking.json").read_text())
        data[field] = value
        altered.write_text(json.dumps(data))
        return Ranking.load(altered)

    return probe


def _logits(label_max: int) -> dict[str, np.ndarray]:
    return {"audio": np.eye(3)[[0, 1, 2, 0]], "image": np.eye(3)[[0, 1, 1, label_max % 3]]}


# (probe id, probe(folder), expected error types, regex the message must match)
PROBES: list[tuple[str, Callable[[Path], Any], tuple[type[Exception], ...], str]] = [
    ("modalities-as-string", lambda _: PDMP("av", "a"), (TypeError,), r"single string 'av'"),
    ("modalities-as-string-ogm", lambda _: OGMGE("audiovisual"), (TypeError,), r"single string 'audiovisual'"),
    ("modalities-not-iterable", lambda _: NoModulation(3), (TypeError,), r"expected a list of modality names"),
    (
        "string-boolean-allow_inverse",
        lambda _: PDMP(["a", "v"], "a", gamma_p=1, gamma_r=2, allow_inverse="no"),
        (TypeError,),
        r"allow_inverse must be True or False, got str 'no'",
    ),
    ("string-boolean-noise", lambda _: OGMGE(["a", "v"], noise="false"), (TypeError,), r"noise must be True or False"),
    (
        "config-string-boolean",
        lambda _: policy_from_config(
            {"type": "OGMGE", "modalities": ["a", "v"], "alpha": 0.8, "conv_kernels_only": "yes"}
        ),
        (ValueError, TypeError),
        r"conv_kernels_only must be True or False, got str 'yes'",
    ),
    ("config-not-a-dict", lambda _: policy_from_config("PDMP"), (ValueError, TypeError), r"'type' key, got 'PDMP'"),
    ("gamma-as-string", lambda _: PDMP(["a", "v"], "a", gamma_p="10"), (TypeError,), r"gamma_p must be a number"),
    ("gamma-as-bool", lambda _: PDMP(["a", "v"], "a", gamma_r=True), (TypeError,), r"gamma_r must be a number"),
    ("warmup-fraction", lambda _: PDMP(["a", "v"], "a", warmup=0.5), (ValueError,), r"warmup must be an integer"),
    ("dominant-unknown", lambda _: PDMP(["a", "v"], "audoi"), (ValueError,), r"unknown modality 'audoi'; known: a, v"),
    ("negative-step", lambda _: PDMP(["a", "v"], "a").coefficients(step=-3), (ValueError,), r"step must be"),
    (
        "n_bootstrap-fraction",
        lambda _: rank_modalities(PREDICTIONS, LABELS, n_bootstrap=2.5),
        (ValueError, TypeError),
        r"n_bootstrap must be an integer >= 0, got 2\.5",
    ),
    ("negative-seed", lambda _: rank_modalities(PREDICTIONS, LABELS, seed=-1), (ValueError,), r"seed must be"),
    (
        "warn_margin-nan",
        lambda _: rank_modalities(PREDICTIONS, LABELS, warn_margin=float("nan")),
        (ValueError,),
        r"warn_margin must be a finite number >= 0",
    ),
    ("metric-unknown", lambda _: check_metric("auc"), (ValueError,), r"unknown metric 'auc'"),
    ("metric-not-callable", lambda _: rank_modalities(PREDICTIONS, LABELS, metric=3), (TypeError,), r"metric must"),
    (
        "metric-returns-text",
        lambda _: rank_modalities(PREDICTIONS, LABELS, metric=lambda y, p: "high"),
        (TypeError,),
        r"metric returned str 'high' for modality 'audio'",
    ),
    (
        "label-at-number-of-classes",
        lambda _: rank_modalities(_logits(0), [0, 1, 3, 0]),
        (ValueError,),
        r"class index 3 but there are 3 classes",
    ),
    (
        "label-above-num_classes",
        lambda _: rank_modalities(PREDICTIONS, LABELS, num_classes=2),
        (ValueError,),
        r"labels contains class index 2 but there are 2 classes",
    ),
    ("labels-nan", lambda _: accuracy([0, np.nan], [0, 1]), (ValueError,), r"labels must hold integer class indices"),
    (
        "macro_f1-num_classes-too-small",
        lambda _: macro_f1([0, 1, 2], [0, 1, 2], num_classes=2),
        (ValueError,),
        r"class index 2 but there are 2 classes",
    ),
    (
        "scores-and-labels",
        lambda _: rank_modalities(scores={"a": 0.9, "b": 0.1}, labels=[0, 1]),
        (ValueError,),
        r"labels/num_classes go with predictions",
    ),
    (
        "score-as-string",
        lambda _: rank_modalities(scores={"a": "0.9", "b": 0.1}),
        (TypeError,),
        r"score of modality 'a' must be a number",
    ),
    (
        "budget-not-json",
        lambda _: rank_modalities(PREDICTIONS, LABELS, budget={"model": object()}),
        (ValueError,),
        r"budget must hold JSON values",
    ),
    (
        "ranking-score-string",
        lambda _: Ranking(order=("a", "b"), scores={"a": "0.9", "b": 0.1}),
        (TypeError,),
        r"score of 'a' is '0\.9'",
    ),
    (
        "ranking-seed-fraction",
        lambda _: Ranking(order=("a", "b"), scores={"a": 0.9, "b": 0.1}, n_bootstrap=5, stability=1.0, seed=1.5),
        (ValueError,),
        r"'seed' must be an integer >= 0, got 1\.5",
    ),
    (
        "ranking-stability-without-bootstrap",
        lambda _: Ranking(order=("a", "b"), scores={"a": 0.9, "b": 0.1}, stability=0.7),
        (ValueError,),
        r"a stability exists exactly when n_bootstrap > 0",
    ),
    (
        "ranking-file-rotated-scores",
        _altered_ranking("scores", {"audio": 0.5, "image": 0.875}),
        (RankingFileError,),
        r"altered\.json.*'order'.*disagrees",
    ),
    ("ranking-file-seed", _altered_ranking("seed", "0"), (RankingFileError,), r"altered\.json.*'seed'"),
    (
        "ranking-file-extra-field",
        _altered_ranking("pickle", "x"),
        (RankingFileError,),
        r"unknown field\(s\) \['pickle'\]",
    ),
    (
        "unimodal-lr-bool",
        lambda _: check_unimodal_request(
            {"a": 1, "b": 1}, {"a": 1, "b": 1}, {"a": 1, "b": 1}, epochs=1, subset=1.0, batch_size=4, lr=True
        ),
        (ValueError,),
        r"lr must be a finite number > 0, got True",
    ),
    (
        "unimodal-unpaired-label-out-of-range",
        lambda _: rank_unimodal_outputs(
            {"a": np.eye(3)[[0, 1]], "b": np.eye(3)[[0, 1, 2]]}, {"a": [0, 5], "b": [0, 1, 2]}, budget={}
        ),
        (ValueError,),
        r"labels\['a'\] contains class index 5 but there are 3 classes",
    ),
    (
        "ranking-options-budget-keys",
        lambda _: check_ranking_options(budget={1: "epochs"}),
        (TypeError,),
        r"budget keys must be strings",
    ),
    (
        "ogm-labels-out-of-range",
        lambda _: OGMGE(["a", "v"]).coefficients(
            epoch=0, logits={"a": np.zeros((2, 3)), "v": np.zeros((2, 3))}, labels=[0, 7]
        ),
        (ValueError,),
        r"class index 7 but there are 3 classes",
    ),
]


def test_probe_ids_are_distinct_and_enough() -> None:
    ids = [probe_id for probe_id, *_ in PROBES]
    assert len(ids) == len(set(ids)) and len(ids) >= 15


@pytest.mark.parametrize(("probe", "errors", "message"), [p[1:] for p in PROBES], ids=[p[0] for p in PROBES])
def test_bad_input_fails_loudly_and_writes_nothing(workdir: Path, probe, errors, message) -> None:
    inputs = copy.deepcopy((PREDICTIONS, LABELS))
    before = _snapshot(workdir)
    with pytest.raises(errors) as caught:
        probe(workdir)
    assert re.search(message, str(caught.value)), f"{caught.value!s} does not match {message!r}"
    after = _snapshot(workdir)
    after.pop("altered.json", None)  # the probe's own altered copy, written before the call under test
    assert after == before
    for name, array in inputs[0].items():
        assert np.array_equal(PREDICTIONS[name], array)
    assert np.array_equal(LABELS, inputs[1])


def test_clock_load_is_all_or_nothing() -> None:
    clock = Clock(step=5, epoch=2)
    for bad in ({"step": 9, "epoch": -1}, {"step": 9, "epoch": 1.5}, {"step": 9}, {"step": "9", "epoch": 1}):
        with pytest.raises(ValueError, match=r"state\['(step|epoch)'\] must be an integer >= 0"):
            clock.load_state_dict(bad)
        assert clock.state_dict() == {"step": 5, "epoch": 2}


def test_a_refused_policy_config_leaves_the_config_unchanged() -> None:
    config = PDMP(["a", "v"], "a", warmup=2).get_config()
    bad = {**config, "allow_inverse": "false"}
    frozen = copy.deepcopy(bad)
    with pytest.raises((ValueError, TypeError), match="allow_inverse must be True or False, got str 'false'"):
        policy_from_config(bad)
    assert bad == frozen


def test_ranking_save_target_is_only_written_when_complete(workdir: Path) -> None:
    ranking = Ranking.load(workdir / "ranking.json")
    before = _snapshot(workdir)
    with pytest.raises(OSError):
        ranking.save(workdir / "missing-folder" / "ranking.json")
    assert _snapshot(workdir) == before


# ---- security: no pickle for rankings, policies, states -------------------------------------------------


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was used")

    for name in ("dump", "dumps", "load", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


def test_rankings_policies_and_states_round_trip_without_pickle(tmp_path: Path, no_pickle: None) -> None:
    ranking = rank_modalities(PREDICTIONS, LABELS, n_bootstrap=5, budget={"epochs": 2}, warn_margin=0.0)
    path = ranking.save(tmp_path / "ranking.json")
    assert json.loads(path.read_text())["order"] == list(ranking.order)  # plain JSON on disk
    assert Ranking.load(path) == ranking
    for policy in (PDMP(["a", "v"], "v", warmup=1, ramp=2, end=9), OGMGE(["a", "v"]), NoModulation(["a", "v"])):
        text = json.dumps(policy.get_config())  # no default=: only JSON types
        assert policy_from_config(json.loads(text)) == policy
    clock = Clock(step=3, epoch=1)
    restored = Clock()
    restored.load_state_dict(json.loads(json.dumps(clock.state_dict())))
    assert restored == clock


def test_ranking_file_with_a_pickle_payload_is_refused(tmp_path: Path, no_pickle: None) -> None:
    path = tmp_path / "ranking.json"
    path.write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94.")
    with pytest.raises(RankingFileError, match=r"ranking\.json.*not UTF-8"):
        Ranking.load(path)


def test_no_source_file_uses_pickle() -> None:
    # Text scan (no framework import): pickle is never imported, np.load always refuses pickles.
    offenders = []
    for folder in ("pdmp", "backends"):
        for source in sorted((ROOT / folder).rglob("*.py")):
            text = source.read_text(encoding="utf-8")
            if re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib|cloudpickle)\b", text, re.MULTILINE):
                offenders.append(f"{source.relative_to(ROOT)} imports a pickle module")
            if "allow_pickle=True" in text:
                offenders.append(f"{source.relative_to(ROOT)} sets allow_pickle=True")
            for call in re.finditer(r"np\.load\(([^()]*(\([^()]*\))?)*\)", text):
                if "allow_pickle=False" not in call.group(0):
                    offenders.append(f"{source.relative_to(ROOT)}: {call.group(0)} without allow_pickle=False")
    assert not offenders, offenders


def test_public_exports_of_the_checks() -> None:
    # The adapters call these before any training; keep them importable where documented.
    assert callable(check_metric) and callable(check_ranking_options) and callable(pdmp.rank_modalities)
