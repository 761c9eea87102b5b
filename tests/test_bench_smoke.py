"""The benchmark pipeline end to end on a tiny slice of the real data, in both backends.

Numbers from two epochs on 8% of the data mean nothing; this checks the machinery: every run writes
its JSON (config, seed, per-epoch metrics, dependency, coefficients, environment), methods of one
seed share their initial weights and data order, the ranking file is written, and the table, the
paired differences and the plots come out.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.run import main


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("smoke")
    assert main(["--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    return out


def test_every_run_writes_a_complete_json(smoke) -> None:
    runs = [json.loads(p.read_text()) for p in sorted((smoke / "runs").glob("*.json"))]
    # 2 backends x 2 seeds x (2 unimodal + joint, OGM-GE, PDMP, symmetric)
    assert len(runs) == 2 * 2 * 6
    for run in runs:
        assert len(run["history"]) == 2
        assert {"config", "seed", "environment", "final", "best_val", "wall_time_s"} <= set(run)
        assert 0.0 <= run["final"]["test"]["acc"] <= 1.0
    multimodal = [r for r in runs if r["method"]["kind"] != "unimodal"]
    assert all(set(r["history"][-1]["val"]["dependency"]) == {"image", "audio"} for r in multimodal)
    pdmp_runs = [r for r in runs if r["method"]["name"] == "pdmp"]
    for run in pdmp_runs:
        dominant = run["ranking"]["order"][0]
        assert run["history"][0]["coefficients"][dominant] == 1.0  # warm-up epoch
        assert run["history"][1]["coefficients"][dominant] == 10.0
    backends = {r["backend"] for r in runs}
    assert backends == {"torch", "keras"}


def test_methods_of_a_seed_start_from_the_same_point(smoke) -> None:
    """Joint and PDMP share everything during PDMP's warm-up epoch, so epoch 0 must be identical."""
    runs = [json.loads(p.read_text()) for p in sorted((smoke / "runs").glob("*.json"))]
    for backend in ("torch", "keras"):
        for seed in (0, 1):
            joint, pdmp = (
                next(r for r in runs if r["backend"] == backend and r["seed"] == seed and r["method"]["name"] == m)
                for m in ("joint", "pdmp")
            )
            assert joint["history"][0]["val"]["acc"] == pytest.approx(pdmp["history"][0]["val"]["acc"], abs=1e-6)
            assert joint["history"][0]["train_loss"] == pytest.approx(pdmp["history"][0]["train_loss"], rel=1e-5)


def test_summary_ranking_and_plots(smoke) -> None:
    summary = (smoke / "summary.md").read_text()
    assert "| pdmp | 2 |" in summary and "vs joint:" in summary and "## Cheap ranking" in summary
    assert list(smoke.glob("ranking_*.json"))
    assert len(list(smoke.glob("*.png"))) == 2
