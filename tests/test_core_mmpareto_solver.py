"""MMPareto's two-task min-norm solver against a brute-force search, clamped cases included (NumPy only).

The interior case alone was checked before: a solver that clamped to the wrong end passed.
"""

from __future__ import annotations

import numpy as np

from pdmp.baselines import min_norm_weights


def test_min_norm_weights_match_a_grid_search_in_interior_and_clamped_cases():
    rng = np.random.default_rng(3)
    grid = np.linspace(0.0, 1.0, 4001)
    kinds = {"interior": 0, "clamped": 0}
    for _ in range(200):
        a, b = rng.normal(size=5), rng.normal(size=5)
        if rng.random() < 0.4:  # make one vector's projection cover the other: the clamped cases
            b = a * rng.uniform(1.2, 3.0) + 0.1 * rng.normal(size=5)
            a, b = (a, b) if rng.random() < 0.5 else (b, a)
        k, rest = min_norm_weights(a @ a, a @ b, b @ b)
        assert abs(k + rest - 1.0) < 1e-12
        norms = np.linalg.norm(grid[:, None] * a + (1 - grid[:, None]) * b, axis=1)
        t_best = grid[np.argmin(norms)]
        if k in (0.999, 0.001):
            kinds["clamped"] += 1
            # The reference clamps to 0.999 / 0.001 rather than 1 / 0: the same end as the true minimum.
            assert abs(t_best - k) <= 0.001 + 1e-9, (k, t_best)
        else:
            kinds["interior"] += 1
            assert np.linalg.norm(k * a + rest * b) <= norms.min() + 1e-9
    assert kinds["interior"] >= 20 and kinds["clamped"] >= 20, kinds
