"""Probe suite, second round: bad inputs to the newer public APIs fail loudly, name the value and the fix,
and change nothing.

Categories (issue 22): string booleans, a scalar where a list is expected, errors that named the wrong
argument or advised an option that does not exist, raw RecursionError/OverflowError/IndexError/
AttributeError from loaders and ``load_state_dict``, loosely typed saved state, user names used as file
names. The mechanisms live in ``pdmp._validation`` (``parse_json``, ``check_number``, ``check_sequence``,
``check_mapping``, ``check_state_keys``, ``check_file_name``); each probe below failed (silently or with
an unclear error) before them. NumPy only.

``ELSEWHERE`` holds the probes of the same categories in ``pdmp.compare``, ``pdmp.search``,
``pdmp.stats`` and ``pdmp.policies`` (each failed before those modules used the shared checks).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pdmp import (
    AdaptivePDMP,
    Candidate,
    Clock,
    InversePDMP,
    NoModulation,
    Ranking,
    RankingFileError,
    Study,
    UniformScaling,
    combine_rankings,
    compare,
    dependency,
    gamma_grid,
    macro_f1,
    modality_scores,
    policy_from_config,
    rank_modalities,
    search_gammas,
    softmax,
)
from pdmp._validation import (
    check_file_name,
    check_mapping,
    check_number,
    check_sequence,
    check_state_keys,
    parse_json,
)
from pdmp.datasets import load_mfeat
from pdmp.datasets._cache import cache_dir, content_sha256, load_npz, save_npz_atomic
from pdmp.datasets._compact import compact_path
from pdmp.stats import PairedDifference

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])
PREDICTIONS = {"audio": np.array([0, 1, 2, 0, 1, 2, 0, 0]), "image": np.array([0, 1, 1, 1, 2, 2, 0, 0])}
DEEP = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on this
HUGE = "1" + "0" * 400  # a valid JSON integer beyond float range


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding a valid ranking file (``ranking.json``), the current directory during a probe."""
    rank_modalities(PREDICTIONS, LABELS, n_bootstrap=10, seed=0, warn_margin=0.0).save(tmp_path / "ranking.json")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _ranking(folder: Path) -> Ranking:
    return Ranking.load(folder / "ranking.json")


def _ranking_text(folder: Path, edit: Callable[[str], str]) -> Ranking:
    """Load an edited copy (``altered.json``, written before the call under test) of the valid ranking file."""
    altered = folder / "altered.json"
    altered.write_text(edit((folder / "ranking.json").read_text()))
    return Ranking.load(altered)


def _adaptive() -> AdaptivePDMP:
    policy = AdaptivePDMP(["a", "v"], {"a": 0.9, "v": 0.5})
    policy.update({"a": 3.0, "v": 1.0})
    return policy


def _load_state(state: Any) -> Callable[[Path], Any]:
    def probe(_: Path) -> Any:
        policy = _adaptive()
        before = policy.state_dict()
        try:
            policy.load_state_dict(state)
        finally:
            assert policy.state_dict() == before, "a refused state must leave the policy unchanged"

    return probe


def _cache_with_meta(folder: Path, meta_json: str) -> Any:
    """A dataset cache whose checksum matches but whose metadata is hostile: unreadable means rebuilt."""
    path = folder / "cache.npz"
    arrays = {"x": np.zeros(2)}
    np.savez(
        path,
        x=arrays["x"],
        __meta__=np.array(meta_json),
        __sha256__=np.array(content_sha256(arrays, meta_json)),
    )
    result = load_npz(path)
    path.unlink()
    if result is not None:
        return result  # accepted: the probe fails (no error)
    raise ValueError("unreadable cache metadata: load_npz returned None (the cache is rebuilt)")


