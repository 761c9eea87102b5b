"""Rankings over several training seeds: scores, seed agreement, the bootstrap-vs-seeds warning, files."""

from __future__ import annotations

import json
import warnings

import pytest

import pdmp
from pdmp import Ranking, RankingFileError, RankingWarning, combine_rankings


def ranking(audio: float, image: float, stability: float | None = None) -> Ranking:
    scores = {"audio": audio, "image": image}
    return Ranking(
        order=pdmp.ranking.order_by_score(scores),
        scores=scores,
        stability=stability,
        n_bootstrap=0 if stability is None else 100,
        seed=None if stability is None else 0,
    )


def test_scores_are_seed_means_and_agreement_counts_seeds():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankingWarning)
        combined = combine_rankings([ranking(0.8, 0.6), ranking(0.7, 0.75), ranking(0.9, 0.5)])
    assert combined.dominant == "audio"
    assert combined.scores == pytest.approx({"audio": 0.8, "image": 0.6166666666})
    assert combined.seed_scores == {"audio": [0.8, 0.7, 0.9], "image": [0.6, 0.75, 0.5]}
    assert combined.seed_agreement == pytest.approx(2 / 3)
    assert combined.budget["training_seeds"] == 3


def test_a_tie_on_one_seed_counts_half():
    combined = combine_rankings([ranking(0.8, 0.6), ranking(0.7, 0.7)], warn=False)
    assert combined.seed_agreement == pytest.approx(0.75)


def test_warns_when_the_bootstrap_trusts_a_top_that_another_seed_reverses():
    # Each seed's own bootstrap is confident (stability 1.0) but the seeds disagree on the top.
    with pytest.warns(RankingWarning, match=r"100% of resamples, but only 50% of the 2 training seeds"):
        combined = combine_rankings([ranking(0.9, 0.6, 1.0), ranking(0.6, 0.8, 1.0)])
    assert combined.stability == 1.0 and combined.seed_agreement == 0.5


def test_no_warning_when_seeds_agree():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankingWarning)
        combined = combine_rankings([ranking(0.9, 0.6, 0.99), ranking(0.8, 0.5, 0.97)])
    assert combined.seed_agreement == 1.0 and combined.stability == pytest.approx(0.98)


def test_seed_fields_round_trip_and_an_altered_file_is_refused(tmp_path):
    combined = combine_rankings([ranking(0.9, 0.6, 0.99), ranking(0.8, 0.5, 0.97)])
    path = combined.save(tmp_path / "r.json")
    assert Ranking.load(path) == combined
    data = json.loads(path.read_text())
    data["seed_scores"]["audio"][0] = 0.1  # no longer averages to the stored score
    path.write_text(json.dumps(data))
    with pytest.raises(RankingFileError, match="not the mean of its seed_scores"):
        Ranking.load(path)
    del data["seed_scores"]
    path.write_text(json.dumps(data))
    with pytest.raises(RankingFileError, match="go together"):
        Ranking.load(path)


def test_a_single_seed_ranking_file_is_unchanged_by_the_new_fields():
    single = ranking(0.9, 0.6)
    assert "seed_scores" not in single.to_dict() and "seed_agreement" not in single.to_dict()


def test_combine_rankings_bad_input():
    with pytest.raises(TypeError, match="one per training seed"):
        combine_rankings([])
    other = Ranking(order=("audio", "text"), scores={"audio": 0.9, "text": 0.1})
    with pytest.raises(ValueError, match="same models only"):
        combine_rankings([ranking(0.9, 0.6), other])