# (probe id, probe(folder), expected error types, regex the message must match)
PROBES: list[tuple[str, Callable[[Path], Any], tuple[type[Exception], ...], str]] = [
    # -- loaders: deep nesting, huge numbers (raw RecursionError / OverflowError before) -------------
    (
        "ranking-file-deeply-nested",
        lambda f: _ranking_text(f, lambda _: DEEP),
        (RankingFileError,),
        r"altered\.json' nests lists/objects too deeply",
    ),
    (
        "ranking-file-budget-nested-200-levels",
        lambda f: _ranking_text(
            f, lambda t: t.replace('"budget": {}', '"budget": {"x": ' + "[" * 200 + "]" * 200 + "}")
        ),
        (RankingFileError,),
        r"nests lists/objects 202 levels deep \(at most 64\)",
    ),
    (
        "ranking-file-score-beyond-float",
        lambda f: _ranking_text(f, lambda t: re.sub(r'("audio": )[0-9.]+', r"\g<1>" + HUGE, t, count=1)),
        (RankingFileError,),
        r"score of 'audio' must be a number within float range.*about 401 digits",
    ),
    (
        "ranking-file-5000-digit-integer",
        lambda f: _ranking_text(f, lambda _: "9" * 5000),
        (RankingFileError,),
        r"holds an integer of more than \d+ digits; no pdmp file does",
    ),
    (
        "dataset-cache-meta-deeply-nested",
        lambda f: _cache_with_meta(f, DEEP),
        (ValueError,),
        r"load_npz returned None",
    ),
    (
        "dataset-cache-meta-nan",
        lambda f: _cache_with_meta(f, '{"x": NaN}'),
        (ValueError,),
        r"load_npz returned None",
    ),
    # -- dataset loaders: scalars where lists go, names that become file names -------------------------
    (
        "mfeat-views-empty",
        lambda _: load_mfeat(views=()),
        (ValueError,),
        r"views is empty; give at least one value",
    ),
    (
        "mfeat-views-scalar",
        lambda _: load_mfeat(views=3),
        (TypeError,),
        r"views must be a list or tuple such as \('pix', 'fou', 'mor'\), got int 3",
    ),
    (
        "mfeat-split-fractions-scalar",
        lambda _: load_mfeat(split_fractions=0.5),
        (TypeError,),
        r"split_fractions must be a list or tuple such as \(0\.5, 0\.25, 0\.25\), got float 0\.5",
    ),
    (
        "dataset-cache-dir-not-a-path",
        lambda _: cache_dir(3),
        (TypeError,),
        r"cache_dir must be a folder path \(str or pathlib\.Path\), got int 3",
    ),
    (
        "compact-file-regime-leaves-folder",
        lambda f: compact_path(f, "../../escaped"),
        (ValueError,),
        r"regime '\.\./\.\./escaped' contains '/'; it names a file",
    ),
    # -- loosely typed saved state (accepted before) ------------------------------------------------
    (
        "adaptive-state-ema-string",
        _load_state({"ema": {"a": "0.5", "v": 0.1}, "updates": 1}),
        (TypeError,),
        r"state\['ema'\]\['a'\] must be a number, got str '0\.5'",
    ),
    (
        "adaptive-state-ema-bool",
        _load_state({"ema": {"a": True, "v": 0.1}, "updates": 1}),
        (TypeError,),
        r"state\['ema'\]\['a'\] must be a number, got bool True",
    ),
    (
        "adaptive-state-ema-beyond-float",
        _load_state({"ema": {"a": 10**400, "v": 0.1}, "updates": 1}),
        (ValueError,),
        r"state\['ema'\]\['a'\] must be a number within float range",
    ),
    (
        "adaptive-state-unknown-key",
        _load_state({"ema": {"a": 0.5, "v": 0.1}, "updates": 1, "anchor": 3}),
        (ValueError,),
        r"unknown key\(s\) \['anchor'\]; pass the dict state_dict\(\) returned",
    ),
    (
        "adaptive-state-not-a-dict",
        _load_state([("ema", {}), ("updates", 1)]),
        (TypeError,),
        r"AdaptivePDMP state must be a dict with keys \['ema', 'updates'\]",
    ),
    (
        "adaptive-state-updates-zero-with-average",
        _load_state({"ema": {"a": 0.5, "v": 0.1}, "updates": 0}),
        (ValueError,),
        r"updates=0 but a non-zero moving average",
    ),
    # -- loosely typed live input -----------------------------------------------------------------
    (
        "adaptive-update-string-score",
        lambda _: _adaptive().update({"a": "1.0", "v": 0.5}),
        (TypeError,),
        r"update: score of 'a' must be a number, got str '1\.0'",
    ),
    (
        "adaptive-update-bool-score",
        lambda _: _adaptive().update({"a": True, "v": 0.5}),
        (TypeError,),
        r"score of 'a' must be a number, got bool True",
    ),
    (
        "adaptive-update-beyond-float",
        lambda _: _adaptive().update({"a": 10**400, "v": 0.5}),
        (ValueError,),
        r"score of 'a' must be a number within float range",
    ),
    (
        "adaptive-update-list",
        lambda _: _adaptive().update([3.0, 1.0]),
        (TypeError,),
        r"update scores must be a dict such as \{'audio'",
    ),
    (
        "adaptive-modulation-epoch-string",
        lambda _: _adaptive().modulation(step=0, epoch="1"),
        (ValueError,),
        r"epoch must be an integer >= 0, got '1'",
    ),
    (
        "adaptive-loss-weights-negative-epoch",
        lambda _: _adaptive().unimodal_loss_weights(step=0, epoch=-1),
        (ValueError,),
        r"epoch must be an integer >= 0, got -1",
    ),
    (
        "policy-config-gamma-beyond-float",
        lambda _: policy_from_config({"type": "PDMP", "modalities": ["a", "v"], "dominant": "a", "gamma_p": 10**400}),
        (ValueError,),
        r"gamma_p must be a number within float range",
    ),
    (
        "adaptive-config-gain-beyond-float",
        lambda _: policy_from_config({**_adaptive().get_config(), "gain": 10**400}),
        (ValueError,),
        r"gain must be a number within float range",
    ),
    # -- string booleans, scalars where lists go ----------------------------------------------------
    (
        "combine-rankings-warn-string",
        lambda f: combine_rankings([_ranking(f), _ranking(f)], warn="no"),
        (TypeError,),
        r"warn must be True or False, got str 'no'",
    ),
    (
        "combine-rankings-one-ranking",
        lambda f: combine_rankings(_ranking(f)),
        (TypeError,),
        r"got one Ranking; pass \[ranking\]",
    ),
    # -- errors that named the wrong argument or advised a missing option -------------------------------
    (
        "uniform-scaling-gamma-named",
        lambda _: UniformScaling(["a", "v"], "10"),
        (TypeError,),
        r"^UniformScaling gamma must be a number, got str '10'",
    ),
    (
        "inverse-pdmp-weakest-named",
        lambda _: InversePDMP(["a", "v"], "z"),
        (ValueError,),
        r"^InversePDMP weakest: unknown modality 'z'; known: a, v",
    ),
    (
        "inverse-pdmp-no-allow-inverse-advice",
        lambda _: InversePDMP(["a", "v"], "v", gamma_p=0.5, gamma_r=2.0),
        (ValueError,),
        r"^InversePDMP: gamma_r=2\.0 > gamma_p=0\.5 .*swap them(?!.*allow_inverse)",
    ),
    # -- arrays: NaN, scalars, non-dicts (silent or raw AttributeError before) ---------------------------
    ("softmax-nan", lambda _: softmax([[np.nan, 1.0]]), (ValueError,), r"logits contains 1 non-finite value"),
    ("softmax-scalar", lambda _: softmax(3.0), (ValueError,), r"last axis of >= 1 class scores.*got shape \(\)"),
    ("softmax-no-classes", lambda _: softmax(np.zeros((2, 0))), (ValueError,), r"got shape \(2, 0\)"),
    (
        "modality-scores-list",
        lambda _: modality_scores([np.zeros((2, 3))], [0, 1]),
        (TypeError,),
        r"logits must be a dict such as \{'audio': audio_logits",
    ),
    (
        "dependency-list",
        lambda _: dependency([np.zeros((2, 3))], [0, 1]),
        (TypeError,),
        r"logits must be a dict such as",
    ),
]


def test_probe_ids_are_distinct() -> None:
    ids = [probe_id for probe_id, *_ in PROBES]
    assert len(ids) == len(set(ids)) and len(ids) >= 25


@pytest.mark.parametrize(("probe", "errors", "message"), [p[1:] for p in PROBES], ids=[p[0] for p in PROBES])
def test_bad_input_fails_loudly_and_writes_nothing(workdir: Path, probe, errors, message) -> None:
    inputs = copy.deepcopy(PREDICTIONS)
    before = _snapshot(workdir)
    with pytest.raises(errors) as caught:
        probe(workdir)
    assert re.search(message, str(caught.value)), f"{caught.value!s} does not match {message!r}"
    after = _snapshot(workdir)
    after.pop("altered.json", None)  # the probe's own altered copy, written before the call under test
    assert after == before
    for name, array in inputs.items():
        assert np.array_equal(PREDICTIONS[name], array)


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("epochs", "10", ValueError, r"TrainConfig\.epochs must be an integer >= 0, got '10'"),
        ("epochs", 0, ValueError, r"TrainConfig\.epochs must be an integer >= 1"),
        ("lr", "0.05", TypeError, r"TrainConfig\.lr must be a number, got str '0\.05'"),
        ("lr", float("nan"), ValueError, r"TrainConfig\.lr must be a finite number > 0"),
        ("momentum", -0.9, ValueError, r"TrainConfig\.momentum must be a finite number >= 0"),
        ("batch_size", 6.4, ValueError, r"TrainConfig\.batch_size must be an integer"),
        ("encoder", "resnet", ValueError, r"unknown encoder 'resnet'; use one of \('cnn', 'transformer', 'wide_mlp'\)"),
        ("fusion", "attn", ValueError, r"unknown fusion 'attn'; use one of \('concat', 'sum', 'film', 'gated'\)"),
        (
            "encoder_overrides",
            "wide_mlp",
            TypeError,
            r"encoder_overrides must be a dict such as \{'image': 'wide_mlp'\}",
        ),
        ("encoder_overrides", {"image": "wide"}, ValueError, r"unknown encoder\(s\) \{'image': 'wide'\}"),
    ],
)
def test_benchmark_train_config_is_checked_before_any_work(field: str, value: Any, error: type, message: str) -> None:
    # The benchmark's run configuration (benchmarks.protocol, NumPy only) accepted all of these; a typo
    # surfaced only after the data was built, a string epoch count inside the training loop.
    from benchmarks.protocol import TrainConfig

    with pytest.raises(error, match=message):
        TrainConfig(**{field: value})
    assert TrainConfig(encoder_overrides={"image": "wide_mlp"}).encoder_for("image") == "wide_mlp"


# ---- results that were right but came from a crash-prone path ---------------------------------------


def test_macro_f1_of_huge_class_indices_counts_only_present_classes() -> None:
    # A square confusion matrix of the largest index overflowed (OverflowError) for 10**12.
    assert macro_f1([10**12, 0], [10**12, 0]) == 1.0
    assert macro_f1([0, 1], [0, 1], num_classes=10**12) == 1.0
    assert macro_f1([3, 3, 5], [3, 5, 5]) == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_a_valid_dataset_cache_still_loads(tmp_path: Path) -> None:
    arrays = {"x": np.arange(3.0)}
    save_npz_atomic(tmp_path / "c.npz", arrays, {"config": {"seed": 0}})
    loaded = load_npz(tmp_path / "c.npz")
    assert loaded is not None and np.array_equal(loaded[0]["x"], arrays["x"]) and loaded[1] == {"config": {"seed": 0}}


def test_an_adaptive_state_round_trips_through_json() -> None:
    policy = _adaptive()
    resumed = AdaptivePDMP(["a", "v"], {"a": 0.9, "v": 0.5})
    resumed.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert resumed.state_dict() == policy.state_dict()
    fresh = AdaptivePDMP(["a", "v"], {"a": 0.9, "v": 0.5})
    resumed.load_state_dict(fresh.state_dict())  # the all-zero state of a fresh policy loads
    assert resumed.shares() is None


# ---- the shared checks themselves --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", ".", "..", ".hidden", "", " ", "x\x00y", "x" * 121])
def test_check_file_name_refuses_names_that_leave_the_folder(name: str) -> None:
    with pytest.raises(ValueError, match=r"family name .* it names a file"):
        check_file_name(name, name="family name")


def test_check_file_name_accepts_the_names_pdmp_builds() -> None:
    for name in ("pdmp", "joint_lr", "pdmp[gp=10,gr=0.5]", "joint[lr*2]", "uniform[g=1.5]", "audio-dominant s1"):
        assert check_file_name(name, name="family name") == name
    with pytest.raises(TypeError, match="must be a string"):
        check_file_name(3, name="family name")


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (10.0, TypeError, r"gamma_p must be a list or tuple such as \(2\.0, 5\.0\), got float 10\.0; for a single"),
        ("25", TypeError, r"got str '25'"),
        ({"a": 1}, TypeError, r"got dict"),
        ((), ValueError, r"gamma_p is empty"),
    ],
)
def test_check_sequence(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_sequence(value, name="gamma_p", example="(2.0, 5.0)")
    assert check_sequence([1, 2], name="gamma_p", example="(2.0, 5.0)") == (1, 2)
    assert check_sequence((), name="gamma_p", example="()", allow_empty=True) == ()


def test_check_number_and_mapping_and_state_keys() -> None:
    with pytest.raises(ValueError, match=r"x must be a number within float range"):
        check_number(10**400, name="x")
    with pytest.raises(ValueError, match=r"x must be a number within float range .*about 5000 digits"):
        check_number(10**4999, name="x")  # its repr would itself raise (beyond the digit limit)
    with pytest.raises(TypeError, match=r"m must be a dict such as \{\}, got list \[1\]"):
        check_mapping([1], name="m", example="{}")
    with pytest.raises(ValueError, match=r"missing key\(s\) \['a'\] and unknown key\(s\) \['b'\]"):
        check_state_keys({"b": 1}, required=("a",), where="S")


def test_parse_json_is_strict() -> None:
    for text, message in (
        ("{", "not valid JSON"),
        ('{"a": NaN}', "non-finite number NaN"),
        ('{"a": 1, "a": 2}', r"duplicate field\(s\) \['a'\]"),
        (DEEP, "too deeply"),
        ("[" * 65 + "]" * 65, "65 levels deep"),
        ("7" * 5000, "more than"),
    ):
        with pytest.raises(OSError, match=message):
            parse_json(text, source="f.json", error=OSError)
    assert parse_json('{"a": [1, {"b": 2.5}]}', source="f.json") == {"a": [1, {"b": 2.5}]}


# ---- the same categories in modules owned elsewhere: expected failures until they use the checks ----


def _train(policy: Any, seed: int, **options: Any) -> dict[str, float]:
    return {"val_acc": 0.5 + 0.01 * seed}


def _one_family() -> dict[str, list[Candidate]]:
    return {"a": [Candidate("j", NoModulation(["x", "y"]))]}


def _study_file(folder: Path, edit: Callable[[dict[str, Any]], None]) -> Study:
    study = compare(_train, [Candidate("j", NoModulation(["x", "y"]))], [0, 1], progress=False)
    data = study.to_dict()
    edit(data)
    path = folder / "altered.json"
    path.write_text(json.dumps(data))
    return Study.load(path)


ELSEWHERE: list[tuple[str, str, Callable[[Path], Any], tuple[type[Exception], ...], str]] = [
    (
        "search-family-name-with-path",
        "pdmp/search.py: search_gammas joins the family name into folder / f'{family}-rung{i}.json'",
        lambda f: search_gammas(
            _train,
            {"../escaped": _one_family()["a"]},
            [0],
            metric="val_acc",
            budgets=(1,),
            folder=f / "s",
            progress=False,
        ),
        (ValueError,),
        r"family name '\.\./escaped'",
    ),
    (
        "search-higher-is-better-string",
        "pdmp/search.py: higher_is_better is used as a truth value, so 'false' means True",
        lambda _: search_gammas(
            _train, _one_family(), [0], metric="val_acc", budgets=(1,), higher_is_better="false", progress=False
        ),
        (TypeError,),
        r"higher_is_better must be True or False, got str 'false'",
    ),
    (
        "search-budgets-scalar",
        "pdmp/search.py: budgets=10 gives a raw \"'int' object is not iterable\"",
        lambda _: search_gammas(_train, _one_family(), [0], metric="val_acc", budgets=10, progress=False),
        (TypeError,),
        r"budgets must be a list",
    ),
    (
        "gamma-grid-empty-gamma-p",
        "pdmp/search.py: gamma_grid(gamma_p=()) returns an empty pdmp family silently",
        lambda f: gamma_grid(_ranking(f), gamma_p=()),
        (ValueError,),
        r"gamma_p is empty",
    ),
    (
        "compare-progress-string",
        "pdmp/compare.py: progress='no' is accepted as truthy-but-not-True and silences nothing/everything",
        lambda _: compare(_train, [Candidate("j", NoModulation(["x", "y"]))], [0], progress="no"),
        (TypeError,),
        r"progress must be",
    ),
    (
        "compare-metric-string-value",
        "pdmp/compare.py: _check_metrics converts '0.5' with float() (a string metric is a wiring bug)",
        lambda _: compare(
            lambda p, s, **o: {"val_acc": "0.5"}, [Candidate("j", NoModulation(["x", "y"]))], [0], progress=False
        ),
        (Exception,),
        r"val_acc='0\.5'.*(must be a number|not a number)",
    ),
    (
        "study-file-wall-time-string",
        'pdmp/compare.py: Study.load reads wall_time_s with float(), so "1.5" and true load',
        lambda f: _study_file(f, lambda d: d["runs"][0].__setitem__("wall_time_s", "1.5")),
        (ValueError,),
        r"wall_time_s",
    ),
    (
        "study-file-metric-beyond-float",
        "pdmp/compare.py: Study.load lets OverflowError out for a metric of 10**400",
        lambda f: _study_file(f, lambda d: d["runs"][0]["metrics"].__setitem__("val_acc", 10**400)),
        (ValueError,),
        r"cannot read study file",
    ),
    (
        "study-file-deeply-nested",
        "pdmp/compare.py: Study.load uses json.loads, a deep file raises a raw RecursionError",
        lambda f: (f / "deep.json").write_text(DEEP) and Study.load(f / "deep.json"),
        (ValueError,),
        r"cannot read study file|too deeply",
    ),
    (
        "study-file-run-seed-not-in-seeds",
        "pdmp/compare.py: Study.load accepts a run whose seed the study does not list",
        lambda f: _study_file(f, lambda d: d["runs"][0].__setitem__("seed", 7)),
        (ValueError,),
        r"seed 7",
    ),
    (
        "study-file-unknown-run-field",
        "pdmp/compare.py: Study.load ignores unknown fields of a run",
        lambda f: _study_file(f, lambda d: d["runs"][0].__setitem__("pickle", 1)),
        (ValueError,),
        r"pickle",
    ),
    (
        "paired-difference-from-dict-missing-field",
        "pdmp/stats.py: PairedDifference.from_dict lets a raw KeyError('interval') out",
        lambda _: PairedDifference.from_dict({"mean": 1.0}),
        (ValueError,),
        r"interval",
    ),
    (
        "clock-state-unknown-key",
        "pdmp/policies.py: Clock.load_state_dict ignores unknown keys (check_state_keys would refuse them)",
        lambda _: Clock().load_state_dict({"step": 1, "epoch": 0, "anchor": 2}),
        (ValueError,),
        r"unknown key",
    ),
]


@pytest.mark.parametrize(
    ("probe", "errors", "message"),
    [pytest.param(*p[2:]) for p in ELSEWHERE],
    ids=[p[0] for p in ELSEWHERE],
)
def test_bad_input_elsewhere(workdir: Path, probe, errors, message) -> None:
    with pytest.raises(errors) as caught:
        probe(workdir)
    assert re.search(message, str(caught.value)), f"{caught.value!s} does not match {message!r}"


# -- the torch adapter's constructor and checkpoint arguments ----------------------------------------------


def test_torch_adapter_refuses_string_flags_and_foreign_state_keys() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("lightning")
    from pdmp.backends.torch import Modulator
    from pdmp.backends.torch.lightning import PDMPCallback

    encoders = {"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)}
    policy = NoModulation(["a", "b"])
    with pytest.raises(TypeError, match="sync must be True or False, got str 'false'"):
        Modulator(encoders, policy, sync="false")
    for kwargs, message in (
        ({"sync": "false"}, "sync must be True or False"),
        ({"seed": "1"}, "seed"),
        ({"mode": "gradient"}, "unknown mode 'gradient'"),
    ):
        with pytest.raises((TypeError, ValueError), match=message):
            PDMPCallback({"a": "a", "b": "b"}, policy, **kwargs)
    optimizer = torch.optim.SGD([p for m in encoders.values() for p in m.parameters()], lr=0.1)
    with Modulator(encoders, policy, optimizer=optimizer) as mod:
        state = mod.state_dict()
        before = copy.deepcopy(state)
        with pytest.raises(TypeError, match="strict must be True or False"):
            mod.load_state_dict(state, strict="no")
        with pytest.raises(ValueError, match=r"unknown key\(s\) \['extra'\]"):
            mod.load_state_dict({**state, "extra": 1})
        with pytest.raises(ValueError, match="has no anchors"):
            mod.load_state_dict({**state, "anchors": "1"})
        assert mod.state_dict() == before
